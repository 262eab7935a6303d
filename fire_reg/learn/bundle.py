"""The model bundle: a fire-reg ``.keras`` file that says how to apply it.

Every model :func:`fire_reg.learn.network.build_model` makes (so every checkpoint the Trainer
writes, and every exported model) carries its :class:`~fire_reg.learn.settings.ModelSettings`
inside the file, in the config of an identity layer named ``settings``
(:class:`fire_reg.learn.network.SettingsLayer`) on the matrix output: the input size, how the
inputs are made (vessel maps, :class:`fire_reg.imaging.vessels.VesselMapSettings`), the
letterbox and matrix conventions, and a summary of the training data. :func:`load_model` returns the model with its settings and
refuses a file without them; :func:`check_model_file` refuses a missing or foreign file
before Keras is imported; :func:`card` is the JSON card ``fire-reg export`` writes beside
the model, from the same settings. The settings and the names of a fire-reg model live in
:mod:`fire_reg.learn.settings` (read by the network too).

This module imports Keras only inside its functions.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from importlib import resources
from pathlib import Path

from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_path
from fire_reg.learn.settings import (INPUTS, LETTERBOXES, MATRICES, MODEL_NAME, OUTPUTS,
                                     SETTINGS_LAYER, ModelSettings)


def default_model_path() -> Path:
    """The shipped model, ``fire_reg/weights/fire_reg_affine.keras``."""
    return Path(str(resources.files("fire_reg") / "weights" / f"{MODEL_NAME}.keras"))


def model_path(path=None) -> Path:
    """``path`` as a Path; the shipped model's for None."""
    return Path(path) if path is not None else default_model_path()


def load_model(path=None):
    """Load a fire-reg model and its settings: returns ``(keras.Model, ModelSettings)``.

    ``path``: a ``.keras`` file; None for the shipped model. The model is loaded without its
    optimizer (``compile=False``), with Keras' safe mode. InputError naming the file when it is
    missing or unreadable, not a fire-reg model (name, inputs, outputs), or made by an older
    fire-reg without settings.
    """
    path = model_path(path)
    model = _load_fire_reg_model(path)
    try:
        layer = model.get_layer(SETTINGS_LAYER)
    except ValueError:
        raise InputError(path, "made by an older fire-reg: it does not say how to apply it (no "
                               "settings inside); convert it with fire_reg.learn.bundle.upgrade_model "
                               "or export it again") from None
    try:
        settings = ModelSettings.from_dict(layer.settings)
    except (AttributeError, ValueError) as error:
        raise InputError(path, f"its settings are malformed ({error})") from None
    size = tuple(model.input["fixed"].shape[1:3])
    if size != (settings.input_size, settings.input_size):
        raise InputError(path, f"its settings say {settings.input_size} px input, the network "
                               f"takes {size}")
    return model, settings


def load_archive(path=None):
    """:func:`load_model` with the bytes of the file it loaded: ``(model, settings, bytes)``
    (what a worker process is sent). InputError naming the file when it changed while it was
    loaded (a training run writing a checkpoint there, say): the model and the bytes would
    not be the same weights."""
    path = model_path(path)
    before = _identity(path)
    model, settings = load_model(path)
    archive = path.read_bytes()
    if before is None or _identity(path) != before:
        raise InputError(path, "changed while it was loaded (is it being written?); try again")
    return model, settings, archive


def _identity(path: Path):
    """What tells one version of a file from another: inode, size, modification time (ns)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def upgrade_model(path, out_path, settings: ModelSettings):
    """Write a model made by an older fire-reg (no settings inside) to ``out_path`` with
    ``settings`` added, every weight unchanged; returns the new model. The settings must be
    the ones it was trained with (its shard manifest's ``config.preprocessing``)."""
    import keras

    from fire_reg.learn.network import SettingsLayer

    path = Path(path)
    old = _load_fire_reg_model(path)
    if SETTINGS_LAYER in [layer.name for layer in old.layers]:
        raise InputError(path, "already carries its settings")
    outputs = dict(old.output)
    outputs["matrix"] = SettingsLayer(settings.to_dict(), name=SETTINGS_LAYER)(outputs["matrix"])
    model = keras.Model(old.input, outputs, name=MODEL_NAME)
    with atomic_path(out_path) as tmp:
        model.save(tmp)
    return model


def card(model_path, model, settings: ModelSettings) -> dict:
    """The part of a model's JSON card that describes the file: name, sha256, parameters and
    the settings (the same fields as ModelSettings)."""
    model_path = Path(model_path)
    return {"model": model_path.name,
            "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "parameters": int(model.count_params()), **settings.to_dict(),
            "conventions": {"letterbox": LETTERBOXES[settings.letterbox],
                            "matrix": MATRICES[settings.matrix]}}


def check_model_file(path) -> Path:
    """The checks of a model file that need no Keras (milliseconds): InputError naming the file
    when it is missing or unreadable, not a Keras archive (a zip holding ``config.json``), or
    a Keras model other than fire-reg's (its config names another model). Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not a model file")
    if not path.is_file():
        raise InputError(path, "model file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except KeyError:
        raise InputError(path, "not a readable Keras model (a zip without config.json)") from None
    except (zipfile.BadZipFile, OSError, ValueError) as error:  # ValueError: JSON, encoding
        raise InputError(path, f"not a readable Keras model ({type(error).__name__}: not a "
                               ".keras archive)") from None
    name = config.get("config", {}).get("name") if isinstance(config, dict) else None
    if name != MODEL_NAME:
        raise InputError(path, f"not a fire-reg model (model {name!r}; expected "
                               f"{MODEL_NAME!r})")
    return path


def _load_fire_reg_model(path: Path):
    """A fire-reg network from a .keras file (with or without settings), or InputError."""
    check_model_file(path)
    import keras

    import fire_reg.learn.network  # noqa: F401  (registers fire-reg's layers with Keras)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise InputError(path, f"not a readable Keras model ({type(error).__name__})") from None
    inputs, outputs = _keys(model, "input"), _keys(model, "output")
    if model.name != MODEL_NAME or inputs != sorted(INPUTS) or outputs != sorted(OUTPUTS):
        raise InputError(path, f"not a fire-reg model (model {model.name!r} with inputs "
                               f"{inputs or '?'} and outputs {outputs or '?'}; expected "
                               f"{MODEL_NAME!r}, {list(INPUTS)}, {list(OUTPUTS)})")
    return model


def _keys(model, attribute: str) -> list[str]:
    """Sorted names of a model's dict inputs or outputs ([] when they are not a dict)."""
    try:
        value = getattr(model, attribute)
    except (AttributeError, ValueError):  # e.g. a Sequential model that was never called
        return []
    return sorted(value) if isinstance(value, dict) else []
