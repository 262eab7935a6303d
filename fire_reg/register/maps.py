"""The vessel maps of a pair at one working width, images prepared once, and the small thread
pool of the fine stage.

:class:`VesselMaps` holds both maps, their fields of view and scales, warps the moving map
through a transform (cached), measures alignment, and keeps what depends on the fixed map alone
(:meth:`VesselMaps.fixed_derived`); every transform here goes **fixed px ->
moving px** in map pixels (:mod:`fire_reg.geometry`); similarity measures come from
:mod:`fire_reg.imaging.similarity`. :class:`ImageMap` is one image's map;
:class:`PreparedImage` is an image with its modality and maps made once
(:meth:`fire_reg.register.registrar.Registrar.prepare`), reused by every pair it is part of.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fire_reg.geometry import transforms
from fire_reg.io.images import Decoded, decode
from fire_reg.imaging import similarity as measures
from fire_reg.imaging import vessels

_WORKERS = min(4, os.cpu_count() or 1)
"""Threads for the per-tile OpenCV calls and the two vessel maps (OpenCV releases the GIL)."""
_CACHE_LOCK = threading.Lock()  # guards VesselMaps' warp caches across the pool's threads


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_WORKERS, thread_name_prefix="fire-reg")


# a forked child (multiprocessing on Linux) has none of the parent's threads: give it its own pool
os.register_at_fork(after_in_child=_pool.cache_clear)


def _read_only(value, inputs=()):
    """``value`` with its arrays (also inside tuples and lists) made read-only, but for the
    arrays ``inputs`` it holds as they are."""
    if isinstance(value, np.ndarray):
        if not any(value is array for array in inputs):
            value.flags.writeable = False
    elif isinstance(value, (tuple, list)):
        for item in value:
            _read_only(item, inputs)
    return value


def side_by_side(make, fixed_job: tuple, moving_job: tuple) -> list:
    """``[make(fixed_job), make(moving_job)]``, the two side by side on the thread pool; one
    after the other when a job's image (its first item) is a :class:`PreparedImage`, already
    decoded and mapped (one job with work at most)."""
    jobs = (fixed_job, moving_job)
    if any(isinstance(job[0], PreparedImage) for job in jobs):
        return list(map(make, jobs))
    return list(_pool().map(make, jobs))


@dataclass(frozen=True, eq=False)
class ImageMap:
    """One image's vessel map (float32 in [0, 1]), field of view (bool) and scale (sx, sy):
    map px per px of the image it was made from (:func:`fire_reg.imaging.vessels.vessel_map`).
    ``derived``: what the registration derives from this map alone as a fixed image
    (:meth:`VesselMaps.fixed_derived`), kept with the map."""

    map: np.ndarray
    fov: np.ndarray
    scale: tuple[float, float]
    derived: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, image, settings: vessels.VesselMapSettings, mask=None,
           polarity: str = "dark") -> "ImageMap":
        """The map of a BGR (or gray) image made with ``settings`` (``work_width`` px wide)."""
        return cls(*vessels.vessel_map(image, mask, settings=settings, polarity=polarity))


@dataclass(eq=False)
class PreparedImage:
    """An image made ready once for many registrations (a baseline photograph and its
    follow-ups): its pixels, field-of-view mask, modality and vessel maps.

    ``image``: the BGR (or gray) pixels registered (for an image read from a file: decoded at
    the registrar's width); ``mask``: its field of view (bool, or None: found from the image);
    ``modality``: given to :meth:`~fire_reg.register.registrar.Registrar.prepare`
    (``modality_given``) or detected; ``size``: (W, H) px of the original image (the file's);
    ``decode_scale``: (sx, sy) px of ``image`` per original px ((1, 1) unless decoded
    smaller); ``path``: the file it was read from, or None. Its maps are made on first use
    for each (settings, polarity) and kept (:meth:`image_map`), each with what the pairs
    derive from it as their fixed map (:attr:`ImageMap.derived`: the network's letterboxed
    input, the ECC pyramid, the fine stage's tile grid); :attr:`map`, :attr:`fov` and
    :attr:`scale` are those of the registrar that prepared it. :meth:`decoded`: the file
    decoded at full size for the pictures of each pair, read once.
    """

    image: np.ndarray
    mask: np.ndarray | None
    modality: str
    modality_given: bool
    settings: vessels.VesselMapSettings
    polarity: str
    size: tuple[int, int]
    decode_scale: tuple[float, float] = (1.0, 1.0)
    path: str | None = None
    _maps: dict = field(default_factory=dict, repr=False)
    _decoded: Decoded | None = field(default=None, repr=False)

    def image_map(self, settings: vessels.VesselMapSettings | None = None,
                  polarity: str | None = None) -> ImageMap:
        """The image's map made with ``settings`` and ``polarity`` (default: the prepared
        ones), made once and kept."""
        key = (settings or self.settings, polarity or self.polarity)
        if key not in self._maps:
            self._maps[key] = ImageMap.of(self.image, key[0], self.mask, key[1])
        return self._maps[key]

    def decoded(self) -> Decoded:
        """The file at ``path`` decoded at full size (:func:`fire_reg.io.images.decode`, as
        :func:`fire_reg.register.result.write_files` reads an image), once and kept, its
        pixels read-only. ValueError for an image prepared from pixels (no file)."""
        if self.path is None:
            raise ValueError("this image was prepared from pixels, not read from a file")
        if self._decoded is None:
            decoded = decode(self.path)
            _read_only(decoded.pixels)
            self._decoded = decoded
        return self._decoded

    @property
    def map(self) -> np.ndarray:
        return self.image_map().map

    @property
    def fov(self) -> np.ndarray:
        return self.image_map().fov

    @property
    def scale(self) -> tuple[float, float]:
        return self.image_map().scale


@dataclass
class VesselMaps:
    """Vessel maps (float32 in [0, 1]) and fields of view (bool) of a pair at one working
    width, with the per-axis scales (map px per original px) of each image. ``fixed_cache``:
    what :meth:`fixed_derived` keeps (the fixed :class:`ImageMap`'s ``derived``: shared by
    every pair of a prepared fixed image; a fresh one otherwise)."""

    fixed: np.ndarray
    fixed_fov: np.ndarray
    moving: np.ndarray
    moving_fov: np.ndarray
    fixed_scale: tuple[float, float]
    moving_scale: tuple[float, float]
    width: int
    fixed_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, fixed, moving, settings: vessels.VesselMapSettings, fixed_mask=None,
           moving_mask=None, polarities=("dark", "dark")) -> "VesselMaps":
        """Vessel maps of two BGR (or gray) images made with ``settings`` (its
        ``work_width`` px wide), side by side on the thread pool; ``polarities``: (fixed,
        moving) "dark" or "bright" vessels (:func:`fire_reg.imaging.vessels.vessel_map`), so
        that both maps show vessels alike. Either image may be a :class:`PreparedImage`
        (its mask is its own): its map is made once and reused."""

        def image_map(job) -> ImageMap:
            image, mask, polarity = job
            if isinstance(image, PreparedImage):
                return image.image_map(settings, polarity)
            return ImageMap.of(image, settings, mask, polarity)

        fixed_map, moving_map = side_by_side(image_map, (fixed, fixed_mask, polarities[0]),
                                             (moving, moving_mask, polarities[1]))
        return cls.of_maps(fixed_map, moving_map, settings.work_width)

    @classmethod
    def of_maps(cls, fixed: ImageMap, moving: ImageMap, width: int) -> "VesselMaps":
        """The pair of two images' maps made at ``width`` px."""
        return cls(fixed.map, fixed.fov, moving.map, moving.fov, fixed.scale, moving.scale,
                   width, fixed.derived)

    def fixed_derived(self, key: tuple, make):
        """``make()``, a value computed from the fixed map and field of view alone (and
        ``key``, which names it and every parameter it depends on), made once per fixed
        image map and kept in :attr:`fixed_cache`: a prepared fixed image computes it for its
        first pair only, and every pair gets the very same value. The arrays it makes (also
        inside tuples and lists) are made read-only."""
        value = self.fixed_cache.get(key)
        if value is None:
            value = self.fixed_cache.setdefault(
                key, _read_only(make(), (self.fixed, self.fixed_fov)))
        return value

    @property
    def arrays(self):
        return self.fixed, self.fixed_fov, self.moving, self.moving_fov

    @property
    def fixed_size(self) -> tuple[int, int]:
        return self.fixed.shape[1], self.fixed.shape[0]

    def to_maps(self, transform: transforms.Transform) -> transforms.Transform:
        """An original-pixel transform expressed between these maps."""
        return transform.rescaled(self.fixed_scale, self.moving_scale)

    def to_full(self, transform: transforms.Transform) -> transforms.Transform:
        """A transform between these maps expressed in original pixels."""
        return transform.rescaled(1 / np.asarray(self.fixed_scale), 1 / np.asarray(self.moving_scale))

    @functools.cached_property
    def _moving_fov_values(self) -> np.ndarray:
        """The moving field of view as float32 0 / 1, as it is warped."""
        return self.moving_fov.astype(np.float32)

    def warped(self, transform: transforms.Transform) -> tuple[np.ndarray, np.ndarray]:
        """(moving map in the fixed frame, its field of view there) through ``transform``
        (map px); the last few results are cached by transform object."""
        with _CACHE_LOCK:
            cache = self.__dict__.setdefault("_warp_cache", {})
            hit = cache.get(id(transform))
        if hit is not None and hit[0] is transform:
            return hit[1]
        warped, warped_fov = transform.warp_images([self.moving, self._moving_fov_values],
                                                   self.fixed_size)
        result = (warped, warped_fov > 0.5)
        with _CACHE_LOCK:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[id(transform)] = (transform, result)
        return result

    def similarity(self, transform: transforms.Transform, measure="ncc") -> float:
        """``measure`` (a name or function of :mod:`fire_reg.imaging.similarity`; NCC by
        default) of the fixed map and the moving map warped through ``transform`` (map px),
        inside their common field of view; -1 when they hardly overlap (under 64 px or 5 % of
        the fixed field of view)."""
        score = measures.measure(measure)
        warped, warped_fov = self.warped(transform)
        common = self.fixed_fov & warped_fov
        if common.sum() < max(64, 0.05 * self.fixed_fov.sum()):
            return -1.0
        return float(score(self.fixed, warped, common))

    def similarities(self, candidates: list[transforms.Transform], measure="ncc") -> list[float]:
        """:meth:`similarity` of each transform, computed side by side on the thread pool."""
        return list(_pool().map(lambda candidate: self.similarity(candidate, measure),
                                candidates))

    def overlap(self, transform: transforms.Transform) -> float:
        """Share of the fixed field of view that the moving field of view covers."""
        _, warped_fov = self.warped(transform)
        return float((self.fixed_fov & warped_fov).sum() / max(1, self.fixed_fov.sum()))

    def common_points(self, transform: transforms.Transform, step: int = 16) -> np.ndarray:
        """(N, 2) fixed-map points on a ``step`` px grid inside the common field of view."""
        points = self.fixed_derived(("fov grid", step), lambda: self._fixed_grid(step))
        mapped = np.rint(transform.fixed_to_moving(points)).astype(int)
        height, width = self.moving_fov.shape
        inside = ((mapped[:, 0] >= 0) & (mapped[:, 0] < width) & (mapped[:, 1] >= 0)
                  & (mapped[:, 1] < height))
        inside[inside] = self.moving_fov[mapped[inside, 1], mapped[inside, 0]]
        return points[inside]

    def _fixed_grid(self, step: int) -> np.ndarray:
        """(N, 2) fixed-map points on a ``step`` px grid inside the fixed field of view."""
        ys, xs = np.mgrid[0:self.fixed.shape[0]:step, 0:self.fixed.shape[1]:step]
        points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        return points[self.fixed_fov[ys.ravel(), xs.ravel()]]


# --------------------------------------------------------------------------- ECC
