"""The registry of transform models: one class per model, found by its name.

A model class (a :class:`fire_reg.geometry.transform_base.Transform` subclass) is registered
with the :func:`register_model` decorator and declares:

* ``model``: its name in ``transform.json`` and on the command line (``--transform``);
* ``parameters``: its number of parameters (the registry orders models by it, simplest
  first: the order the fine stage falls back along and trust tries its fits in reverse);
* ``min_points``: the fewest point pairs a fit needs; ``min_inliers``: the fewest inlier tile
  matches the fine stage accepts for it (``FineOptions.min_inliers`` may override);
* ``weighted``: whether its fit takes per-pair weights; ``flexible``: whether the fine stage
  and trust check it for spread of evidence, fold-over and bend (models that can fold or
  bend on thin evidence);
* ``fit(fixed, moving, weights=None, domain=None)`` and ``from_arrays(forward, backward)``
  class methods (least squares; read the schema's arrays back).

Everything that needs the list of models (fine stage, trust, CLI choices, reference rows of
the evaluation) asks :func:`model_names` or :func:`model_class`, so adding a model is one
class and its tests.
"""
from __future__ import annotations

_REGISTERED: dict[str, type] = {}
_RESERVED = ("none",)  # ``--transform none``: no fine stage


def register_model(cls: type) -> type:
    """Register a model class under ``cls.model`` (usable as a class decorator).

    TypeError when the class lacks a declaration above; ValueError when the name is reserved
    or another class already holds it.
    """
    name = getattr(cls, "model", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty string 'model' to be registered")
    if name in _RESERVED:
        raise ValueError(f"{name!r} is reserved and cannot name a transform model")
    for attribute in ("parameters", "min_points", "min_inliers"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, int) or value < 1:
            raise TypeError(f"{cls.__name__}.{attribute} must be a positive int, got {value!r}")
    for attribute in ("fit", "from_arrays"):
        if not callable(getattr(cls, attribute, None)):
            raise TypeError(f"{cls.__name__} needs a '{attribute}' class method to be registered")
    if _REGISTERED.get(name, cls) is not cls:
        raise ValueError(f"transform model {name!r} is already registered "
                         f"({_REGISTERED[name].__name__})")
    _REGISTERED[name] = cls
    return cls


def unregister_model(name: str) -> None:
    """Remove a registered model (for tests that register a model of their own)."""
    if _REGISTERED.pop(name, None) is None:
        raise ValueError(f"no transform model {name!r} is registered")


def model_classes() -> tuple[type, ...]:
    """The registered model classes, simplest (fewest parameters) first; ties keep the order
    of registration."""
    return tuple(sorted(_REGISTERED.values(), key=lambda cls: cls.parameters))


def model_names() -> tuple[str, ...]:
    """The registered model names, simplest first (what the fine stage falls back along,
    what ``--transform`` offers)."""
    return tuple(cls.model for cls in model_classes())


def model_class(name) -> type:
    """The class registered under ``name``; ValueError naming the choices otherwise."""
    try:
        return _REGISTERED[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown transform model {name!r}; choose from "
                         f"{', '.join(model_names())}") from None
