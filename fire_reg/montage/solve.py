"""Placing fields in one frame: spanning tree and joint least squares.

Conventions: pixels ``(x, y)``, x right, y down, (0, 0) the centre of the top-left pixel.
Every field k gets a quadratic ``G_k``: field k px -> reference px (the reference field's own
pixels; ``G_ref`` is the identity), coefficients (2, 6) over ``[1, x, y, x^2, x y, y^2]``
(:func:`fire_reg.geometry.transforms.quadratic_terms`).

* An *edge* is a trusted pairwise registration between fields ``a`` (fixed) and ``b``
  (moving) with correspondences ``(p_a, p_b)``: points of a grid over field a's field of view
  whose image ``T_ab(p_a)`` lies in field b's field of view (the pair's transform sampled over
  its common region; it is the robust fit to the fine stage's tile matches, so it stands for
  them with their outliers removed).
* :func:`tree_solution`: from the reference outwards along a spanning tree of the edges,
  ``G_b = G_a o T_ab^-1`` (or ``G_a o T_ba``), fitted as a quadratic over field b.
* :func:`joint_solution`: all ``G_k`` at once, linear least squares of
  ``sum_edges sum_points |G_a(p_a) - G_b(p_b)|^2`` (every loop closure counts, so a point seen
  in three fields lands on one reference pixel), each pair's rows weighted by 1 / its
  estimated error (FIRE px, at least :data:`MIN_COST`), plus a weak pull (:data:`PRIOR`)
  towards the tree solution that keeps a field's quadratic terms sane where no neighbour
  constrains them. Coordinates are normalised by ``scale`` (the reference width).
* :func:`canvas_transforms`: the schema's direction, canvas px -> field px, is the inverse of
  ``G_k``, which is not a quadratic: it is stored as a ``local`` transform (a quadratic plus
  a B-spline grid, :mod:`fire_reg.geometry.local`) fitted to that inverse, which reproduces
  ``G_k`` to about 0.01 px. A quadratic fitted to it left up to 0.1 field px (0.4 FIRE px at
  768 px) at the fields' rims, where they overlap: more than the joint fit's own error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from fire_reg.geometry.local import INVERSE_SMOOTHING, Local
from fire_reg.geometry.transforms import Transform, quadratic_terms

MIN_COST = 0.5  # estimated errors below this (FIRE px) weigh as this in the joint fit
PRIOR = 1e-4
"""Weight of the pull towards the tree (relative to one correspondence). With exact
correspondences (the multi-field sets' ground truth) 1e-3 left 0.13-0.24 FIRE px of median pair
consistency against 0.10-0.14 at 1e-4 or 0: the tree's own error leaks in through it."""
IDENTITY = np.array([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])


@dataclass
class Edge:
    """A trusted pair: ``transform`` maps field ``a`` (fixed) px -> field ``b`` (moving) px;
    its correspondences (N, 2) px over the common region; the spanning-tree ``cost`` (lower
    is better)."""

    a: int
    b: int
    transform: Transform
    points_a: np.ndarray
    points_b: np.ndarray
    cost: float

    def to_other(self, field: int, points) -> np.ndarray:
        """(N, 2) px of ``field`` (a or b) -> px of the other field, exactly."""
        if field == self.a:
            return self.transform.fixed_to_moving(points)
        return self.transform.moving_to_fixed(points)


def spanning_tree(count: int, edges: list[Edge], reference: int) -> dict[int, tuple[int, Edge]]:
    """Minimum spanning tree (by ``cost``) of the fields reachable from ``reference``:
    child -> (parent, edge)."""
    costs = np.zeros((count, count))
    chosen = {}
    for edge in edges:
        key = (min(edge.a, edge.b), max(edge.a, edge.b))
        if key not in chosen or edge.cost < chosen[key].cost:
            chosen[key] = edge
            costs[key] = edge.cost + 1e-6  # a zero entry would mean "no edge"
    tree = minimum_spanning_tree(csr_matrix(costs))
    order, parents = breadth_first_order(tree + tree.T, reference, directed=False)
    return {int(child): (int(parents[child]),
                         chosen[(min(child, parents[child]), max(child, parents[child]))])
            for child in order if child != reference}


def fit_quadratic(points, targets) -> np.ndarray:
    """(2, 6) least-squares coefficients of (N, 2) points -> (N, 2) targets (normalised
    internally for conditioning)."""
    points, targets = np.asarray(points, np.float64), np.asarray(targets, np.float64)
    scale = max(float(np.abs(points).max()), 1.0)
    solution, *_ = np.linalg.lstsq(quadratic_terms(points / scale), targets, rcond=None)
    return _unscale(solution.T, scale)


def _unscale(coefficients, scale: float) -> np.ndarray:
    """Coefficients over ``q(p / scale)`` -> coefficients over ``q(p)``."""
    return coefficients * np.array([1.0, 1.0, 1.0, 1.0 / scale, 1.0 / scale, 1.0 / scale]
                                   ) / np.array([1.0, scale, scale, scale, scale, scale])


def apply(coefficients, points) -> np.ndarray:
    """(N, 2) field px -> reference px through (2, 6) coefficients."""
    return quadratic_terms(points) @ np.asarray(coefficients).T


def tree_solution(count: int, edges: list[Edge], reference: int, domains: list[np.ndarray]
                  ) -> dict[int, np.ndarray]:
    """Coefficients of every field reachable from ``reference``, composed along the spanning
    tree (``G_child = G_parent o pair map``), each fitted over ``domains[child]`` ((N, 2) px
    of that field's field of view)."""
    solution = {reference: IDENTITY.copy()}
    tree = spanning_tree(count, edges, reference)
    pending = dict(tree)
    while pending:
        for child, (parent, edge) in list(pending.items()):
            if parent in solution:
                points = domains[child]
                solution[child] = fit_quadratic(points, apply(solution[parent],
                                                              edge.to_other(child, points)))
                del pending[child]
    return solution


def joint_solution(edges: list[Edge], reference: int, start: dict[int, np.ndarray],
                   scale: float, prior: float = PRIOR) -> dict[int, np.ndarray]:
    """Coefficients of the fields in ``start`` minimising the squared disagreement of every
    edge's correspondences in the reference frame (module docstring), the reference fixed to
    the identity; ``prior``: weight (relative to one correspondence, in px normalised by
    ``scale``) of each field's pull towards ``start``."""
    fields = sorted(k for k in start if k != reference)
    column = {k: 6 * i for i, k in enumerate(fields)}
    rows, targets = [], []
    for edge in edges:
        if edge.a not in start or edge.b not in start:
            continue
        row = np.zeros((len(edge.points_a), 6 * len(fields)))
        target = np.zeros((len(edge.points_a), 2))
        for field, points, sign in ((edge.a, edge.points_a, 1.0), (edge.b, edge.points_b, -1.0)):
            if field == reference:
                target -= sign * points / scale
            else:
                row[:, column[field]:column[field] + 6] += sign * quadratic_terms(points / scale)
        weight = 1.0 / max(edge.cost, MIN_COST)  # a pair's rows weigh 1 / its estimated error
        rows.append(weight * row)
        targets.append(weight * target)
    weight = np.sqrt(prior * max(1, sum(len(r) for r in rows)) / max(1, len(fields)))
    for k in fields:
        row = np.zeros((6, 6 * len(fields)))
        row[:, column[k]:column[k] + 6] = weight * np.eye(6)
        rows.append(row)
        targets.append(weight * _scaled(start[k], scale).T)
    solution, *_ = np.linalg.lstsq(np.vstack(rows), np.vstack(targets), rcond=None)
    result = {reference: IDENTITY.copy()}
    for k in fields:
        result[k] = _unscale(solution[column[k]:column[k] + 6].T, scale) * scale
    return result


def _scaled(coefficients, scale: float) -> np.ndarray:
    """Pixel coefficients -> coefficients of ``G(p) / scale`` over ``q(p / scale)``."""
    return np.asarray(coefficients) * np.array([1.0, scale, scale, scale ** 2, scale ** 2,
                                                scale ** 2]) / scale


def edge_residuals(edge: Edge, solution: dict[int, np.ndarray]) -> np.ndarray:
    """Distance (reference px) between the two fields' images of each correspondence."""
    return np.linalg.norm(apply(solution[edge.a], edge.points_a)
                          - apply(solution[edge.b], edge.points_b), axis=1)


def canvas_transforms(solution: dict[int, np.ndarray], domains: list[np.ndarray], offset,
                      canvas_scale: float) -> dict[int, Local]:
    """Each field's transform in the schema's direction, canvas px -> field px: a ``local``
    transform fitted (smoothing :data:`fire_reg.geometry.local.INVERSE_SMOOTHING`) to the
    inverse of ``canvas = canvas_scale (G_k(p) - offset)`` over the field's ``domains[k]``
    ((N, 2) field px); its ``moving_to_fixed`` is exact to that forward map by Newton's
    method."""
    result = {}
    for k, coefficients in solution.items():
        field_pts = domains[k]
        canvas_pts = canvas_scale * (apply(coefficients, field_pts) - np.asarray(offset))
        result[k] = Local.fit(canvas_pts, field_pts, domain=canvas_pts,
                              smoothing=INVERSE_SMOOTHING)
    return result
