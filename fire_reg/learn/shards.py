"""The shard format: patch pairs for training, written by DatasetCreator, read by the Trainer.

A shard folder holds::

    manifest.json                       format, version, config, parts, modalities, pairs,
                                        shards, columns, versions
    shard_00000_fixed.npy   (N, S, S)   uint8 vessel map of the fixed patch, 255 = 1.0,
                                        0 outside the camera aperture
    shard_00000_moving.npy  (N, S, S)   uint8, the same for the moving patch
    shard_00000_target.npy  (N, 2, 3)   float32 matrix, fixed-patch normalised coordinates ->
                                        moving-patch normalised coordinates
    shard_00000_info.npy    (N, K)      float32, the columns of INFO_COLUMNS
    shard_00000_fov.npy     (N, 2, S, S/8)  uint8, optional: the fields of view of the fixed
                                        patch and of the same-modality moving patch (pixels
                                        showing retina), bits packed along x (np.packbits)
    shard_00000_moving_same.npy (N, S, S)  uint8, optional: the moving patch drawn from the
                                        moving photograph in the FIXED photograph's modality
                                        (same content, same aperture), the like-with-like
                                        target of the intra-modality loss

Normalised coordinates are fire_reg.geometry's (``u = (2 x + 1) / S - 1``). The parts of a
sample are the fields of :class:`Sample`; the manifest's ``parts`` lists those a folder holds
(the four first always). Where ``moving_same`` is absent the moving patch is in the fixed
patch's modality already (a colour-only folder) and stands for it; where ``fov`` is absent the
whole patch counts. The info columns ``fixed_modality`` and ``moving_modality`` index the
manifest's ``modalities`` (:data:`MODALITIES`). The manifest's ``config`` is the
DatasetCreator's PrepareConfig as a dict (its ``preprocessing`` says how the vessel maps were
made). Every file is written under a temporary name and renamed when complete, so a shard file
is whole or absent.

Versions: 3 (this one) added ``parts``, ``modalities``, the two modality columns and the
optional parts; folders of version 2 (four parts, no modality columns, all colour) are still
read.
"""
from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fire_reg.imaging.modality import MODALITIES
from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_path, write_json

FORMAT = "fire-reg patch shards"
MANIFEST_VERSION = 3
READABLE_VERSIONS = (2, 3)
MANIFEST_NAME = "manifest.json"
INFO_COLUMNS = ("pair_index", "tx", "ty", "theta", "sx", "sy", "shear", "magnitude",
                "zoom", "crop_x", "crop_y", "fixed_modality", "moving_modality")
"""Per-sample parameters: source pair, target motion (fire_reg.geometry.AffineParams, theta in
radians, normalised units), its magnitude (mean grid displacement, normalised units), the
zoom crop shared by both patches (zoom factor, normalised centre) and the modalities the two
patches show (indices into :data:`MODALITIES`)."""
V2_INFO_COLUMNS = INFO_COLUMNS[:11]


class Sample(NamedTuple):
    """One sample, or a stack of them (the arrays of one shard), in the shapes above; the
    optional parts are None when not written."""

    fixed: np.ndarray
    moving: np.ndarray
    target: np.ndarray
    info: np.ndarray
    fov: np.ndarray | None = None
    moving_same: np.ndarray | None = None


PARTS = Sample._fields
CORE_PARTS = PARTS[:4]
"""Parts every shard folder holds; the others are optional (the manifest's ``parts``)."""


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


def pack_fov(fixed_fov: np.ndarray, moving_fov: np.ndarray) -> np.ndarray:
    """The ``fov`` part of one sample: two (S, S) boolean fields of view -> (2, S, S/8) uint8."""
    return np.packbits(np.stack([fixed_fov, moving_fov]).astype(bool), axis=-1)


def sample_parts(samples: list[Sample]) -> tuple[str, ...]:
    """The parts ``samples`` hold (the same for all of them, else ValueError)."""
    held = {tuple(part for part, array in zip(PARTS, sample) if array is not None)
            for sample in samples}
    if len(held) != 1:
        raise ValueError(f"samples of one shard hold different parts: {sorted(held)}")
    return held.pop()


def write_shard(shard_dir, name: str, samples: list[Sample]) -> None:
    """Stack ``samples`` and write the parts they hold of shard ``name`` (each atomically)."""
    for part in sample_parts(samples):
        array = np.stack([getattr(sample, part) for sample in samples])
        with atomic_path(part_path(shard_dir, name, part)) as tmp:
            np.save(tmp, array)


def shard_complete(shard_dir, name: str, count: int, parts=CORE_PARTS) -> bool:
    """Whether every one of ``parts`` of shard ``name`` exists, is readable and holds ``count``
    samples."""
    for part in parts:
        path = part_path(shard_dir, name, part)
        if not path.exists():
            return False
        try:
            if np.load(path, mmap_mode="r").shape[0] != count:
                return False
        except (ValueError, OSError):
            return False
    return True


def make_manifest(source, config: dict, pairs: list[dict], shards: list[dict],
                  parts=CORE_PARTS) -> dict:
    """The manifest of a finished shard folder, as it reads back from JSON.

    ``config``: the PrepareConfig as a dict; ``pairs``: ``{"index", "id", "category"}`` per
    source pair; ``shards``: ``{"name", "count"}`` per shard, in sample order; ``parts``: the
    parts every shard holds (fields of :class:`Sample`, the core ones included).
    """
    import cv2
    import skimage

    unknown = set(parts) - set(PARTS)
    if unknown or not set(CORE_PARTS) <= set(parts):
        raise ValueError(f"parts must hold {CORE_PARTS} and only fields of Sample, got {parts}")
    manifest = {
        "format": FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "source": str(source),
        "config": config,
        "input": "vessel map (fire_reg.imaging.vessels.vessel_map with config.preprocessing and "
                 "the polarity of the image's modality) as uint8, 255 = 1.0, 0 outside the "
                 "aperture",
        "target": "2x3 float32, fixed-patch normalised coords -> moving-patch normalised coords",
        "parts": [part for part in PARTS if part in parts],
        "modalities": list(MODALITIES),
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
    """Read and check a shard folder's manifest (version 2 or 3; a version 2 manifest is
    returned with the ``parts``, ``modalities`` and ``info_columns`` it implies).

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
        if manifest.get("format") != FORMAT or version not in READABLE_VERSIONS:
            raise InputError(path, f"shard manifest version {version}, this fire-reg reads "
                                   f"versions {', '.join(map(str, READABLE_VERSIONS))}; run "
                                   "`fire-reg prepare` again")
        if version == 2:
            manifest.update(parts=list(CORE_PARTS), modalities=["colour"],
                            info_columns=list(V2_INFO_COLUMNS))
        parts, columns = list(manifest["parts"]), list(manifest["info_columns"])
        list(manifest["modalities"])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError,
            TypeError) as error:
        raise InputError(path, f"malformed shard manifest ({type(error).__name__}: {error})") \
            from None
    if not set(CORE_PARTS) <= set(parts) <= set(PARTS) or not set(V2_INFO_COLUMNS) <= set(columns):
        raise InputError(path, f"malformed shard manifest (parts {parts}, info columns {columns})")
    for name in names:
        for part in parts:
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
        self.parts = tuple(self.manifest["parts"])
        self.info_columns = tuple(self.manifest["info_columns"])
        self.shards = [{part: _open(part_path(self.shard_dir, shard["name"], part))
                        for part in self.parts} for shard in self.manifest["shards"]]
        counts = [len(shard["target"]) for shard in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        self.info = (np.concatenate([shard["info"] for shard in self.shards]) if self.shards
                     else np.zeros((0, len(self.info_columns)), np.float32))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def column(self, name: str) -> np.ndarray:
        """One info column over all samples (N,); KeyError when the folder lacks it."""
        if name not in self.info_columns:
            raise KeyError(f"{self.shard_dir} has no info column {name!r}")
        return self.info[:, self.info_columns.index(name)]

    def modalities(self, which: str) -> np.ndarray:
        """Modality names (N,) of the ``which`` ("fixed" or "moving") patches; "colour" for
        every sample of a version 2 folder."""
        column = f"{which}_modality"
        if column not in self.info_columns:
            return np.full(len(self), "colour", dtype=object)
        return np.asarray(self.manifest["modalities"], dtype=object)[
            self.column(column).astype(int)]

    def take(self, indices, parts=("fixed", "moving", "target")) -> tuple[np.ndarray, ...]:
        """The ``parts`` of samples ``indices``, in that order: images (``fixed``, ``moving``,
        ``moving_same``) float32 (N, S, S, 1) in [0, 1]; ``target`` (N, 2, 3) float64;
        ``fov`` float32 (N, S, S, 2) of 0 / 1 (channel 0 the fixed patch's, 1 the same-modality
        moving patch's); ``info`` (N, K) float32. A folder without ``moving_same`` gives the
        moving patches for it, one without ``fov`` ones."""
        indices = np.asarray(indices)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        size, count = self.patch_size, len(indices)
        out = {part: _blank(part, count, size, len(self.info_columns)) for part in parts}
        stored = {part: part if part in self.parts else ("moving" if part == "moving_same"
                                                         else None) for part in parts}
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)
            local = indices[rows] - self.offsets[shard]
            order = np.argsort(local)  # sorted reads from the memory map
            for part in parts:
                if stored[part] is None:
                    continue
                data = self.shards[shard][stored[part]][local[order]]
                out[part][rows[order]] = _decoded(stored[part], data)
        return tuple(out[part] for part in parts)


def _blank(part: str, count: int, size: int, columns: int) -> np.ndarray:
    """The array :meth:`ShardStream.take` fills for ``part`` (``fov`` starts as ones)."""
    if part == "target":
        return np.empty((count, 2, 3), np.float64)
    if part == "info":
        return np.empty((count, columns), np.float32)
    if part == "fov":
        return np.ones((count, size, size, 2), np.float32)
    if part in ("fixed", "moving", "moving_same"):
        return np.empty((count, size, size, 1), np.float32)
    raise ValueError(f"unknown shard part {part!r}; parts are {', '.join(PARTS)}")


def _decoded(part: str, data: np.ndarray) -> np.ndarray:
    """Stored arrays of ``part`` as :meth:`ShardStream.take` returns them."""
    if part == "fov":
        return np.moveaxis(np.unpackbits(data, axis=-1), 1, -1).astype(np.float32)
    if part in ("target", "info"):
        return data
    return data[..., None] / np.float32(255.0)


def _open(path: Path) -> np.ndarray:
    """Memory-map one shard array; InputError when it is not a readable .npy file."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise InputError(path, f"not a readable shard ({error})") from None
