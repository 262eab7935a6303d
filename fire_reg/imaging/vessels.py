"""Vessel maps: the preprocessing every stage shares (pixel conventions: fire_reg.geometry).

* :func:`fov_mask` finds the camera aperture (the bright disc of a fundus photograph).
* :func:`reduce` resizes an image to a working width with its aperture there, once for every
  step that starts from it (the vessel map, :func:`fire_reg.imaging.modality.detect`).
* :func:`vessel_map` is the network's input: the green channel, contrast-equalised (CLAHE),
  with the dark vessels brought out by a black top-hat, scaled to [0, 1] and zero outside
  the aperture. It is computed at a working width (default 512 px) so that the same
  structures are seen whatever the original resolution; :class:`VesselMapSettings` holds its
  settings (the one definition that shards, models and their cards record).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from fire_reg.config import Config
from fire_reg.io.images import axis_scales

@dataclass(frozen=True)
class VesselMapSettings(Config):
    """How :func:`vessel_map` turns a photograph into the network's input.

    ``work_width``: width in px the image is resized to (aspect kept) before anything else.
    ``clahe_clip``, ``clahe_tiles``: ``cv2.createCLAHE(clipLimit, (tiles, tiles))``.
    ``tophat_fraction``: diameter of the black top-hat's elliptic disc as a fraction of
    ``work_width`` (rounded, made odd, at least 3 px). ``percentile``: the percentile of the
    top-hat response inside the aperture that is scaled to 1.0.
    """

    work_width: int = 512
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    tophat_fraction: float = 1 / 40
    percentile: float = 99.0

    def __post_init__(self):
        self._integer("work_width", low=16)
        self._number("clahe_clip", above=0)
        self._integer("clahe_tiles", low=1)
        self._number("tophat_fraction", above=0, high=1)
        self._number("percentile", above=0, high=100)


WORK_WIDTH = VesselMapSettings().work_width


def green(image: np.ndarray) -> np.ndarray:
    """The green channel of a BGR image (the vessels' best contrast), or a gray image as is."""
    return image if image.ndim == 2 else image[..., 1]


def fov_mask(image: np.ndarray, threshold: int = 20) -> np.ndarray:
    """Boolean field-of-view mask: the largest bright region of max(B, G, R).

    Fundus photographs are black outside the circular aperture; holes inside it are filled.
    """
    channel = image if image.ndim == 2 else cv2.max(cv2.max(image[..., 0], image[..., 1]),
                                                    image[..., 2])
    channel = cv2.medianBlur(np.ascontiguousarray(channel), 5)
    binary = (channel > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(channel.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def resize_to_width(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Resize (area interpolation) so the image is ``width`` px wide; returns (image, scale)."""
    scale = width / image.shape[1]
    if abs(scale - 1.0) < 1e-9:
        return image, 1.0
    height = max(1, int(round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation), scale


@dataclass(frozen=True, eq=False)
class Reduced:
    """An image resized to a working width (:func:`resize_to_width`, aspect kept; BGR or grey as
    given), its field of view there (bool) and ``scale`` (sx, sy): reduced px per px of the
    image it was made from."""

    pixels: np.ndarray
    fov: np.ndarray
    scale: tuple[float, float]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def reduce(image, width: int, mask: np.ndarray | None = None) -> Reduced:
    """``image`` (BGR or grey) resized to ``width`` px, with its field of view: ``mask`` (bool,
    the image's size) resized alike, or found on the reduced image (:func:`fov_mask`: the
    same disc, far cheaper than at full size). A :class:`Reduced` image ``width`` px wide
    (``mask`` None: it has its own) is returned as it is; ValueError for one of another
    width."""
    if isinstance(image, Reduced):
        if mask is not None or image.width != width:
            raise ValueError(f"an image reduced to {image.width} px (with its own mask) cannot "
                             f"serve for a {width} px map or modality")
        return image
    small, _ = resize_to_width(image, width)
    if mask is None:
        fov = fov_mask(small)
    else:
        fov = cv2.resize(np.asarray(mask).astype(np.uint8), (small.shape[1], small.shape[0]),
                         interpolation=cv2.INTER_NEAREST).astype(bool)
    return Reduced(small, fov, axis_scales(image.shape, small.shape))


POLARITIES = ("dark", "bright")


def vessel_map(image: np.ndarray, mask: np.ndarray | None = None, work_width: int | None = None,
               settings: VesselMapSettings = VesselMapSettings(), polarity: str = "dark"
               ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Vessel-enhanced green channel made with ``settings``, ``work_width`` px wide when given
    (it overrides ``settings.work_width``, e.g. for a finer map).

    ``polarity``: "dark" for vessels darker than the background (colour, red-free, infrared:
    a black top-hat), "bright" for vessels brighter than it (fluorescein / ICG angiograms: a
    white top-hat), so that every modality gives the same picture of the same vessels.

    ``image`` may also be a :class:`Reduced` one at the working width (``mask`` None): the map
    is then made from it.

    Returns (map float32 in [0, 1], mask bool, (sx, sy)) where (sx, sy) = work px / input px
    per axis (use ``geometry.rescale`` with it to move matrices between the two grids).
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if work_width is not None:
        settings = dataclasses.replace(settings, work_width=work_width)
    work_width = settings.work_width
    image = reduce(image, work_width, mask)
    small, small_mask = green(image.pixels), image.fov
    inner = cv2.erode(small_mask.astype(np.uint8),
                      cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))).astype(bool)
    filled = small.astype(np.uint8).copy()
    if inner.any():
        filled[~inner] = int(np.median(small[inner]))
    tiles = (settings.clahe_tiles, settings.clahe_tiles)
    equalised = cv2.createCLAHE(clipLimit=settings.clahe_clip, tileGridSize=tiles).apply(filled)
    diameter = max(3, int(round(work_width * settings.tophat_fraction)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
    operation = cv2.MORPH_BLACKHAT if polarity == "dark" else cv2.MORPH_TOPHAT
    vessels = cv2.morphologyEx(equalised, operation, kernel).astype(np.float32)
    vessels[~inner] = 0.0
    top = np.percentile(vessels[inner], settings.percentile) if inner.any() else 0.0
    vessels = np.clip(vessels / max(top, 1e-6), 0.0, 1.0)
    return vessels.astype(np.float32), small_mask, image.scale
