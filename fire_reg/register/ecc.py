"""Affine ECC on the vessel maps of a pair (OpenCV ``findTransformECC``).

``MOTION_AFFINE``, template = fixed, input = moving, which yields fixed -> moving directly, over
an image pyramid, coarse to fine, in map pixels. The correlation ECC maximises and returns is
the NCC of :func:`fire_reg.imaging.similarity.ncc` (template and warped input inside the mask,
after OpenCV's Gaussian filter); whether a step is kept is decided by the Registrar with
``VesselMaps.similarity``, the same measure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.config import Config, FieldError
from fire_reg.register.maps import VesselMaps

MIN_ECC_CORRELATION = 0.2  # below it ECC "converged" on unrelated content


@dataclass(frozen=True)
class EccOptions(Config):
    """ECC settings: pyramid ``levels`` (each half the previous size), per-level
    ``iterations`` and convergence ``epsilon`` (OpenCV's criteria), Gaussian filter size
    (px, odd), and ``finest_level``: the last level solved (0: the maps themselves; 1: half
    their width, for a start that a finer search takes over). Checked on construction
    (FieldError naming the field)."""

    levels: int = 3
    iterations: int = 100
    epsilon: float = 1e-5
    gauss_filter_size: int = 5
    finest_level: int = 0

    def __post_init__(self):
        self._integer("levels", low=1)
        self._integer("iterations", low=1)
        self._number("epsilon", above=0)
        self._integer("gauss_filter_size", low=1)
        if self.gauss_filter_size % 2 == 0:
            raise FieldError("gauss_filter_size", f"must be odd, got {self.gauss_filter_size}")
        self._integer("finest_level", low=0)
        if self.finest_level >= self.levels:
            raise FieldError("finest_level", f"must be below levels ({self.levels}), got "
                                             f"{self.finest_level}")


def _ecc_call(template, image, template_mask, image_mask, warp, criteria, gauss: int):
    """One ECC solve; both masks where OpenCV offers it (>= 4.13), else the input's mask."""
    if hasattr(cv2, "findTransformECCWithMask"):
        return cv2.findTransformECCWithMask(template, image, template_mask, image_mask, warp,
                                            cv2.MOTION_AFFINE, criteria, gauss)
    return cv2.findTransformECC(template, image, warp, cv2.MOTION_AFFINE, criteria, image_mask,
                                gauss)


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


@dataclass(frozen=True)
class EccOutcome:
    """``matrix`` (2x3, map px, fixed -> moving) or None when ECC failed, and why."""

    matrix: np.ndarray | None
    reason: str


def ecc_on_maps(maps: VesselMaps, init_matrix, options: EccOptions = EccOptions()) -> EccOutcome:
    """Affine ECC between the maps of a pair from ``init_matrix`` (2x3, map px).

    Coarse to fine over ``options.levels`` pyramid levels down to ``options.finest_level``,
    each started from the previous one's result; the matrix is in the maps' px throughout.
    Fails (matrix None, with the reason) when OpenCV does not converge or the final
    correlation is below :data:`MIN_ECC_CORRELATION`.
    """
    fixed_levels = maps.fixed_derived(("ecc pyramid", options.levels), lambda: _ecc_pyramid(
        maps.fixed, maps.fixed_fov, options.levels))
    moving_levels = _ecc_pyramid(maps.moving, maps.moving_fov, options.levels)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, options.iterations,
                options.epsilon)
    matrix = np.asarray(init_matrix, dtype=np.float64)[:2]  # finest-level px throughout
    rho = float("nan")
    step = geometry.as_3x3(geometry.PYRDOWN_STEP)
    for level in range(options.levels - 1, options.finest_level - 1, -1):
        (fixed_small, fixed_mask), (moving_small, moving_mask) = \
            fixed_levels[level], moving_levels[level]
        to_level = np.linalg.matrix_power(step, level)  # finest px -> this level's px
        warp = geometry.compose(to_level, matrix, np.linalg.inv(to_level)).astype(np.float32)
        try:
            rho, warp = _ecc_call(fixed_small, moving_small, fixed_mask, moving_mask, warp,
                                  criteria, options.gauss_filter_size)
        except cv2.error as error:
            return EccOutcome(None, f"ECC did not converge at pyramid level {level} "
                                    f"({fixed_small.shape[1]} px wide): {_cv_message(error)}")
        matrix = geometry.compose(np.linalg.inv(to_level), warp.astype(np.float64), to_level)
    if rho < MIN_ECC_CORRELATION:
        return EccOutcome(None, f"ECC correlation {rho:.3f} < {MIN_ECC_CORRELATION} after warping")
    return EccOutcome(matrix, f"ECC correlation {rho:.3f}")


# --------------------------------------------------------------------------- fine stage
