"""Images as clinics store them: EXIF orientation, trailing bytes, 12/16-bit, extreme aspect
ratios, warped.png at the input's depth; all through the one decoder (fire_reg.io.images)."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.io import images
from fire_reg.io.errors import InputError
from fire_reg.io.images import decode, image_size, read_for_width, read_image, white_level
from fire_reg.register.result import Registration, register_files, write_files


def _picture(height=160, width=256) -> np.ndarray:
    """A smooth RGB picture with no symmetry: a wrong flip or rotation changes it a lot."""
    ys, xs = np.mgrid[0:height, 0:width]
    picture = np.stack([xs * 255 // width, ys * 255 // height, (xs + 2 * ys) % 256], axis=2)
    picture = np.ascontiguousarray(picture, dtype=np.uint8)
    cv2.circle(picture, (width // 5, height // 4), 15, (255, 255, 255), -1)
    return picture


def _save_oriented(path, orientation: int, picture=None):
    """Save a picture with an EXIF orientation tag (format from the suffix); returns what
    ``ImageOps.exif_transpose`` shows, as BGR."""
    image = Image.fromarray(_picture() if picture is None else picture)
    exif = image.getexif()
    exif[images.ORIENTATION_TAG] = orientation
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as stored:
        upright = ImageOps.exif_transpose(stored)
        return np.asarray(upright.convert("RGB"))[..., ::-1]  # BGR, as our decoder returns


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_size_and_pixels_as_exif_transpose(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    upright = _save_oriented(path, orientation)
    height, width = upright.shape[:2]
    assert image_size(path) == (width, height)
    pixels = read_image(path)
    assert pixels.shape == upright.shape
    assert np.abs(pixels.astype(int) - upright).mean() < 1.5  # two JPEG decoders
    # reduced decoding (JPEG scaled IDCT) keeps the same orientation
    half = read_image(path, reduce=2)
    assert half.shape[:2] == ((height + 1) // 2, (width + 1) // 2)
    expected = cv2.resize(upright, half.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(half.astype(int) - expected).mean() < 4
    small, scales = read_for_width(path, 64)
    assert scales == (small.shape[1] / width, small.shape[0] / height)
    assert abs(scales[0] - scales[1]) < 0.02 and scales[0] <= 0.5 and small.shape[1] >= 64


def test_exif_orientation_of_a_png(tmp_path):
    path = tmp_path / "o6.png"
    upright = _save_oriented(path, 6)  # Pillow writes an eXIf chunk; lossless, so exact
    assert image_size(path) == (160, 256)
    np.testing.assert_array_equal(read_image(path), upright)


class _Identity:
    """A method that answers the identity in the pixels it was given."""

    name, decode_width = "identity", 64

    def register(self, fixed, moving):
        return Registration(transforms.Affine(geometry.identity()), "ok", "identity",
                            fixed.shape[1::-1], moving.shape[1::-1])


def test_rotated_jpeg_registers_with_consistent_scales(tmp_path):
    """The bug: size from the tag-less header, pixels rotated -> scales 0.5 / 2.0, 'ok'."""
    fixed, moving = tmp_path / "fixed.jpg", tmp_path / "moving.jpg"
    upright = _save_oriented(moving, 6)
    cv2.imwrite(str(fixed), upright)  # same picture, stored upright without a tag
    result = register_files(_Identity(), fixed, moving)
    assert result.moving_size == result.fixed_size == upright.shape[1::-1]
    np.testing.assert_allclose(result.matrix, geometry.identity(), atol=0.02)


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """The JPEG with an APP1 segment (e.g. an EXIF thumbnail) inserted after its SOI."""
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_trailing_bytes_accepted_truncation_refused(tmp_path):
    jpeg = cv2.imencode(".jpg", _picture())[1].tobytes()
    reference = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes(jpeg + b"\x00" * 6000 + b"camera maker notes")
    assert image_size(trailer) == (256, 160)
    np.testing.assert_array_equal(read_image(trailer), reference)
    # a header segment holding an end marker of its own (as a thumbnail does) does not
    # make a file cut inside its image data complete
    thumbnail = _with_app1(jpeg, b"Exif\x00\x00\xff\xd8thumb\xff\xd9")
    (tmp_path / "thumb.jpg").write_bytes(thumbnail)
    assert image_size(tmp_path / "thumb.jpg") == (256, 160)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(thumbnail[:len(thumbnail) * 2 // 3])
    for reader in (image_size, read_image):
        with pytest.raises(InputError, match=r"cut\.jpg: truncated JPEG") as error:
            reader(cut)
        assert "\n" not in str(error.value)
    png = cv2.imencode(".png", _picture())[1].tobytes()
    (tmp_path / "trailer.png").write_bytes(png + b"trailing bytes")
    assert image_size(tmp_path / "trailer.png") == (256, 160)


def test_white_level_rule():
    assert white_level(np.full((2, 2), 7, np.uint8)) == 255
    assert [white_level(np.array([v], np.uint16)) for v in (200, 1000, 4095, 4096, 40000)] \
        == [255, 1023, 4095, 16383, 65535]
    assert white_level(np.array([5], np.uint16), bits_stored=12) == 4095


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_12_bit_image_in_16_bit_file_is_scaled_by_its_range(tmp_path, suffix):
    eight = _picture()[..., ::-1]  # BGR
    twelve = (eight.astype(np.int64) * 4095 // 255).astype(np.uint16)
    path = tmp_path / f"twelve{suffix}"
    cv2.imwrite(str(path), twelve)
    decoded = decode(path)
    assert decoded.pixels.dtype == np.uint16 and decoded.white == 4095
    np.testing.assert_array_equal(decoded.pixels, twelve)  # stored values kept
    assert np.abs(read_image(path).astype(int) - eight).max() <= 1  # not nearly black
    grey = tmp_path / f"grey{suffix}"
    cv2.imwrite(str(grey), twelve[..., 1] * 16)  # full 16-bit range
    assert decode(grey).white == 65535 and decode(grey).pixels.ndim == 2
    assert np.abs(read_image(grey)[..., 0].astype(int) - eight[..., 1]).max() <= 1


@pytest.mark.parametrize("size", [(128, 20000), (4000, 128), (300, 1300)])
def test_extreme_aspect_ratio_refused_by_the_cli_in_one_line(tmp_path, capsys, size):
    from fire_reg.cli import main

    width, height = size
    strip, good = tmp_path / "strip.png", tmp_path / "good.png"
    cv2.imwrite(str(strip), np.zeros((height, width), np.uint8))
    cv2.imwrite(str(good), _picture())
    with pytest.raises(InputError, match=f"strip.png: image of {width}x{height} px .*not a "
                                         "fundus photograph"):
        image_size(strip)
    capsys.readouterr()
    assert main(["register", str(good), str(strip), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strip.png" in err and "aspect ratio" in err
    assert not (tmp_path / "out").exists()


def test_side_beyond_opencv_remap_limit_refused(tmp_path, monkeypatch):
    path = tmp_path / "long.png"
    cv2.imwrite(str(path), np.zeros((200, 300), np.uint8))
    monkeypatch.setattr(images, "MAX_IMAGE_SIDE", 299)
    with pytest.raises(InputError, match="long.png: image of 300x200 px is too large"):
        image_size(path)


def test_pixels_disagreeing_with_the_header_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "odd.png"
    cv2.imwrite(str(path), _picture())
    monkeypatch.setattr(images, "_pixels", lambda path, reduce: _picture().swapaxes(0, 1))
    with pytest.raises(InputError, match="odd.png: decoded 160x256 px .* header's 256x160"):
        read_image(path)


@pytest.mark.parametrize("depth", ["colour16", "grey8", "colour8"])
def test_warped_png_keeps_bit_depth_and_channels(tmp_path, depth):
    picture = _picture()[..., ::-1]
    moving = {"colour16": picture.astype(np.uint16) * 257, "grey8": picture[..., 1],
              "colour8": picture}[depth]
    fixed_path, moving_path = tmp_path / "fixed.png", tmp_path / "moving.png"
    cv2.imwrite(str(fixed_path), picture)
    cv2.imwrite(str(moving_path), moving)
    shift = geometry.identity()
    shift[:, 2] = (3, 2)  # fixed px -> moving px
    result = Registration(transforms.Affine(shift), "ok", "given", (256, 160), (256, 160))
    write_files(tmp_path / "out", result, fixed_path, moving_path)
    warped = cv2.imread(str(tmp_path / "out" / "warped.png"), cv2.IMREAD_UNCHANGED)
    assert warped.dtype == moving.dtype and warped.shape == moving.shape
    np.testing.assert_array_equal(warped[:150, :250], moving[2:152, 3:253])
    record = json.loads((tmp_path / "out" / "transform.json").read_text())
    assert record["pixel_spacing_mm"] == {"fixed": None, "moving": None}


def test_pillow_decodes_what_opencv_cannot(tmp_path, monkeypatch):
    """GIF before OpenCV 4.11 (DRIVE's masks): Pillow decodes, at reduced size too."""
    path = tmp_path / "mask.gif"
    Image.fromarray(_picture()).save(path)
    full, half = read_image(path), read_image(path, reduce=2)
    monkeypatch.setattr(images.cv2, "imread", lambda *args: None)
    np.testing.assert_array_equal(read_image(path), full)
    assert read_image(path, reduce=2).shape == half.shape == (80, 128, 3)
    assert np.abs(read_image(path, reduce=2).astype(int) - half).mean() < 2
