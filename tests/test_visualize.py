"""Overlay images and plot files: shapes, readable PNGs, no temporary files left behind."""
import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg.evaluate.plots import save_error_boxplot, save_success_curves, save_trust_scatter
from fire_reg.imaging.overlays import DISPLAY_PX, abs_difference, alpha_blend, blend_magenta_green, checkerboard, save_overlay_panel, warp_to_fixed
from fire_reg.learn.curves import save_training_curves
from fire_reg import geometry


@pytest.fixture(scope="module")
def images():
    """A 300x400 BGR 'fixed' image with lines and its copy shifted by (6, 4) px."""
    fixed = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(fixed, (200, 150), 140, (40, 90, 160), -1)
    for k in range(8):
        cv2.line(fixed, (40 + 40 * k, 30), (200, 150), (10, 20 + 20 * k, 60), 3)
    matrix = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, 4.0]])  # fixed p -> moving p + (6, 4)
    moving = warp_to_fixed(fixed, geometry.invert(matrix), (400, 300))
    return fixed, moving, matrix


def _png_files_only(folder, names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        image = cv2.imread(str(folder / name))
        assert image is not None and image.ndim == 3


def test_warp_to_fixed_undoes_the_shift(images):
    fixed, moving, matrix = images
    warped = warp_to_fixed(moving, matrix, (400, 300))
    assert warped.shape == fixed.shape
    np.testing.assert_array_equal(moving[100, 100], fixed[96, 94])
    np.testing.assert_array_equal(warped[50:250, 50:350], fixed[50:250, 50:350])
    assert warp_to_fixed(moving, matrix, (200, 120)).shape == (120, 200, 3)


def test_comparison_images(images):
    fixed, moving, _ = images
    board = checkerboard(fixed, moving, tiles=4)
    assert board.shape == fixed.shape
    np.testing.assert_array_equal(board[:75, :100], fixed[:75, :100])     # tile (0, 0): fixed
    np.testing.assert_array_equal(board[:75, 100:200], moving[:75, 100:200])  # tile (0, 1)
    assert checkerboard(fixed[..., 1], moving[..., 1]).shape == (300, 400)
    blend = blend_magenta_green(fixed, moving)
    assert blend.shape == (300, 400, 3) and blend.dtype == np.uint8
    same = blend_magenta_green(fixed, fixed)
    np.testing.assert_array_equal(same[..., 0], same[..., 1])  # aligned -> gray
    np.testing.assert_array_equal(same[..., 2], same[..., 1])
    assert alpha_blend(fixed, moving, 0.3).shape == fixed.shape
    np.testing.assert_array_equal(alpha_blend(fixed, moving, 0.0), fixed)
    difference = abs_difference(fixed, moving)
    assert difference.shape == (300, 400)
    assert not abs_difference(fixed, fixed).any()


def test_overlay_panel(images, tmp_path):
    fixed, moving, matrix = images
    fixed_pts = np.array([[100.0, 100.0], [300.0, 80.0], [200.0, 250.0]])
    moving_pts = geometry.apply(matrix, fixed_pts)
    save_overlay_panel(tmp_path / "with_points.png", fixed, moving, matrix,
                                 fixed_pts, moving_pts, title="shift (6, 4)")
    save_overlay_panel(tmp_path / "plain.png", fixed, moving, matrix)
    _png_files_only(tmp_path, ["with_points.png", "plain.png"])
    assert (tmp_path / "with_points.png").stat().st_size < 1_000_000


def test_full_size_photograph_panel_is_small(tmp_path):
    """The 1411 px retina: drawn at <= 384 px, so the PNG stays small (full size would be over 20 MB)."""
    retina = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR)
    points = np.array([[400.0, 500.0], [900.0, 700.0], [700.0, 1100.0]])
    matrix = np.array([[1.0, 0.01, 12.0], [-0.01, 1.0, -7.0]])
    save_overlay_panel(tmp_path / "big.png", retina, retina, matrix, points,
                                 geometry.apply(matrix, points))
    _png_files_only(tmp_path, ["big.png"])
    assert (tmp_path / "big.png").stat().st_size < 2_000_000
    assert cv2.imread(str(tmp_path / "big.png")).shape[1] <= 3 * DISPLAY_PX


def test_plots(tmp_path):
    categories = {"S01": "S", "S02": "S", "P01": "P", "A01": "A"}
    errors = {"sift": {"S01": 1.0, "S02": 3.0, "P01": 40.0, "A01": np.inf},
              "identity": {"S01": 20.0, "S02": 30.0, "P01": 90.0, "A01": 0.0}}
    save_success_curves(tmp_path / "success.png", errors, categories)
    save_error_boxplot(tmp_path / "box.png", errors)
    save_training_curves(tmp_path / "training.png",
                                   {"loss": [1.0, 0.5, 0.2], "val_loss": [1.2, 0.6, 0.3],
                                    "mae": [3.0, 2.0, 1.0]})
    _png_files_only(tmp_path, ["success.png", "box.png", "training.png"])


def test_trust_scatter_and_quadratic_overlay(tmp_path, images):
    from fire_reg.geometry import transforms

    save_trust_scatter(tmp_path / "trust.png", {
        "fire-reg": [(1.0, 1.2, "ok"), (None, 30.0, "suspect"), (80.0, 60.0, "failed")]})
    assert cv2.imread(str(tmp_path / "trust.png")) is not None
    fixed, moving, matrix = images
    bent = transforms.Quadratic.from_forward(
        [[6.0, 1.0, 0.0, 1e-5, 0.0, 0.0], [4.0, 0.0, 1.0, 0.0, 0.0, 1e-5]],
        geometry.grid_points((400, 300)))
    save_overlay_panel(tmp_path / "bent.png", fixed, moving, bent)
    assert cv2.imread(str(tmp_path / "bent.png")) is not None
