"""The Transform API a scikit-image user expects: T(points), T.inverse, the Jacobian,
T.warp(image, order) for any dtype and size, and conversion to and from scikit-image."""
import numpy as np
import pytest
from skimage import transform as sktransform

from fire_reg import geometry
from fire_reg.geometry import transforms

SIZE = (600, 500)
FORWARD = np.array([[3.0, 1.01, 0.02, 2e-5, -1e-5, 1.5e-5],
                    [-4.0, -0.015, 0.99, -1e-5, 2e-5, 1e-5]])


def grid(size=SIZE, count=25):
    return geometry.grid_points(size, count)


def samples():
    return [transforms.Affine([[1.02, 0.03, 5.0], [-0.02, 0.98, -7.0]]),
            transforms.Homography([[1.01, 0.02, 4.0], [-0.01, 0.99, -3.0], [2e-5, -1e-5, 1.0]]),
            transforms.Quadratic.from_forward(FORWARD, grid())]


@pytest.mark.parametrize("transform", samples(), ids=lambda t: t.model)
def test_call_and_inverse_map_both_ways(transform):
    points = grid()
    moved = transform(points)
    np.testing.assert_array_equal(moved, transform.fixed_to_moving(points))
    inverse = transform.inverse
    assert isinstance(inverse, transforms.Transform)
    np.testing.assert_allclose(inverse(moved), points, atol=1e-6)
    np.testing.assert_allclose(inverse.inverse(points), moved, atol=1e-9)
    np.testing.assert_allclose(inverse.jacobian(moved), np.linalg.inv(transform.jacobian(points)),
                               atol=1e-9)
    # the inverse seen at other resolutions: its fixed image is the transform's moving one
    small = inverse.rescaled(0.5, (0.25, 0.4))
    in_small = geometry.apply(geometry.scaling(0.5)[:2], moved)
    np.testing.assert_allclose(small(in_small), geometry.apply(geometry.scaling((0.25, 0.4))[:2],
                                                               points), atol=1e-6)


def test_inverse_of_a_fire_size_quadratic_is_exact_where_swapped_coefficients_are_not():
    """A quadratic at FIRE size (2912 px, a bend of ~20 px at the corners): its inverse is
    within 0.01 px over the whole field of view both ways; swapping the stored coefficients
    (the fitted inverse) is not."""
    scale = 2912 / SIZE[0]
    quadratic = transforms.Quadratic.from_forward(FORWARD, grid()).rescaled(scale, scale)
    fixed = geometry.grid_points((2912, 2912), 60)
    moving = quadratic(fixed)
    bend = np.linalg.norm(moving - geometry.apply(quadratic.best_affine(fixed), fixed), axis=1)
    assert bend.max() > 5  # a real bend, not a near-affine
    exact = quadratic.inverse
    assert np.linalg.norm(exact(moving) - fixed, axis=1).max() < 0.01
    assert np.linalg.norm(quadratic(exact(fixed)) - fixed, axis=1).max() < 0.01
    swapped = transforms.Quadratic(quadratic.backward, quadratic.forward)
    assert np.linalg.norm(swapped(moving) - fixed, axis=1).max() > 0.01
    with pytest.raises(TypeError, match="save the transform itself"):
        exact.to_dict()


@pytest.mark.parametrize("transform", samples(), ids=lambda t: t.model)
def test_closed_form_jacobian_matches_finite_differences(transform):
    points = grid()
    numeric = transforms.Transform.jacobian(transform, points)
    assert transform.jacobian(points).shape == (len(points), 2, 2)
    np.testing.assert_allclose(transform.jacobian(points), numeric, atol=1e-7)


def test_quadratic_coefficients_are_scikit_image_polynomial_params():
    """PolynomialTransform(order 2) with the unit vector e_k as params gives monomial k of
    [1, x, y, x^2, x y, y^2]: the same order as ours."""
    points = np.array([[3.0, 5.0], [-2.0, 7.0], [11.0, -4.0]])
    monomials = transforms.quadratic_terms(points)
    for k in range(6):
        params = np.zeros((2, 6))
        params[0, k] = 1.0
        np.testing.assert_allclose(sktransform.PolynomialTransform(params)(points)[:, 0],
                                   monomials[:, k])
    quadratic = samples()[2]
    converted = quadratic.to_skimage()
    assert isinstance(converted, sktransform.PolynomialTransform)
    np.testing.assert_array_equal(converted.params, quadratic.forward)


@pytest.mark.parametrize("transform", samples(), ids=lambda t: t.model)
def test_to_skimage_and_back(transform):
    converted = transform.to_skimage()
    np.testing.assert_allclose(converted(grid()), transform(grid()), atol=1e-9)
    back = transforms.Transform.from_skimage(converted, domain=grid())
    assert type(back) is type(transform)
    np.testing.assert_allclose(back(grid()), transform(grid()), atol=1e-9)
    np.testing.assert_allclose(back.inverse(transform(grid())), grid(), atol=1e-6)


def test_skimage_warp_with_to_skimage_equals_warp():
    """skimage.transform.warp(moving, T.to_skimage()) samples the moving image like T.warp."""
    quadratic = samples()[2]
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    moving = np.sin(xs / 23.0) + np.cos(ys / 17.0)
    ours = quadratic.warp(moving, SIZE)
    theirs = sktransform.warp(moving, quadratic.to_skimage(), output_shape=(SIZE[1], SIZE[0]),
                              order=1)
    mapped = quadratic(np.stack([xs.ravel(), ys.ravel()], axis=1))
    inside = ((mapped >= 1) & (mapped <= np.array(SIZE) - 2)).all(axis=1).reshape(ours.shape)
    assert inside.mean() > 0.9
    assert np.abs(ours - theirs)[inside].max() < 2e-3


def test_from_skimage_picks_the_simplest_exact_model():
    similarity = sktransform.SimilarityTransform(scale=1.1, rotation=0.1, translation=(3, -2))
    assert isinstance(transforms.Transform.from_skimage(similarity), transforms.Affine)
    projective = sktransform.ProjectiveTransform(np.array([[1, 0, 2], [0, 1, 3], [1e-4, 0, 1.0]]))
    assert isinstance(transforms.Transform.from_skimage(projective), transforms.Homography)
    polynomial = sktransform.PolynomialTransform(FORWARD)
    with pytest.raises(ValueError, match="domain"):
        transforms.Transform.from_skimage(polynomial)
    with pytest.raises(TypeError, match="no registered transform model"):
        transforms.Transform.from_skimage(sktransform.PiecewiseAffineTransform())
    with pytest.raises(TypeError, match="as a affine"):
        transforms.Affine.from_skimage(projective)


def segmentation(size=SIZE):
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    return ((xs - 300) ** 2 + (ys - 240) ** 2 < 150 ** 2) | ((xs // 40 + ys // 40) % 7 == 0)


@pytest.mark.parametrize("transform", samples(), ids=lambda t: t.model)
def test_order_0_keeps_labels_exactly_in_every_dtype(transform):
    labels = segmentation().astype(np.int64) * 3 + (np.arange(SIZE[0]) // 100)[None, :]
    fixed = np.array([[40.5, 33.25], [300.0, 240.0], [512.0, 401.0]])
    expected_at = np.rint(transform(fixed)).astype(int)
    for dtype, values in [(np.uint8, labels), (np.uint16, labels * 4000),
                          (np.int32, labels * 100_000 - 7), (np.float32, labels / 8.0),
                          (np.int64, labels * 2 ** 40), (np.bool_, labels % 2)]:
        image = values.astype(dtype)
        warped = transform.warp(image, SIZE, order=0)
        assert warped.dtype == image.dtype and warped.shape == image.shape
        assert set(np.unique(warped)) <= set(np.unique(image)) | {0}
        got = warped[fixed[:, 1].astype(int), fixed[:, 0].astype(int)]
        np.testing.assert_array_equal(got, image[expected_at[:, 1], expected_at[:, 0]])


def test_orders_1_and_3_keep_dtype_and_bit_depth():
    transform = samples()[2]
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    smooth = 0.5 + 0.4 * np.sin(xs / 31.0) * np.cos(ys / 29.0)
    for dtype, peak in [(np.uint8, 255), (np.uint16, 4095), (np.uint16, 65535), (np.int32, 10**6),
                        (np.float32, 1.0)]:
        image = (smooth * peak).astype(dtype)
        for order in (1, 3):
            warped = transform.warp(image, SIZE, order=order)
            assert warped.dtype == image.dtype
            inner = warped[50:-50, 50:-50].astype(np.float64)
            assert inner.max() > 0.8 * peak and inner.max() <= peak  # range kept, not rescaled
    mask = segmentation()
    for order in (1, 3):
        warped = transform.warp(mask, SIZE, order=order)
        assert warped.dtype == np.bool_
        assert 0.9 < warped.sum() / transform.warp(mask, SIZE, order=0).sum() < 1.1
    with pytest.raises(ValueError, match="order must be"):
        transform.warp(mask, SIZE, order=2)


def test_warp_keeps_channels_and_defaults_to_the_moving_size():
    transform = samples()[1]
    ys, xs = np.mgrid[0:120, 0:90]
    image = np.dstack([np.sin(xs / 7.0 + c) * np.cos(ys / 9.0)
                       for c in range(5)]).astype(np.float32)
    warped = transform.warp(image)  # no fixed_size: the moving image's own (W, H)
    assert warped.shape == (120, 90, 5) and warped.dtype == np.float32
    single = transform.warp(image[:, :, :1], (90, 120))
    assert single.shape == (120, 90, 1)
    # OpenCV interpolates 1, 3 and 4 channels in float, other counts in 1/32 px steps
    np.testing.assert_allclose(single[5:-5, 5:-5, 0], warped[5:-5, 5:-5, 0], atol=0.01)


@pytest.mark.parametrize("shape", [(33000, 16), (12, 33000)])
def test_warp_of_very_long_images_past_opencv_remap_limit(shape):
    """cv2.remap refuses sides of 32767 px or more; warp works in tiles instead."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    image = ((xs * 7 + ys * 3) % 65521).astype(np.uint16)
    shift = transforms.Homography([[1, 0, 2.0], [0, 1, -3.0], [0, 0, 1]])  # the general path
    nearest = shift.warp(image, (width, height), order=0)
    np.testing.assert_array_equal(nearest[3:, :-2], image[:-3, 2:])
    linear = shift.warp(image.astype(np.float32), (width, height), order=1)
    np.testing.assert_allclose(linear[3:, :-2], image[:-3, 2:], atol=1e-2)
    assert (nearest[:3] == 0).all()  # outside the moving image: the border value


def test_warp_splits_tiles_whose_source_is_still_too_long():
    """A 5x reduction of a 70000 px wide strip: one 8192 px output tile would read 40960
    source px, over OpenCV's limit, so it is split."""
    image = (np.arange(70000) % 251).astype(np.uint8)[None, :].repeat(4, axis=0)
    reduce = transforms.Homography([[5.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    warped = reduce.warp(image, (14000, 4), order=0)
    np.testing.assert_array_equal(warped, image[:, ::5])
