"""Overlay images and plot files: shapes, readable PNGs, no temporary files left behind."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg.evaluate.plots import save_error_boxplot, save_success_curves, save_trust_scatter
from fire_reg.imaging.overlays import (DISPLAY_PX, TITLE_PX, abs_difference, alpha_blend,
                                      blend_magenta_green, checkerboard, dark_vessel_grey,
                                      save_overlay_panel, vessel_blend, warp_to_fixed)
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


MULTIMODAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "multimodal"


@pytest.fixture(scope="module")
def colour_fa_pair():
    """(fixed colour photograph 360 px wide, moving = it shifted by (8, -5) px and rendered as
    a fluorescein angiogram (vessels bright), M fixed px -> moving px)."""
    from fire_reg.data.modalities import render
    from fire_reg.imaging.vessels import fov_mask, resize_to_width

    fixed, _ = resize_to_width(cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), 360)
    matrix = np.array([[1.0, 0.0, 8.0], [0.0, 1.0, -5.0]])
    moving = warp_to_fixed(fixed, geometry.invert(matrix), fixed.shape[1::-1])
    moving[~fov_mask(fixed)] = 0
    return fixed, render(moving, "fa", np.random.default_rng(0)), matrix


def _after_panel(path, fixed, header_px):
    """The "after" blend of a written panel (top row, second column), BGR."""
    panel = cv2.imread(str(path))
    height, width = fixed.shape[:2]
    top = header_px + TITLE_PX
    return panel[top:top + height, width:2 * width]


def _vessel_agreement(blend):
    """Correlation of the magenta (red) and green channels inside the field."""
    inside = blend.max(axis=2) > 0
    return float(np.corrcoef(blend[..., 2][inside].astype(float),
                             blend[..., 1][inside].astype(float))[0, 1])


def test_two_modalities_get_vessel_map_blends(colour_fa_pair, tmp_path):
    """Colour against an angiogram: modalities detected, the after panel is the vessel-map
    blend (magenta = red = blue), both images' vessels visible and lying on each other."""
    fixed, angiogram, matrix = colour_fa_pair
    save_overlay_panel(tmp_path / "multi.png", fixed, angiogram, matrix, title="colour vs fa")
    after = _after_panel(tmp_path / "multi.png", fixed, 2 * TITLE_PX + 6)
    expected = vessel_blend(fixed, warp_to_fixed(angiogram, matrix, fixed.shape[1::-1]),
                            ("dark", "bright"))
    np.testing.assert_array_equal(after, expected)
    np.testing.assert_array_equal(after[..., 0], after[..., 2])
    inside = after.max(axis=2) > 0
    for channel in (2, 1):  # magenta (fixed) and green (moving): sparse bright vessels
        values = after[..., channel][inside]
        assert np.percentile(values, 50) < 40 and np.percentile(values, 99) > 150, channel
    # aligned vessels coincide, without the transform they do not; the raw green channels
    # agree far less (vessels dark in one, bright in the other): measured 0.87, 0.08, 0.27
    before = vessel_blend(fixed, warp_to_fixed(angiogram, np.eye(2, 3), fixed.shape[1::-1]),
                          ("dark", "bright"))
    assert _vessel_agreement(after) > 0.3 > _vessel_agreement(before) + 0.1
    raw = blend_magenta_green(fixed, warp_to_fixed(angiogram, matrix, fixed.shape[1::-1]))
    assert _vessel_agreement(raw) < _vessel_agreement(after) - 0.3
    # given modalities are used as given (no detection): the same picture
    save_overlay_panel(tmp_path / "given.png", fixed, angiogram, matrix, title="colour vs fa",
                       modalities=("colour", "fa"))
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "given.png")),
                                  cv2.imread(str(tmp_path / "multi.png")))


def test_dark_vessel_grey_inverts_bright_vessels(colour_fa_pair):
    fixed, angiogram, matrix = colour_fa_pair
    warped = warp_to_fixed(angiogram, matrix, fixed.shape[1::-1])
    grey_fixed = dark_vessel_grey(fixed, "dark")
    grey_fa, grey_fa_raw = dark_vessel_grey(warped, "bright"), dark_vessel_grey(warped, "dark")
    inside = (grey_fixed > 0) & (grey_fa > 0)
    correlation = lambda a, b: np.corrcoef(a[inside].astype(float), b[inside].astype(float))[0, 1]
    assert correlation(grey_fixed, grey_fa) > correlation(grey_fixed, grey_fa_raw) + 0.2
    assert grey_fa.dtype == np.uint8 and grey_fa.shape == fixed.shape[:2]


def test_same_modality_panel_is_the_green_channel_blend(colour_fa_pair, tmp_path):
    """Two colour photographs: the after panel is blend_magenta_green of the images as they are,
    and no legend line is added."""
    fixed, _, matrix = colour_fa_pair
    moving = warp_to_fixed(fixed, geometry.invert(matrix), fixed.shape[1::-1])
    save_overlay_panel(tmp_path / "same.png", fixed, moving, matrix)
    after = _after_panel(tmp_path / "same.png", fixed, TITLE_PX + 6)
    np.testing.assert_array_equal(
        after, blend_magenta_green(fixed, warp_to_fixed(moving, matrix, fixed.shape[1::-1])))
    save_overlay_panel(tmp_path / "given.png", fixed, moving, matrix, modalities=("fa", "fa"))
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "given.png")),
                                  cv2.imread(str(tmp_path / "same.png")))


@pytest.mark.skipif(not (MULTIMODAL / "angiogram.jpg").is_file(),
                    reason=f"the real colour/FA pair is not at hand ({MULTIMODAL} missing)")
def test_real_colour_fa_pair_panel(tmp_path):
    """The shared real pair: modalities detected as colour and fa, the two-modality panel."""
    colour = cv2.imread(str(MULTIMODAL / "colour.jpg"))
    angiogram = cv2.imread(str(MULTIMODAL / "angiogram.jpg"))
    from fire_reg.geometry import transforms

    # the Registrar's answer on this pair (a homography; judged right by eye on the overlay)
    homography = transforms.Homography([[1.0203, -0.0047, -358.56], [0.0723, 1.0646, 126.61],
                                        [1.033e-4, 2.2e-6, 1.0]])
    save_overlay_panel(tmp_path / "real.png", colour, angiogram, homography)
    panel = cv2.imread(str(tmp_path / "real.png"))
    shown = (DISPLAY_PX, round(colour.shape[0] * DISPLAY_PX / colour.shape[1]))
    assert panel.shape[:2] == (2 * TITLE_PX + 6 + 2 * (TITLE_PX + shown[1]), 2 * DISPLAY_PX)
    top = 3 * TITLE_PX + 6
    before, after = (panel[top:top + shown[1], k * DISPLAY_PX:(k + 1) * DISPLAY_PX]
                     for k in (0, 1))
    np.testing.assert_array_equal(after[..., 0], after[..., 2])  # a magenta / green blend
    assert _vessel_agreement(after) > 0.2 > _vessel_agreement(before) + 0.1
