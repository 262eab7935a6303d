"""The ``local`` transform model: a quadratic plus a smooth, regularised displacement on a
coarse cubic B-spline grid, for where the retina really changed between two photographs.

Conventions (as :mod:`fire_reg.geometry`): points are ``(x, y)`` px, x right, y down, (0, 0)
the centre of the top-left pixel; the map goes **fixed px -> moving px**:

    T(p) = Q(p) + D(p),   D(p) = sum_ij beta(u - i) beta(v - j) C[:, j, i],   (u, v) = K [x, y, 1]

* ``Q``: the base, a registered ``quadratic`` (:data:`BASE_MODEL`, 2x6 coefficients, found
  through the registry so that this module needs no import of the models module).
* ``K``: a 2x3 matrix, px -> knot coordinates (knot ``(i, j)`` sits at ``(u, v) = (i, j)``);
  ``beta``: the uniform cubic B-spline; ``C``: (2, ny, nx) coefficients (px of the moving
  image, x then y component). The field is evaluated for ``u`` in ``[1, nx - 2]``, ``v`` in
  ``[1, ny - 2]`` and held constant beyond (coordinates clamped): a fit puts that span over
  the whole fixed image, so the clamp lies outside it.
* Schema (``transform.json``, :meth:`Local.to_dict`; ``Transform.from_dict`` reads it back)::

      {"model": "local",
       "fixed_to_moving": {"base": [[6], [6]], "knots": [[3], [3]], "grid": [2][ny][nx]},
       "moving_to_fixed": {"base": [[6], [6]], "knots": [[3], [3]], "grid": [2][my][mx]}}

  ``moving_to_fixed`` is the same form (a quadratic plus a grid over moving px) *fitted* to the
  inverse over the domain the map was made for (the common field of view); fire-reg maps
  moving points exactly by Newton's method started from it (:meth:`Local.moving_to_fixed`,
  below 1e-6 px), as it does for a quadratic.
* **Fit** (:meth:`Local.fit`, :meth:`Local.from_base`): the grid is the weighted least-squares
  fit of the residuals ``moving - Q(fixed)`` with a penalty ``smoothing x w (R + RIDGE I)``:
  ``R`` the bending energy of the coefficients (second differences), ``I`` pulls them to zero,
  ``w`` the mean data weight per knot (so ``smoothing`` is dimensionless). Where matches are
  dense the grid follows them; where there are none it fades to zero: the map stays the
  quadratic.
* **No fold-over**: a fit raises its smoothing until the derivative of ``D`` is bounded by
  :data:`MAX_STRETCH` everywhere (:meth:`Local.stretch_bound`, a bound from the coefficient
  differences, not a sample), so ``det J > 0`` wherever the base's smallest singular value
  exceeds it (a retina pair's base is near a similarity of scale 0.67-1.5).
"""
from __future__ import annotations

import functools

import numpy as np

from fire_reg import geometry
from fire_reg.geometry import registry
from fire_reg.geometry.registry import register_model
from fire_reg.geometry.transform_base import Transform, _points

BASE_MODEL = "quadratic"
KNOTS = 8
"""Knots per side of a fitted grid (6 cells across the fixed image; the field between is C2)."""
SMOOTHING = 0.01
"""Default smoothing of :meth:`Local.fit` (the fine stage chooses it by held-out residual)."""
RIDGE = 0.05
"""Weight of the pull towards zero beside the bending energy."""
MAX_STRETCH = 0.1
"""Bound on the spectral norm of the field's Jacobian (px per px)."""
INVERSE_SMOOTHING = 1e-4
"""Smoothing of the grid of the stored inverse (fitted to an exact map: as little as keeps it
well posed)."""
_CHUNK = 1 << 17  # points per block when evaluating the grid


def _cubic(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) uniform cubic B-spline weights of the knots floor(u) - 1 .. floor(u) + 2 at
    fractional offsets ``t`` in [0, 1], and their derivatives by ``u``."""
    t = t[:, None]
    s = 1.0 - t
    weights = np.hstack([s ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1,
                         t ** 3]) / 6.0
    slopes = np.hstack([-s ** 2, 3 * t ** 2 - 4 * t, -3 * t ** 2 + 2 * t + 1, t ** 2]) / 2.0
    return weights, slopes


class Grid:
    """A cubic B-spline displacement field: (2, ny, nx) coefficients ``grid`` (px) and the
    2x3 ``knots`` matrix (px of its input -> knot coordinates)."""

    def __init__(self, grid, knots):
        self.grid = np.asarray(grid, dtype=np.float64)
        self.knots = np.asarray(knots, dtype=np.float64).reshape(2, 3)
        if self.grid.ndim != 3 or self.grid.shape[0] != 2 or min(self.grid.shape[1:]) < 4:
            raise ValueError(f"a grid must be (2, ny, nx) with ny, nx >= 4, got {self.grid.shape}")
        if not (np.isfinite(self.grid).all() and np.isfinite(self.knots).all()):
            raise ValueError("a grid holds finite numbers only")

    @classmethod
    def over(cls, low, high, count: int = KNOTS) -> "Grid":
        """A zero grid of ``count`` x ``count`` knots whose span [1, count - 2] covers the
        box ``low`` .. ``high`` (px, (x, y))."""
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        scale = (count - 3) / np.maximum(high - low, 1e-6)
        matrix = [[scale[0], 0.0, 1.0 - scale[0] * low[0]],
                  [0.0, scale[1], 1.0 - scale[1] * low[1]]]
        return cls(np.zeros((2, count, count)), matrix)

    def _stencil(self, points):
        """Per point: the first knot index (ix, iy) of its 4x4 stencil and the weights and
        slopes along x and y (slopes zero where the coordinate is clamped)."""
        _, ny, nx = self.grid.shape
        u, v = geometry.apply(self.knots, points).T
        parts = []
        for value, count in ((u, nx), (v, ny)):
            clamped = np.clip(value, 1.0, count - 2.0)
            first = np.minimum(np.floor(clamped).astype(int), count - 3)
            weights, slopes = _cubic(clamped - first)
            slopes = slopes * ((value > 1.0) & (value < count - 2.0))[:, None]
            parts.append((first - 1, weights, slopes))
        return parts

    def rows(self, points) -> tuple[np.ndarray, np.ndarray]:
        """The sparse design of (N, 2) points: (N, 16) flat coefficient indices and (N, 16)
        weights, so that component k at point n is ``weights[n] @ grid[k].ravel()[index[n]]``."""
        points = _points(points)
        nx = self.grid.shape[2]
        (ix, wx, _), (iy, wy, _) = self._stencil(points)
        index = (iy[:, None, None] + np.arange(4)[:, None]) * nx + ix[:, None, None] + np.arange(4)
        return index.reshape(-1, 16), (wy[:, :, None] * wx[:, None, :]).reshape(-1, 16)

    def solved(self, normal, rhs, weight_sum: float, smoothing: float = SMOOTHING,
               ridge: float = RIDGE) -> "Grid":
        """This grid's knots with the coefficients minimising the data term (``normal`` and
        ``rhs`` from :class:`Design`, ``weight_sum`` its total weight) plus ``smoothing x``
        (mean weight per knot) ``x`` (bending energy + ``ridge`` x squared coefficients)."""
        return self.solved_each(normal, rhs, weight_sum, [smoothing], ridge)[0]

    def solved_each(self, normal, rhs, weight_sum: float, smoothings,
                    ridge: float = RIDGE) -> list["Grid"]:
        """:meth:`solved` at each of ``smoothings``, the systems solved in one call."""
        _, ny, nx = self.grid.shape
        scale = max(weight_sum / (nx * ny), 1e-12)
        penalties = np.multiply.outer(np.asarray(smoothings, np.float64) * scale,
                                      _bending(ny, nx) + ridge * np.eye(nx * ny))
        solutions = np.linalg.solve(normal + penalties, np.broadcast_to(
            rhs, (len(penalties),) + np.shape(rhs)))
        return [Grid(solution.T.reshape(2, ny, nx), self.knots) for solution in solutions]

    def values(self, points, slopes: bool = False):
        """(N, 2) displacements at (N, 2) points; with ``slopes`` also the (N, 2, 2) Jacobian
        d(displacement) / d(x, y)."""
        points = _points(points)
        out = np.zeros((len(points), 2))
        jac = np.zeros((len(points), 2, 2))
        for start in range(0, len(points), _CHUNK):
            block = slice(start, start + _CHUNK)
            (ix, wx, sx), (iy, wy, sy) = self._stencil(points[block])
            rows = iy[:, None, None] + np.arange(4)[:, None]  # (n, 4, 1)
            cols = ix[:, None, None] + np.arange(4)  # (n, 1, 4)
            local = self.grid[:, rows, cols]  # (2, n, 4, 4)
            out[block] = np.einsum("knab,na,nb->nk", local, wy, wx)
            if slopes:
                du = np.einsum("knab,na,nb->nk", local, wy, sx)
                dv = np.einsum("knab,na,nb->nk", local, sy, wx)
                jac[block] = np.stack([du, dv], axis=2) @ self.knots[:, :2]
        return (out, jac) if slopes else out

    def separable(self) -> bool:
        """Whether the knot axes are the pixel axes (a fit's and any rescaled one's): then the
        field on a grid of points is two matrix products (:meth:`on_axes`, :meth:`dense`)."""
        return not (self.knots[0, 1] or self.knots[1, 0])

    def _axis_weights(self, positions, axis: int) -> np.ndarray:
        """(len(positions), knots along ``axis``) B-spline weights of px ``positions`` along
        pixel axis ``axis`` (0: x, 1: y) of a :meth:`separable` grid."""
        points = np.zeros((len(positions), 2))
        points[:, axis] = positions
        first, weights, _ = self._stencil(points)[axis]
        matrix = np.zeros((len(positions), self.grid.shape[2 - axis]))
        matrix[np.arange(len(positions))[:, None], first[:, None] + np.arange(4)] = weights
        return matrix

    def on_axes(self, xs, ys) -> np.ndarray | None:
        """(len(ys), len(xs), 2) displacements (float64 px) at the points (x, y) of every x
        of ``xs`` and y of ``ys`` (px), what :meth:`values` gives there, when the grid is
        :meth:`separable`; None otherwise."""
        if not self.separable():
            return None
        across, down = self._axis_weights(xs, 0), self._axis_weights(ys, 1)
        return np.stack([down @ component @ across.T for component in self.grid], axis=-1)

    def dense(self, size) -> tuple[np.ndarray, np.ndarray] | None:
        """(dx, dy) float32 (H, W) at every pixel of a frame of ``size`` = (W, H) when the
        grid is :meth:`separable` (fast; float32 as ``cv2.remap`` takes a map: off by under
        1e-4 px for displacements of tens of px); None otherwise."""
        if not self.separable():
            return None
        width, height = (int(v) for v in size)
        across, down = (self._axis_weights(np.arange(count), axis).astype(np.float32)
                        for axis, count in ((0, width), (1, height)))
        return tuple(down @ component @ across.T for component in self.grid.astype(np.float32))

    def stretch_bound(self) -> float:
        """An upper bound of the spectral norm of the field's Jacobian (px per px) anywhere:
        each derivative of a cubic B-spline is a convex combination of neighbouring
        coefficient differences."""
        du = np.abs(np.diff(self.grid, axis=2)).max(axis=(1, 2))
        dv = np.abs(np.diff(self.grid, axis=1)).max(axis=(1, 2))
        return float(np.sqrt(np.sum(du ** 2 + dv ** 2)) * np.linalg.norm(self.knots[:, :2], 2))

    def composed(self, outer_linear, inner_affine) -> "Grid":
        """The field ``L D(A^-1 p)`` (``L`` 2x2 acting on the displacements, ``A`` a 2x3 or
        3x3 affine of the input px)."""
        return Grid(np.einsum("kl,lji->kji", np.asarray(outer_linear, np.float64)[:2, :2],
                              self.grid),
                    geometry.compose(self.knots, geometry.invert(inner_affine)))

    def to_dict(self, base) -> dict:
        return {"base": np.asarray(base).tolist(), "knots": self.knots.tolist(),
                "grid": self.grid.tolist()}


@functools.cache
def _bending(ny: int, nx: int) -> np.ndarray:
    """(n, n) bending energy of a ny x nx coefficient grid: sum of squared second differences
    along x, along y and twice the mixed ones."""
    index = np.arange(ny * nx).reshape(ny, nx)
    rows = []
    for a, b, c in ((index[:, :-2], index[:, 1:-1], index[:, 2:]),
                    (index[:-2], index[1:-1], index[2:])):
        for i, j, k in zip(a.ravel(), b.ravel(), c.ravel()):
            row = np.zeros(ny * nx)
            row[[i, j, k]] = (1.0, -2.0, 1.0)
            rows.append(row)
    for i, j, k, m in zip(index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(),
                          index[1:, 1:].ravel()):
        row = np.zeros(ny * nx)
        row[[i, j, k, m]] = (np.sqrt(2), -np.sqrt(2), -np.sqrt(2), np.sqrt(2))
        rows.append(row)
    operator = np.array(rows)
    return operator.T @ operator


class Design:
    """The B-spline stencils of N fixed points on a grid, computed once: the weighted normal
    equations of the points (a weight of 0 leaves a point out), fits and field values there.
    Sums go through ``np.bincount``: single-threaded, no BLAS threads for a small system."""

    def __init__(self, grid: Grid, points):
        self.grid = grid
        self.size = grid.grid[0].size
        self.index, self.weights = grid.rows(points)
        self._pairs = (self.index[:, :, None] * self.size + self.index[:, None, :]).reshape(
            len(self.index), -1)
        self._products = (self.weights[:, :, None] * self.weights[:, None, :]).reshape(
            len(self.index), -1)

    def system(self, residuals, weights) -> tuple[np.ndarray, np.ndarray, float]:
        """(``B^T W B`` (n, n), ``B^T W r`` (n, 2), total weight) of ``residuals`` (N, 2) with
        per-point ``weights`` (N,)."""
        normal = np.bincount(self._pairs.ravel(), (self._products * weights[:, None]).ravel(),
                             minlength=self.size * self.size).reshape(self.size, self.size)
        rhs = np.stack([np.bincount(self.index.ravel(),
                                    (self.weights * (weights * component)[:, None]).ravel(),
                                    minlength=self.size)
                        for component in _points(residuals).T], axis=1)
        return normal, rhs, float(weights.sum())

    def values(self, field: Grid, subset=slice(None)) -> np.ndarray:
        """(N, 2) displacements of ``field`` (a grid with these knots) at the points (those
        ``subset`` selects: a bool mask or indices)."""
        return self.values_each([field], subset)[0]

    def values_each(self, fields: list[Grid], subset=slice(None)) -> np.ndarray:
        """(F, N, 2): :meth:`values` of each of ``fields``, at once."""
        flat = np.stack([field.grid.reshape(2, -1) for field in fields])
        index, weights = self.index[subset], self.weights[subset]
        return np.sum(weights * flat[:, :, index], axis=-1).transpose(0, 2, 1)

    def fit(self, residuals, weights, smoothing: float = SMOOTHING,
            bounded: bool = True) -> Grid:
        """The grid fitted to ``residuals`` (:meth:`Grid.solved`); ``bounded``: the smoothing
        raised (x 4 at a time) until the stretch bound is at most :data:`MAX_STRETCH` (a
        zero grid if it never is)."""
        system = self.system(residuals, weights)
        for _ in range(24):
            field = self.grid.solved(*system, smoothing)
            if not bounded or field.stretch_bound() <= MAX_STRETCH:
                return field
            smoothing *= 4.0
        return self.grid


class Evidence:
    """Point pairs ``fixed`` (N, 2) -> ``moving`` (N, 2) px with ``weights`` (N,), prepared
    once for the fits of a local model on a given base: robust residuals, held-out residuals
    and the map. The grid spans the fixed image of ``extent`` = (W, H) (default: the bounding
    box of ``fixed``)."""

    def __init__(self, fixed, moving, weights=None, extent=None, knots: int = KNOTS):
        self.fixed, self.moving = _points(fixed), _points(moving)
        self.weights = (np.ones(len(self.fixed)) if weights is None
                        else np.asarray(weights, np.float64).ravel())
        self.design = Design(_span(extent, self.fixed, knots), self.fixed)

    def field(self, base: Transform, keep, smoothing: float = SMOOTHING) -> Grid:
        """The bounded grid (:meth:`Design.fit`) on the residuals of ``base`` at the pairs
        ``keep`` ((N,) bool)."""
        return self.design.fit(self.moving - base.fixed_to_moving(self.fixed),
                               self.weights * keep, smoothing)

    def residuals(self, base: Transform, keep, smoothing: float = SMOOTHING) -> np.ndarray:
        """(N,) distances (px) of every pair from ``base`` plus the grid fitted to the pairs
        ``keep``: what a robust fit trims by."""
        field = self.field(base, keep, smoothing)
        return np.linalg.norm(self.moving - base.fixed_to_moving(self.fixed)
                              - self.design.values(field), axis=1)

    def heldout(self, folds, smoothings, keep=None) -> tuple[np.ndarray, dict]:
        """Held-out residuals (px) of the base model alone and with the grid at each of
        ``smoothings``: for each fold of ``folds`` ((N,) ints), the base model fitted
        (weighted) to the other folds' pairs in ``keep`` and the grid to their residuals, both
        measured at the fold's pairs. Returns ((N,) base residuals, {smoothing: (N,) local
        residuals}); NaN outside ``keep`` and in a fold with too few other pairs to fit."""
        keep = np.ones(len(self.fixed), bool) if keep is None else np.asarray(keep, bool)
        folds = np.asarray(folds).ravel()
        base_errors = np.full(len(self.fixed), np.nan)
        local_errors = {smoothing: base_errors.copy() for smoothing in smoothings}
        base_class = registry.model_class(BASE_MODEL)
        for fold in np.unique(folds[keep]):
            test, train = keep & (folds == fold), keep & (folds != fold)
            if train.sum() < 2 * base_class.min_points:
                continue
            base = base_class.fit(self.fixed[train], self.moving[train],
                                  weights=self.weights[train])
            residuals = self.moving - base.fixed_to_moving(self.fixed)
            base_errors[test] = np.linalg.norm(residuals[test], axis=1)
            fields = self.design.grid.solved_each(
                *self.design.system(residuals, self.weights * train), smoothings)
            for smoothing, values in zip(smoothings, self.design.values_each(fields, test)):
                local_errors[smoothing][test] = np.linalg.norm(residuals[test] - values, axis=1)
        return base_errors, local_errors

    def transform(self, base: Transform, keep=None, smoothing: float = SMOOTHING,
                  domain=None) -> "Local":
        """``base`` plus the bounded grid fitted to the pairs ``keep`` (default: all), with
        the stored inverse fitted over ``domain`` ((N, 2) fixed px where the map is used;
        default: the fixed points' bounding box)."""
        keep = np.ones(len(self.fixed), bool) if keep is None else np.asarray(keep, bool)
        domain = geometry.box_grid(self.fixed) if domain is None else _points(domain)
        return Local(base, self.field(base, keep, smoothing), domain=domain)


def _span(extent, points, knots: int) -> Grid:
    """A zero grid over the fixed image of ``extent`` = (W, H) with 1 px to spare on each side
    (so that the clamp stays outside the image also in another pixel grid: a map made on a
    smaller working image and rescaled to the original moves the pixel centres by up to half
    a px), or over the points' bounding box when ``extent`` is None."""
    if extent is None:
        return Grid.over(*_box(points), knots)
    return Grid.over(np.full(2, -1.0), np.asarray(extent, np.float64), knots)


def _fitted_inverse(base: Transform, field: Grid, domain=None) -> tuple[np.ndarray, Grid]:
    """(2x6 quadratic, grid over moving px) fitted to the inverse of ``base + field`` over
    ``domain`` ((N, 2) fixed px; with fewer than 20 points, a 20 x 20 grid over the span of
    ``field``'s knots): the schema's ``moving_to_fixed``."""
    domain = np.zeros((0, 2)) if domain is None else _points(domain)
    if len(domain) < 20:
        _, ny, nx = field.grid.shape
        corners = geometry.apply(geometry.invert(field.knots), [[1.0, 1.0], [nx - 2.0, ny - 2.0]])
        domain = geometry.box_grid(corners)
    forward = base.fixed_to_moving(domain) + field.values(domain)
    coefficients = registry.model_class(BASE_MODEL).fit(forward, domain).arrays()[0]
    start = registry.model_class(BASE_MODEL).from_arrays(coefficients, coefficients)
    design = Design(Grid.over(*_box(forward, margin=1.0), field.grid.shape[1]), forward)
    return coefficients, design.fit(domain - start.fixed_to_moving(forward),
                                    np.ones(len(domain)), INVERSE_SMOOTHING, bounded=False)


def _box(points, margin: float = 0.0):
    points = _points(points)
    return points.min(axis=0) - margin, points.max(axis=0) + margin


@register_model
class Local(Transform):
    """A quadratic plus a regularised cubic B-spline displacement (fixed px -> moving px) and
    the same form fitted to its inverse (module docstring).

    ``parameters`` is the size of a default grid (12 + 2 x 8 x 8); flexible (the fine stage and
    trust check spread, fold-over and bend); ``local``: it follows local evidence, so it is
    never fitted to a pair's ten control points (no reference row) nor used by trust to judge
    another model's result.
    """

    model, parameters, min_points, min_inliers = "local", 12 + 2 * KNOTS * KNOTS, 6, 48
    weighted, flexible, local = True, True, True
    base_model = BASE_MODEL

    def __init__(self, base: Transform, field: Grid, inverse=None, domain=None):
        """``base``: the quadratic; ``field``: D over fixed px; ``inverse``: the stored inverse,
        (2x6 coefficients, Grid over moving px), or None: fitted over ``domain`` ((N, 2) fixed
        px where the map is used; None: the span of ``field``) when first needed (a fit that
        only measures residuals never pays for it)."""
        self.base = base
        self.field = field
        self._domain = domain
        self._inverse = None if inverse is None else self._stored(*inverse)

    @staticmethod
    def _stored(coefficients, grid: Grid) -> tuple[Transform, Grid]:
        """The stored inverse as (a quadratic evaluating ``coefficients``, grid)."""
        quadratic = registry.model_class(BASE_MODEL)
        return quadratic.from_arrays(coefficients, coefficients), grid

    @property
    def stored(self) -> tuple[Transform, Grid]:
        """The schema's ``moving_to_fixed``: (its quadratic, its grid), fitted over the domain
        the first time it is needed."""
        if self._inverse is None:
            self._inverse = self._stored(*_fitted_inverse(self.base, self.field, self._domain))
        return self._inverse

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, fixed, moving, weights=None, domain=None, smoothing: float = SMOOTHING,
            extent=None) -> "Local":
        """Weighted least-squares quadratic, then the regularised grid on its residuals
        (:meth:`from_base`); ``domain``: (N, 2) fixed points where the map is used (the
        inverse is fitted there; default: the fixed points' bounding box)."""
        fixed, moving = _points(fixed), _points(moving)
        base = registry.model_class(BASE_MODEL).fit(fixed, moving, weights=weights,
                                                    domain=domain)
        return cls.from_base(base, fixed, moving, weights, domain, smoothing, extent)

    @classmethod
    def from_base(cls, base: Transform, fixed, moving, weights=None, domain=None,
                  smoothing: float = SMOOTHING, extent=None, knots: int = KNOTS) -> "Local":
        """``base`` (a quadratic) plus the bounded grid fitted to ``moving - base(fixed)``
        (:class:`Evidence`); ``domain``: (N, 2) fixed points where the map is used (the stored
        inverse is fitted there; default: the fixed points' bounding box); ``extent``: (W, H)
        of the fixed image, which the grid's span covers (default: the fixed points' box)."""
        return Evidence(fixed, moving, weights, extent, knots).transform(
            base, smoothing=smoothing, domain=domain)

    @classmethod
    def evidence(cls, fixed, moving, weights=None, extent=None,
                 knots: int = KNOTS) -> Evidence:
        """Point pairs prepared for the fine stage's local step (:class:`Evidence`)."""
        return Evidence(fixed, moving, weights, extent, knots)

    @classmethod
    def from_arrays(cls, forward, backward=None) -> "Local":
        """From the schema's two objects ``{"base", "knots", "grid"}`` (module docstring)."""
        if not isinstance(forward, dict) or not isinstance(backward, dict):
            raise ValueError("a local transform needs fixed_to_moving and moving_to_fixed "
                             "objects with base, knots and grid")
        try:
            parts = [(np.asarray(side["base"], np.float64).reshape(2, 6),
                      Grid(side["grid"], side["knots"])) for side in (forward, backward)]
        except KeyError as error:
            raise ValueError(f"a local transform's arrays lack {error}") from None
        (base, field), inverse = parts
        return cls(registry.model_class(BASE_MODEL).from_arrays(base, inverse[0]), field,
                   inverse)

    def for_domain(self, domain) -> "Local":
        """The same forward map with its stored inverse fitted over ``domain``."""
        return Local(self.base.for_domain(domain), self.field, domain=domain)

    # ------------------------------------------------------------------ the map
    def fixed_to_moving(self, points) -> np.ndarray:
        points = _points(points)
        return self.base.fixed_to_moving(points) + self.field.values(points)

    def on_grid(self, xs, ys) -> np.ndarray:
        """As :meth:`Transform.on_grid`: the base's map plus the grid, separably when the grid
        is :meth:`Grid.separable`."""
        field = self.field.on_axes(xs, ys)
        if field is None:
            return super().on_grid(xs, ys)
        return self.base.on_grid(xs, ys) + field

    def stored_inverse(self, points) -> np.ndarray:
        """The schema's ``moving_to_fixed`` (fitted, approximate) at (N, 2) moving px."""
        points = _points(points)
        quadratic, grid = self.stored
        return quadratic.fixed_to_moving(points) + grid.values(points)

    def jacobian(self, points) -> np.ndarray:
        points = _points(points)
        return self.base.jacobian(points) + self.field.values(points, slopes=True)[1]

    def moving_to_fixed(self, points, iterations: int = 10) -> np.ndarray:
        """Exact inverse: Newton's method on ``fixed_to_moving(p) = q`` from the stored
        inverse (a point whose Jacobian is singular keeps its last estimate)."""
        targets = _points(points)
        estimate = self.stored_inverse(targets)
        for _ in range(iterations):
            residual = self.fixed_to_moving(estimate) - targets
            if not len(targets) or np.abs(residual).max() < 1e-9:
                break
            jacobian = self.jacobian(estimate)
            det = np.linalg.det(jacobian)
            safe = np.abs(det) > 1e-12
            jacobian[~safe] = np.eye(2)
            step = np.linalg.solve(jacobian, residual[:, :, None])[:, :, 0]
            estimate = estimate - step * safe[:, None]
        return estimate

    def dense_map(self, fixed_size) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Transform.dense_map`: the base's map plus the grid, separably when the
        knot axes are the pixel axes (a fit's and any rescaled one's)."""
        field = self.field.dense(fixed_size)
        if field is None:
            return super().dense_map(fixed_size)
        maps = self.base.dense_map(fixed_size)  # float32, as the field
        for base, delta in zip(maps, field):
            base += delta
        return maps

    def stretch_bound(self) -> float:
        """Bound of the spectral norm of the local part's Jacobian (:meth:`Grid.stretch_bound`)."""
        return self.field.stretch_bound()

    # ------------------------------------------------------------------ schema
    def arrays(self):
        quadratic, grid = self.stored
        return self.field.to_dict(self.base.arrays()[0]), grid.to_dict(quadratic.arrays()[0])

    def to_dict(self) -> dict:
        forward, backward = self.arrays()
        return {"model": self.model, "fixed_to_moving": forward, "moving_to_fixed": backward}

    def composed(self, moving_affine, fixed_affine) -> "Local":
        outer, inner = geometry.as_3x3(moving_affine), geometry.as_3x3(fixed_affine)
        quadratic, grid = self.stored
        return Local(self.base.composed(outer, inner), self.field.composed(outer, inner),
                     (quadratic.composed(inner, outer).arrays()[0], grid.composed(inner, outer)))

    def __repr__(self) -> str:
        _, ny, nx = self.field.grid.shape
        return (f"Local(base={self.base.arrays()[0].round(6).tolist()}, grid {ny}x{nx}, "
                f"largest coefficient {np.abs(self.field.grid).max():.3g} px)")
