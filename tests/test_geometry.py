"""Geometry: fits against OpenCV, conversions both ways, parameter round trips."""
import cv2
import numpy as np
import pytest

from fire_reg import geometry

KNOWN = geometry.AffineParams(tx=12.5, ty=-7.0, theta=np.radians(6), sx=1.04, sy=0.97,
                              shear=0.02).matrix()


def random_points(count=10, seed=0):
    return np.random.default_rng(seed).uniform(0, 500, size=(count, 2))


def test_fit_affine_exact_and_matches_opencv():
    src = random_points()
    dst = geometry.apply(KNOWN, src)
    fitted, residuals = geometry.fit_affine(src, dst)
    np.testing.assert_allclose(fitted, KNOWN, atol=1e-9)
    assert residuals.max() < 1e-9
    noisy = dst + np.random.default_rng(1).normal(0, 0.5, dst.shape)
    ours, res = geometry.fit_affine(src, noisy)
    opencv, _ = cv2.estimateAffine2D(src, noisy, method=cv2.LMEDS)
    assert geometry.mean_point_distance(ours, opencv, src) < 0.5
    assert 0 < res.mean() < 1.5


def test_fit_affine_rejects_degenerate_points():
    with pytest.raises(ValueError):
        geometry.fit_affine([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ValueError):
        geometry.fit_affine([[0, 0], [1, 1]], [[0, 0], [1, 1]])


def test_fit_similarity_recovers_rotation_and_scale():
    similarity = geometry.AffineParams(3, 4, np.radians(-10), 1.2, 1.2).matrix()
    src = random_points()
    fitted, residuals = geometry.fit_similarity(src, geometry.apply(similarity, src))
    np.testing.assert_allclose(fitted, similarity, atol=1e-9)
    assert residuals.max() < 1e-9
    # an anisotropic map is not a similarity: residuals remain
    _, residuals = geometry.fit_similarity(src, geometry.apply(KNOWN, src))
    assert residuals.mean() > 1.0


def test_compose_invert_apply():
    other = geometry.AffineParams(-3, 2, 0.3, 0.9, 1.1).matrix()
    points = random_points()
    composed = geometry.compose(KNOWN, other)
    np.testing.assert_allclose(geometry.apply(composed, points),
                               geometry.apply(KNOWN, geometry.apply(other, points)))
    np.testing.assert_allclose(geometry.compose(KNOWN, geometry.invert(KNOWN)), np.eye(2, 3),
                               atol=1e-12)


def test_warp_convention_matches_opencv():
    """A fixed point p lands at M p in the moving image; warpAffine(INVERSE_MAP) undoes it."""
    fixed = np.zeros((200, 240), np.float32)
    fixed[50, 60] = 1.0
    matrix = geometry.AffineParams(20, 10, np.radians(5), 1.1, 1.1).matrix()
    # moving image: the content of fixed at p appears at M p
    moving = cv2.warpAffine(fixed, matrix, (240, 200), flags=cv2.INTER_LINEAR)
    y, x = np.unravel_index(np.argmax(moving), moving.shape)
    np.testing.assert_allclose([x, y], geometry.apply(matrix, [[60, 50]])[0], atol=1.0)
    back = cv2.warpAffine(moving, matrix, (240, 200), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert np.unravel_index(np.argmax(back), back.shape) == (50, 60)


def test_normalized_round_trip_and_edges():
    fixed_size, moving_size = (640, 480), (300, 300)
    norm = geometry.normalized_from_pixel(KNOWN, fixed_size, moving_size)
    np.testing.assert_allclose(geometry.pixel_from_normalized(norm, fixed_size, moving_size),
                               KNOWN, atol=1e-12)
    edges = geometry.apply(geometry.normalizer(640, 480), [[-0.5, -0.5], [639.5, 479.5]])
    np.testing.assert_allclose(edges, [[-1, -1], [1, 1]])
    # identity in normalised coordinates is a pure rescale between two sizes
    scaled = geometry.pixel_from_normalized(np.eye(2, 3), (100, 100), (200, 200))
    np.testing.assert_allclose(geometry.apply(scaled, [[-0.5, -0.5], [99.5, 99.5]]),
                               [[-0.5, -0.5], [199.5, 199.5]])


def test_rescale_matches_resized_images():
    """A matrix rescaled to half-size images maps the same physical points."""
    points = random_points()
    half = geometry.rescale(KNOWN, 0.5, 0.5)
    to_half = lambda p: (p + 0.5) * 0.5 - 0.5  # noqa: E731
    np.testing.assert_allclose(geometry.apply(half, to_half(points)),
                               to_half(geometry.apply(KNOWN, points)), atol=1e-9)
    np.testing.assert_allclose(geometry.rescale(half, 2.0, 2.0), KNOWN, atol=1e-9)


def test_letterbox_round_trip_and_centring():
    box = geometry.letterbox((300, 150), 128)
    corners = geometry.apply(box, [[-0.5, -0.5], [299.5, 149.5]])
    np.testing.assert_allclose(corners, [[-0.5, 31.5], [127.5, 95.5]])
    boxed = geometry.letterboxed_from_pixel(KNOWN, (300, 150), (400, 400), 128)
    np.testing.assert_allclose(geometry.pixel_from_letterboxed(boxed, (300, 150), (400, 400), 128),
                               KNOWN, atol=1e-9)


@pytest.mark.parametrize("params", [
    geometry.AffineParams(0.1, -0.2, 0.4, 1.1, 0.9, 0.05),
    geometry.AffineParams(0, 0, -2.5, 0.5, 2.0, -0.3),
    geometry.AffineParams(5, 5, 0.0, 1.0, 1.0, 0.0),
])
def test_params_round_trip(params):
    again = geometry.params_from_matrix(params.matrix())
    np.testing.assert_allclose([again.tx, again.ty, again.theta, again.sx, again.sy, again.shear],
                               [params.tx, params.ty, params.theta, params.sx, params.sy,
                                params.shear], atol=1e-12)


def test_params_refuse_reflection():
    with pytest.raises(ValueError):
        geometry.params_from_matrix([[-1, 0, 0], [0, 1, 0]])


def test_about_center_keeps_center_fixed():
    rotation = geometry.AffineParams(0, 0, 0.5, 1.2, 1.2).matrix()[:, :2]
    matrix = geometry.about_center(rotation, (100, 50))
    np.testing.assert_allclose(geometry.apply(matrix, [[100, 50]]), [[100, 50]])
