"""The shard format: patch pairs for training, written by DatasetCreator, read by the Trainer.

A shard folder holds::

    manifest.json                       format, version, config, pairs, shards, columns, versions
    shard_00000_fixed.npy   (N, S, S)   uint8 vessel map of the fixed patch, 255 = 1.0,
                                        0 outside the camera aperture
    shard_00000_moving.npy  (N, S, S)   uint8, the same for the moving patch
    shard_00000_target.npy  (N, 2, 3)   float32 matrix, fixed-patch normalised coordinates ->
                                        moving-patch normalised coordinates
    shard_00000_info.npy    (N, K)      float32, the columns of INFO_COLUMNS

Normalised coordinates are fire_reg.geometry's (``u = (2 x + 1) / S - 1``). The parts of a
sample are the fields of :class:`Sample`; the manifest's ``config`` is the DatasetCreator's
PrepareConfig as a dict (its ``preprocessing`` says how the vessel maps were made). Every file
is written under a temporary name and renamed when complete, so a shard file is whole or absent.
"""
from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_path, write_json

FORMAT = "fire-reg patch shards"
MANIFEST_VERSION = 2
MANIFEST_NAME = "manifest.json"
INFO_COLUMNS = ("pair_index", "tx", "ty", "theta", "sx", "sy", "shear", "magnitude",
                "zoom", "crop_x", "crop_y")
"""Per-sample parameters: source pair, target motion (fire_reg.geometry.AffineParams, theta in
radians, normalised units), its magnitude (mean grid displacement, normalised units) and the
zoom crop shared by both patches (zoom factor, normalised centre)."""


class Sample(NamedTuple):
    """One sample, or a stack of them (the arrays of one shard), in the shapes above."""

    fixed: np.ndarray
    moving: np.ndarray
    target: np.ndarray
    info: np.ndarray


PARTS = Sample._fields


def shard_name(index: int) -> str:
    """File-name stem of shard ``index``."""
    return f"shard_{index:05d}"


def part_path(shard_dir, name: str, part: str) -> Path:
    """Path of one part (a field of :class:`Sample`) of shard ``name``."""
    return Path(shard_dir) / f"{name}_{part}.npy"


def info_row(**values) -> np.ndarray:
    """The info row of one sample from its INFO_COLUMNS values (every column, no other)."""
    if set(values) != set(INFO_COLUMNS):
        raise ValueError(f"info needs exactly the columns {INFO_COLUMNS}, got {sorted(values)}")
    return np.array([values[column] for column in INFO_COLUMNS], np.float32)


def write_shard(shard_dir, name: str, samples: list[Sample]) -> None:
    """Stack ``samples`` and write the parts of shard ``name`` (each atomically)."""
    stacked = Sample(*(np.stack(arrays) for arrays in zip(*samples)))
    for part, array in zip(PARTS, stacked):
        with atomic_path(part_path(shard_dir, name, part)) as tmp:
            np.save(tmp, array)


def shard_complete(shard_dir, name: str, count: int) -> bool:
    """Whether every part of shard ``name`` exists, is readable and holds ``count`` samples."""
    for part in PARTS:
        path = part_path(shard_dir, name, part)
        if not path.exists():
            return False
        try:
            if np.load(path, mmap_mode="r").shape[0] != count:
                return False
        except (ValueError, OSError):
            return False
    return True


def make_manifest(source, config: dict, pairs: list[dict], shards: list[dict]) -> dict:
    """The manifest of a finished shard folder, as it reads back from JSON.

    ``config``: the PrepareConfig as a dict; ``pairs``: ``{"index", "id", "category"}`` per
    source pair; ``shards``: ``{"name", "count"}`` per shard, in sample order.
    """
    import cv2
    import skimage

    manifest = {
        "format": FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "source": str(source),
        "config": config,
        "input": "vessel map (fire_reg.imaging.vessels.vessel_map with config.preprocessing) as uint8, "
                 "255 = 1.0, 0 outside the aperture",
        "target": "2x3 float32, fixed-patch normalised coords -> moving-patch normalised coords",
        "info_columns": list(INFO_COLUMNS),
        "pairs": pairs,
        "shards": shards,
        "count": sum(shard["count"] for shard in shards),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "opencv": cv2.__version__, "scikit-image": skimage.__version__},
    }
    return json.loads(json.dumps(manifest))


def write_manifest(shard_dir, manifest: dict) -> None:
    """Write ``manifest.json`` (atomically); it marks the folder as complete."""
    write_json(Path(shard_dir) / MANIFEST_NAME, manifest)


def load_manifest(shard_dir) -> dict:
    """Read and check a shard folder's manifest.

    InputError (naming the file) when it is missing, malformed, of another format version, or
    lists a shard file that is not there.
    """
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(path, "no shard manifest here; run `fire-reg prepare` first")
    try:
        manifest = json.loads(path.read_text())
        version, shards = manifest.get("manifest_version"), manifest["shards"]
        names = [shard["name"] for shard in shards]
        manifest["config"]["patch_size"], manifest["pairs"]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError,
            TypeError) as error:
        raise InputError(path, f"malformed shard manifest ({type(error).__name__}: {error})") \
            from None
    if manifest.get("format") != FORMAT or version != MANIFEST_VERSION:
        raise InputError(path, f"shard manifest version {version}, this fire-reg reads version "
                               f"{MANIFEST_VERSION}; run `fire-reg prepare` again")
    for name in names:
        for part in PARTS:
            if not part_path(shard_dir, name, part).is_file():
                raise InputError(part_path(shard_dir, name, part),
                                 "shard file listed in the manifest is missing")
    return manifest


def summary(manifest: dict) -> dict:
    """What a model needs to say about its training data: source, sample and pair counts, pairs
    per category and the sampling config."""
    return {"source": manifest["source"], "samples": manifest["count"],
            "pairs": len(manifest["pairs"]),
            "categories": dict(Counter(pair["category"] for pair in manifest["pairs"])),
            "config": manifest["config"]}


class ShardStream:
    """Random access over the samples of a shard folder, memory-mapped (bounded memory)."""

    def __init__(self, shard_dir):
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(self.shard_dir)
        self.patch_size = int(self.manifest["config"]["patch_size"])
        self.shards = [Sample(*(_open(part_path(self.shard_dir, shard["name"], part))
                                for part in PARTS))
                       for shard in self.manifest["shards"]]
        counts = [len(shard.target) for shard in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        self.info = (np.concatenate([shard.info for shard in self.shards]) if self.shards
                     else np.zeros((0, len(INFO_COLUMNS)), np.float32))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def column(self, name: str) -> np.ndarray:
        """One INFO_COLUMNS column over all samples (N,)."""
        return self.info[:, INFO_COLUMNS.index(name)]

    def take(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fixed, moving) float32 (N, S, S, 1) in [0, 1] and targets (N, 2, 3) float64."""
        indices = np.asarray(indices)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        size = self.patch_size
        fixed = np.empty((len(indices), size, size), np.float32)
        moving = np.empty_like(fixed)
        target = np.empty((len(indices), 2, 3), np.float64)
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)
            local = indices[rows] - self.offsets[shard]
            order = np.argsort(local)  # sorted reads from the memory map
            data = self.shards[shard]
            fixed[rows[order]] = data.fixed[local[order]] / 255.0
            moving[rows[order]] = data.moving[local[order]] / 255.0
            target[rows[order]] = data.target[local[order]]
        return fixed[..., None], moving[..., None], target


def _open(path: Path) -> np.ndarray:
    """Memory-map one shard array; InputError when it is not a readable .npy file."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise InputError(path, f"not a readable shard ({error})") from None
