"""Renderers: one colour fundus photograph drawn as another modality of the same eye.

A multimodal pair with exact ground truth is a curved pair of the embedded generator whose
moving (or fixed) photograph is rendered here as red-free, fluorescein angiogram (FA) or
infrared (IR). Every renderer works pixel by pixel and with isotropic filters only: no pixel
moves, so the geometry and the ground truth of the pair stay exact.

* ``red-free``: the green channel, contrast-equalised (CLAHE), grey; vessels dark, high contrast.
* ``fa`` (late-phase fluorescein angiogram, as ``../shared/data/multimodal/angiogram.jpg``):
  grey, vessels **bright** on a dim choroidal background, a bright (stained) disc, a dark
  fovea, hyperfluorescent dots (microaneurysms), soft leakage blobs, in half of the renderings
  laser scars (dark rings with a bright centre, as in the real angiogram), low contrast, noise.
* ``ir`` (infrared / SLO reflectance): grey, smooth, low-contrast dark vessels over the red
  channel's choroidal pattern and band-pass texture.

Lengths are drawn for an image :data:`REFERENCE_WIDTH` px wide and scaled with the width.
Outputs are BGR uint8 with three equal channels (as the angiograms cameras export), black
outside the field of view of the source.
"""
from __future__ import annotations

import cv2
import numpy as np

from fire_reg.imaging.vessels import VesselMapSettings, fov_mask, vessel_map

RENDERED = ("red-free", "fa", "ir")
REFERENCE_WIDTH = 1411.0


def render(image: np.ndarray, modality: str, rng: np.random.Generator,
           mask: np.ndarray | None = None) -> np.ndarray:
    """``image`` (BGR uint8 colour photograph) drawn as ``modality`` (one of
    :data:`RENDERED`, or "colour": returned unchanged); ``mask``: its field of view (found
    with :func:`fov_mask` when None). ValueError for another modality."""
    if modality == "colour":
        return image
    if modality not in RENDERED:
        raise ValueError(f"cannot render {modality!r}; choose from colour, {', '.join(RENDERED)}")
    inside = fov_mask(image) if mask is None else np.asarray(mask, bool)
    unit = image.shape[1] / REFERENCE_WIDTH
    if modality == "red-free":
        grey = _red_free(image)
    else:
        settings = VesselMapSettings(work_width=image.shape[1], tophat_fraction=1 / 15)
        vessels = vessel_map(image, inside, settings=settings)[0]
        grey = (_angiogram if modality == "fa" else _infrared)(image, vessels, inside, unit, rng)
    grey = np.where(inside, grey, 0).astype(np.uint8)
    return cv2.merge([grey, grey, grey])


def _red_free(image: np.ndarray) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image[..., 1])


def _blurred(channel: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(channel.astype(np.float32), (0, 0), max(sigma, 0.5))


def _stretch(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``values`` scaled so that their 1st..99th percentiles inside the field span [0, 1]."""
    low, high = np.percentile(values[inside], [1, 99])
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def _blob(shape, centre, sigma: float) -> np.ndarray:
    """A unit Gaussian bump of ``sigma`` px at ``centre`` (x, y)."""
    ys, xs = np.ogrid[:shape[0], :shape[1]]
    return np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma ** 2))


def _landmarks(image, inside, unit) -> tuple[np.ndarray, np.ndarray]:
    """(disc centre, fovea centre) (x, y) px: the brightest and the darkest spot of the
    smoothed photograph inside the field (the fovea searched away from the disc)."""
    brightness = _blurred(image[..., 1].astype(np.float32) + image[..., 2], 25 * unit)
    shrunk = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8),
                       iterations=max(1, int(60 * unit))).astype(bool)
    usable = shrunk if shrunk.any() else inside
    disc = np.unravel_index(np.argmax(np.where(usable, brightness, -np.inf)), brightness.shape)
    ys, xs = np.indices(brightness.shape)
    far = np.hypot(xs - disc[1], ys - disc[0]) > 250 * unit
    fovea_field = usable & far if (usable & far).any() else usable
    fovea = np.unravel_index(np.argmin(np.where(fovea_field, brightness, np.inf)), brightness.shape)
    return np.array(disc[::-1], float), np.array(fovea[::-1], float)


def _angiogram(image, vessels, inside, unit, rng) -> np.ndarray:
    shape = vessels.shape
    background = _stretch(_blurred(image[..., 1], 40 * unit), inside)
    disc, fovea = _landmarks(image, inside, unit)
    fa = 0.30 + 0.15 * background
    fa += rng.uniform(0.35, 0.55) * np.power(_blurred(vessels, 0.8 * unit), 1.5)
    fa += rng.uniform(0.15, 0.30) * _blob(shape, disc, 45 * unit)
    fa -= rng.uniform(0.08, 0.15) * _blob(shape, fovea, 60 * unit)
    dots = np.zeros(shape, np.float32)
    candidates = np.argwhere(inside)
    for y, x in candidates[rng.integers(0, len(candidates), rng.integers(30, 120))]:
        cv2.circle(dots, (int(x), int(y)), max(1, int(round(rng.uniform(1.5, 4.0) * unit))),
                   float(rng.uniform(0.3, 0.8)), -1)
    fa += _blurred(dots, 1.2 * unit)
    for y, x in candidates[rng.integers(0, len(candidates), rng.integers(0, 4))]:
        fa += rng.uniform(0.1, 0.25) * _blob(shape, (x, y), rng.uniform(20, 60) * unit)
    if rng.random() < 0.5:  # laser scars: a dark (hypofluorescent) ring around a bright centre
        scars = np.zeros(shape, np.float32)
        for y, x in candidates[rng.integers(0, len(candidates), rng.integers(10, 60))]:
            radius = max(2, int(round(rng.uniform(6, 12) * unit)))
            cv2.circle(scars, (int(x), int(y)), radius, -0.25, max(1, int(3 * unit)))
            cv2.circle(scars, (int(x), int(y)), max(1, radius // 2), 0.2, -1)
        fa += _blurred(scars, 1.5 * unit)
    fa = _blurred(fa, 1.0 * unit) + rng.normal(0.0, 0.012, shape).astype(np.float32)
    return np.clip(255 * _stretch(fa, inside) * rng.uniform(0.55, 0.8), 0, 255)


def _infrared(image, vessels, inside, unit, rng) -> np.ndarray:
    shape = vessels.shape
    choroid = _stretch(_blurred(image[..., 2], 6 * unit), inside)
    texture = _blurred(rng.normal(0.0, 1.0, shape).astype(np.float32), 12 * unit)
    texture /= max(float(texture[inside].std()), 1e-6)
    ir = 0.35 + 0.35 * choroid + rng.uniform(0.01, 0.02) * texture
    ir -= rng.uniform(0.2, 0.35) * _blurred(vessels, 1.5 * unit)
    ir = _blurred(ir, 3.5 * unit) + rng.normal(0.0, 0.004, shape).astype(np.float32)
    return np.clip(255 * _stretch(ir, inside) * rng.uniform(0.6, 0.85), 0, 255)
