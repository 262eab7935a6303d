"""Resampling an image of any dtype and size through OpenCV, keeping its dtype.

* ``order`` is scikit-image's: 0 nearest (labels and masks keep exactly their values), 1
  bilinear, 3 bicubic.
* dtypes OpenCV interpolates (uint8, uint16, int16, float32, float64) go through as they are. A
  bool image is resampled as 0 / 255 and thresholded at half (order 0: unchanged labels).
  Any other numeric dtype (int32, int64, uint32, int8, float16, ...) is resampled in float64
  (exact for integers up to 2^53) and rounded and clipped back.
* ``cv2.remap`` refuses images and maps with a side of 32767 px (SHRT_MAX) or more;
  :func:`remap` then works tile by tile, each tile reading only the part of the source it
  needs.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

INTERPOLATION = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}
_NATIVE = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
_REMAP_LIMIT = 32767  # cv2.remap: every side of source and output < SHRT_MAX
_TILE = 8192  # output tile side when the limit is hit
_MARGIN = 2  # source px beyond the sampled points that bicubic interpolation reads


def sample(image, order: int, border_value: float,
           resample: Callable[[np.ndarray, int, float], np.ndarray]) -> np.ndarray:
    """Run ``resample(native_image, cv2_interpolation, native_border)`` on a version of
    ``image`` OpenCV can interpolate and return its result in ``image``'s dtype.

    ValueError for an ``order`` other than 0, 1 or 3, or an image that is not numeric.
    """
    if order not in INTERPOLATION:
        raise ValueError(f"order must be 0 (nearest), 1 (bilinear) or 3 (bicubic), got {order!r}")
    image = np.asarray(image)
    flag, dtype = INTERPOLATION[order], image.dtype
    if dtype == np.bool_:
        native = image.astype(np.uint8) * np.uint8(255)
        result = resample(native, flag, 255.0 * bool(border_value)) >= 128
    elif any(dtype == kind for kind in _NATIVE):
        result = resample(np.ascontiguousarray(image), flag, float(border_value))
    elif np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating):
        result = resample(image.astype(np.float64), flag, float(border_value))
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            result = np.clip(np.rint(result), info.min, info.max)
        result = result.astype(dtype)
    else:
        raise ValueError(f"cannot warp an image of dtype {dtype}")
    return result.reshape(result.shape[:2] + image.shape[2:])  # OpenCV drops a single channel


def warp_with_maps(image, map_x, map_y, order: int = 1, border_value: float = 0.0,
                   shrink: float = 1.0) -> np.ndarray:
    """``image`` sampled at (``map_x``, ``map_y``) (float32 (H, W), source px) for each output
    pixel, in ``image``'s dtype and channels. With ``order`` >= 1 and ``shrink`` (how much the
    map reduces the image, e.g. sqrt|det| of its best affine) >= 2, the image is first reduced
    with ``cv2.pyrDown`` (no aliasing); order 0 never blends values."""
    def resample(native, flag, border):
        level, xs, ys = native, map_x, map_y
        factor = shrink if order > 0 else 1.0
        while factor >= 2.0 and min(level.shape[:2]) >= 8:
            level = cv2.pyrDown(level)
            xs, ys = xs / 2.0, ys / 2.0  # pyrDown keeps the even pixels: x / 2
            factor /= 2.0
        return remap(level, xs, ys, flag, border)

    return sample(image, order, border_value, resample)


def remap(image: np.ndarray, map_x, map_y, flag: int, border_value: float) -> np.ndarray:
    """``cv2.remap`` with a constant border, for any size (tile by tile when a side of the
    image or of the maps reaches 32767 px); the output keeps the image's channel axis."""
    map_x = np.asarray(map_x, dtype=np.float32)
    map_y = np.asarray(map_y, dtype=np.float32)
    if max(*image.shape[:2], *map_x.shape) < _REMAP_LIMIT:
        result = cv2.remap(image, map_x, map_y, flag, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(border_value,) * 4)
        return result.reshape(map_x.shape + image.shape[2:])
    out = np.empty(map_x.shape + image.shape[2:], image.dtype)
    for top in range(0, map_x.shape[0], _TILE):
        for left in range(0, map_x.shape[1], _TILE):
            tile = np.s_[top:top + _TILE, left:left + _TILE]
            out[tile] = _remap_tile(image, map_x[tile], map_y[tile], flag, border_value)
    return out


def _remap_tile(image, map_x, map_y, flag: int, border_value: float) -> np.ndarray:
    """One output tile, read from the part of ``image`` its points reach; a tile whose source
    part is still too large is split in two."""
    height, width = image.shape[:2]
    finite = np.isfinite(map_x) & np.isfinite(map_y)
    if finite.any():
        x0 = max(int(np.floor(map_x[finite].min())) - _MARGIN, 0)
        x1 = min(int(np.ceil(map_x[finite].max())) + _MARGIN + 1, width)
        y0 = max(int(np.floor(map_y[finite].min())) - _MARGIN, 0)
        y1 = min(int(np.ceil(map_y[finite].max())) + _MARGIN + 1, height)
    if not finite.any() or x0 >= x1 or y0 >= y1:  # every point is beyond the image
        return np.full(map_x.shape + image.shape[2:], border_value, image.dtype)
    if max(x1 - x0, y1 - y0) >= _REMAP_LIMIT:
        axis = int(map_x.shape[1] > map_x.shape[0])
        half = map_x.shape[axis] // 2
        first, second = (np.s_[:half], np.s_[half:]) if axis == 0 else (np.s_[:, :half],
                                                                       np.s_[:, half:])
        return np.concatenate([_remap_tile(image, map_x[part], map_y[part], flag, border_value)
                               for part in (first, second)], axis=axis)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    return cv2.remap(crop, map_x - np.float32(x0), map_y - np.float32(y0), flag,
                     borderMode=cv2.BORDER_CONSTANT,
                     borderValue=(border_value,) * 4).reshape(map_x.shape + image.shape[2:])
