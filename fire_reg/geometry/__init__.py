"""Geometry: the pixel and matrix conventions and the transform models.

* :mod:`fire_reg.geometry.matrices`: 2x3 affine matrices (fit, compose, invert, rescale,
  letterbox, normalised <-> pixel, parameters), re-exported here as ``geometry.<name>``.
* :mod:`fire_reg.geometry.transforms`: the transform models (affine, homography, quadratic),
  :func:`~fire_reg.geometry.transforms.fit_transform` and the JSON schema; built on
  :mod:`~fire_reg.geometry.transform_base` (the ``Transform`` base class and exact inverse),
  :mod:`~fire_reg.geometry.registry` (models by name) and :mod:`~fire_reg.geometry.warping`
  (resampling any dtype and size).

Everything maps **fixed-image px -> moving-image px**; (x, y) with x right, y down and (0, 0)
the centre of the top-left pixel.
"""
from fire_reg.geometry.matrices import (
    AffineParams, PARAM_NAMES, PYRDOWN_STEP, about_center, apply, as_3x3, box_grid, compose,
    fit_affine, fit_similarity, grid_points, identity, invert, letterbox,
    letterboxed_from_pixel, matrix_from_params, mean_point_distance, normalized_from_pixel,
    normalized_grid, normalizer, params_from_matrix, pixel_from_letterboxed,
    pixel_from_normalized, resample, rescale, residuals, scaling)

__all__ = ["AffineParams", "PARAM_NAMES", "PYRDOWN_STEP", "about_center", "apply", "as_3x3",
           "box_grid", "compose", "fit_affine", "fit_similarity", "grid_points", "identity",
           "invert", "letterbox", "letterboxed_from_pixel", "matrix_from_params",
           "mean_point_distance", "normalized_from_pixel", "normalized_grid", "normalizer",
           "params_from_matrix", "pixel_from_letterboxed", "pixel_from_normalized", "resample",
           "rescale", "residuals", "scaling"]
