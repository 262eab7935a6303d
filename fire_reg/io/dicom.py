"""DICOM photographs in, through pydicom (optional extra: ``pip install 'fire-reg[dicom]'``).

Reads single-frame images such as Ophthalmic Photography (SOP classes
1.2.840.10008.5.1.4.1.1.77.1.5.1 / .2, 8 / 16 bit) and Secondary Capture: colour (RGB; the YBR
photometric interpretations are converted to RGB by pydicom >= 3) and monochrome (MONOCHROME1
is inverted so that white is bright). Pixel spacing in mm comes from PixelSpacing, else
ImagerPixelSpacing; DICOM stores it as [row spacing, column spacing], we return (x, y) =
(column spacing, row spacing), the order of our (W, H) sizes. Used by
:func:`fire_reg.io.images.decode`, which does every check common to all formats.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fire_reg.io.errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom")
COLOURS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
GREYS = ("MONOCHROME1", "MONOCHROME2")


def is_dicom(path: Path, head: bytes) -> bool:
    """Whether a file is DICOM: a .dcm / .dicom suffix, or "DICM" after the 128-byte preamble
    (``head``: the file's first 132 bytes or more)."""
    return path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM"


@dataclass(frozen=True)
class DicomHeader:
    """What the header of a DICOM image says: (W, H) px, significant bits per sample,
    photometric interpretation and (x, y) pixel spacing in mm (None when not recorded)."""

    size: tuple[int, int]
    bits_stored: int
    photometric: str
    pixel_spacing_mm: tuple[float, float] | None


def _read(path: Path, pixels: bool):
    """The pydicom dataset (without its pixel data unless ``pixels``); InputError when
    pydicom is missing or the file is not DICOM."""
    try:
        import pydicom
    except ImportError:
        raise InputError(path, "is a DICOM file; reading DICOM needs pydicom: "
                               "pip install 'fire-reg[dicom]'") from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except pydicom.errors.InvalidDicomError:
        raise InputError(path, "not a readable DICOM file (no DICOM file header)") from None
    except Exception as error:  # pydicom raises many types for malformed files
        raise InputError(path, f"not a readable DICOM file ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _spacing(dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = dataset.get(keyword)
        if values is not None and len(values) == 2 and all(float(v) > 0 for v in values):
            return float(values[1]), float(values[0])
    return None


def _header(path: Path, dataset) -> DicomHeader:
    if "Rows" not in dataset or "Columns" not in dataset:
        raise InputError(path, "DICOM file holds no image (no Rows / Columns)")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(path, f"multi-frame DICOM ({frames} frames): export the one frame "
                               "to register as its own file")
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if photometric not in COLOURS + GREYS:
        raise InputError(path, f"DICOM photometric interpretation {photometric or 'missing'} "
                               f"is not supported ({', '.join(GREYS + COLOURS)})")
    bits = int(dataset.get("BitsAllocated", 0))
    if bits not in (8, 16):
        raise InputError(path, f"DICOM pixels of {bits} bits are not supported (8 or 16)")
    if int(dataset.get("PixelRepresentation", 0)) != 0:
        raise InputError(path, "signed DICOM pixels are not supported (unsigned only)")
    return DicomHeader((int(dataset.Columns), int(dataset.Rows)),
                       int(dataset.get("BitsStored", bits)), photometric, _spacing(dataset))


def read_header(path) -> DicomHeader:
    """The header of a DICOM image file (pixel data not read); InputError when it is not a
    single-frame 8/16-bit unsigned image in a supported photometric interpretation."""
    path = Path(path)
    return _header(path, _read(path, pixels=False))


def read_pixels(path) -> tuple[np.ndarray, DicomHeader]:
    """(pixels, header) of a DICOM image: (H, W) grey or (H, W, 3) BGR, uint8 or uint16 as
    stored, white bright; InputError when the pixel data cannot be decoded."""
    path = Path(path)
    dataset = _read(path, pixels=True)
    header = _header(path, dataset)
    try:
        pixels = np.asarray(dataset.pixel_array)
    except Exception as error:  # missing decoder plugin, truncated or malformed pixel data
        raise InputError(path, f"DICOM pixel data cannot be decoded ({_first_line(error)})") \
            from None
    if header.photometric == "MONOCHROME1":
        pixels = (2 ** header.bits_stored - 1) - np.minimum(pixels, 2 ** header.bits_stored - 1)
    if pixels.ndim == 3:
        pixels = pixels[..., ::-1]  # RGB (pydicom) -> BGR (OpenCV)
    return np.ascontiguousarray(pixels), header
