"""fire-reg: learned affine registration of retinal fundus photographs (Keras 3).

The public API, imported lazily so that ``import fire_reg`` stays light:
``Registrar``, ``Registration``, ``FireDataset``, ``DatasetCreator``, ``PrepareConfig``,
``Trainer``, ``TrainConfig``, ``Tester``, ``build_model``, ``make_embedded_set``.
Matrices map fixed-image pixels to moving-image pixels (see docs/conventions.md).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Registrar": "fire_reg.registrar", "Registration": "fire_reg.registrar",
    "FireDataset": "fire_reg.fire", "DatasetCreator": "fire_reg.dataset_creator",
    "PrepareConfig": "fire_reg.dataset_creator", "Trainer": "fire_reg.trainer",
    "TrainConfig": "fire_reg.trainer", "Tester": "fire_reg.tester",
    "build_model": "fire_reg.network", "make_embedded_set": "fire_reg.embedded",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fire_reg' has no attribute {name!r}")
