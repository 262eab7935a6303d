"""The similarity seam (fire_reg.imaging.similarity): NCC written once for numpy and keras.ops,
mutual information for images of different modalities, and the registry by name."""
import cv2
import numpy as np
import pytest
from keras import ops

from fire_reg.geometry import transforms
from fire_reg.imaging import similarity
from fire_reg.learn import network
from fire_reg.register.maps import VesselMaps


def _old_ncc(a, b):
    """The formula VesselMaps.similarity had inline before the seam."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def _old_masked_ncc_loss(fixed, warped, eps=1e-6):
    """The masked NCC loss network.py had inline before the seam."""
    fixed = ops.cast(fixed, warped.dtype)
    mask = ops.cast((fixed > 0) & (warped > 0), warped.dtype)
    axes = tuple(range(1, len(warped.shape)))
    count = ops.sum(mask, axis=axes, keepdims=True) + eps

    def centred(x):
        return (x - ops.sum(x * mask, axis=axes, keepdims=True) / count) * mask

    f, w = centred(fixed), centred(warped)
    ncc = ops.sum(f * w, axis=axes) / ops.sqrt(
        ops.sum(ops.square(f), axis=axes) * ops.sum(ops.square(w), axis=axes) + eps)
    return ops.mean(1.0 - ncc)


def _blobs(seed=0, size=64):
    """A smooth random float32 image in [0, 1] (vessel-map-like content, no constant areas)."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 3)
    return (image - image.min()) / (image.max() - image.min())


def test_ncc_equals_the_old_formulas_bit_for_bit():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(64, 4000))
        a = rng.random(n, dtype=np.float32)
        b = (0.3 * a + rng.random(n, dtype=np.float32)).astype(np.float32)
        assert similarity.measure("ncc")(a, b) == _old_ncc(a, b)
        assert similarity.ncc(a, b).dtype == np.float32  # float32 maps stay float32
    for _ in range(3):
        x = np.clip(rng.normal(size=(3, 16, 16, 1)), 0, None).astype(np.float32)
        y = np.clip(x + 0.5 * rng.normal(size=x.shape), 0, None).astype(np.float32)
        assert float(network.masked_ncc_loss(x, y)) == float(_old_masked_ncc_loss(x, y))


def test_ncc_numpy_and_keras_ops_agree():
    rng = np.random.default_rng(2)
    a = rng.random((4, 24, 24, 1)).astype(np.float32)
    b = (a + 0.7 * rng.random(a.shape)).astype(np.float32)
    mask = (rng.random(a.shape) > 0.3).astype(np.float32)
    axes = (1, 2, 3)
    for m in (None, mask):
        with_numpy = similarity.ncc(a, b, m, axis=axes)
        with_keras = ops.convert_to_numpy(similarity.ncc(
            ops.convert_to_tensor(a), ops.convert_to_tensor(b),
            None if m is None else ops.convert_to_tensor(m), axis=axes, xp=ops))
        assert with_numpy.shape == (4,)
        np.testing.assert_allclose(with_keras, with_numpy, atol=1e-6)
    # per sample, the masked value is the plain NCC of the masked pixels
    masked = similarity.ncc(a, b, mask, axis=axes)
    for i in range(4):
        keep = mask[i] > 0
        assert masked[i] == pytest.approx(float(similarity.ncc(a[i][keep], b[i][keep])),
                                          abs=1e-5)


def test_ncc_self_negative_and_affine_intensity_change():
    image = _blobs()
    ncc = similarity.measure("ncc")
    assert ncc(image, image) == pytest.approx(1.0, abs=1e-6)
    assert ncc(image, -image) == pytest.approx(-1.0, abs=1e-6)
    assert ncc(image, 3.5 * image + 20.0) == pytest.approx(1.0, abs=1e-5)
    assert ncc(image, _blobs(seed=7)) < 0.5  # unrelated content
    flat = np.full_like(image, 0.4)
    assert ncc(image, flat) == pytest.approx(0.0, abs=1e-3)  # no correlation, and no NaN


def test_mutual_information_prefers_alignment_and_ignores_inversion():
    image = _blobs(size=96)
    shifted = np.roll(image, 9, axis=1)
    mi = similarity.measure("mi")
    aligned, misaligned = mi(image, image), mi(image, shifted)
    assert aligned > 2 * misaligned > 0
    # an inverted image (another modality: vessels bright instead of dark) carries the same
    # information, where NCC says -1
    assert mi(image, 1.0 - image) == pytest.approx(aligned, rel=1e-6)
    assert mi(image, 1.0 - shifted) == pytest.approx(misaligned, rel=1e-6)
    assert similarity.measure("ncc")(image, 1.0 - image) == pytest.approx(-1.0, abs=1e-6)
    # the mask restricts the pixels compared
    left = np.zeros(image.shape, bool)
    left[:, :40] = True
    assert mi(image, image, left) == pytest.approx(mi(image[:, :40], image[:, :40]))
    assert mi(image, np.full_like(image, 0.5)) == 0.0  # nothing in common, never below 0


def test_measure_lookup_and_registry():
    assert similarity.measure("ncc") is similarity.MEASURES["ncc"]
    with pytest.raises(ValueError, match=r"unknown similarity measure 'nmi'; choose from ncc, mi"):
        similarity.measure("nmi")

    def negative_sad(a, b, mask=None):
        keep = np.ones(a.shape, bool) if mask is None else mask
        return -float(np.abs(a[keep] - b[keep]).mean())

    assert similarity.measure(negative_sad) is negative_sad  # a function passes through
    similarity.register_measure("test-negative-sad", negative_sad)
    try:
        with pytest.raises(ValueError, match="already exists"):
            similarity.register_measure("test-negative-sad", negative_sad)
        # every stage built on VesselMaps.similarity can now use it by name
        image = _blobs(size=96)
        fov = np.ones(image.shape, bool)
        maps = VesselMaps(image, fov, np.roll(image, 3, axis=1), fov, (1.0, 1.0), (1.0, 1.0),
                          96)
        right = transforms.Affine(np.array([[1.0, 0, 3], [0, 1, 0]]))
        wrong = transforms.Affine(np.array([[1.0, 0, -3], [0, 1, 0]]))
        for name in ("ncc", "mi", "test-negative-sad"):
            assert maps.similarity(right, name) > maps.similarity(wrong, name), name
        assert maps.similarities([right, wrong], "mi") == [maps.similarity(right, "mi"),
                                                           maps.similarity(wrong, "mi")]
        with pytest.raises(ValueError, match="unknown similarity measure"):
            maps.similarity(right, "nope")
    finally:
        del similarity.MEASURES["test-negative-sad"]


def test_opencv_template_matching_is_the_same_ncc():
    """The fine stage's cv2.matchTemplate(TM_CCOEFF_NORMED) scores are this module's NCC."""
    image = _blobs(size=80)
    template = image[30:46, 20:36]
    window = np.ascontiguousarray(image[25:55, 15:45])
    surface = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    for row, col in [(0, 0), (5, 5), (3, 11), (14, 14)]:
        patch = window[row:row + 16, col:col + 16]
        assert surface[row, col] == pytest.approx(
            float(similarity.ncc(template.astype(np.float64), patch.astype(np.float64))),
            abs=1e-4)
