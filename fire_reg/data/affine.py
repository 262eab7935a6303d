"""Geometry "affine" of the embedded sets (the generator before the curved model).

Maps go output px -> source px (``S_k``) and fixed px -> moving px (``T``), as 2x3 matrices of
:mod:`fire_reg.geometry`; points are ``(x, y)``, (0, 0) the centre of the top-left pixel;
angles in degrees. ``S_k = T_k`` is affine: a camera zoom-in with a small rotation about a
point near the aperture centre, composed with half of the relative retina motion, and
``T = T_m^-1 o T_f`` exactly (:data:`MOTION`; S rotation <= 5 deg, scale 0.95-1.05, shift
1.5-5 % of the width; P rotation <= 10 deg, scale 0.9-1.1, shift 15-30 %; non-rigid field
2.5-5 px at 1411 px for A, :data:`NONRIGID_AFFINE`). The same seed gives the same images and
points as before the sphere model.
"""
from __future__ import annotations

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.data.sources import (CAMERA_ROTATION, MAX_TRIES, MIN_COVERAGE, Source, centroid,
                                   lookup, sample_source)
from fire_reg.io.errors import InputError

# Relative retina motion fixed -> moving: max |rotation| (deg), scale range, shift range
# (fraction of the frame width), allowed overlap range; camera zoom of both views.
MOTION = {
    "S": {"rotation": 5.0, "scale": (0.95, 1.05), "shift": (0.015, 0.05),
          "overlap": (0.78, 1.0), "zoom": (1.1, 1.3)},
    "P": {"rotation": 10.0, "scale": (0.9, 1.1), "shift": (0.15, 0.30),
          "overlap": (0.0, 0.72), "zoom": (1.25, 1.45)},
}
MOTION["A"] = MOTION["S"]
CAMERA_OFFSET = 0.02  # std of the view centre's offset from the aperture centre, x width
NONRIGID_AFFINE = (2.5, 5.0)  # px at a 1411 px wide frame, max of the A field


def sample_affine_views(source: Source, category: str, rng) -> dict:
    """Draw view transforms T_f, T_m (output px -> source px) meeting the category's limits.

    Relative motion (rotation a, scale s, shift t about the aperture centre c) is split in
    halves H_f, H_m with ``H_m^-1 o H_f = [p -> c + t + s R(a) (p - c)]``; both are composed
    with one camera view ``B``: ``T_k = B o H_k``, so ``M = T_m^-1 o T_f = H_m^-1 o H_f``.
    """
    limits = MOTION[category]
    height, width = source.aperture.shape
    centre = centroid(source.aperture)
    stride = max(1, width // 160)
    ys, xs = np.nonzero(source.aperture[::stride, ::stride])
    probe = np.stack([xs, ys], axis=1).astype(np.float64) * stride
    for _ in range(MAX_TRIES):
        angle = rng.uniform(-1.0, 1.0) * limits["rotation"]
        scale = rng.uniform(*limits["scale"])
        direction = rng.uniform(0.0, 2.0 * np.pi)
        shift = rng.uniform(*limits["shift"]) * width * np.array([np.cos(direction),
                                                                   np.sin(direction)])
        zoom = rng.uniform(*limits["zoom"])
        camera_angle = rng.uniform(-1.0, 1.0) * CAMERA_ROTATION
        offset = rng.normal(0.0, CAMERA_OFFSET * width, 2)
        half = np.sqrt(scale)
        half_shift = _rotation(-angle / 2) @ shift / (2.0 * half)
        camera = _similarity(centre, camera_angle, 1.0 / zoom, offset)
        fixed = geometry.compose(camera, _similarity(centre, angle / 2, half, half_shift))
        moving = geometry.compose(camera, _similarity(centre, -angle / 2, 1 / half, -half_shift))
        matrix = geometry.compose(geometry.invert(moving), fixed)
        overlap = float(lookup(source.aperture, geometry.apply(matrix, probe)).mean())
        coverage = min(float(lookup(source.inside, geometry.apply(t, probe)).mean())
                       for t in (fixed, moving))
        if limits["overlap"][0] < overlap < limits["overlap"][1] and coverage >= MIN_COVERAGE:
            return {"fixed": fixed, "moving": moving, "matrix": matrix,
                    "overlap": round(overlap, 4),
                    "motion": {"rotation_deg": angle, "scale": scale,
                               "shift_px": shift.tolist(), "centre_xy": centre.tolist()},
                    "camera": {"zoom": zoom, "rotation_deg": camera_angle,
                               "offset_px": offset.tolist()}}
    raise InputError(source.name, f"no {category} views within the limits after {MAX_TRIES} "
                                  "tries (camera aperture too small or odd?)")


def render_affine(source: Source, view, field=None) -> tuple[np.ndarray, np.ndarray]:
    """Sample the source through ``view`` (and ``moving(q) = view(q + field(q))``).

    Returns (BGR uint8 image, bool mask of pixels inside the aperture that show retina).
    """
    height, width = source.aperture.shape
    if field is not None:
        grid = np.indices((height, width), dtype=np.float32)[::-1].transpose(1, 2, 0)
        return sample_source(source, cv2.transform(grid + field, view))  # q -> T (q + d(q))
    image = geometry.resample(source.image, view, (width, height))
    inside = geometry.resample(source.inside, view, (width, height))
    valid = (inside > 0) & source.aperture
    return image * valid[..., None], valid


def _rotation(angle_deg) -> np.ndarray:
    rad = np.deg2rad(angle_deg)
    return np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])


def _similarity(centre, angle_deg, scale, shift) -> np.ndarray:
    """2x3 map ``p -> centre + shift + scale R(angle) (p - centre)``."""
    matrix = geometry.about_center(scale * _rotation(angle_deg), centre)
    matrix[:, 2] += shift
    return matrix
