"""Image files in and out: one decoder for every image the package reads.

:func:`decode` is the only place sizes and pixels come from; everything else here is built on it:

* it refuses, with an InputError naming the file and the problem: missing, unreadable, not an
  image, truncated (a JPEG without its end-of-image marker after its scan, a PNG without its
  IEND chunk; bytes *after* a complete file are allowed), too small, too large, too elongated
  to be a fundus photograph;
* it applies the EXIF orientation tag once, to the size and to the pixels alike, exactly as
  ``PIL.ImageOps.exif_transpose`` (OpenCV's own rotation is switched off);
* it keeps the stored depth (uint8 or uint16) and channels (grey or BGR) and tells the value
  of full white (:func:`white_level`), by which 10/12/14/16-bit images are scaled to 8 bits
  for processing;
* it reads DICOM through pydicom (:mod:`fire_reg.io.dicom`), keeping the pixel spacing (mm).

:func:`read_image` and :func:`read_for_width` give the BGR uint8 images the registration
works on; :func:`image_size` reads the header only; :func:`write_image` writes an image at its
own depth (``warped.png`` of a 16-bit photograph is 16-bit).
"""
from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fire_reg.io import dicom
from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".gif",
                  *dicom.DICOM_SUFFIXES)

MIN_IMAGE_SIDE = 128
"""Smallest width and height (px) accepted: smaller images cannot show a retina's vessels."""
MAX_IMAGE_PIXELS = 400_000_000
"""Largest image accepted (pixels): a 20000 x 20000 photograph, several GB when decoded."""
MAX_IMAGE_SIDE = 32_766
"""Longest side accepted (px): OpenCV's ``remap`` takes sides below SHRT_MAX (32767) only."""
MAX_ASPECT_RATIO = 4.0
"""Longest side over shortest side accepted: fundus photographs are square to 16:9 (1.78);
a montage of several fields stays within 4:1. Longer strips are refused, not registered."""
WHITE_LEVELS = (255, 1023, 4095, 16383, 65535)
"""Full white of 8, 10, 12, 14 and 16-bit samples; see :func:`white_level`."""

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
"""The IEND chunk (length, type, CRC) that ends a complete PNG."""
ORIENTATION_TAG = 0x0112
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
           7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1]}
"""EXIF orientation -> the array operation that shows the image upright (as exif_transpose)."""
_REDUCE_FLAGS = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_PILLOW_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Decoded:
    """An image file as :func:`decode` read it.

    ``size``: (W, H) px of the full image, upright (EXIF orientation applied).
    ``format``: "JPEG", "PNG", "TIFF", "DICOM", ... (Pillow's format names).
    ``pixel_spacing_mm``: (x, y) mm per pixel of the full image where the file records it
    (DICOM), else None. ``pixels``: (h, w) grey or (h, w, 3) BGR, uint8 or uint16 as stored,
    upright, at 1/``reduce`` size; None for a header-only decode. ``white``: the value of full
    white in ``pixels`` (:func:`white_level`); None without pixels.
    """

    size: tuple[int, int]
    format: str
    pixel_spacing_mm: tuple[float, float] | None = None
    pixels: np.ndarray | None = None
    white: int | None = None

    @property
    def scales(self) -> tuple[float, float]:
        """(sx, sy) from full-image px to ``pixels`` px (for ``geometry.rescale``)."""
        return axis_scales(self.size[::-1], self.pixels.shape)

    def bgr8(self) -> np.ndarray:
        """``pixels`` as BGR uint8 (h, w, 3) for processing: deeper samples scaled by 255 /
        ``white``, grey repeated in the three channels."""
        image = self.pixels
        if image.dtype != np.uint8:
            image = cv2.convertScaleAbs(image, alpha=255.0 / self.white)
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def white_level(pixels: np.ndarray, bits_stored: int | None = None) -> int:
    """Value of full white: 255 for uint8; 2^bits_stored - 1 where the file says (DICOM);
    otherwise the smallest of :data:`WHITE_LEVELS` not below the largest sample, so that a
    12-bit camera image stored in a 16-bit PNG (max <= 4095) is scaled by 4095, not 65535."""
    if pixels.dtype == np.uint8:
        return 255
    if bits_stored:
        return 2 ** int(bits_stored) - 1
    top = int(pixels.max()) if pixels.size else 0
    return next(level for level in WHITE_LEVELS if level >= top)


def decode(path, reduce: int = 1, pixels: bool = True) -> Decoded:
    """Decode an image file (see the module's docstring); ``reduce`` in {1, 2, 4, 8} decodes at
    1/reduce size (JPEG: fast scaled decoding), ``pixels=False`` reads the header only.
    InputError naming the file for anything that is not a usable fundus photograph."""
    if reduce not in _REDUCE_FLAGS:
        raise ValueError(f"reduce must be one of {sorted(_REDUCE_FLAGS)}, got {reduce}")
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            if dicom.is_dicom(path, head):
                return _decode_dicom(path, reduce, pixels)
            fmt, stored, orientation = _probe(path, handle, head)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except PermissionError:
        raise InputError(path, "permission denied (not readable)") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, not an image") from None
    size = stored[::-1] if orientation in (5, 6, 7, 8) else stored
    _check_size(path, size)
    if not pixels:
        return Decoded(size, fmt)
    image = _orient(_pixels(path, reduce), orientation)
    _check_decoded(path, image, size, reduce)
    return Decoded(size, fmt, None, image, white_level(image))


def _probe(path: Path, handle, head: bytes) -> tuple[str, tuple[int, int], int]:
    """(format, stored (W, H), EXIF orientation 1-8) from the header; InputError when the file
    is not an image or is truncated."""
    from PIL import Image, UnidentifiedImageError

    with _PILLOW_LIMIT_LOCK:  # our MAX_IMAGE_PIXELS is below Pillow's bomb limit
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as image:
                fmt, size = image.format, image.size
                # Pillow decodes a whole PNG to look for an eXIf chunk after the image data;
                # the chunk belongs before it (PNG specification), where the header has it
                orientation = (1 if fmt == "PNG" and "exif" not in image.info
                               else image.getexif().get(ORIENTATION_TAG, 1))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise InputError(path, "not a readable image (corrupt or unsupported format)") \
                from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    if head.startswith((b"\xff\xd8", b"\x89PNG")):
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if head.startswith(b"\xff\xd8") and not _jpeg_complete(data):
                raise InputError(path, "truncated JPEG (no end-of-image marker after the "
                                       "image data): the file is incomplete")
            if head.startswith(b"\x89PNG") and not _png_complete(data):
                raise InputError(path, "truncated PNG (no IEND chunk): the file is incomplete")
    return fmt, tuple(size), orientation if orientation in range(1, 9) else 1


def _jpeg_complete(data) -> bool:
    """Whether a JPEG has its end-of-image marker (FF D9) after the start of its first scan.

    The header's segments are skipped by their lengths (an EXIF thumbnail carries an end
    marker of its own); inside compressed data FF D9 can only be that marker (FF is stuffed
    as FF 00). Bytes after the marker (camera trailers, a second picture) are allowed."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan
            break
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return data.rfind(b"\xff\xd9", pos) != -1  # from the end: complete files are quick


def _png_complete(data) -> bool:
    """Whether a PNG's chunks, walked by their lengths, reach the IEND chunk (at once when the
    file ends with it; trailing bytes after it are allowed)."""
    if data[-len(PNG_END):] == PNG_END:
        return True
    pos = 8
    while pos + 8 <= len(data):
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return False


def _check_size(path: Path, size) -> None:
    width, height = size
    if min(size) < MIN_IMAGE_SIDE:
        raise InputError(path, f"image of {width}x{height} px is too small for a fundus "
                               f"photograph (at least {MIN_IMAGE_SIDE} px each side)")
    if width * height > MAX_IMAGE_PIXELS or max(size) > MAX_IMAGE_SIDE:
        raise InputError(path, f"image of {width}x{height} px is too large (limit "
                               f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, {MAX_IMAGE_SIDE} px "
                               "a side)")
    if max(size) > MAX_ASPECT_RATIO * min(size):
        raise InputError(path, f"image of {width}x{height} px (aspect ratio "
                               f"{max(size) / min(size):.1f}:1) is not a fundus photograph "
                               f"(at most {MAX_ASPECT_RATIO:g}:1)")


def _pixels(path: Path, reduce: int) -> np.ndarray:
    """Stored pixels (not yet oriented) at 1/``reduce`` size, grey or BGR, uint8 or uint16."""
    flags = (cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
             | _REDUCE_FLAGS[reduce])
    image = cv2.imread(str(path), flags)
    if image is None:  # formats OpenCV cannot decode (GIF before OpenCV 4.11): Pillow
        image = _reduce(_read_with_pillow(path), reduce)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # alpha dropped
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"{image.dtype} samples are not supported (8- to 16-bit "
                               "unsigned integers)")
    return image


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as handle:
            return cv2.cvtColor(np.asarray(handle.convert("RGB")), cv2.COLOR_RGB2BGR)
    except OSError:
        raise InputError(path, "not a readable image (corrupt or unsupported format)") from None


def _reduce(image: np.ndarray, reduce: int) -> np.ndarray:
    """Shrink by ``reduce`` (area average), as OpenCV's reduced decoding of non-JPEG files."""
    if reduce == 1:
        return image
    height, width = image.shape[:2]
    return cv2.resize(image, (width // reduce, height // reduce), interpolation=cv2.INTER_AREA)


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(_ORIENT[orientation](image) if orientation in _ORIENT else image)


def _check_decoded(path: Path, image: np.ndarray, size, reduce: int) -> None:
    """The decoded pixels must be the header's size (within rounding at 1/``reduce``)."""
    height, width = image.shape[:2]
    if abs(width - size[0] / reduce) >= 1 or abs(height - size[1] / reduce) >= 1:
        raise InputError(path, f"decoded {width}x{height} px at 1/{reduce} size disagrees "
                               f"with its header's {size[0]}x{size[1]} px")


def _decode_dicom(path: Path, reduce: int, pixels: bool) -> Decoded:
    header = dicom.read_header(path)
    _check_size(path, header.size)
    if not pixels:
        return Decoded(header.size, "DICOM", header.pixel_spacing_mm)
    image, header = dicom.read_pixels(path)
    image = _reduce(image, reduce)
    _check_decoded(path, image, header.size, reduce)
    return Decoded(header.size, "DICOM", header.pixel_spacing_mm, image,
                   white_level(image, header.bits_stored))


def image_size(path) -> tuple[int, int]:
    """(W, H) px of an image file, upright, from its header (:func:`decode` without pixels)."""
    return decode(path, pixels=False).size


def read_image(path, reduce: int = 1) -> np.ndarray:
    """BGR uint8 (H, W, 3) of an image file for processing (:meth:`Decoded.bgr8`), decoded at
    1/``reduce`` size (1, 2, 4 or 8); InputError for any bad file."""
    return decode(path, reduce).bgr8()


def decode_reduction(width: int, work_width: int | None) -> int:
    """Largest decode reduction (1, 2, 4, 8) keeping >= ``work_width`` px (None: full size)."""
    factor = 1
    while work_width is not None and factor < 8 and width / (factor * 2) >= work_width:
        factor *= 2
    return factor


def axis_scales(full_shape, small_shape) -> tuple[float, float]:
    """(sx, sy) from an image grid of shape ``full_shape`` to a resized one (exact per axis;
    use with ``geometry.rescale``)."""
    return small_shape[1] / full_shape[1], small_shape[0] / full_shape[0]


def read_for_width(path, width: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode an image at a reduced size that keeps at least ``width`` px (fast JPEG decode;
    None: full size); returns (BGR uint8 image, (sx, sy) from original px to decoded px for
    ``geometry.rescale``)."""
    decoded = decode(path, decode_reduction(image_size(path)[0], width))
    return decoded.bgr8(), decoded.scales


def write_image(path, image: np.ndarray) -> None:
    """Write a grey or BGR image atomically at its own depth (uint8, or uint16 for PNG and
    TIFF); the format follows the suffix of ``path``."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"images are written as uint8 or uint16, got {image.dtype}")
    encoded, data = cv2.imencode(Path(path).suffix, image)
    if not encoded:
        raise ValueError(f"OpenCV cannot encode an image as {Path(path).suffix!r}")
    with atomic_path(path) as tmp:  # written by Python, so a full disk says so (imwrite: False)
        tmp.write_bytes(data.tobytes())
