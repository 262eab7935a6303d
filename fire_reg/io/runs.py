"""Fingerprints of a run's settings, so that ``--resume`` never mixes results of other settings.

A *settings record* is plain JSON describing everything that decides a run's results: for
each registration method its class, name, decode width and public attributes (settings
dataclasses field by field, a Keras model as the SHA-256 of its weights, a function by its
qualified name), plus whatever the caller adds (baselines, data set). Its *fingerprint* is
the SHA-256 of the record's canonical JSON. Runs store both with their results; a resumed
run reuses only results with its own fingerprint, and refuses to continue a run whose
recorded fingerprint differs (InputError naming what changed).

The model enters by its weights, not its path: the same file moved elsewhere is the same
model, a retrained file at the same path is not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from fire_reg.io.errors import InputError


def describe(method) -> dict:
    """The settings record of one registration method (any object with ``name`` and
    ``decode_width``): its class, and every public attribute as plain JSON."""
    record = {"class": f"{type(method).__module__}.{type(method).__qualname__}",
              "name": method.name, "decode_width": method.decode_width}
    for name, value in sorted(vars(method).items()):
        if not name.startswith("_"):
            record[name] = _plain(value)
    return record


def _plain(value):
    """``value`` as JSON: settings field by field, arrays and models by a digest."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name))
                for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return {"array_sha256": _digest([value])}
    if hasattr(value, "get_weights"):  # a Keras model or layer
        return {"weights_sha256": _digest(value.get_weights())}
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return f"{type(value).__module__}.{type(value).__qualname__}"  # never an address


def _digest(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint(settings: dict) -> str:
    """``sha256:<hex>`` of a settings record's canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def differences(old: dict, new: dict, limit: int = 3) -> list[str]:
    """The first ``limit`` settings that differ between two records, as ``key: old -> new``
    (nested keys dotted)."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(set(flat_old) | set(flat_new))
    changed = [f"{key}: {flat_old.get(key, '(none)')!r} -> {flat_new.get(key, '(none)')!r}"
               for key in keys if flat_old.get(key, "(none)") != flat_new.get(key, "(none)")]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{prefix}{index}."))
        return flat
    return {prefix.rstrip("."): value}


def check_continues(record_path, print_name: str, settings: dict) -> None:
    """Refuse (InputError naming the folder) to resume the run recorded in ``record_path``
    (JSON with ``fingerprint`` and ``settings``) when its fingerprint differs from that of
    ``settings``. Nothing recorded, or a record of a run that registered nothing
    (fingerprint null): nothing to check."""
    record_path = Path(record_path)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(record, dict) or record.get("fingerprint") in (None, fingerprint(settings)):
        return
    old = record.get("settings")
    changed = differences(old, settings) if isinstance(old, dict) else ["settings not recorded"]
    raise InputError(record_path.parent, f"--resume refused: {print_name} was made with other "
                                         f"settings or another model ({'; '.join(changed)}); "
                                         "run again with the same ones, or without --resume "
                                         "(or into another --out) to start afresh")
