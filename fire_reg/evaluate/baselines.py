"""Classic registration baselines: SIFT / ORB + RANSAC, SIFT + RANSAC homography, ECC, mutual
information (SimpleITK), identity.

Each baseline is a *method* (:mod:`fire_reg.register.result`): ``name``, ``decode_width`` and
``register(fixed_bgr, moving_bgr, fixed_mask=None, moving_mask=None) -> Registration``, the
same result type as the learned Registrar's. Its transform maps **fixed-image px to
moving-image px** of the images given (conventions in :mod:`fire_reg.geometry.transforms`). Masks are
boolean or uint8 field-of-view masks; without one, :func:`fire_reg.imaging.vessels.fov_mask` finds the
aperture.

A registration that cannot be trusted (too few matches, RANSAC without a model, ECC that does
not converge or ends with a correlation below 0.2, a scale ``sqrt(|det|)`` outside [0.5, 2])
has ``status="failed"``, the identity and a reason; OpenCV errors never escape.
``seconds`` is the wall-clock time (``time.perf_counter``) of the call.

* ``sift`` / ``orb``: keypoints on the CLAHE-equalised green channel at a working width of
  1024 px (bigger images are downscaled, smaller ones kept), restricted to the eroded field of
  view; Lowe ratio test 0.8; ``cv2.estimateAffine2D(fixed_pts, moving_pts)`` with RANSAC at a
  3 px reprojection threshold (working pixels); at least 6 inliers.
* ``sift-homography``: the same SIFT matches, ``cv2.findHomography`` with RANSAC (3 px).
* ``ecc``: :func:`fire_reg.register.ecc.ecc_on_maps` from the identity on vessel maps at 512 px,
  coarse to fine over a 3-level pyramid.
* ``mi``: the classic multimodal recipe (elastix's default affine run, in-process through
  SimpleITK, the optional extra ``itk``): Mattes mutual information (32 bins, 25 % of the
  fixed field sampled at random with a fixed seed, one work unit: reproducible) between the
  green / grey channels at :data:`MI_WIDTH` px, an affine transform started by centring the
  images (``CenteredTransformInitializer``, GEOMETRY), regular-step gradient descent with
  scales from the physical shift, coarse to fine over shrink factors 4, 2, 1 (Gaussian smoothing
  2, 1, 0 px), both fields of view (eroded) as metric masks. ITK's transform maps fixed
  physical points to moving physical points; with unit spacing and zero origin (how the
  arrays are handed over) those are our pixel coordinates at the working width. SimpleITK
  errors, a metric that is not finite and mutual information below :data:`MI_MIN` give
  "failed". MI is blind to which way the vessels point, not to what else differs: on colour
  against a fluorescein angiogram it often stops in a wrong optimum and says "ok" (a
  plausibility check only, as the other baselines).
* ``identity``: the identity (the floor every report shows).
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from fire_reg.io.images import axis_scales
from fire_reg.imaging.vessels import VesselMapSettings, fov_mask, green, resize_to_width
from fire_reg.register.ecc import ecc_on_maps
from fire_reg.register.maps import VesselMaps
from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.register.exports import ITK_EXTRA
from fire_reg.register.result import Registration, failed, register_files

FEATURE_WIDTH = 1024   # working width (px) of the keypoint methods
ECC_WIDTH = 512        # working width (px) of ECC at its finest level
RATIO = 0.8            # Lowe ratio test
RANSAC_PX = 3.0        # RANSAC reprojection threshold, working px
MIN_INLIERS = 6
SCALE_RANGE = (0.5, 2.0)  # plausible sqrt(|det|) of a fundus-to-fundus map
MI_WIDTH = 512         # working width (px) of the mutual-information baseline
MI_BINS = 32
MI_ITERATIONS = 100    # at most, per pyramid level
MI_SAMPLING = 0.25     # share of the fixed field's pixels sampled (at random, once per level)
MI_SHRINK, MI_SIGMAS = (4, 2, 1), (2.0, 1.0, 0.0)  # pyramid levels, smoothing in working px
MI_MIN = 0.05          # mutual information (nats) below which two images share nothing:
                       # 4x what independent noise images give (0.01-0.015)


class _Failure(Exception):
    """A baseline found no trustworthy transform; the message says why."""


def _checked(transform: transforms.Transform, reason: str, fixed, moving) -> Registration:
    """An "ok" Registration, or "failed" when the scale of the map is implausible."""
    size = (fixed.shape[1], fixed.shape[0])
    matrix = transform.best_affine(geometry.grid_points(size, 9))
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise _Failure(f"implausible transform (scale {scale:.2f}); {reason}")
    return Registration(transform, "ok", reason, size, (moving.shape[1], moving.shape[0]),
                        matrix=matrix)


def _small_mask(image, mask, size, erode_px: int) -> np.ndarray:
    """Field-of-view mask (uint8 0/255) resized to ``size`` (W, H) and eroded by ``erode_px``."""
    mask = fov_mask(image) if mask is None else np.asarray(mask) > 0
    small = cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_NEAREST)
    if erode_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1,) * 2)
        small = cv2.erode(small, kernel)
    return small


def _feature_input(image, mask, width: int):
    """CLAHE-equalised green channel at ``min(width, W)`` px, its eroded mask, (sx, sy)."""
    gray, _ = resize_to_width(green(image), min(width, image.shape[1]))
    gray = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.ascontiguousarray(gray))
    small_mask = _small_mask(image, mask, (gray.shape[1], gray.shape[0]),
                             erode_px=max(2, gray.shape[1] // 100))
    return gray, small_mask, axis_scales(image.shape, gray.shape)


def _feature_matches(detector, norm: int, fixed, moving, fixed_mask, moving_mask):
    """Ratio-tested keypoint matches (fixed pts, moving pts, working px) and the scales."""
    fixed_gray, fixed_small_mask, fixed_scale = _feature_input(fixed, fixed_mask, FEATURE_WIDTH)
    moving_gray, moving_small_mask, moving_scale = _feature_input(moving, moving_mask,
                                                                  FEATURE_WIDTH)
    kp_f, desc_f = detector.detectAndCompute(fixed_gray, fixed_small_mask)
    kp_m, desc_m = detector.detectAndCompute(moving_gray, moving_small_mask)
    if desc_f is None or desc_m is None or len(kp_f) < 2 or len(kp_m) < 2:
        raise _Failure(f"too few keypoints (fixed {len(kp_f)}, moving {len(kp_m)})")
    pairs = cv2.BFMatcher(norm).knnMatch(desc_f, desc_m, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_INLIERS:
        raise _Failure(f"too few matches after the ratio test ({len(good)} < {MIN_INLIERS})")
    src = np.float32([kp_f[m.queryIdx].pt for m in good])
    dst = np.float32([kp_m[m.trainIdx].pt for m in good])
    return src, dst, fixed_scale, moving_scale


def _ransac(model: str, src, dst):
    """RANSAC affine (``cv2.estimateAffine2D``) or homography (``cv2.findHomography``)."""
    if model == "affine":
        matrix, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                               ransacReprojThreshold=RANSAC_PX, maxIters=5000,
                                               confidence=0.995, refineIters=10)
        return (None if matrix is None else transforms.Affine(matrix)), inliers
    matrix, inliers = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX, maxIters=5000,
                                         confidence=0.995)
    return (None if matrix is None else transforms.Homography(matrix)), inliers


def _keypoint_method(detector_factory, norm: int, model: str):
    """A keypoint baseline: detect, ratio-test match, RANSAC-fit ``model``."""
    def register(fixed, moving, fixed_mask=None, moving_mask=None) -> Registration:
        src, dst, fixed_scale, moving_scale = _feature_matches(
            detector_factory(), norm, fixed, moving, fixed_mask, moving_mask)
        transform, inliers = _ransac(model, src, dst)
        count = 0 if inliers is None else int(inliers.sum())
        if transform is None or count < MIN_INLIERS:
            raise _Failure(f"RANSAC found no {model} with >= {MIN_INLIERS} inliers "
                           f"({count} of {len(src)} matches)")
        full = transform.rescaled(1.0 / np.array(fixed_scale), 1.0 / np.array(moving_scale))
        return _checked(full, f"{count} inliers of {len(src)} matches", fixed, moving)
    return register


def _ecc(fixed, moving, fixed_mask=None, moving_mask=None) -> Registration:
    """Affine ECC from the identity on vessel maps at :data:`ECC_WIDTH` px."""
    maps = VesselMaps.of(fixed, moving, VesselMapSettings(work_width=ECC_WIDTH),
                                None if fixed_mask is None else np.asarray(fixed_mask) > 0,
                                None if moving_mask is None else np.asarray(moving_mask) > 0)
    start = geometry.rescale(geometry.identity(), maps.fixed_scale, maps.moving_scale)
    outcome = ecc_on_maps(maps, start)
    if outcome.matrix is None:
        raise _Failure(outcome.reason)
    return _checked(maps.to_full(transforms.Affine(outcome.matrix)), outcome.reason, fixed, moving)


def _mutual_information(fixed, moving, fixed_mask=None, moving_mask=None) -> Registration:
    """Affine by Mattes mutual information (SimpleITK) at :data:`MI_WIDTH` px (module doc)."""
    import SimpleITK as sitk

    def itk_input(image, mask):
        gray, _ = resize_to_width(green(image), min(MI_WIDTH, image.shape[1]))
        small_mask = _small_mask(image, mask, (gray.shape[1], gray.shape[0]), erode_px=4)
        return (sitk.GetImageFromArray(gray.astype(np.float32)),
                sitk.GetImageFromArray(small_mask), axis_scales(image.shape, gray.shape))

    fixed_image, fixed_field, fixed_scale = itk_input(fixed, fixed_mask)
    moving_image, moving_field, moving_scale = itk_input(moving, moving_mask)
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(1)  # reproducible: with several work units the order of the
    method.SetNumberOfWorkUnits(1)  # metric's sums, and the result, varied from run to run
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=MI_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(MI_SAMPLING, seed=1)
    method.SetMetricFixedMask(fixed_field)
    method.SetMetricMovingMask(moving_field)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=MI_ITERATIONS,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(MI_SHRINK))
    method.SetSmoothingSigmasPerLevel(list(MI_SIGMAS))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.AffineTransform(2),
        sitk.CenteredTransformInitializerFilter.GEOMETRY), inPlace=False)
    try:
        itk_transform = method.Execute(fixed_image, moving_image)
    except RuntimeError as error:  # SimpleITK's errors; the last line says what went wrong
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise _Failure(f"SimpleITK: {lines[-1] if lines else 'registration failed'}") from None
    information = -method.GetMetricValue()  # ITK minimises the negative
    if not np.isfinite(information):
        raise _Failure(f"mutual information is not finite ({information})")
    if information < MI_MIN:
        raise _Failure(f"mutual information {information:.3f} below {MI_MIN}: "
                       "the images share no structure")
    # the affine through the images of three points (any ITK transform type, centre included)
    origin, unit_x, unit_y = (np.array(itk_transform.TransformPoint(point))
                              for point in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))
    working = transforms.Affine(np.column_stack([unit_x - origin, unit_y - origin, origin]))
    full = working.rescaled(1.0 / np.array(fixed_scale), 1.0 / np.array(moving_scale))
    return _checked(full, f"Mattes mutual information {information:.3f} after "
                          f"{method.GetOptimizerIteration()} iterations at the finest level",
                    fixed, moving)


def _identity(fixed, moving, fixed_mask=None, moving_mask=None) -> Registration:
    return _checked(transforms.Affine(geometry.identity()), "identity", fixed, moving)


@dataclass(frozen=True)
class Baseline:
    """A classic method with the method interface of :mod:`fire_reg.register.result`."""

    name: str
    function: Callable
    decode_width: int = FEATURE_WIDTH

    def register(self, fixed, moving, fixed_mask=None, moving_mask=None) -> Registration:
        """Register two BGR images; failures come back as status "failed", never raised."""
        start = time.perf_counter()
        try:
            result = self.function(fixed, moving, fixed_mask, moving_mask)
        except (_Failure, cv2.error) as error:
            result = failed(str(error), (fixed.shape[1], fixed.shape[0]),
                            (moving.shape[1], moving.shape[0]))
        result.seconds = time.perf_counter() - start
        return result

    def register_files(self, fixed_path, moving_path) -> Registration:
        """Register two image files; the transform is in their original pixels."""
        return register_files(self, fixed_path, moving_path)

    def __reduce__(self):
        """A built-in baseline is pickled by its name (worker processes look it up)."""
        if METHODS.get(self.name) is self:
            return baseline, (self.name,)
        return super().__reduce__()


METHODS = {baseline.name: baseline for baseline in (
    Baseline("sift", _keypoint_method(cv2.SIFT_create, cv2.NORM_L2, "affine")),
    Baseline("sift-homography", _keypoint_method(cv2.SIFT_create, cv2.NORM_L2, "homography")),
    Baseline("orb", _keypoint_method(lambda: cv2.ORB_create(nfeatures=5000), cv2.NORM_HAMMING,
                                     "affine")),
    Baseline("ecc", _ecc, decode_width=ECC_WIDTH),
    Baseline("mi", _mutual_information, decode_width=MI_WIDTH),
    Baseline("identity", _identity, decode_width=64),
)}


def baseline(name: str) -> Baseline:
    """The baseline called ``name``; ValueError naming the choices for an unknown one, or
    saying how to install SimpleITK for ``mi`` without it."""
    if name not in METHODS:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(METHODS)}")
    if name == "mi" and importlib.util.find_spec("SimpleITK") is None:
        raise ValueError(f"baseline 'mi' needs SimpleITK: {ITK_EXTRA}")
    return METHODS[name]
