"""Transform models between a fixed and a moving image: affine, homography and quadratic.

Conventions (as :mod:`fire_reg.geometry`)
---------------------------------------
* Points are ``(x, y)`` pixels, x right, y down, (0, 0) the centre of the top-left pixel.
* Every transform maps **fixed-image px to moving-image px** (``T(points)`` =
  :meth:`Transform.fixed_to_moving`) and back (:meth:`Transform.moving_to_fixed`;
  ``T.inverse`` is the Transform of the other direction, exact). Warping the moving image into
  the fixed frame samples it at ``fixed_to_moving(p)`` for each fixed pixel p
  (:meth:`Transform.warp`); FIRE control points of the moving image come into the fixed frame
  through ``moving_to_fixed``.
* ``affine``: a 2x3 matrix ``[x_m, y_m] = A @ [x, y, 1]``. ``homography``: a 3x3 matrix in
  homogeneous coordinates. ``quadratic`` (12 parameters): ``x_m = a . q(x, y)`` and
  ``y_m = b . q(x, y)`` with ``q = [1, x, y, x^2, x y, y^2]``, coefficients ``[a, b]`` (2x6):
  exactly the ``params`` of scikit-image's ``PolynomialTransform`` of order 2
  (:meth:`Transform.to_skimage`). A quadratic has no closed-form inverse, and the inverse of
  a quadratic is not one: the stored ``moving_to_fixed`` coefficients are the quadratic
  fitted to the inverse over the domain the map was made for (the common field of view; how
  far they are off there is :meth:`Quadratic.coefficient_inverse_error`), and
  :meth:`Quadratic.moving_to_fixed` starts from them and solves ``fixed_to_moving(p) = q``
  by Newton's method, exact to 1e-6 px.
* ``to_dict`` gives the schema of ``transform.json`` and ``results.json``::

      {"model": "quadratic", "fixed_to_moving": [[a0..a5], [b0..b5]],
       "moving_to_fixed": [[...], [...]]}

  (2x3 arrays for an affine, 3x3 for a homography), float64; :func:`transform_from_dict`
  reads it back.
* Each model is one class registered in :mod:`fire_reg.geometry.registry` (name, parameter
  count, minimum points and inliers, fit, schema, exact inverse, Jacobian); a new model is a
  class decorated with :func:`register_model`. :func:`fit_transform` and
  :func:`transform_from_dict` find models there.
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage import transform as sktransform

from fire_reg import geometry
from fire_reg.geometry.registry import (model_class, model_classes, model_names, register_model,
                                        unregister_model)
from fire_reg.geometry import warping
from fire_reg.geometry.local import Local  # registers "local" (quadratic + B-spline grid)
from fire_reg.geometry.transform_base import Inverse, Transform, _points

__all__ = ["Affine", "Homography", "Inverse", "Local", "Quadratic", "Transform", "as_transform",
           "control_point_errors", "fit_transform", "model_class", "model_classes",
           "model_names", "quadratic_terms", "register_model", "transform_from_dict",
           "unregister_model"]


@register_model
class Affine(Transform):
    """2x3 affine matrix, fixed px -> moving px."""

    model, parameters, min_points, min_inliers, weighted = "affine", 6, 3, 6, True

    def __init__(self, matrix):
        self.matrix = geometry.as_3x3(matrix)[:2]

    @classmethod
    def fit(cls, fixed, moving, weights=None, domain=None) -> "Affine":
        """Least squares ``moving ~ A fixed`` over (N, 2) point pairs, optionally weighted."""
        if weights is None:
            return cls(geometry.fit_affine(fixed, moving)[0])
        design = np.hstack([fixed, np.ones((len(fixed), 1))])
        root = np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
        solution, *_ = np.linalg.lstsq(design * root, moving * root, rcond=None)
        return cls(solution.T)

    @classmethod
    def from_arrays(cls, forward, backward=None) -> "Affine":
        return cls(forward)

    @classmethod
    def _from_skimage(cls, transform, domain) -> "Affine | None":
        params = getattr(transform, "params", None)
        if (isinstance(transform, sktransform.ProjectiveTransform) and params.shape == (3, 3)
                and np.array_equal(params[2], [0.0, 0.0, 1.0])):
            return cls(params[:2])
        return None

    def to_skimage(self) -> sktransform.AffineTransform:
        return sktransform.AffineTransform(matrix=geometry.as_3x3(self.matrix))

    def fixed_to_moving(self, points) -> np.ndarray:
        return geometry.apply(self.matrix, points)

    def moving_to_fixed(self, points) -> np.ndarray:
        return geometry.apply(geometry.invert(self.matrix), points)

    @property
    def inverse(self) -> "Affine":
        return Affine(geometry.invert(self.matrix))

    def jacobian(self, points) -> np.ndarray:
        return np.broadcast_to(self.matrix[:, :2], (len(_points(points)), 2, 2)).copy()
    def arrays(self):
        return self.matrix.copy(), geometry.invert(self.matrix)

    def composed(self, moving_affine, fixed_affine) -> "Affine":
        return Affine(geometry.compose(moving_affine, self.matrix, geometry.invert(fixed_affine)))

    def best_affine(self, points=None) -> np.ndarray:
        return self.matrix.copy()

    def warp_images(self, images, fixed_size=None, border_value: float = 0.0,
                    order: int = 1) -> list[np.ndarray]:
        """As :meth:`Transform.warp_images`; bilinear through ``cv2.warpAffine``
        (``WARP_INVERSE_MAP``, :func:`geometry.resample`), the other orders through the
        general path."""
        if order != 1:
            return super().warp_images(images, fixed_size, border_value, order)
        images = [np.asarray(image) for image in images]
        if fixed_size is None:
            fixed_size = (images[0].shape[1], images[0].shape[0])
        return [warping.sample(image, order, border_value, lambda native, flag, border:
                               geometry.resample(native, self.matrix, fixed_size, border))
                for image in images]


@register_model
class Homography(Transform):
    """3x3 homography, fixed px -> moving px in homogeneous coordinates (normalised H[2,2]=1)."""

    model, parameters, min_points, min_inliers = "homography", 8, 4, 12

    def __init__(self, matrix):
        matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
        self.matrix = matrix / matrix[2, 2]

    @classmethod
    def fit(cls, fixed, moving, weights=None, domain=None) -> "Homography":
        """Least squares (``cv2.findHomography``, method 0) over (N, 2) point pairs; it takes
        no weights. ValueError for a degenerate configuration."""
        if weights is not None:
            raise ValueError("a homography fit takes no weights")
        matrix, _ = cv2.findHomography(fixed, moving, 0)
        if matrix is None:
            raise ValueError("no homography fits these points (degenerate configuration)")
        return cls(matrix)

    @classmethod
    def from_arrays(cls, forward, backward=None) -> "Homography":
        return cls(forward)

    @classmethod
    def _from_skimage(cls, transform, domain) -> "Homography | None":
        if (isinstance(transform, sktransform.ProjectiveTransform)
                and transform.params.shape == (3, 3)):
            return cls(transform.params)
        return None

    def to_skimage(self) -> sktransform.ProjectiveTransform:
        return sktransform.ProjectiveTransform(matrix=self.matrix.copy())

    @staticmethod
    def _apply(matrix, points) -> np.ndarray:
        points = _points(points)
        mapped = np.hstack([points, np.ones((len(points), 1))]) @ matrix.T
        return mapped[:, :2] / mapped[:, 2:3]

    def fixed_to_moving(self, points) -> np.ndarray:
        return self._apply(self.matrix, points)

    def moving_to_fixed(self, points) -> np.ndarray:
        return self._apply(np.linalg.inv(self.matrix), points)

    @property
    def inverse(self) -> "Homography":
        return Homography(np.linalg.inv(self.matrix))

    def jacobian(self, points) -> np.ndarray:
        """``(H[i, j] - m_i H[2, j]) / w`` at each point, m the mapped point, w its weight."""
        points = _points(points)
        w = np.hstack([points, np.ones((len(points), 1))]) @ self.matrix[2]
        mapped = self.fixed_to_moving(points)
        return ((self.matrix[None, :2, :2] - mapped[:, :, None] * self.matrix[None, 2:3, :2])
                / w[:, None, None])

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


@register_model
class Quadratic(Transform):
    """12-parameter quadratic map fixed px -> moving px and its fitted inverse (both 2x6).

    Flexible: the fine stage and trust check that its evidence covers the common field of
    view, that it does not fold over and does not bend far from an affine.
    """

    model, parameters, min_points, min_inliers = "quadratic", 12, 6, 24
    weighted, flexible = True, True

    def __init__(self, forward, backward=None, domain=None, over_box: bool = False):
        """``forward`` / ``backward``: the two 2x6 coefficient arrays; ``backward`` None: fitted
        over ``domain`` ((N, 2) fixed px; ``over_box``: over a 20 x 20 grid spanning their
        bounding box) when first needed (:attr:`backward`), so that a fit that only measures
        residuals never pays for it."""
        self.forward = np.asarray(forward, dtype=np.float64).reshape(2, 6)
        if backward is None and domain is None:
            raise ValueError("a quadratic needs its backward coefficients or a domain to fit "
                             "them over")
        self._backward = (None if backward is None
                          else np.asarray(backward, dtype=np.float64).reshape(2, 6))
        self._domain = None if domain is None else np.array(_points(domain))
        self._over_box = over_box

    @property
    def backward(self) -> np.ndarray:
        """The 2x6 inverse coefficients (moving px -> fixed px, fitted: approximate)."""
        if self._backward is None:
            domain = geometry.box_grid(self._domain) if self._over_box else self._domain
            self._backward = _fit_quadratic(quadratic_terms(domain) @ self.forward.T, domain)
        return self._backward

    @classmethod
    def fit(cls, fixed, moving, weights=None, domain=None) -> "Quadratic":
        """Least squares (optionally weighted) over (N, 2) point pairs; the inverse is fitted
        over ``domain`` (default: the fixed points' bounding box, 20 x 20 grid)."""
        fixed = _points(fixed)
        return cls(_fit_quadratic(fixed, moving, weights),
                   domain=fixed if domain is None else domain, over_box=domain is None)

    @classmethod
    def from_arrays(cls, forward, backward=None) -> "Quadratic":
        if backward is None:
            raise ValueError("a quadratic needs its moving_to_fixed coefficients")
        return cls(forward, backward)

    @classmethod
    def _from_skimage(cls, transform, domain) -> "Quadratic | None":
        params = getattr(transform, "params", None)
        if not isinstance(transform, sktransform.PolynomialTransform) or params.shape != (2, 6):
            return None
        if domain is None:
            raise ValueError("a quadratic from scikit-image needs the domain ((N, 2) fixed "
                             "points where it is used) to fit its inverse over")
        return cls.from_forward(params, domain)

    def to_skimage(self) -> sktransform.PolynomialTransform:
        """scikit-image's ``PolynomialTransform`` (order 2): its ``params`` are our forward
        coefficients, in the same order ``[1, x, y, x^2, x y, y^2]``."""
        return sktransform.PolynomialTransform(self.forward.copy())

    def for_domain(self, domain) -> "Quadratic":
        """The same forward map with its inverse coefficients fitted over ``domain``."""
        return Quadratic.from_forward(self.forward, domain)

    def jacobian(self, points) -> np.ndarray:
        x, y = _points(points).T
        (_, a1, a2, a3, a4, a5), (_, b1, b2, b3, b4, b5) = self.forward
        return np.stack([np.stack([a1 + 2 * a3 * x + a4 * y, a2 + a4 * x + 2 * a5 * y], axis=1),
                         np.stack([b1 + 2 * b3 * x + b4 * y, b2 + b4 * x + 2 * b5 * y], axis=1)],
                        axis=1)

    @classmethod
    def from_forward(cls, forward, domain) -> "Quadratic":
        """A quadratic from its forward coefficients, the inverse fitted over ``domain``
        ((N, 2) fixed points where the map is used, e.g. the common field of view) when first
        needed."""
        return cls(forward, domain=domain)

    def fixed_to_moving(self, points) -> np.ndarray:
        return quadratic_terms(points) @ self.forward.T

    def moving_to_fixed(self, points, iterations: int = 8) -> np.ndarray:
        """Exact inverse: Newton's method on ``fixed_to_moving(p) = q`` from the fitted
        inverse quadratic (a point whose Jacobian is singular keeps its last estimate)."""
        targets = _points(points)
        estimate = quadratic_terms(targets) @ self.backward.T
        for _ in range(iterations):
            jacobian = self.jacobian(estimate).transpose(1, 2, 0)  # (2, 2, N)
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
    """Least-squares ``model`` transform (a registered name) with ``moving ~ T(fixed)`` over
    point pairs.

    ``domain``: (N, 2) fixed points over which a quadratic's inverse is fitted (default: the
    fixed points' bounding box, 20 x 20 grid). ``weights``: per-pair weights (models with
    ``weighted``: affine, quadratic). ValueError for an unknown model or too few points.
    """
    cls = model_class(model)
    fixed_pts, moving_pts = _points(fixed_pts), _points(moving_pts)
    if len(fixed_pts) != len(moving_pts) or len(fixed_pts) < cls.min_points:
        raise ValueError(f"a {model} needs at least {cls.min_points} point pairs, "
                         f"got {len(fixed_pts)}")
    return cls.fit(fixed_pts, moving_pts, weights=weights, domain=domain)


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
    """Read the ``transform`` schema back through the registry (ValueError for an unknown
    model or bad arrays); the same as ``Transform.from_dict``."""
    return Transform.from_dict(data)
