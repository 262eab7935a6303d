"""DICOM ophthalmic photographs through pydicom (the ``dicom`` extra, also in ``test``)."""
import json
import sys

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.io.errors import InputError
from fire_reg.io.images import decode, image_size, read_image
from fire_reg.register.result import Registration, write_files

OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
RGB = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)


def _write(path, samples, photometric, bits_stored=None, spacing=(0.012, 0.010), frames=None,
           jpeg=None):
    """A small single-file DICOM Ophthalmic Photography image (explicit VR little endian, or
    JPEG baseline holding the bytes ``jpeg``); ``spacing``: DICOM PixelSpacing [row spacing,
    column spacing] in mm."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8BIT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if jpeg is None else JPEGBaseline8Bit
    data = Dataset()
    data.file_meta = meta
    data.SOPClassUID, data.SOPInstanceUID = OPHTHALMIC_PHOTOGRAPHY_8BIT, meta.MediaStorageSOPInstanceUID
    data.Modality = "OP"
    data.Rows, data.Columns = samples.shape[:2]
    data.SamplesPerPixel = 3 if samples.ndim == 3 else 1
    if samples.ndim == 3:
        data.PlanarConfiguration = 0
    data.PhotometricInterpretation = photometric
    data.BitsAllocated = samples.dtype.itemsize * 8
    data.BitsStored = bits_stored or data.BitsAllocated
    data.HighBit, data.PixelRepresentation = data.BitsStored - 1, 0
    if spacing is not None:
        data.PixelSpacing = list(spacing)
    if frames is not None:
        data.NumberOfFrames = frames
    if jpeg is None:
        data.PixelData = np.ascontiguousarray(samples).tobytes()
    else:
        data.PixelData = encapsulate([jpeg])
        data["PixelData"].VR, data["PixelData"].is_undefined_length = "OB", True
    data.save_as(path, enforce_file_format=True)
    return path


def test_colour_dicom_rgb_and_ybr(tmp_path):
    bgr = RGB[..., ::-1]
    ycc = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YCrCb)[..., [0, 2, 1]]  # Y Cb Cr
    for name, samples, photometric in (("rgb.dcm", RGB, "RGB"), ("ybr.dcm", ycc, "YBR_FULL")):
        path = _write(tmp_path / name, samples, photometric)
        decoded = decode(path)
        assert decoded.format == "DICOM" and decoded.size == (200, 150) == image_size(path)
        assert decoded.pixel_spacing_mm == (0.010, 0.012)  # (x, y): DICOM order reversed
        assert decoded.white == 255 and decoded.pixels.dtype == np.uint8
        assert np.abs(decoded.pixels.astype(int) - bgr).max() <= 2  # YBR -> RGB rounding
    # as cameras export them: JPEG baseline, YBR_FULL_422
    smooth = cv2.GaussianBlur(np.ascontiguousarray(bgr), (9, 9), 3)
    jpeg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()
    decoded = decode(_write(tmp_path / "jpeg.dcm", smooth, "YBR_FULL_422", jpeg=jpeg))
    assert decoded.pixels.shape == smooth.shape
    assert np.abs(decoded.pixels.astype(int) - smooth).mean() < 3  # colours, not Y Cb Cr


def test_monochrome_12_bit_dicom_scaled_and_detected_without_suffix(tmp_path):
    twelve = (RGB[..., 1].astype(np.int64) * 4095 // 255).astype(np.uint16)
    path = _write(tmp_path / "red_free_export", twelve, "MONOCHROME2", bits_stored=12,
                  spacing=None)
    decoded = decode(path)  # found by its "DICM" preamble, no .dcm suffix
    assert decoded.format == "DICOM" and decoded.pixel_spacing_mm is None
    assert decoded.white == 4095
    np.testing.assert_array_equal(decoded.pixels, twelve)
    assert np.abs(read_image(path)[..., 0].astype(int) - RGB[..., 1]).max() <= 1
    inverted = decode(_write(tmp_path / "mono1.dcm", twelve, "MONOCHROME1", bits_stored=12))
    np.testing.assert_array_equal(inverted.pixels, 4095 - twelve)  # white is bright
    half = decode(path, reduce=2)
    assert half.pixels.shape == (75, 100) and half.scales == (0.5, 0.5)


def test_dicom_refusals_are_one_line(tmp_path, monkeypatch):
    frames = _write(tmp_path / "stereo.dcm", np.concatenate([RGB, RGB]), "RGB", frames=2)
    (tmp_path / "text.dcm").write_text("not dicom")
    for path, words in ((frames, "multi-frame DICOM"), (tmp_path / "text.dcm", "not a readable "
                                                                               "DICOM")):
        with pytest.raises(InputError, match=f"{path.name}: {words}") as error:
            image_size(path)
        assert "\n" not in str(error.value)
    path = _write(tmp_path / "rgb.dcm", RGB, "RGB")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the extra were not installed
    with pytest.raises(InputError, match=r"rgb.dcm: .*pip install 'fire-reg\[dicom\]'"):
        read_image(path)


def test_pixel_spacing_recorded_in_transform_json(tmp_path):
    moving = _write(tmp_path / "moving.dcm", RGB, "RGB", spacing=(0.02, 0.015))
    fixed = tmp_path / "fixed.png"
    cv2.imwrite(str(fixed), RGB[..., ::-1])
    result = Registration(transforms.Affine(geometry.identity()), "ok", "given",
                          (200, 150), (200, 150))
    write_files(tmp_path / "out", result, fixed, moving)
    write_files(tmp_path / "headers", result, fixed, moving, pictures="none")  # headers only
    for out in ("out", "headers"):
        record = json.loads((tmp_path / out / "transform.json").read_text())
        assert record["pixel_spacing_mm"] == {"fixed": None, "moving": [0.015, 0.02]}
    warped = cv2.imread(str(tmp_path / "out" / "warped.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(warped, RGB[..., ::-1])
