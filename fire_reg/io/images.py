"""Image files in: decoding photographs (BGR uint8, as OpenCV) with clear errors.

* :func:`check_image_file` reads a header and refuses what cannot be a fundus photograph.
* :func:`read_image` reads a colour photograph or fails with an :class:`InputError` naming
  the file; :func:`read_for_width` decodes at reduced size (JPEG 1/2, 1/4, 1/8) where enough.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fire_reg.io.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".gif")


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


def axis_scales(full_shape, small_shape) -> tuple[float, float]:
    """(sx, sy) from an image grid of shape ``full_shape`` to a resized one (exact per axis;
    use with ``geometry.rescale``)."""
    return small_shape[1] / full_shape[1], small_shape[0] / full_shape[0]


def image_size(path) -> tuple[int, int]:
    """(W, H) of an image file, read from its header after :func:`check_image_file`."""
    return check_image_file(path)


def read_for_width(path, width: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode an image at a reduced size that keeps at least ``width`` px (fast JPEG decode);
    returns (BGR image, (sx, sy) from original px to decoded px for ``geometry.rescale``)."""
    full = image_size(path)
    image = read_image(path, decode_reduction(full[0], width))
    return image, axis_scales(full[::-1], image.shape)
