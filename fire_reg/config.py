"""One configuration style for fire-reg's settings, and the network's hyper-parameters.

Every settings dataclass, one per stage (``learn.dataset_creator.PrepareConfig`` with its
``MotionRange``, ``learn.trainer.TrainConfig`` with :class:`NetworkConfig` and
``learn.augment.AugmentConfig``, ``register.registrar.RegistrarConfig`` with
``register.ecc.EccOptions``, ``register.fine.FineOptions`` and ``register.trust.TrustOptions``,
``imaging.vessels.VesselMapSettings``, ``learn.settings.ModelSettings``) is a frozen dataclass
deriving from :class:`Config`:

* ``__post_init__`` checks every field with the ``_integer`` / ``_integers`` / ``_number`` /
  ``_flag`` / ``_choice`` / ``_range`` / ``_nested`` helpers, which raise :class:`FieldError`
  (a ValueError naming the field, e.g. ``batch_size must be at least 1, got 0``) and coerce
  JSON values (lists to tuples, dicts to nested settings);
* ``from_dict`` builds one from JSON (unknown keys are a FieldError), ``to_dict`` gives JSON;
* change a value with ``dataclasses.replace``, which checks again;
* a field that the command line offers is declared with :func:`setting`, which keeps its help
  text (and, for a text field, its choices) in the field's metadata: ``fire_reg.cli.options``
  makes the flag from it (``batch_size`` -> ``--batch-size``, with that help and default) and
  turns a FieldError back into an error naming the flag.

This module imports neither Keras nor OpenCV, so bad settings are reported before any heavy
import.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass


class FieldError(ValueError):
    """A setting with a bad value; ``field`` is its name (dotted when nested)."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


def setting(default=dataclasses.MISSING, *, help: str, factory=dataclasses.MISSING,
            choices: Callable[[], tuple[str, ...]] | None = None):
    """A settings field with the help text of its command-line flag (units included).

    ``default`` or ``factory`` as for ``dataclasses.field``. ``choices``: for a text field, a
    function giving the valid values, called each time they are needed (when a value is
    checked, when a parser is built), so that values registered later count.
    """
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def choices_of(cls, name: str) -> tuple[str, ...] | None:
    """The valid values of a :func:`setting` field declared with ``choices`` (else None)."""
    known = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("choices")
    return None if known is None else tuple(known())


class Config:
    """Base of the settings dataclasses: JSON in and out, and field checks for __post_init__."""

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a JSON object; unknown keys are a FieldError."""
        if not isinstance(data, dict):
            raise FieldError(cls.__name__, f"must be a JSON object, got {data!r}")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise FieldError(unknown[0], f"is not a {cls.__name__} setting (known: "
                                         f"{', '.join(known)})")
        return cls(**data)

    def to_dict(self) -> dict:
        """Plain JSON (tuples as lists, nested settings as objects)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen dataclasses coerce in __post_init__

    def _integer(self, name: str, low: int | None = None, high: int | None = None,
                 optional: bool = False) -> None:
        """An int (not a bool) in [low, high]; None allowed when ``optional``."""
        value = getattr(self, name)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(name, f"must be a whole number, got {value!r}")
        _check_bounds(name, value, low, high)

    def _number(self, name: str, low: float | None = None, high: float | None = None,
                above: float | None = None, below: float | None = None) -> None:
        """A finite real number in [low, high], > ``above`` and < ``below``; stored as float."""
        value = getattr(self, name)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise FieldError(name, f"must be a number, got {value!r}")
        if above is not None and value <= above:
            raise FieldError(name, f"must be more than {above}, got {value!r}")
        if below is not None and value >= below:
            raise FieldError(name, f"must be less than {below}, got {value!r}")
        _check_bounds(name, value, low, high)
        self._set(name, float(value))

    def _integers(self, name: str, low: int | None = None, at_least: int = 1) -> None:
        """A sequence of at least ``at_least`` whole numbers, each >= ``low``; stored as a tuple."""
        value = getattr(self, name)
        bound = "" if low is None else f" >= {low}"
        if (not isinstance(value, (list, tuple)) or len(value) < at_least
                or any(isinstance(v, bool) or not isinstance(v, int)
                       or (low is not None and v < low) for v in value)):
            raise FieldError(name, f"must be at least {at_least} whole number(s){bound}, got "
                                   f"{value!r}")
        self._set(name, tuple(value))

    def _choice(self, name: str) -> None:
        """One of the values the field's :func:`setting` ``choices`` gives now."""
        known = choices_of(type(self), name)
        if getattr(self, name) not in known:
            raise FieldError(name, f"must be one of {', '.join(known)}, got "
                                   f"{getattr(self, name)!r}")

    def _flag(self, name: str) -> None:
        """true or false."""
        if not isinstance(getattr(self, name), bool):
            raise FieldError(name, f"must be true or false, got {getattr(self, name)!r}")

    def _range(self, name: str, above: float | None = None) -> None:
        """A pair (low, high) of numbers with low <= high (and low > ``above``), as a tuple."""
        value = getattr(self, name)
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float))
                       or not math.isfinite(v) for v in value)):
            raise FieldError(name, f"must be a pair of numbers [low, high], got {value!r}")
        low, high = float(value[0]), float(value[1])
        if low > high or (above is not None and low <= above):
            bound = "" if above is None else f" with low > {above}"
            raise FieldError(name, f"must be [low, high] with low <= high{bound}, got {value!r}")
        self._set(name, (low, high))

    def _nested(self, name: str, cls: type) -> None:
        """A nested settings object, or its JSON object; errors name ``name.field``."""
        value = getattr(self, name)
        if isinstance(value, cls):
            return
        try:
            self._set(name, cls.from_dict(value))
        except FieldError as error:
            raise FieldError(f"{name}.{error.field}", error.problem) from None


def _check_bounds(name: str, value, low, high) -> None:
    if low is not None and value < low:
        raise FieldError(name, f"must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise FieldError(name, f"must be at most {high}, got {value!r}")


@dataclass(frozen=True)
class NetworkConfig(Config):
    """Hyper-parameters of :func:`fire_reg.learn.network.build_model` (here, not in
    fire_reg.learn.network, so that checking them does not import Keras).

    ``input_size``: side of the square input in px, a multiple of 8 (three stride-2
    convolutions give an ``input_size / 8`` cell grid), or None (the default): the size of
    the data, which is the one source of it. The Trainer takes its shards' patch size
    (``PrepareConfig.patch_size``) and refuses a config that names another;
    ``build_model`` takes the size its ``ModelSettings`` record. ``encoder_channels``: one 3x3
    convolution each, the first three with stride 2. ``max_translation`` scales the translation
    head (normalised units per unit of head output); it is a plain factor, not a tanh bound, so
    the gradient never saturates. ``softmax_temperature_init`` is the initial inverse
    temperature of the soft-argmax over cosine correlations in [-1, 1].
    """

    input_size: int | None = None
    encoder_channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    trunk_units: int = 256
    use_shear: bool = False
    max_translation: float = 1.0
    softmax_temperature_init: float = 10.0

    def __post_init__(self):
        self._integer("input_size", low=16, optional=True)
        if self.input_size is not None and self.input_size % 8:
            raise FieldError("input_size", f"must be a multiple of 8, got {self.input_size}")
        self._integers("encoder_channels", low=1, at_least=3)  # three stride-2 convolutions
        self._integer("trunk_units", low=1)
        self._flag("use_shear")
        self._number("max_translation", above=0)
        self._number("softmax_temperature_init", above=0)
