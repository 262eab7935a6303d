"""Affine geometry shared by every stage (see docs/conventions.md).

Conventions
-----------
* Pixel coordinates are ``(x, y)``: x to the right, y down, the centre of the top-left pixel
  at (0, 0); the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
* A registration matrix ``M`` (2x3, float64) maps **fixed-image pixels to moving-image
  pixels**: ``[x_m, y_m] = M @ [x_f, y_f, 1]``. Warp the moving image into the fixed frame with
  ``cv2.warpAffine(moving, M, (W_f, H_f), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)``.
* Normalised coordinates of an image of size (W, H) map the image edges to -1 and +1:
  ``u = (2 x + 1) / W - 1``, ``v = (2 y + 1) / H - 1``. The network predicts ``A`` in
  normalised coordinates of its (square) input; :func:`pixel_from_normalized` and
  :func:`normalized_from_pixel` convert, for any pair of image sizes.
* Parameters: ``A[:, :2] = R(theta) @ [[sx, sx * shear], [0, sy]]`` and ``A[:, 2] = (tx, ty)``;
  theta in radians (counter-clockwise in a y-up frame, i.e. clockwise on screen), scales > 0,
  shear dimensionless. :func:`params_from_matrix` inverts :func:`matrix_from_params` for any
  matrix with positive determinant.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2

import numpy as np

PARAM_NAMES = ("tx", "ty", "theta", "sx", "sy", "shear")


def as_3x3(matrix) -> np.ndarray:
    """Return a 2x3 or 3x3 affine matrix as a 3x3 float64 array."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape == (3, 3):
        return matrix.copy()
    if matrix.shape != (2, 3):
        raise ValueError(f"affine matrix must be 2x3 or 3x3, got shape {matrix.shape}")
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def identity() -> np.ndarray:
    """The 2x3 identity transform."""
    return np.eye(2, 3)


def compose(*matrices) -> np.ndarray:
    """Compose affine maps right to left: ``compose(A, B)(p) = A(B(p))``; returns 2x3."""
    result = np.eye(3)
    for matrix in matrices:
        result = result @ as_3x3(matrix)
    return result[:2]


def invert(matrix) -> np.ndarray:
    """Inverse of a 2x3 affine map, as 2x3."""
    return np.linalg.inv(as_3x3(matrix))[:2]


def apply(matrix, points) -> np.ndarray:
    """Map an (N, 2) array of (x, y) points by a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    matrix = np.asarray(matrix, dtype=np.float64)[:2]
    return points @ matrix[:, :2].T + matrix[:, 2]


def fit_affine(src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine ``M`` with ``dst ~ M @ src``; returns (M 2x3, residuals in px).

    Needs at least three points that are not collinear.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 3:
        raise ValueError("an affine fit needs the same number (>= 3) of source and target points")
    design = np.hstack([src, np.ones((len(src), 1))])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("an affine fit needs points that are not all on one line")
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    matrix = solution.T
    return matrix, residuals(matrix, src, dst)


def fit_similarity(src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (rotation, one scale, translation), Umeyama's closed form.

    Returns (M 2x3, residuals in px) with ``dst ~ M @ src``.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError("a similarity fit needs the same number (>= 2) of source and target points")
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    variance = (src_c ** 2).sum() / len(src)
    if variance == 0:
        raise ValueError("a similarity fit needs at least two distinct source points")
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / variance
    linear = scale * rotation
    matrix = np.hstack([linear, (mean_dst - linear @ mean_src)[:, None]])
    return matrix, residuals(matrix, src, dst)


def residuals(matrix, src, dst) -> np.ndarray:
    """Euclidean distance (px) between ``matrix @ src`` and ``dst`` for each point."""
    return np.linalg.norm(apply(matrix, src) - np.asarray(dst, dtype=np.float64).reshape(-1, 2), axis=1)


def normalizer(width: float, height: float) -> np.ndarray:
    """3x3 map from pixel coordinates of a (W, H) image to normalised [-1, 1] coordinates."""
    return np.array([[2.0 / width, 0.0, 1.0 / width - 1.0],
                     [0.0, 2.0 / height, 1.0 / height - 1.0],
                     [0.0, 0.0, 1.0]])


def pixel_from_normalized(matrix_norm, fixed_size, moving_size) -> np.ndarray:
    """Pixel matrix (fixed px -> moving px) from a normalised one; sizes are (W, H)."""
    return compose(np.linalg.inv(normalizer(*moving_size)), matrix_norm, normalizer(*fixed_size))


def normalized_from_pixel(matrix_px, fixed_size, moving_size) -> np.ndarray:
    """Normalised matrix from a pixel matrix (fixed px -> moving px); sizes are (W, H)."""
    return compose(normalizer(*moving_size), matrix_px, np.linalg.inv(normalizer(*fixed_size)))


def rescale(matrix_px, fixed_scale, moving_scale) -> np.ndarray:
    """Express a pixel matrix at other resolutions.

    ``fixed_scale`` / ``moving_scale`` are (sx, sy) factors (or one float) from the old pixel
    grid of each image to the new one, e.g. 0.25 for a 4x downsampled image. Pixel centres are
    kept consistent (``x_new = s * (x_old + 0.5) - 0.5``).
    """
    return compose(scaling(moving_scale), matrix_px, np.linalg.inv(scaling(fixed_scale)))


def scaling(scale) -> np.ndarray:
    """3x3 map from pixels of an image to pixels of the same image resampled by ``scale``
    ((sx, sy) or one float, new px per old px; ``x_new = s * (x_old + 0.5) - 0.5``)."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def letterbox(size, target: int) -> np.ndarray:
    """3x3 map from pixels of a (W, H) image into a centred, aspect-kept ``target`` square.

    The longer side fills the square; the shorter one is centred with equal padding. The
    same map is used to build network inputs and to bring predictions back to pixels.
    """
    width, height = size
    scale = target / max(width, height)
    offset_x = (target - width * scale) / 2.0
    offset_y = (target - height * scale) / 2.0
    # pixel edges -0.5 .. W-0.5 map to offset .. offset + W*scale in edge coordinates
    return np.array([[scale, 0.0, offset_x + 0.5 * scale - 0.5],
                     [0.0, scale, offset_y + 0.5 * scale - 0.5],
                     [0.0, 0.0, 1.0]])


def pixel_from_letterboxed(matrix_box, fixed_size, moving_size, target: int) -> np.ndarray:
    """Pixel matrix of the original images from a matrix between their letterboxed squares."""
    return compose(np.linalg.inv(letterbox(moving_size, target)), matrix_box,
                   letterbox(fixed_size, target))


def letterboxed_from_pixel(matrix_px, fixed_size, moving_size, target: int) -> np.ndarray:
    """Matrix between letterboxed squares from a pixel matrix of the original images."""
    return compose(letterbox(moving_size, target), matrix_px,
                   np.linalg.inv(letterbox(fixed_size, target)))


def matrix_from_params(tx, ty, theta, sx, sy, shear=0.0, xp=np):
    """Build ``[[R(theta) @ [[sx, sx*shear], [0, sy]] | (tx, ty)]]``.

    Works element-wise on arrays of any batch shape with ``xp`` = numpy or ``keras.ops``;
    returns shape ``batch + (2, 3)``.
    """
    cos, sin = xp.cos(theta), xp.sin(theta)
    a00 = cos * sx
    a10 = sin * sx
    a01 = cos * sx * shear - sin * sy
    a11 = sin * sx * shear + cos * sy
    row0 = xp.stack([a00, a01, tx], axis=-1)
    row1 = xp.stack([a10, a11, ty], axis=-1)
    return xp.stack([row0, row1], axis=-2)


@dataclass(frozen=True)
class AffineParams:
    """Decomposed affine: translation (tx, ty), rotation theta (rad), scales, shear."""

    tx: float
    ty: float
    theta: float
    sx: float
    sy: float
    shear: float = 0.0

    def matrix(self) -> np.ndarray:
        """The 2x3 matrix these parameters describe."""
        return np.asarray(matrix_from_params(self.tx, self.ty, self.theta, self.sx, self.sy,
                                             self.shear), dtype=np.float64)


def params_from_matrix(matrix) -> AffineParams:
    """Decompose a 2x3 matrix with positive determinant (inverse of :func:`matrix_from_params`)."""
    matrix = np.asarray(matrix, dtype=np.float64)[:2]
    linear = matrix[:, :2]
    if np.linalg.det(linear) <= 0:
        raise ValueError("cannot decompose an affine matrix with a reflection or zero determinant")
    theta = float(np.arctan2(linear[1, 0], linear[0, 0]))
    sx = float(np.hypot(linear[0, 0], linear[1, 0]))
    cos, sin = np.cos(theta), np.sin(theta)
    upper = np.array([[cos, sin], [-sin, cos]]) @ linear
    return AffineParams(tx=float(matrix[0, 2]), ty=float(matrix[1, 2]), theta=theta, sx=sx,
                        sy=float(upper[1, 1]), shear=float(upper[0, 1] / sx))


def about_center(linear_matrix, center) -> np.ndarray:
    """2x3 affine applying a 2x2 ``linear_matrix`` about ``center`` (x, y) instead of the origin."""
    linear = np.asarray(linear_matrix, dtype=np.float64)[:2, :2]
    center = np.asarray(center, dtype=np.float64)
    return np.hstack([linear, (center - linear @ center)[:, None]])


def grid_points(size, count: int = 5) -> np.ndarray:
    """A ``count`` x ``count`` grid of (x, y) points spanning a (W, H) image (pixel centres)."""
    width, height = size
    xs = np.linspace(0, width - 1, count)
    ys = np.linspace(0, height - 1, count)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def box_grid(points, count: int = 20) -> np.ndarray:
    """A ``count`` x ``count`` grid of (x, y) points spanning the bounding box of (N, 2)
    ``points`` (px): where a fitted inverse is fitted when no domain is given."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    low, high = points.min(axis=0), points.max(axis=0)
    xs = np.linspace(low[0], high[0], count)
    ys = np.linspace(low[1], high[1], count)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def normalized_grid(count: int = 5, extent: float = 0.8) -> np.ndarray:
    """A ``count`` x ``count`` grid of normalised (u, v) points spanning [-extent, extent]^2."""
    ticks = np.linspace(-extent, extent, count)
    return np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)


def mean_point_distance(matrix_a, matrix_b, points) -> float:
    """Mean distance (px) between points mapped by two matrices: a transform-level error."""
    return float(np.linalg.norm(apply(matrix_a, points) - apply(matrix_b, points), axis=1).mean())


PYRDOWN_STEP = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
"""Pixel map of one ``cv2.pyrDown`` level: x_small = x / 2 (pyrDown keeps the even pixels)."""
def resample(image: np.ndarray, matrix_out_to_in, out_size,
             border_value: float = 0.0) -> np.ndarray:
    """Sample ``image`` at ``matrix_out_to_in @ p`` for each output pixel p (bilinear).

    ``out_size`` is (W, H). When the map shrinks the image by 2x or more, the input is first
    reduced with ``cv2.pyrDown`` (and the matrix adjusted) to avoid aliasing.
    """
    matrix = np.asarray(matrix_out_to_in, dtype=np.float64)[:2]
    image = np.ascontiguousarray(image)
    shrink = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    while shrink >= 2.0 and min(image.shape[:2]) >= 8:
        image = cv2.pyrDown(image)  # output pixel i is centred on input pixel 2i
        matrix = compose(PYRDOWN_STEP, matrix)
        shrink /= 2.0
    return cv2.warpAffine(image, matrix, tuple(int(v) for v in out_size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
