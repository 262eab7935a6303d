"""Which modality a fundus image is, and which way its vessels point (bright or dark).

Modalities: ``colour`` (RGB photograph), ``red-free`` (green-filtered, grey), ``fa``
(fluorescein angiogram: vessels bright on dark), ``ir`` (infrared / SLO reflectance: grey,
low-contrast dark vessels), ``icg`` (indocyanine green angiogram: vessels bright) and ``af``
(autofluorescence: vessels dark). :func:`detect` tells colour from grey by the spread of the
channels inside the field of view, then reads the vessels' polarity from the Hessian of the
grey image: thin line-shaped structures (one large curvature across, none along) that are
darker than their surroundings count for ``red-free`` / ``ir``, brighter ones for ``fa``.
Round spots (microaneurysms, dots, laser scars) curve both ways and do not count, so a grey
angiogram full of dots is still read by its vessels. ``ir`` is told from ``red-free`` by its
smoother vessel edges or a frame without a camera aperture (a scanning laser
ophthalmoscope). ``icg`` and ``af`` are never detected, only given (``--modality``).

Images are BGR (or grey) uint8 arrays of any size; the measures are taken on a copy
:data:`WORK_WIDTH` px wide.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fire_reg.imaging.vessels import reduce

MODALITIES = ("colour", "red-free", "fa", "ir", "icg", "af")
BRIGHT_VESSELS = frozenset({"fa", "icg"})
"""Modalities whose vessels are brighter than the background."""
WORK_WIDTH = 512
MIN_CHROMA = 6.0
"""Mean channel spread (uint8 levels) inside the field above which an image is colour."""
MAX_IR_SHARPNESS = 0.42
"""Ratio of fine (1 px) to vessel-scale dark-line strength below which a grey image with dark
vessels is ``ir`` (infrared light scatters: smooth vessel edges)."""
MIN_APERTURE_SHARE = 0.97
"""A field of view covering at least this share of the frame has no camera aperture: a
scanning laser ophthalmoscope, so a grey image with dark vessels is ``ir``."""
VESSEL_SIGMA = 2.5
"""Scale (px at :data:`WORK_WIDTH`) of the Hessian that finds vessel-shaped lines."""
LINE_PERCENTILE = 99.0
MARGIN = 12
"""Pixels (at :data:`WORK_WIDTH`) next to the image border and the aperture that are not
measured: a field of view cut by the image border makes a bright line there."""


@dataclass(frozen=True)
class ModalityEvidence:
    """What :func:`detect` measured: ``chroma`` (mean channel spread, uint8 levels),
    ``bright_lines`` / ``dark_lines`` (line strength per unit of brightness of the
    strongest vessel-shaped structures brighter / darker than their surroundings),
    ``sharpness`` (fine over vessel-scale dark-line strength), ``aperture_share`` (share of
    the frame inside the field of view) and the verdict. The three line measures are NaN for
    a colour image (told by its chroma alone: they are not measured)."""

    modality: str
    chroma: float
    bright_lines: float
    dark_lines: float
    sharpness: float
    aperture_share: float


def polarity(modality: str) -> str:
    """"bright" when the modality's vessels are brighter than the background, else "dark"."""
    check(modality)
    return "bright" if modality in BRIGHT_VESSELS else "dark"


def check(modality: str) -> str:
    """``modality`` when it is one of :data:`MODALITIES`, else ValueError naming them."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    return modality


def detect(image, mask: np.ndarray | None = None) -> ModalityEvidence:
    """The modality of a fundus image (BGR or grey uint8, or a
    :class:`~fire_reg.imaging.vessels.Reduced` one :data:`WORK_WIDTH` px wide, ``mask`` None)
    with the measures behind it."""
    image = reduce(image, WORK_WIDTH, mask)
    small, inside = image.pixels, image.fov
    aperture_share = float(inside.mean())
    inside = cv2.erode(inside.astype(np.uint8), np.ones((MARGIN + 3, MARGIN + 3), np.uint8)
                       ).astype(bool)
    inside[:MARGIN] = inside[-MARGIN:] = False
    inside[:, :MARGIN] = inside[:, -MARGIN:] = False
    if not inside.any():
        inside = np.ones(small.shape[:2], bool)
    # measured on every second pixel each way (those of the grid ``sample`` inside the
    # field, ``measured``): the same figures, four times fewer pixels
    sample, measured = np.s_[::2, ::2], inside[::2, ::2]
    if not measured.any():
        sample, measured = np.s_[:, :], inside
    chroma = 0.0
    if small.ndim == 3:
        channels = small[sample][measured].astype(np.float32)
        chroma = float(np.mean(np.abs(channels - channels.mean(axis=1, keepdims=True))))
    if chroma >= MIN_CHROMA:  # colour: the line measures, for grey images, are not needed
        return ModalityEvidence("colour", chroma, np.nan, np.nan, np.nan, aperture_share)
    grey = (small[..., 1] if small.ndim == 3 else small).astype(np.float32)
    brightness = max(float(np.median(grey[sample][measured])), 1.0)
    bright, dark = _line_strengths(grey, (sample, measured), brightness, VESSEL_SIGMA)
    fine_dark = _line_strengths(grey, (sample, measured), brightness, 1.0, bright=False)[1]
    sharpness = fine_dark / max(dark, 1e-12)
    if bright > dark:
        modality = "fa"
    elif aperture_share >= MIN_APERTURE_SHARE or sharpness < MAX_IR_SHARPNESS:
        modality = "ir"
    else:
        modality = "red-free"
    return ModalityEvidence(modality, chroma, bright, dark, sharpness, aperture_share)


def _line_strengths(grey: np.ndarray, pixels, brightness: float, sigma: float,
                    bright: bool = True) -> tuple[float | None, float]:
    """Strength of the strongest bright and of the strongest dark line-shaped structures
    of the float32 ``grey`` image at ``pixels`` = (a slice of the image, the bool mask of
    the pixels measured in it): their :data:`LINE_PERCENTILE` th percentile, per unit of the
    field's median ``brightness`` (so that dim angiograms and bright photographs compare).
    ``bright``: False to skip the bright one (None).

    With Hessian eigenvalues l1 >= l2 at scale ``sigma`` px, a dark line has l1 > 0 and
    |l2| small, a bright line l2 < 0 and |l1| small; a pixel's line strength is its large
    eigenvalue's magnitude minus the small one's (zero for blobs, which curve both ways).
    """
    grid, measured = pixels
    smooth = cv2.GaussianBlur(grey, (0, 0), sigma)
    dxx, dyy, dxy = (cv2.Sobel(smooth, cv2.CV_32F, dx, dy, ksize=3)[grid][measured]
                     for dx, dy in ((2, 0), (0, 2), (1, 1)))
    half_trace, root = (dxx + dyy) / 2, np.sqrt(((dxx - dyy) / 2) ** 2 + dxy ** 2)
    large, small = half_trace + root, half_trace - root
    scale = sigma ** 2 / brightness  # scale-normalised (sigma^2 x second derivative)
    dark = float(np.percentile(np.clip(large - np.abs(small), 0, None), LINE_PERCENTILE) * scale)
    if not bright:
        return None, dark
    lines = np.clip(-small - np.abs(large), 0, None)
    return float(np.percentile(lines, LINE_PERCENTILE) * scale), dark
