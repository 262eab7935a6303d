"""Classic baselines recover a known affine on the embedded retina and fail gracefully."""
import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg import geometry
from fire_reg.imaging.vessels import fov_mask, resize_to_width
from fire_reg.evaluate import baselines

TRUE_ANGLE_DEG, TRUE_SCALE, TRUE_SHIFT = 4.0, 1.03, (25.0, -25.0)


@pytest.fixture(scope="module")
def pair():
    """(fixed, moving, M): the retina at ~700 px and its copy under a known M (fixed px ->
    moving px), the camera aperture kept in place as in a real second photograph."""
    fixed, _ = resize_to_width(cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), 700)
    height, width = fixed.shape[:2]
    angle = np.deg2rad(TRUE_ANGLE_DEG)
    linear = TRUE_SCALE * np.array([[np.cos(angle), -np.sin(angle)],
                                    [np.sin(angle), np.cos(angle)]])
    matrix = geometry.about_center(linear, ((width - 1) / 2, (height - 1) / 2))
    matrix[:, 2] += TRUE_SHIFT
    # moving(M p) = fixed(p): sample the fixed image at M^-1 q for each moving pixel q
    moving = geometry.resample(fixed, geometry.invert(matrix), (width, height))
    moving[~fov_mask(fixed)] = 0
    return fixed, moving, matrix


def _grid_error(result, fixed, matrix):
    points = geometry.grid_points((fixed.shape[1], fixed.shape[0]))
    return geometry.mean_point_distance(result.matrix, matrix, points)


@pytest.mark.parametrize("name, tolerance_px", [("sift", 2.0), ("sift-homography", 2.0),
                                                ("orb", 4.0), ("ecc", 2.0), ("mi", 1.0)])
def test_recovers_known_affine(pair, name, tolerance_px):
    fixed, moving, matrix = pair
    assert _grid_error(baselines.baseline("identity").register(fixed, moving), fixed, matrix) > 20
    result = baselines.baseline(name).register(fixed, moving)
    assert result.status == "ok", result.reason
    assert result.matrix.shape == (2, 3) and result.matrix.dtype == np.float64
    assert result.transform.model == ("homography" if name == "sift-homography" else "affine")
    assert _grid_error(result, fixed, matrix) < tolerance_px
    assert 0 < result.seconds < 60


def test_matrix_is_in_full_resolution_pixels_for_large_images(pair):
    """An image wider than the working width: the matrix is rescaled back to full pixels."""
    fixed, moving, matrix = pair
    big_fixed = cv2.resize(fixed, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    big_moving = cv2.resize(moving, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    big_matrix = geometry.rescale(matrix, 2.0, 2.0)
    result = baselines.baseline("sift").register(big_fixed, big_moving)
    assert result.status == "ok", result.reason
    assert _grid_error(result, big_fixed, big_matrix) < 4.0


@pytest.mark.parametrize("name", ["sift", "ecc", "mi"])
def test_images_of_different_sizes(pair, name):
    """Cropping 30 px left and 20 px top off the moving image shifts M by (-30, -20)."""
    fixed, moving, matrix = pair
    cropped = np.ascontiguousarray(moving[20:, 30:])
    result = baselines.baseline(name).register(fixed, cropped,
                                          moving_mask=fov_mask(fixed)[20:, 30:])
    assert result.status == "ok", result.reason
    assert _grid_error(result, fixed, geometry.compose([[1, 0, -30], [0, 1, -20]], matrix)) < 2.0


def test_ecc_without_template_mask_support(pair, monkeypatch):
    """OpenCV < 4.13 has no findTransformECCWithMask: the moving mask goes to findTransformECC."""
    monkeypatch.delattr(cv2, "findTransformECCWithMask", raising=False)
    fixed, moving, matrix = pair
    result = baselines.baseline("ecc").register(fixed, moving)
    assert result.status == "ok", result.reason
    assert _grid_error(result, fixed, matrix) < 2.0


def test_explicit_masks_are_used(pair):
    fixed, moving, matrix = pair
    mask = fov_mask(fixed)
    result = baselines.baseline("sift").register(fixed, moving, fixed_mask=mask,
                                            moving_mask=mask.astype(np.uint8) * 255)
    assert result.status == "ok" and _grid_error(result, fixed, matrix) < 2.0


@pytest.mark.parametrize("name", ["sift", "sift-homography", "orb", "ecc", "mi"])
def test_failure_is_reported_not_raised(name):
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    flat = np.full((200, 300, 3), 128, np.uint8)
    result = baselines.baseline(name).register(noise, flat)
    assert result.status == "failed" and result.reason
    np.testing.assert_array_equal(result.matrix, geometry.identity())


def test_registry_and_unknown_name(pair):
    fixed, moving, _ = pair
    assert set(baselines.METHODS) == {"sift", "sift-homography", "orb", "ecc", "mi", "identity"}
    result = baselines.baseline("identity").register(fixed, moving)
    assert result.status == "ok" and result.fixed_size == (fixed.shape[1], fixed.shape[0])
    np.testing.assert_array_equal(result.matrix, np.eye(2, 3))
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.baseline("surf")


def test_register_files_returns_original_pixels(pair, tmp_path):
    fixed, moving, matrix = pair
    cv2.imwrite(str(tmp_path / "f.png"), fixed)
    cv2.imwrite(str(tmp_path / "m.png"), moving)
    result = baselines.baseline("ecc").register_files(tmp_path / "f.png", tmp_path / "m.png")
    assert result.fixed_size == (fixed.shape[1], fixed.shape[0])
    assert _grid_error(result, fixed, matrix) < 2.0


def test_mi_unrelated_noise_is_failed():
    """Two independent noise images: mutual information near zero -> "failed", not "ok"."""
    rng = np.random.default_rng(1)
    noise_a, noise_b = (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(2))
    result = baselines.baseline("mi").register(noise_a, noise_b)
    assert result.status == "failed" and "share no structure" in result.reason


@pytest.mark.parametrize("modality", ["red-free", "ir"])
def test_mi_across_modalities_with_dark_vessels(pair, modality):
    """The moving photograph rendered as red-free / infrared (geometry untouched): mutual
    information still recovers the known affine."""
    from fire_reg.data.modalities import render

    fixed, moving, matrix = pair
    rendered = render(moving, modality, np.random.default_rng(0), mask=fov_mask(moving))
    result = baselines.baseline("mi").register(fixed, rendered)
    assert result.status == "ok", result.reason
    assert _grid_error(result, fixed, matrix) < 1.5


def test_mi_colour_against_angiogram_runs(pair):
    """Colour against a rendered fluorescein angiogram: the classic recipe runs and returns a
    Registration in full pixels (its accuracy there is poor and not asserted: see README)."""
    from fire_reg.data.modalities import render

    fixed, moving, _ = pair
    angiogram = render(moving, "fa", np.random.default_rng(0), mask=fov_mask(moving))
    result = baselines.baseline("mi").register(fixed, angiogram)
    assert result.status in ("ok", "failed") and result.reason
    assert result.matrix.shape == (2, 3) and np.isfinite(result.matrix).all()
    assert result.fixed_size == (fixed.shape[1], fixed.shape[0]) and 0 < result.seconds < 30


def test_mi_without_simpleitk_says_how_to_install(monkeypatch):
    real_find_spec = baselines.importlib.util.find_spec
    monkeypatch.setattr(baselines.importlib.util, "find_spec",
                        lambda name, *args: None if name == "SimpleITK"
                        else real_find_spec(name, *args))
    with pytest.raises(ValueError, match=r"pip install 'fire-reg\[itk\]'"):
        baselines.baseline("mi")
    assert baselines.baseline("sift").name == "sift"  # the others are not affected


def test_cli_without_simpleitk_is_one_line_exit_2(small_fire, tmp_path, capsys, monkeypatch):
    from fire_reg.cli import main

    real_find_spec = baselines.importlib.util.find_spec
    monkeypatch.setattr(baselines.importlib.util, "find_spec",
                        lambda name, *args: None if name == "SimpleITK"
                        else real_find_spec(name, *args))
    code = main(["evaluate", "--fire", str(small_fire), "--no-model", "--baselines", "sift,mi",
                 "--out", str(tmp_path / "ev")])
    _, err = capsys.readouterr()
    assert code == 2 and "fire-reg[itk]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev").exists()
