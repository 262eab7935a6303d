"""Imaging: resampling through a pyramid keeps pixel positions; reduced decoding scales."""
import cv2
import numpy as np
import pytest

from fire_reg import geometry, imaging
from fire_reg.errors import InputError


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_resample_with_pyramid_keeps_positions(factor):
    """A dot at x in a big image lands at M^-1 x in a downscaled output, pyramid or not."""
    size = 512
    image = np.zeros((size, size), np.float32)
    cv2.circle(image, (200, 301), 6, 1.0, -1)
    out = size // factor
    matrix = geometry.rescale(np.eye(2, 3), 1.0 / factor, 1.0)  # output px -> input px
    small = imaging.resample(image, matrix, (out, out))
    ys, xs = np.nonzero(small > 0.05)
    weights = small[ys, xs]
    found = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    expected = geometry.apply(geometry.invert(matrix), [[200, 301]])[0]
    np.testing.assert_allclose(found, expected, atol=0.05)


def test_read_for_width_scales(tmp_path):
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), np.full((1200, 1600, 3), 128, np.uint8))
    image, scale = imaging.read_for_width(path, 512)
    assert image.shape[:2] == (600, 800) and scale == (0.5, 0.5)
    with pytest.raises(InputError, match="missing.jpg"):
        imaging.read_for_width(tmp_path / "missing.jpg", 512)
