"""Category A's non-rigid step: a smooth random displacement of the moving view's retina.

Units: px of the output frame. A field ``d`` is an (H, W, 2) float32 array of ``(dx, dy)``
indexed ``[y, x]``; points are ``(x, y)``, (0, 0) the centre of the top-left pixel. The
moving view is ``moving(q) = view_m(q + d(q))``; a retina point at ``u`` in ``view_m`` lies at
the q solving ``q + d(q) = u`` (fixed-point iteration, :func:`undeform`), so the exact map is
``p -> that q`` with ``u = T(p)`` (:func:`fire_reg.data.ground_truth.exact_map`). A pair's
record keeps the field's 4x4 grid and maximum length, from which :func:`field_from_grid`
rebuilds it exactly.
"""
from __future__ import annotations

import cv2
import numpy as np


def displacement_field(rng, shape, amplitude) -> tuple[np.ndarray, dict]:
    """Smooth random displacement field (H, W, 2) float32 in px, max length ``amplitude``.

    A 4x4 grid of random vectors, upsampled bicubically to 1/8 of the frame and then
    bilinearly to the frame: low-frequency, gradient ~ 1%.
    """
    coarse = rng.standard_normal((4, 4, 2))
    return field_from_grid(coarse, shape, amplitude), {
        "model": "moving(q) = view(q + d(q)); d: 4x4 grid, bicubic to 1/8 size, "
                 "bilinear to full size, scaled to max_displacement_px",
        "max_displacement_px": float(amplitude), "grid": coarse.tolist()}


def field_from_grid(coarse, shape, amplitude) -> np.ndarray:
    """The (H, W, 2) float32 field of :func:`displacement_field` from its 4x4 grid."""
    height, width = shape
    field = cv2.resize(np.asarray(coarse).astype(np.float32),
                       (max(4, width // 8), max(4, height // 8)), interpolation=cv2.INTER_CUBIC)
    field *= amplitude / max(float(np.hypot(field[..., 0], field[..., 1]).max()), 1e-9)
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)


POINTS_PER_ROW = 4096
"""Points in each row of the maps :func:`field_at` gives ``cv2.remap`` (which refuses a map
side of 32767 or more: the nodes of a frame of FIRE's size outnumber that)."""


def field_at(field, points) -> np.ndarray:
    """``field`` (H, W, 2) at (N, 2) points (x, y) in px: bilinear, edges replicated; (N, 2)
    float32."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    count = len(points)
    width = min(max(count, 1), POINTS_PER_ROW)
    rows = -(-count // width) or 1
    maps = np.zeros((rows * width, 2), np.float32)
    maps[:count] = points
    values = cv2.remap(field, maps.reshape(rows, width, 2), None, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return values.reshape(-1, 2)[:count]


def undeform(points, field, iterations: int = 12) -> np.ndarray:
    """Positions q with ``q + field(q) = u`` for (N, 2) points u (fixed-point iteration)."""
    points = np.asarray(points, dtype=np.float64)
    q = points.copy()
    for _ in range(iterations):
        q = points - field_at(field, q)
    return q
