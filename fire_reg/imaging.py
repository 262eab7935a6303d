"""Image input and the preprocessing every stage shares (pixel conventions: fire_reg.geometry).

* :func:`read_image` reads a colour photograph (BGR uint8, as OpenCV) or fails with an
  :class:`~fire_reg.errors.InputError` naming the file.
* :func:`fov_mask` finds the camera aperture (the bright disc of a fundus photograph).
* :func:`vessel_map` is the network's input: the green channel, contrast-equalised (CLAHE),
  with the dark vessels brought out by a black top-hat, scaled to [0, 1] and zero outside
  the aperture. It is computed at a working width (default 512 px) so that the same
  structures are seen whatever the original resolution; :class:`VesselMapSettings` holds its
  settings (the one definition that shards, models and their cards record).
* :func:`resample` samples an image through an affine (output px -> input px), reducing the
  input with an image pyramid first so that large downscales do not alias.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.config import Config
from fire_reg.errors import InputError

PYRDOWN_STEP = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
"""Pixel map of one ``cv2.pyrDown`` level: x_small = x / 2 (pyrDown keeps the even pixels)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".gif")


@dataclass(frozen=True)
class VesselMapSettings(Config):
    """How :func:`vessel_map` turns a photograph into the network's input.

    ``work_width``: width in px the image is resized to (aspect kept) before anything else.
    ``clahe_clip``, ``clahe_tiles``: ``cv2.createCLAHE(clipLimit, (tiles, tiles))``.
    ``tophat_fraction``: diameter of the black top-hat's elliptic disc as a fraction of
    ``work_width`` (rounded, made odd, at least 3 px). ``percentile``: the percentile of the
    top-hat response inside the aperture that is scaled to 1.0.
    """

    work_width: int = 512
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    tophat_fraction: float = 1 / 40
    percentile: float = 99.0

    def __post_init__(self):
        self._integer("work_width", low=16)
        self._number("clahe_clip", above=0)
        self._integer("clahe_tiles", low=1)
        self._number("tophat_fraction", above=0, high=1)
        self._number("percentile", above=0, high=100)


WORK_WIDTH = VesselMapSettings().work_width


MIN_IMAGE_SIDE = 128
"""Smallest width and height (px) accepted: smaller images cannot show a retina's vessels."""
MAX_IMAGE_PIXELS = 400_000_000
"""Largest image accepted (pixels): a 20000 x 20000 photograph, several GB when decoded."""


def check_image_file(path) -> tuple[int, int]:
    """(W, H) of an image file from its header, after checking that it is complete.

    InputError naming the file for: missing, permission denied, not an image, truncated (a
    JPEG without its end-of-image marker, a PNG without its IEND chunk: decoders would fill
    the missing part with grey), too small (< :data:`MIN_IMAGE_SIDE`) or too large
    (> :data:`MAX_IMAGE_PIXELS`).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(max(0, path.stat().st_size - 4096))  # room for trailers after the end
            tail = handle.read()
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours is below
        try:
            with Image.open(path) as image:
                size = image.size
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except PermissionError:
        raise InputError(path, "permission denied (not readable)") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InputError(path, "not a readable image (corrupt or unsupported format)") from None
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise InputError(path, "truncated JPEG (no end-of-image marker): the file is incomplete")
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise InputError(path, "truncated PNG (no IEND chunk): the file is incomplete")
    if min(size) < MIN_IMAGE_SIDE:
        raise InputError(path, f"image of {size[0]}x{size[1]} px is too small for a fundus "
                               f"photograph (at least {MIN_IMAGE_SIDE} px each side)")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InputError(path, f"image of {size[0]}x{size[1]} px is too large (limit "
                               f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)")
    return size


def read_image(path, reduce: int = 1) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3); ``reduce`` in {1, 2, 4, 8} decodes at reduced size.

    The file is checked first (:func:`check_image_file`); InputError for any bad file.
    """
    path = Path(path)
    check_image_file(path)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}
    if reduce not in flags:
        raise ValueError(f"reduce must be one of {sorted(flags)}, got {reduce}")
    image = cv2.imread(str(path), flags[reduce])
    if image is None and path.suffix.lower() == ".gif":
        image = _read_with_pillow(path)
    if image is None or image.size == 0:
        raise InputError(path, "not a readable image (corrupt or unsupported format)")
    return image


def _read_with_pillow(path: Path):
    """OpenCV cannot decode GIF (e.g. DRIVE masks); Pillow can."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            return cv2.cvtColor(np.asarray(handle.convert("RGB")), cv2.COLOR_RGB2BGR)
    except (UnidentifiedImageError, OSError):
        return None


def decode_reduction(width: int, work_width: int) -> int:
    """Largest decode reduction (1, 2, 4, 8) for :func:`read_image` keeping >= ``work_width`` px."""
    factor = 1
    while factor < 8 and width / (factor * 2) >= work_width:
        factor *= 2
    return factor


def image_size(path) -> tuple[int, int]:
    """(W, H) of an image file, read from its header after :func:`check_image_file`."""
    return check_image_file(path)


def read_for_width(path, width: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode an image at a reduced size that keeps at least ``width`` px (fast JPEG decode);
    returns (BGR image, (sx, sy) from original px to decoded px for ``geometry.rescale``)."""
    full = image_size(path)
    image = read_image(path, decode_reduction(full[0], width))
    return image, axis_scales(full[::-1], image.shape)


def green(image: np.ndarray) -> np.ndarray:
    """The green channel of a BGR image (the vessels' best contrast), or a gray image as is."""
    return image if image.ndim == 2 else image[..., 1]


def fov_mask(image: np.ndarray, threshold: int = 20) -> np.ndarray:
    """Boolean field-of-view mask: the largest bright region of max(B, G, R).

    Fundus photographs are black outside the circular aperture; holes inside it are filled.
    """
    channel = image if image.ndim == 2 else cv2.max(cv2.max(image[..., 0], image[..., 1]),
                                                    image[..., 2])
    channel = cv2.medianBlur(np.ascontiguousarray(channel), 5)
    binary = (channel > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(channel.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def axis_scales(full_shape, small_shape) -> tuple[float, float]:
    """(sx, sy) from an image grid of shape ``full_shape`` to a resized one (exact per axis;
    use with ``geometry.rescale``)."""
    return small_shape[1] / full_shape[1], small_shape[0] / full_shape[0]


def resize_to_width(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Resize (area interpolation) so the image is ``width`` px wide; returns (image, scale)."""
    scale = width / image.shape[1]
    if abs(scale - 1.0) < 1e-9:
        return image, 1.0
    height = max(1, int(round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation), scale


def vessel_map(image: np.ndarray, mask: np.ndarray | None = None, work_width: int | None = None,
               settings: VesselMapSettings = VesselMapSettings()
               ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Vessel-enhanced green channel made with ``settings``, ``work_width`` px wide when given
    (it overrides ``settings.work_width``, e.g. for a finer map).

    Returns (map float32 in [0, 1], mask bool, (sx, sy)) where (sx, sy) = work px / input px
    per axis (use ``geometry.rescale`` with it to move matrices between the two grids).
    """
    if work_width is not None:
        settings = dataclasses.replace(settings, work_width=work_width)
    work_width = settings.work_width
    if mask is None:  # found on the reduced colour image: the same disc, far cheaper
        small_colour, _ = resize_to_width(image, work_width)
        small, small_mask = green(small_colour), fov_mask(small_colour)
    else:
        small, _ = resize_to_width(green(image), work_width)
        small_mask = cv2.resize(np.asarray(mask).astype(np.uint8), (small.shape[1], small.shape[0]),
                                interpolation=cv2.INTER_NEAREST).astype(bool)
    inner = cv2.erode(small_mask.astype(np.uint8),
                      cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))).astype(bool)
    filled = small.astype(np.uint8).copy()
    if inner.any():
        filled[~inner] = int(np.median(small[inner]))
    tiles = (settings.clahe_tiles, settings.clahe_tiles)
    equalised = cv2.createCLAHE(clipLimit=settings.clahe_clip, tileGridSize=tiles).apply(filled)
    diameter = max(3, int(round(work_width * settings.tophat_fraction)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
    vessels = cv2.morphologyEx(equalised, cv2.MORPH_BLACKHAT, kernel).astype(np.float32)
    vessels[~inner] = 0.0
    top = np.percentile(vessels[inner], settings.percentile) if inner.any() else 0.0
    vessels = np.clip(vessels / max(top, 1e-6), 0.0, 1.0)
    return vessels.astype(np.float32), small_mask, axis_scales(image.shape, small.shape)


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
        matrix = geometry.compose(PYRDOWN_STEP, matrix)
        shrink /= 2.0
    return cv2.warpAffine(image, matrix, tuple(int(v) for v in out_size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
