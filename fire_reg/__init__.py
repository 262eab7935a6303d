"""fire-reg: learned affine registration of retinal fundus photographs (Keras 3).

The public API, imported lazily so that ``import fire_reg`` stays light (no Keras, no
TensorFlow): ``Registrar`` (with its ``RegistrarConfig``), ``Registration``,
``register_files`` and ``write_files`` (the one path from image files to a result and its
files), ``baseline(name)`` (a classic method:
sift, sift-homography, orb, ecc, identity), ``fit_transform(model, fixed_pts, moving_pts)``
and ``transform_from_dict`` (affine / homography / quadratic), ``trust_summary``,
``fire_error`` (the FIRE metric of one pair), ``set_statistics`` / ``fire_statistics`` (a
FIRE-layout set's geometry beside the real FIRE's), ``export_model``,
``FireDataset``, ``DatasetCreator``,
``PrepareConfig``, ``MotionRange``, ``Trainer``, ``TrainConfig``, ``AugmentConfig``,
``NetworkConfig``, ``VesselMapSettings``, ``Tester``, ``build_model``, ``load_model`` (a
``.keras`` file with its ``ModelSettings``), ``make_embedded_set``, ``Mosaic`` (montages)
and ``make_field_set`` (multi-field sets of one retina with exact ground truth).
Matrices map fixed-image pixels to moving-image pixels (see docs/conventions.md).

``fire_reg.load_model(path)`` is the way to load a fire-reg ``.keras`` file: it returns the
model with its settings. Keras' own ``keras.saving.load_model`` knows fire-reg's layers once
``fire_reg.learn.network`` is imported (its decorators register them); ``import fire_reg``
alone imports no Keras.
"""
from importlib import import_module

__version__ = "0.1.0"
"""The one place of fire-reg's version (pyproject.toml reads it; ``fire-reg --version``)."""

_EXPORTS = {
    "Registrar": "fire_reg.register.registrar",
    "RegistrarConfig": "fire_reg.register.registrar", "Registration": "fire_reg.register.result",
    "register_files": "fire_reg.register.result", "write_files": "fire_reg.register.result",
    "baseline": "fire_reg.evaluate.baselines", "fit_transform": "fire_reg.geometry.transforms",
    "transform_from_dict": "fire_reg.geometry.transforms", "trust_summary": "fire_reg.evaluate.metrics",
    "fire_error": "fire_reg.evaluate.metrics", "fire_statistics": "fire_reg.data.statistics",
    "set_statistics": "fire_reg.data.statistics", "export_model": "fire_reg.learn.trainer",
    "FireDataset": "fire_reg.data.fire", "DatasetCreator": "fire_reg.learn.dataset_creator",
    "PrepareConfig": "fire_reg.learn.dataset_creator", "MotionRange": "fire_reg.learn.dataset_creator",
    "Trainer": "fire_reg.learn.trainer", "TrainConfig": "fire_reg.learn.trainer",
    "AugmentConfig": "fire_reg.learn.augment", "NetworkConfig": "fire_reg.config",
    "VesselMapSettings": "fire_reg.imaging.vessels", "Tester": "fire_reg.evaluate.tester",
    "build_model": "fire_reg.learn.network", "load_model": "fire_reg.learn.bundle",
    "ModelSettings": "fire_reg.learn.settings", "make_embedded_set": "fire_reg.data.embedded",
    "Mosaic": "fire_reg.montage.mosaic", "make_field_set": "fire_reg.data.fields",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fire_reg' has no attribute {name!r}")
