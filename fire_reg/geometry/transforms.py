"""Transform models between a fixed and a moving image: affine, homography and quadratic.

Conventions (as :mod:`fire_reg.geometry`)
---------------------------------------
* Points are ``(x, y)`` pixels, x right, y down, (0, 0) the centre of the top-left pixel.
* Every transform maps **fixed-image px to moving-image px** (:meth:`Transform.fixed_to_moving`)
  and back (:meth:`Transform.moving_to_fixed`). Warping the moving image into the fixed frame
  samples it at ``fixed_to_moving(p)`` for each fixed pixel p (:meth:`Transform.warp`); FIRE
  control points of the moving image come into the fixed frame through ``moving_to_fixed``.
* ``affine``: a 2x3 matrix ``[x_m, y_m] = A @ [x, y, 1]``. ``homography``: a 3x3 matrix in
  homogeneous coordinates. ``quadratic`` (12 parameters): ``x_m = a . q(x, y)`` and
  ``y_m = b . q(x, y)`` with ``q = [1, x, y, x^2, x y, y^2]``, coefficients ``[a, b]`` (2x6).
  A quadratic has no closed-form inverse, and the inverse of a quadratic is not one: the
  stored ``moving_to_fixed`` coefficients are the quadratic fitted to the inverse over the
  domain the map was made for (the common field of view; how far they are off there is
  :meth:`Quadratic.coefficient_inverse_error`), and :meth:`Quadratic.moving_to_fixed` starts
  from them and solves ``fixed_to_moving(p) = q`` by Newton's method, exact to 1e-6 px.
* ``to_dict`` gives the schema of ``transform.json`` and ``results.json``::

      {"model": "quadratic", "fixed_to_moving": [[a0..a5], [b0..b5]],
       "moving_to_fixed": [[...], [...]]}

  (2x3 arrays for an affine, 3x3 for a homography), float64; :func:`transform_from_dict`
  reads it back.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from fire_reg import geometry

MODELS = ("affine", "homography", "quadratic")
MIN_POINTS = {"affine": 3, "homography": 4, "quadratic": 6}


def model_names() -> tuple[str, ...]:
    """The registered transform models, simplest first (what the fine stage falls back along,
    what ``--transform`` offers)."""
    return MODELS


def _points(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


class Transform(ABC):
    """A map fixed px -> moving px with its inverse; subclasses hold the arrays."""

    model: str = ""
    parameters: int = 0

    @abstractmethod
    def fixed_to_moving(self, points) -> np.ndarray:
        """Map (N, 2) fixed-image points to the moving image."""

    @abstractmethod
    def moving_to_fixed(self, points) -> np.ndarray:
        """Map (N, 2) moving-image points to the fixed image."""

    @abstractmethod
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(fixed_to_moving, moving_to_fixed) arrays of the schema."""

    @abstractmethod
    def composed(self, moving_affine, fixed_affine) -> "Transform":
        """``moving_affine o self o fixed_affine^-1`` (both 2x3 or 3x3): the same map seen in
        other pixel grids, e.g. ``geometry.scaling`` for another resolution."""

    def rescaled(self, fixed_scale, moving_scale) -> "Transform":
        """The same map at other resolutions; scales are (sx, sy) or one float, new px per old
        px of each image (pixel centres kept consistent as in :func:`geometry.rescale`)."""
        return self.composed(geometry.scaling(moving_scale), geometry.scaling(fixed_scale))

    def to_dict(self) -> dict:
        """``{"model", "fixed_to_moving", "moving_to_fixed"}`` (plain lists)."""
        forward, backward = self.arrays()
        return {"model": self.model, "fixed_to_moving": forward.tolist(),
                "moving_to_fixed": backward.tolist()}

    def best_affine(self, points) -> np.ndarray:
        """Least-squares 2x3 affine of this map over (N, 2) fixed points (e.g. a grid over the
        common field of view): the ``"matrix"`` kept for tools that read only matrices."""
        points = _points(points)
        return geometry.fit_affine(points, self.fixed_to_moving(points))[0]

    def warp(self, moving: np.ndarray, fixed_size, border_value: float = 0.0) -> np.ndarray:
        """The moving image resampled into a fixed frame of ``fixed_size`` = (W, H): output
        pixel p reads the moving image at ``fixed_to_moving(p)`` (bilinear, ``border_value``
        outside), after ``cv2.pyrDown`` of the moving image where the map shrinks it 2x or more
        (no aliasing). Colour is kept."""
        map_x, map_y = self.dense_map(fixed_size)
        moving = np.ascontiguousarray(moving)
        shrink = np.sqrt(abs(np.linalg.det(self.best_affine(geometry.grid_points(fixed_size))[:, :2])))
        while shrink >= 2.0 and min(moving.shape[:2]) >= 8:
            moving = cv2.pyrDown(moving)
            map_x, map_y = map_x / 2.0, map_y / 2.0  # pyrDown keeps the even pixels: x / 2
            shrink /= 2.0
        return cv2.remap(moving, map_x, map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)

    def dense_map(self, fixed_size) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) float32 (H, W): ``fixed_to_moving`` of every pixel of a fixed frame
        of ``fixed_size`` = (W, H), as ``cv2.remap`` takes them."""
        width, height = (int(v) for v in fixed_size)
        xs, ys = np.meshgrid(np.arange(width, dtype=np.float64),
                             np.arange(height, dtype=np.float64))
        mapped = self.fixed_to_moving(np.stack([xs.ravel(), ys.ravel()], axis=1))
        return (mapped[:, 0].reshape(height, width).astype(np.float32),
                mapped[:, 1].reshape(height, width).astype(np.float32))

    def inverse_error(self, points) -> float:
        """Largest distance (px) between p and ``moving_to_fixed(fixed_to_moving(p))`` over
        (N, 2) fixed points."""
        points = _points(points)
        back = self.moving_to_fixed(self.fixed_to_moving(points))
        return float(np.linalg.norm(back - points, axis=1).max()) if len(points) else 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.arrays()[0].round(6).tolist()})"


class Affine(Transform):
    """2x3 affine matrix, fixed px -> moving px."""

    model, parameters = "affine", 6

    def __init__(self, matrix):
        self.matrix = geometry.as_3x3(matrix)[:2]

    def fixed_to_moving(self, points) -> np.ndarray:
        return geometry.apply(self.matrix, points)

    def moving_to_fixed(self, points) -> np.ndarray:
        return geometry.apply(geometry.invert(self.matrix), points)

    def arrays(self):
        return self.matrix.copy(), geometry.invert(self.matrix)

    def composed(self, moving_affine, fixed_affine) -> "Affine":
        return Affine(geometry.compose(moving_affine, self.matrix, geometry.invert(fixed_affine)))

    def best_affine(self, points=None) -> np.ndarray:
        return self.matrix.copy()

    def warp(self, moving, fixed_size, border_value: float = 0.0) -> np.ndarray:
        return geometry.resample(moving, self.matrix, fixed_size, border_value)


class Homography(Transform):
    """3x3 homography, fixed px -> moving px in homogeneous coordinates (normalised H[2,2]=1)."""

    model, parameters = "homography", 8

    def __init__(self, matrix):
        matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
        self.matrix = matrix / matrix[2, 2]

    @staticmethod
    def _apply(matrix, points) -> np.ndarray:
        points = _points(points)
        mapped = np.hstack([points, np.ones((len(points), 1))]) @ matrix.T
        return mapped[:, :2] / mapped[:, 2:3]

    def fixed_to_moving(self, points) -> np.ndarray:
        return self._apply(self.matrix, points)

    def moving_to_fixed(self, points) -> np.ndarray:
        return self._apply(np.linalg.inv(self.matrix), points)

    def arrays(self):
        inverse = np.linalg.inv(self.matrix)
        return self.matrix.copy(), inverse / inverse[2, 2]

    def composed(self, moving_affine, fixed_affine) -> "Homography":
        return Homography(geometry.as_3x3(moving_affine) @ self.matrix
                          @ np.linalg.inv(geometry.as_3x3(fixed_affine)))


def quadratic_terms(points) -> np.ndarray:
    """(N, 6) monomials ``[1, x, y, x^2, x y, y^2]`` of (N, 2) points."""
    x, y = _points(points).T
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _substitution(affine) -> np.ndarray:
    """6x6 matrix P with ``quadratic_terms(A p) = quadratic_terms(p) @ P.T`` for a 2x3 ``A``:
    row i expresses monomial i of the mapped point in monomials of p (exact)."""
    (a1, a2, a0), (b1, b2, b0) = geometry.as_3x3(affine)[:2]
    x, y = np.array([a0, a1, a2]), np.array([b0, b1, b2])  # linear polynomials [c, cx, cy]

    def product(u, v):
        return [u[0] * v[0], u[0] * v[1] + u[1] * v[0], u[0] * v[2] + u[2] * v[0],
                u[1] * v[1], u[1] * v[2] + u[2] * v[1], u[2] * v[2]]

    return np.array([[1.0, 0, 0, 0, 0, 0], [*x, 0, 0, 0], [*y, 0, 0, 0],
                     product(x, x), product(x, y), product(y, y)])


class Quadratic(Transform):
    """12-parameter quadratic map fixed px -> moving px and its fitted inverse (both 2x6)."""

    model, parameters = "quadratic", 12

    def __init__(self, forward, backward):
        self.forward = np.asarray(forward, dtype=np.float64).reshape(2, 6)
        self.backward = np.asarray(backward, dtype=np.float64).reshape(2, 6)

    @classmethod
    def from_forward(cls, forward, domain) -> "Quadratic":
        """A quadratic from its forward coefficients, the inverse fitted over ``domain``
        ((N, 2) fixed points where the map is used, e.g. the common field of view)."""
        forward = np.asarray(forward, dtype=np.float64).reshape(2, 6)
        domain = _points(domain)
        mapped = quadratic_terms(domain) @ forward.T
        return cls(forward, _fit_quadratic(mapped, domain))

    def fixed_to_moving(self, points) -> np.ndarray:
        return quadratic_terms(points) @ self.forward.T

    def moving_to_fixed(self, points, iterations: int = 8) -> np.ndarray:
        """Exact inverse: Newton's method on ``fixed_to_moving(p) = q`` from the fitted
        inverse quadratic (a point whose Jacobian is singular keeps its last estimate)."""
        targets = _points(points)
        estimate = quadratic_terms(targets) @ self.backward.T
        (_, a1, a2, a3, a4, a5), (_, b1, b2, b3, b4, b5) = self.forward
        for _ in range(iterations):
            x, y = estimate.T
            jacobian = np.array([[a1 + 2 * a3 * x + a4 * y, a2 + a4 * x + 2 * a5 * y],
                                 [b1 + 2 * b3 * x + b4 * y, b2 + b4 * x + 2 * b5 * y]])
            residual = (self.fixed_to_moving(estimate) - targets).T
            det = jacobian[0, 0] * jacobian[1, 1] - jacobian[0, 1] * jacobian[1, 0]
            safe = np.abs(det) > 1e-12
            det = np.where(safe, det, 1.0)
            step_x = (jacobian[1, 1] * residual[0] - jacobian[0, 1] * residual[1]) / det
            step_y = (jacobian[0, 0] * residual[1] - jacobian[1, 0] * residual[0]) / det
            estimate = estimate - np.stack([step_x, step_y], axis=1) * safe[:, None]
            if np.abs(residual).max() < 1e-9:
                break
        return estimate

    def dense_map(self, fixed_size) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`Transform.dense_map`, by broadcasting rows and columns in float32 (fast;
        off by under 1e-3 px at 2912 px, far below ``cv2.remap``'s 1/32 px interpolation step)."""
        width, height = (int(v) for v in fixed_size)
        x = np.arange(width, dtype=np.float32)[None, :]
        y = np.arange(height, dtype=np.float32)[:, None]
        maps = [(c0 + c2 * y + c5 * y * y) + (c1 + c3 * x + c4 * y) * x
                for c0, c1, c2, c3, c4, c5 in self.forward.astype(np.float32)]
        return maps[0], maps[1]

    def coefficient_inverse_error(self, points) -> float:
        """Largest distance (px) between p and the stored inverse coefficients applied to
        ``fixed_to_moving(p)``, over (N, 2) fixed points: what a reader of the JSON who uses
        only the coefficients gets."""
        points = _points(points)
        back = quadratic_terms(self.fixed_to_moving(points)) @ self.backward.T
        return float(np.linalg.norm(back - points, axis=1).max()) if len(points) else 0.0

    def arrays(self):
        return self.forward.copy(), self.backward.copy()

    def composed(self, moving_affine, fixed_affine) -> "Quadratic":
        outer = geometry.as_3x3(moving_affine)[:2]
        inner = geometry.invert(fixed_affine)
        forward = outer[:, :2] @ self.forward @ _substitution(inner)
        forward[:, 0] += outer[:, 2]
        outer_inv, inner_fwd = geometry.invert(moving_affine), geometry.as_3x3(fixed_affine)[:2]
        backward = inner_fwd[:, :2] @ self.backward @ _substitution(outer_inv)
        backward[:, 0] += inner_fwd[:, 2]
        return Quadratic(forward, backward)


def _fit_quadratic(src, dst, weights=None) -> np.ndarray:
    """Least-squares 2x6 quadratic coefficients with ``dst ~ quadratic(src)``; the points are
    centred and scaled first so the normal equations stay well conditioned."""
    src, dst = _points(src), _points(dst)
    centre = src.mean(axis=0)
    spread = max(float(src.std()), 1e-9)
    to_unit = np.array([[1 / spread, 0, -centre[0] / spread], [0, 1 / spread, -centre[1] / spread]])
    design = quadratic_terms(geometry.apply(to_unit, src))
    if weights is not None:
        root = np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
        design, dst = design * root, dst * root
    unit_coefficients, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return unit_coefficients.T @ _substitution(to_unit)


def fit_transform(model: str, fixed_pts, moving_pts, domain=None, weights=None) -> Transform:
    """Least-squares ``model`` transform with ``moving ~ T(fixed)`` over point pairs.

    ``domain``: (N, 2) fixed points over which a quadratic's inverse is fitted (default: the
    fixed points' bounding box, 20 x 20 grid). ``weights``: per-pair weights (affine and
    quadratic). ValueError for an unknown model or too few points.
    """
    fixed_pts, moving_pts = _points(fixed_pts), _points(moving_pts)
    if model not in MODELS:
        raise ValueError(f"unknown transform model {model!r}; choose from {', '.join(MODELS)}")
    if len(fixed_pts) != len(moving_pts) or len(fixed_pts) < MIN_POINTS[model]:
        raise ValueError(f"a {model} needs at least {MIN_POINTS[model]} point pairs, "
                         f"got {len(fixed_pts)}")
    if model == "affine":
        if weights is None:
            return Affine(geometry.fit_affine(fixed_pts, moving_pts)[0])
        design = np.hstack([fixed_pts, np.ones((len(fixed_pts), 1))])
        root = np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
        solution, *_ = np.linalg.lstsq(design * root, moving_pts * root, rcond=None)
        return Affine(solution.T)
    if model == "homography":
        matrix, _ = cv2.findHomography(fixed_pts, moving_pts, 0)
        if matrix is None:
            raise ValueError("no homography fits these points (degenerate configuration)")
        return Homography(matrix)
    if domain is None:
        low, high = fixed_pts.min(axis=0), fixed_pts.max(axis=0)
        xs, ys = np.meshgrid(np.linspace(low[0], high[0], 20), np.linspace(low[1], high[1], 20))
        domain = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return Quadratic.from_forward(_fit_quadratic(fixed_pts, moving_pts, weights), domain)


def control_point_errors(transform, fixed_pts, moving_pts) -> np.ndarray:
    """Per-point distances (px, fixed frame) between the moving points mapped by the
    transform's ``moving_to_fixed`` (``M^-1`` for a 2x3 matrix) and ``fixed_pts``: the FIRE
    error of each control point."""
    mapped = as_transform(transform).moving_to_fixed(moving_pts)
    return np.linalg.norm(mapped - _points(fixed_pts), axis=1)


def as_transform(value) -> Transform:
    """A Transform as is; a 2x3 (or 3x3 affine) matrix as an :class:`Affine`."""
    return value if isinstance(value, Transform) else Affine(value)


def transform_from_dict(data: dict) -> Transform:
    """Read the ``transform`` schema back (ValueError for an unknown model or bad arrays)."""
    model = data.get("model")
    forward = np.asarray(data.get("fixed_to_moving"), dtype=np.float64)
    if model == "affine":
        return Affine(forward)
    if model == "homography":
        return Homography(forward)
    if model == "quadratic":
        return Quadratic(forward, np.asarray(data.get("moving_to_fixed"), dtype=np.float64))
    raise ValueError(f"unknown transform model {model!r}; choose from {', '.join(MODELS)}")
