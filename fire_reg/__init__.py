"""fire-reg: learned affine registration of retinal fundus photographs (Keras 3).

The public API, imported lazily so that ``import fire_reg`` stays light (no Keras, no
TensorFlow): ``Registrar``, ``Registration``, ``register_files`` and ``write_files`` (the one
path from image files to a result and its files), ``baseline(name)`` (a classic method:
sift, sift-homography, orb, ecc, identity), ``fit_transform(model, fixed_pts, moving_pts)``
and ``transform_from_dict`` (affine / homography / quadratic), ``trust_summary``,
``fire_error`` (the FIRE metric of one pair), ``set_statistics`` / ``fire_statistics`` (a
FIRE-layout set's geometry beside the real FIRE's), ``export_model``,
``FireDataset``, ``DatasetCreator``,
``PrepareConfig``, ``MotionRange``, ``Trainer``, ``TrainConfig``, ``AugmentConfig``,
``NetworkConfig``, ``VesselMapSettings``, ``Tester``, ``build_model``, ``load_model`` (a
``.keras`` file with its ``ModelSettings``), ``make_embedded_set``.
Matrices map fixed-image pixels to moving-image pixels (see docs/conventions.md).

``import fire_reg`` also makes fire-reg's layers known to Keras, so that
``keras.saving.load_model("run/model.keras")`` works: at once when Keras is already imported,
otherwise the moment it is.
"""
import importlib.abc
import sys
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Registrar": "fire_reg.register.registrar", "Registration": "fire_reg.register.result",
    "register_files": "fire_reg.register.result", "write_files": "fire_reg.register.result",
    "baseline": "fire_reg.evaluate.baselines", "fit_transform": "fire_reg.geometry.transforms",
    "transform_from_dict": "fire_reg.geometry.transforms", "trust_summary": "fire_reg.evaluate.metrics",
    "fire_error": "fire_reg.evaluate.metrics", "fire_statistics": "fire_reg.data.embedded",
    "set_statistics": "fire_reg.data.embedded", "export_model": "fire_reg.learn.trainer",
    "FireDataset": "fire_reg.io.fire", "DatasetCreator": "fire_reg.learn.dataset_creator",
    "PrepareConfig": "fire_reg.learn.dataset_creator", "MotionRange": "fire_reg.learn.dataset_creator",
    "Trainer": "fire_reg.learn.trainer", "TrainConfig": "fire_reg.learn.trainer",
    "AugmentConfig": "fire_reg.learn.trainer", "NetworkConfig": "fire_reg.config",
    "VesselMapSettings": "fire_reg.imaging.vessels", "Tester": "fire_reg.evaluate.tester",
    "build_model": "fire_reg.learn.network", "load_model": "fire_reg.learn.bundle",
    "ModelSettings": "fire_reg.learn.bundle", "make_embedded_set": "fire_reg.data.embedded",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fire_reg' has no attribute {name!r}")


class _RegisterLayersAfterKeras(importlib.abc.MetaPathFinder):
    """Import hook: once the ``keras`` package has been executed, import fire_reg.learn.network,
    whose decorators register fire-reg's layers and losses with Keras; then step aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        for finder in sys.meta_path:  # the spec the other finders give, its loader wrapped
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_register(module):
                exec_module(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                import_module("fire_reg.learn.network")

            spec.loader.exec_module = exec_and_register
        return spec


if "keras" in sys.modules:
    import_module("fire_reg.learn.network")
else:
    sys.meta_path.insert(0, _RegisterLayersAfterKeras())
