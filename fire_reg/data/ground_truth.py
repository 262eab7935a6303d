"""Exact ground truth of an embedded pair, from its record in ``embedded.json``: the map
itself, its dense samples, and the least-squares quadratic over them.

Every map goes **fixed px -> moving px**; points are (N, 2) ``(x, y)``, x right, y down,
(0, 0) the centre of the top-left pixel, float64. Geometry "sphere" evaluates the model of
:mod:`fire_reg.data.sphere`, "affine" the exact 2x3 matrix (:mod:`fire_reg.data.affine`);
category A then applies the non-rigid step (:mod:`fire_reg.data.nonrigid`).

Dense maps (``Dense/<ID>_fixed_to_moving.npy``): float32
``(ceil((H - 1) / 8) + 1, ceil((W - 1) / 8) + 1, 2)``; entry ``[j, i]`` is the exact moving
(x, y) px of the fixed pixel ``(8 i, 8 j)``, nodes from 0 to the first multiple of 8 at or
beyond the last pixel (:data:`DENSE_STEP`); bilinear interpolation between nodes
(:func:`interpolate`) is within ~0.01 px of the exact map, both geometries.

Quadratic: 12 parameters, ``x_m = a . q``, ``y_m = b . q`` with ``q = [1, x, y, x^2, xy, y^2]``
(:func:`fire_reg.geometry.transforms.quadratic_terms`), in the ``transform.json`` schema of
docs/conventions.md.
"""
from __future__ import annotations

import numpy as np

from fire_reg import geometry
from fire_reg.data.nonrigid import field_from_grid, undeform
from fire_reg.data.sphere import sphere_map
from fire_reg.geometry.transforms import quadratic_terms

DENSE_STEP = 8  # px between the nodes of the dense ground-truth maps


def exact_map(record: dict, points) -> np.ndarray:
    """Exact ground truth of a pair: (N, 2) fixed px -> (N, 2) moving px (float64).

    ``record`` is one entry of ``embedded.json["pairs"]``: geometry "sphere" evaluates the
    model of :mod:`fire_reg.data.sphere`, "affine" (and records written before the sphere model,
    which have no "geometry") the exact matrix; category A then applies the non-rigid step
    (the q with ``q + d(q) = u``). The control points of a sphere pair are this map of its
    fixed points, to the 2 decimals written.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if record.get("geometry", "affine") == "sphere":
        mapped = sphere_map(record["model"], points)
    else:
        mapped = geometry.apply(record["matrix"], points)
    nonrigid = record.get("nonrigid")
    if nonrigid:
        width, height = record["size"]
        field = field_from_grid(np.asarray(nonrigid["grid"]), (height, width),
                                nonrigid["max_displacement_px"])
        mapped = undeform(mapped, field)
    return mapped


def dense_map(record: dict, step: int = DENSE_STEP) -> np.ndarray:
    """float32 ``(ceil((H - 1) / step) + 1, ceil((W - 1) / step) + 1, 2)``: ``[j, i]`` =
    :func:`exact_map` of the fixed pixel ``(step i, step j)``; the last nodes lie on or just
    beyond the image's last pixels (what ``Dense/<ID>_fixed_to_moving.npy`` holds)."""
    width, height = record["size"]
    nodes = dense_nodes(width, height, step)
    return exact_map(record, nodes.reshape(-1, 2)).reshape(nodes.shape).astype(np.float32)


def interpolate(dense, points, step: int = DENSE_STEP) -> np.ndarray:
    """Bilinear interpolation of a dense map (nodes every ``step`` px from 0, as
    :func:`dense_map`) at (N, 2) fixed px; linear extrapolation beyond the outer nodes."""
    grid = np.asarray(points, dtype=np.float64).reshape(-1, 2) / step
    corner = np.floor(grid).astype(int)
    corner[:, 0] = np.clip(corner[:, 0], 0, dense.shape[1] - 2)
    corner[:, 1] = np.clip(corner[:, 1], 0, dense.shape[0] - 2)
    tx, ty = (grid - corner).T[:, :, None]
    values = np.asarray(dense, dtype=np.float64)
    i, j = corner[:, 0], corner[:, 1]
    top = values[j, i] * (1 - tx) + values[j, i + 1] * tx
    bottom = values[j + 1, i] * (1 - tx) + values[j + 1, i + 1] * tx
    return top * (1 - ty) + bottom * ty


def dense_nodes(width: int, height: int, step: int = DENSE_STEP) -> np.ndarray:
    """Nodes (x, y) = (step i, step j) up to the first multiple of step >= W - 1 (H - 1)."""
    xs = np.arange(-(-(width - 1) // step) + 1, dtype=np.float64) * step
    ys = np.arange(-(-(height - 1) // step) + 1, dtype=np.float64) * step
    return np.stack(np.meshgrid(xs, ys), axis=-1)


def quadratic_transform(fixed, moving) -> dict:
    """Least-squares quadratic both ways (schema of docs/conventions.md, "Beyond affine")."""
    forward, forward_error = fit_quadratic(fixed, moving)
    backward, backward_error = fit_quadratic(moving, fixed)
    return {"model": "quadratic", "fixed_to_moving": forward.tolist(),
            "moving_to_fixed": backward.tolist(),
            "fit": "least squares over the dense nodes in the common field of view",
            "fit_rms_px": {"fixed_to_moving": forward_error, "moving_to_fixed": backward_error}}


def fit_quadratic(src, dst) -> tuple[np.ndarray, float]:
    """(2, 6) coefficients a, b with ``dst ~ [a . q, b . q]``, q = [1, x, y, x^2, xy, y^2];
    solved in coordinates scaled to ~1 for conditioning; returns (coefficients, rms px)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    scale = max(float(np.abs(src).max()), 1.0)
    design = quadratic_terms(src / scale)
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    rms = float(np.sqrt(np.mean(np.sum((design @ solution - dst) ** 2, axis=1))))
    factors = np.array([1.0, scale, scale, scale ** 2, scale ** 2, scale ** 2])
    return (solution / factors[:, None]).T, rms
