"""retinalysis-registration as a fire-reg *method*, for side-by-side benchmarks only.

retinalysis-registration (PyPI, AGPL-3.0, import name ``rtnls_registration``) is **not** a
dependency of fire-reg: it is the optional ``bench`` extra (``pip install -e ".[bench]"``), and
nothing under ``fire_reg/`` imports it. This module wraps it in the method interface of
:mod:`fire_reg.register.result` (``name``, ``decode_width``, ``register``) so that
:class:`fire_reg.evaluate.tester.Tester` scores it with the FIRE protocol exactly like the learned
Registrar and the classic baselines.

What the package does (``rtnls_registration.registration.Registration``): crops each image to
its fundus aperture at 512 px, enhances vessels (difference of Gaussians + Sato), SIFT
keypoints, RANSAC similarity, iterated homography refinement from spatial-neighbour matches,
and, with >= 20 refined matches, a quadratic residual on top. ``Registration()(image0,
image1)`` returns a transform whose ``apply`` maps **image0 px -> image1 px** (original
pixels) and ``apply_inverse`` the other way (checked on pairs with exact ground truth).

Conventions of this adapter
---------------------------
* Images: fire-reg hands over BGR uint8; the package expects RGB (``rtnls_fundusprep`` finds
  the aperture on channel 0, the red one), so they are converted.
* Direction: the package is called as ``Registration()(moving, fixed)``, the query -> reference
  order of its own FIRE evaluation (``evaluation.get_score`` maps query points with
  ``apply``). So :meth:`RetinalysisTransform.moving_to_fixed`, the direction the FIRE error
  uses, is the package's own ``apply``; :meth:`RetinalysisTransform.fixed_to_moving` starts
  from ``apply_inverse`` (exact for the projective parts, first order for the quadratic
  residual) and solves ``apply(x) = p`` by Newton's method, so the two directions are
  inverse to each other (to ~1e-6 px) as fire-reg's own quadratic is.
* Resolution: ``decode_width`` makes :func:`fire_reg.register.result.register_files` decode at full
  size (the package does its own 512 px working copy); :meth:`RetinalysisTransform.composed`
  keeps the map exact in any other pixel grid.
* Serialised model ``"retinalysis"``: the map is the package's composite (projective o
  quadratic residual o projective), which none of fire-reg's models is. ``to_dict`` says so:
  its ``fixed_to_moving`` / ``moving_to_fixed`` arrays are the least-squares quadratics
  (2x6, fire-reg's ``quadratic`` layout) of the map over a 20 x 20 grid of the fixed image
  (with their largest departure there), and ``external`` holds the package's own
  ``to_dict()`` with the pixel maps around it. :func:`fire_reg.geometry.transforms.transform_from_dict`
  does not read it back (unknown model), on purpose.
* Failures: the package returns the identity when it finds no plausible base transform; that,
  its ValueErrors (including numpy's LinAlgError), OpenCV errors, a non-finite map, fewer
  refined matches than :data:`fire_reg.evaluate.baselines.MIN_INLIERS` (the package then keeps its
  RANSAC similarity; a mirrored retina ends there) or a scale ``sqrt(|det|)`` of the best
  affine outside :data:`fire_reg.evaluate.baselines.SCALE_RANGE` give status ``"failed"`` with the
  identity and the reason, as :class:`fire_reg.evaluate.baselines.Baseline` does; otherwise ``"ok"``
  (the package estimates no error). ``seconds``: wall clock of the
  call (``time.perf_counter``), colour conversion included.
* Masks: the package finds the aperture itself (``rtnls_fundusprep``); the ``fixed_mask`` /
  ``moving_mask`` arguments are accepted for the method interface and not used.
"""
from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.evaluate.baselines import MIN_INLIERS, SCALE_RANGE
from fire_reg.register.result import Registration, failed, register_files

PACKAGE = "retinalysis-registration"
MODULE = "rtnls_registration"
INSTALL_HINT = 'pip install -e ".[bench]"'
FULL_SIZE = 1 << 20      # decode_width: more than any photograph, so JPEGs decode at full size
GRID = 20                # grid (GRID x GRID over the fixed image) of the fitted quadratics
NEWTON_STEPS = 6
NEWTON_STEP_PX = 1e-3    # finite-difference step of the Jacobian (px)


def available() -> bool:
    """Whether retinalysis-registration can be imported."""
    return importlib.util.find_spec(MODULE) is not None


def version() -> str | None:
    """The installed retinalysis-registration version, or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        return dist_version(PACKAGE)
    except PackageNotFoundError:
        return None


class _Failure(Exception):
    """The package found no trustworthy transform; the message says why."""


def _points(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _homogeneous(matrix, points) -> np.ndarray:
    """Points mapped by a 3x3 affine (last row 0 0 1)."""
    return geometry.apply(geometry.as_3x3(matrix)[:2], points)


def _has_quadratic(external) -> bool:
    parts = getattr(external, "transforms", [external])
    return any(type(part).__name__ == "Polynomial2DTransform" for part in parts)


class RetinalysisTransform(transforms.Transform):
    """retinalysis-registration's transform as a fire-reg :class:`~fire_reg.geometry.transforms.Transform`.

    ``external``: the package's transform, ``apply`` = image0 px -> image1 px (image0 the
    moving image, image1 the fixed image, original pixels). ``moving_in`` (3x3): this
    transform's moving px -> image0 px; ``fixed_out`` (3x3): image1 px -> this transform's
    fixed px (both the identity for original pixels; :meth:`composed` updates them).
    ``domain``: (N, 2) fixed points the serialised quadratics are fitted over (default: a
    GRID x GRID grid of ``fixed_size``).
    """

    model = "retinalysis"

    def __init__(self, external, fixed_size=None, moving_in=None, fixed_out=None, domain=None):
        if domain is None:
            if fixed_size is None:
                raise ValueError("RetinalysisTransform needs fixed_size or domain")
            domain = geometry.grid_points(fixed_size, GRID)
        self.external = external
        self.moving_in = geometry.as_3x3(np.eye(3) if moving_in is None else moving_in)
        self.fixed_out = geometry.as_3x3(np.eye(3) if fixed_out is None else fixed_out)
        self.domain = _points(domain)
        self.quadratic = _has_quadratic(external)
        # homography (8) + quadratic residual (12); the preprocessing crops are not fitted
        self.parameters = 8 + (12 if self.quadratic else 0)
        self._fitted = None

    def moving_to_fixed(self, points) -> np.ndarray:
        points = _points(points)
        if not len(points):
            return points.copy()
        image0 = _homogeneous(self.moving_in, points)
        return _homogeneous(self.fixed_out, np.asarray(self.external.apply(image0), np.float64))

    def fixed_to_moving(self, points) -> np.ndarray:
        points = _points(points)
        if not len(points):
            return points.copy()
        target = _homogeneous(np.linalg.inv(self.fixed_out), points)  # image1 px
        estimate = np.asarray(self.external.apply_inverse(target), np.float64)  # image0 px
        estimate = self._newton(estimate, target)
        return _homogeneous(np.linalg.inv(self.moving_in), estimate)

    def _newton(self, estimate, target) -> np.ndarray:
        """Solve ``external.apply(x) = target`` from ``estimate`` (finite-difference Jacobian;
        a point whose Jacobian is singular or whose map is not finite keeps its estimate)."""
        step = NEWTON_STEP_PX

        def apply(points):
            return np.asarray(self.external.apply(points), np.float64)

        for _ in range(NEWTON_STEPS):
            value = apply(estimate)
            residual = value - target
            finite = np.isfinite(residual).all(axis=1)
            if not finite.any() or np.abs(residual[finite]).max() < 1e-7:
                break
            dx = (apply(estimate + [step, 0.0]) - value) / step
            dy = (apply(estimate + [0.0, step]) - value) / step
            det = dx[:, 0] * dy[:, 1] - dy[:, 0] * dx[:, 1]
            safe = finite & np.isfinite(det) & (np.abs(det) > 1e-12)
            det = np.where(safe, det, 1.0)
            step_x = (dy[:, 1] * residual[:, 0] - dy[:, 0] * residual[:, 1]) / det
            step_y = (dx[:, 0] * residual[:, 1] - dx[:, 1] * residual[:, 0]) / det
            estimate = estimate - np.where(safe[:, None], np.stack([step_x, step_y], axis=1), 0.0)
        return estimate

    def composed(self, moving_affine, fixed_affine) -> "RetinalysisTransform":
        """``moving_affine o self o fixed_affine^-1``: exact, the external map is kept."""
        fixed_affine = geometry.as_3x3(fixed_affine)
        return RetinalysisTransform(
            self.external,
            moving_in=self.moving_in @ np.linalg.inv(geometry.as_3x3(moving_affine)),
            fixed_out=fixed_affine @ self.fixed_out,
            domain=_homogeneous(fixed_affine, self.domain))

    def _fit(self):
        """The quadratic fitted to the map over the domain and its largest departure (px)."""
        if self._fitted is None:
            mapped = self.fixed_to_moving(self.domain)
            quadratic = transforms.fit_transform("quadratic", self.domain, mapped,
                                                 domain=self.domain)
            departure = float(np.linalg.norm(quadratic.fixed_to_moving(self.domain) - mapped,
                                             axis=1).max())
            self._fitted = quadratic, departure
        return self._fitted

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The fitted quadratics (2x6 each) of the map and of its inverse over the domain:
        an approximation of this external composite model, not its parameters."""
        return self._fit()[0].arrays()

    def to_dict(self) -> dict:
        quadratic, departure = self._fit()
        forward, backward = quadratic.arrays()
        return {"model": self.model,
                "fixed_to_moving": forward.tolist(), "moving_to_fixed": backward.tolist(),
                "arrays": f"least-squares quadratics [1, x, y, x^2, x y, y^2] of the map over a "
                          f"{GRID} x {GRID} grid of the fixed image (an approximation: the "
                          "map is retinalysis-registration's composite, in 'external')",
                "arrays_max_departure_px": departure,
                "external_package": f"{PACKAGE} {version() or '?'}",
                "external_maps": "apply: image0 px -> image1 px; moving_px = inverse("
                                 "moving_in) o apply^-1 o inverse(fixed_out) (fixed_px)",
                "external": self.external.to_dict(),
                "moving_in": self.moving_in.tolist(), "fixed_out": self.fixed_out.tolist()}


def _rgb(image) -> np.ndarray:
    """BGR, BGRA or gray uint8 -> RGB uint8 (contiguous)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return np.ascontiguousarray(image[..., ::-1])


@dataclass(frozen=True)
class RetinalysisMethod:
    """retinalysis-registration with the method interface of :mod:`fire_reg.register.result`.

    ``options``: keyword arguments of ``rtnls_registration.registration.Registration`` (its
    defaults when empty).
    """

    name: str = "retinalysis-registration"
    decode_width: int = FULL_SIZE
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        """Import the package now (ImportError naming the extra when it is missing), so the
        first pair's seconds do not include the import."""
        if not available():
            raise ImportError(f"{PACKAGE} is not installed: {INSTALL_HINT}")
        importlib.import_module(f"{MODULE}.registration")

    def register(self, fixed, moving, fixed_mask=None, moving_mask=None) -> Registration:
        """Register two BGR images (fixed px -> moving px); failures come back as status
        "failed" with the identity, never raised."""
        start = time.perf_counter()
        fixed_size = (fixed.shape[1], fixed.shape[0])
        moving_size = (moving.shape[1], moving.shape[0])
        try:
            result = self._register(fixed, moving, fixed_size, moving_size)
        except (_Failure, ValueError, ArithmeticError, cv2.error) as error:
            result = failed(f"{type(error).__name__}: {error}" if not isinstance(error, _Failure)
                            else str(error), fixed_size, moving_size)
        result.seconds = time.perf_counter() - start
        return result

    def _register(self, fixed, moving, fixed_size, moving_size) -> Registration:
        from rtnls_registration.registration import Registration as Engine

        engine = Engine(**self.options)
        external = engine(_rgb(moving), _rgb(fixed))  # image0 = moving, image1 = fixed
        if getattr(engine, "base_transform", None) is None:
            raise _Failure("no plausible SIFT + RANSAC base transform (the package returned "
                           "the identity)")
        transform = RetinalysisTransform(external, fixed_size)
        grid = geometry.grid_points(fixed_size, 9)
        mapped = transform.fixed_to_moving(grid)
        if not np.isfinite(mapped).all():
            raise _Failure("the transform is not finite over the fixed image")
        matrix = transform.best_affine(grid)
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        matches = len(getattr(engine, "final_matches", []) or [])
        kept = ("homography + quadratic residual" if transform.quadratic
                else "homography" if matches >= 4 else "the RANSAC similarity")
        reason = (f"{PACKAGE}: SIFT on vessel-enhanced images, RANSAC similarity, {kept} "
                  f"({matches} refined matches)")
        if matches < MIN_INLIERS:
            raise _Failure(f"too few refined matches ({matches} < {MIN_INLIERS}); {reason}")
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            raise _Failure(f"implausible transform (scale {scale:.2f}); {reason}")
        return Registration(transform, "ok", reason, fixed_size, moving_size, matrix=matrix,
                            checks={"scale": scale, "refined_matches": matches,
                                    "inverse_error_px": transform.inverse_error(grid)})

    def register_files(self, fixed_path, moving_path) -> Registration:
        """Register two image files; the transform is in their original pixels."""
        return register_files(self, fixed_path, moving_path)
