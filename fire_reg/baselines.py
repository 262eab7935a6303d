"""Classic registration baselines: SIFT / ORB + RANSAC, ECC, and the identity.

Every method has the signature ``method(fixed_bgr, moving_bgr, fixed_mask=None,
moving_mask=None) -> Result``. ``Result.matrix`` is a 2x3 float64 affine **mapping fixed-image
pixels to moving-image pixels** at the images' full resolution (``[x_m, y_m] = M @ [x_f, y_f,
1]``, conventions in :mod:`fire_reg.geometry`); warp the moving image into the fixed frame with
``cv2.warpAffine(moving, M, (W_f, H_f), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)``.
Masks are boolean or uint8 field-of-view masks at full resolution; without one,
:func:`fire_reg.imaging.fov_mask` finds the aperture.

A registration that cannot be trusted (too few matches, RANSAC without a model, ECC that does
not converge or ends with a correlation below 0.2, a scale ``sqrt(|det|)`` outside [0.5, 2])
returns ``status="failed"``, the identity matrix and a reason; OpenCV errors never escape.
``Result.seconds`` is the wall-clock time (``time.perf_counter``) of the call that made it.

* ``sift`` / ``orb``: keypoints on the CLAHE-equalised green channel at a working width of
  1024 px (bigger images are downscaled, smaller ones kept), restricted to the eroded field of
  view; Lowe ratio test 0.8; ``cv2.estimateAffine2D(fixed_pts, moving_pts)`` with RANSAC at a
  3 px reprojection threshold (working pixels); at least 6 inliers.
* ``ecc``: :func:`refine_ecc` from the identity (or ``init``): ``cv2.findTransformECC``
  (``MOTION_AFFINE``, template = fixed, input = moving, which yields fixed -> moving directly)
  on :func:`fire_reg.imaging.vessel_map` at 512 px, coarse to fine over a 3-level pyramid.
* ``identity``: the identity matrix (the floor every report shows).
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from fire_reg import geometry, imaging

FEATURE_WIDTH = 1024   # working width (px) of the keypoint methods
ECC_WIDTH = 512        # working width (px) of ECC at its finest level
RATIO = 0.8            # Lowe ratio test
RANSAC_PX = 3.0        # RANSAC reprojection threshold, working px
MIN_INLIERS = 6
SCALE_RANGE = (0.5, 2.0)  # plausible sqrt(|det|) of a fundus-to-fundus affine
MIN_ECC_CORRELATION = 0.2  # below it ECC "converged" on unrelated content


@dataclass(frozen=True)
class Result:
    """Outcome of one registration.

    ``matrix``: 2x3 float64, fixed px -> moving px at full resolution (identity on failure);
    ``status``: "ok" or "failed"; ``reason``: why it failed, or a short account of the fit;
    ``seconds``: wall-clock duration of the call.
    """

    matrix: np.ndarray = field(default_factory=geometry.identity)
    status: str = "ok"
    reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _failed(reason: str) -> Result:
    return Result(geometry.identity(), "failed", reason)


def _timed(method):
    """Measure the call with ``time.perf_counter`` and store it in ``Result.seconds``."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs) -> Result:
        start = time.perf_counter()
        result = method(*args, **kwargs)
        return replace(result, seconds=time.perf_counter() - start)
    return wrapper


def _checked(matrix_px, reason: str) -> Result:
    """An "ok" Result, or "failed" when the scale of the map is implausible."""
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(matrix_px)[:, :2]))))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return _failed(f"implausible transform (scale {scale:.2f}); {reason}")
    return Result(np.asarray(matrix_px, dtype=np.float64), "ok", reason)


def _small_mask(image, mask, size, erode_px: int) -> np.ndarray:
    """Field-of-view mask (uint8 0/255) resized to ``size`` (W, H) and eroded by ``erode_px``."""
    mask = imaging.fov_mask(image) if mask is None else np.asarray(mask) > 0
    small = cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_NEAREST)
    if erode_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1,) * 2)
        small = cv2.erode(small, kernel)
    return small


def _feature_input(image, mask, width: int):
    """CLAHE-equalised green channel at ``min(width, W)`` px, its eroded mask, (sx, sy)."""
    gray, _ = imaging.resize_to_width(imaging.green(image), min(width, image.shape[1]))
    gray = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.ascontiguousarray(gray))
    small_mask = _small_mask(image, mask, (gray.shape[1], gray.shape[0]),
                             erode_px=max(2, gray.shape[1] // 100))
    return gray, small_mask, imaging.axis_scales(image.shape, gray.shape)


def _feature_register(detector, norm: int, fixed, moving, fixed_mask, moving_mask) -> Result:
    """Detect, ratio-test match and fit an affine with RANSAC; shared by SIFT and ORB."""
    fixed_gray, fixed_small_mask, fixed_scale = _feature_input(fixed, fixed_mask, FEATURE_WIDTH)
    moving_gray, moving_small_mask, moving_scale = _feature_input(moving, moving_mask,
                                                                  FEATURE_WIDTH)
    kp_f, desc_f = detector.detectAndCompute(fixed_gray, fixed_small_mask)
    kp_m, desc_m = detector.detectAndCompute(moving_gray, moving_small_mask)
    if desc_f is None or desc_m is None or len(kp_f) < 2 or len(kp_m) < 2:
        return _failed(f"too few keypoints (fixed {len(kp_f)}, moving {len(kp_m)})")
    pairs = cv2.BFMatcher(norm).knnMatch(desc_f, desc_m, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_INLIERS:
        return _failed(f"too few matches after the ratio test ({len(good)} < {MIN_INLIERS})")
    src = np.float32([kp_f[m.queryIdx].pt for m in good])
    dst = np.float32([kp_m[m.trainIdx].pt for m in good])
    matrix, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                           ransacReprojThreshold=RANSAC_PX, maxIters=5000,
                                           confidence=0.995, refineIters=10)
    count = 0 if inliers is None else int(inliers.sum())
    if matrix is None or count < MIN_INLIERS:
        return _failed(f"RANSAC found no affine with >= {MIN_INLIERS} inliers "
                       f"({count} of {len(good)} matches)")
    full = geometry.rescale(matrix, 1.0 / np.array(fixed_scale), 1.0 / np.array(moving_scale))
    return _checked(full, f"{count} inliers of {len(good)} matches")


@_timed
def sift(fixed, moving, fixed_mask=None, moving_mask=None) -> Result:
    """SIFT keypoints + ratio test + RANSAC affine (see the module docstring)."""
    return _feature_register(cv2.SIFT_create(), cv2.NORM_L2, fixed, moving, fixed_mask,
                             moving_mask)


@_timed
def orb(fixed, moving, fixed_mask=None, moving_mask=None) -> Result:
    """ORB (5000 features, Hamming distance) + ratio test + RANSAC affine."""
    return _feature_register(cv2.ORB_create(nfeatures=5000), cv2.NORM_HAMMING, fixed, moving,
                             fixed_mask, moving_mask)


def _ecc_call(template, image, template_mask, image_mask, warp, criteria):
    """One ECC solve; both masks where OpenCV offers it (>= 4.13), else the input's mask."""
    if hasattr(cv2, "findTransformECCWithMask"):
        return cv2.findTransformECCWithMask(template, image, template_mask, image_mask, warp,
                                            cv2.MOTION_AFFINE, criteria, 5)
    return cv2.findTransformECC(template, image, warp, cv2.MOTION_AFFINE, criteria, image_mask, 5)


@_timed
def refine_ecc(fixed, moving, init_matrix, fixed_mask=None, moving_mask=None,
               work_width: int = ECC_WIDTH, levels: int = 3, iterations: int = 100,
               epsilon: float = 1e-5) -> Result:
    """Affine ECC from ``init_matrix`` (2x3, fixed px -> moving px, full resolution).

    Both images become :func:`fire_reg.imaging.vessel_map` at ``work_width`` px and
    :func:`ecc_on_maps` refines the matrix there. Returns the refined full-resolution matrix,
    or "failed" with the identity when ECC does not converge or the result is implausible.
    This is the ``ecc`` baseline (from the identity).
    """
    maps = []
    for image, mask in ((fixed, fixed_mask), (moving, moving_mask)):
        maps.append(imaging.vessel_map(image, None if mask is None else np.asarray(mask) > 0,
                                       work_width))
    (fixed_map, fixed_fov, fixed_scale), (moving_map, moving_fov, moving_scale) = maps
    result = ecc_on_maps(fixed_map, fixed_fov, moving_map, moving_fov,
                         geometry.rescale(init_matrix, fixed_scale, moving_scale), levels,
                         iterations, epsilon)
    if not result.ok:
        return result
    full = geometry.rescale(result.matrix, 1.0 / np.array(fixed_scale),
                            1.0 / np.array(moving_scale))
    return _checked(full, result.reason)


def ecc_on_maps(fixed_map, fixed_fov, moving_map, moving_fov, init_matrix, levels: int = 3,
                iterations: int = 100, epsilon: float = 1e-5) -> Result:
    """Affine ECC between two vessel maps (float32) with boolean fields of view.

    ``init_matrix`` and the result map fixed-map px -> moving-map px. ECC (``MOTION_AFFINE``,
    template = fixed, input = moving, masks = the two fields of view) runs on a pyramid of
    ``levels`` levels (each half the previous size), coarse to fine, each level started from
    the previous one's result. The learned Registrar calls this on the maps it already has.
    """
    fixed_levels = _ecc_pyramid(fixed_map, fixed_fov, levels)
    moving_levels = _ecc_pyramid(moving_map, moving_fov, levels)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, epsilon)
    matrix = np.asarray(init_matrix, dtype=np.float64)[:2]  # finest-level px throughout
    rho = float("nan")
    for level in range(levels - 1, -1, -1):
        (fixed_small, fixed_small_mask), (moving_small, moving_small_mask) = \
            fixed_levels[level], moving_levels[level]
        step = geometry.as_3x3(imaging.PYRDOWN_STEP)
        to_level = np.linalg.matrix_power(step, level)  # finest px -> this level's px
        warp = geometry.compose(to_level, matrix, np.linalg.inv(to_level)).astype(np.float32)
        try:
            rho, warp = _ecc_call(fixed_small, moving_small, fixed_small_mask, moving_small_mask,
                                  warp, criteria)
        except cv2.error as error:
            return _failed(f"ECC did not converge at pyramid level {level} "
                           f"({fixed_small.shape[1]} px wide): {_cv_message(error)}")
        matrix = geometry.compose(np.linalg.inv(to_level), warp.astype(np.float64), to_level)
    if rho < MIN_ECC_CORRELATION:
        return _failed(f"ECC correlation {rho:.3f} < {MIN_ECC_CORRELATION} after warping")
    return Result(matrix, "ok", f"ECC correlation {rho:.3f}")


def _cv_message(error: cv2.error) -> str:
    """The human part of an OpenCV error ("Iterations do not converge: NaN encountered.")."""
    found = re.search(r"\(-?\d+:([^)]*)\)\s*(.*?)\s*(?:in function|$)", str(error), re.S)
    return f"{found[1]}: {found[2]}" if found else str(error).strip()


def _ecc_pyramid(vessels, fov, levels: int):
    """[(vessel map float32, mask uint8 0/255)], the given map first, then halved per level."""
    pyramid = [(vessels, fov.astype(np.uint8) * 255)]
    for _ in range(levels - 1):
        smaller = cv2.pyrDown(pyramid[-1][0])
        pyramid.append((smaller, cv2.resize(pyramid[-1][1], (smaller.shape[1], smaller.shape[0]),
                                            interpolation=cv2.INTER_NEAREST)))
    return pyramid


def ecc(fixed, moving, fixed_mask=None, moving_mask=None, init=None) -> Result:
    """ECC baseline: :func:`refine_ecc` from ``init`` (2x3, fixed px -> moving px) or identity."""
    return refine_ecc(fixed, moving, geometry.identity() if init is None else init,
                      fixed_mask, moving_mask)


@_timed
def identity(fixed, moving, fixed_mask=None, moving_mask=None) -> Result:
    """The identity transform: the floor every method must beat."""
    return Result(geometry.identity(), "ok", "identity")


METHODS = {"sift": sift, "orb": orb, "ecc": ecc, "identity": identity}


def run(name: str, fixed, moving, fixed_mask=None, moving_mask=None) -> Result:
    """Run the baseline ``name`` (a key of :data:`METHODS`); ValueError for an unknown name.

    ``Result.seconds`` is the method's wall-clock time (every method times itself).
    """
    if name not in METHODS:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](fixed, moving, fixed_mask, moving_mask)
