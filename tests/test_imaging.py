"""Imaging: resampling through a pyramid keeps pixel positions; reduced decoding scales."""
import cv2
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.io import images
from fire_reg.io.images import image_size, read_for_width, read_image
from fire_reg.io.errors import InputError


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_resample_with_pyramid_keeps_positions(factor):
    """A dot at x in a big image lands at M^-1 x in a downscaled output, pyramid or not."""
    size = 512
    image = np.zeros((size, size), np.float32)
    cv2.circle(image, (200, 301), 6, 1.0, -1)
    out = size // factor
    matrix = geometry.rescale(np.eye(2, 3), 1.0 / factor, 1.0)  # output px -> input px
    small = geometry.resample(image, matrix, (out, out))
    ys, xs = np.nonzero(small > 0.05)
    weights = small[ys, xs]
    found = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    expected = geometry.apply(geometry.invert(matrix), [[200, 301]])[0]
    np.testing.assert_allclose(found, expected, atol=0.05)


def test_read_for_width_scales(tmp_path):
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), np.full((1200, 1600, 3), 128, np.uint8))
    image, scale = read_for_width(path, 512)
    assert image.shape[:2] == (600, 800) and scale == (0.5, 0.5)
    with pytest.raises(InputError, match="missing.jpg"):
        read_for_width(tmp_path / "missing.jpg", 512)


def test_bad_image_files_are_named_with_their_problem(tmp_path):
    import cv2

    from fire_reg.io.errors import InputError

    image = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), image)
    assert image_size(good) == (240, 200)
    data = good.read_bytes()
    cases = {"truncated.jpg": (data[:len(data) * 2 // 3], "truncated JPEG"),
             "tiny.png": (cv2.imencode(".png", image[:10, :10])[1].tobytes(), "too small"),
             "text.jpg": (b"hello", "not a readable image")}
    png = cv2.imencode(".png", image)[1].tobytes()
    cases["cut.png"] = (png[:len(png) - 20], "truncated PNG")
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        for reader in (read_image, image_size):
            with pytest.raises(InputError, match=f"{name}.*{words}"):
                reader(tmp_path / name)
    with pytest.raises(InputError, match="missing.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="is a folder"):
        image_size(tmp_path)


def test_a_large_valid_image_is_not_called_corrupt(tmp_path, monkeypatch):
    """Above Pillow's default bomb limit but within ours: accepted; above ours: 'too large'."""
    import cv2

    from fire_reg.io.errors import InputError

    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((600, 1000, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 500_000)
    with pytest.raises(InputError, match="too large.*limit"):
        image_size(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 700_000)
    assert image_size(path) == (1000, 600)
