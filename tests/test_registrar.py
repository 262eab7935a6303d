"""Registrar: pixel bookkeeping of coarse-to-fine, refinement, status, model loading."""
import numpy as np
import pytest

from fire_reg.imaging.vessels import VesselMapSettings, vessel_map
from fire_reg import geometry
from fire_reg.evaluate import metrics
from fire_reg.learn import bundle, network
from fire_reg.data.fire import FireDataset
from fire_reg.register.registrar import Registrar


def constant_model(shift_u, size=32, work_width=512):
    """(model, settings): a fire-reg model whose translation head always answers (shift_u, 0)
    (normalised), applied to vessel maps ``work_width`` px wide."""
    settings = bundle.ModelSettings(input_size=size,
                                    preprocessing=VesselMapSettings(work_width=work_width))
    model = network.build_model({"input_size": size, "encoder_channels": [4, 8, 8, 8],
                                 "trunk_units": 8}, settings)
    head = model.get_layer("translation")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, np.array([shift_u, 0.0], np.float32)])
    return model, settings


def test_coarse_to_fine_composes_residuals():
    """Two passes of a constant (u + 0.25) answer compose to a shift of 2 x 0.25 x W/2 px."""
    fixed = np.zeros((200, 300, 3), np.uint8)
    moving = np.zeros((100, 150, 3), np.uint8)  # half size: letterbox maps scale too
    for passes in (1, 2):
        registrar = Registrar(constant_model(0.25), iterations=passes, refine=None,
                              transform="none")
        result = registrar.register(fixed, moving)
        # in the letterboxed square (32 px for both) a shift of 0.25 normalised = 4 px
        box = geometry.pixel_from_letterboxed(
            geometry.pixel_from_normalized([[1, 0, 0.25 * passes], [0, 1, 0]], (32, 32),
                                           (32, 32)), (300, 200), (150, 100), 32)
        np.testing.assert_allclose(result.matrix, box, atol=1e-6)
        assert result.transform.model == "affine"
        assert result.fixed_size == (300, 200) and result.moving_size == (150, 100)
        assert result.status == "failed"  # blank images: no overlap of fields of view


def test_identity_model_with_ecc_recovers_small_motion(small_fire):
    pair = FireDataset(small_fire)["S01"]
    registrar = Registrar(constant_model(0.0), iterations=1, refine="ecc", transform="none")
    result = registrar.register(pair.image("fixed"), pair.image("moving"))
    truth, _ = pair.ground_truth()
    grid = geometry.grid_points(pair.size("fixed"))
    assert geometry.mean_point_distance(result.matrix, truth, grid) < 1.5
    assert result.status == "ok" and "ECC" in result.reason and result.similarity > 0.4
    np.testing.assert_allclose(geometry.compose(result.matrix, result.inverse), np.eye(2, 3),
                               atol=1e-9)
    record = result.to_json()
    assert record["maps"] == "fixed_xy_to_moving_xy" and record["units"] == "pixels"
    assert np.asarray(record["inverse"]).shape == (2, 3)
    assert record["transform"]["model"] == "affine"


@pytest.mark.parametrize("model", ["quadratic", "homography", "affine"])
def test_fine_stage_returns_the_requested_model_and_is_more_accurate(small_fire, model):
    pair = FireDataset(small_fire)["S02"]
    fixed_pts, moving_pts = pair.control_points()
    registrar = Registrar(constant_model(0.0, work_width=384), iterations=1, transform=model)
    result = registrar.register(pair.image("fixed"), pair.image("moving"))
    assert result.transform.model == model, result.reason
    assert f"{model} from" in result.reason
    ecc = result.stages["ecc_384px"]
    assert metrics.fire_error(result.transform, fixed_pts, moving_pts) <= \
        metrics.fire_error(ecc, fixed_pts, moving_pts) + 0.1
    assert metrics.fire_error(result.transform, fixed_pts, moving_pts) < 1.0
    record = result.to_json()
    assert record["transform"]["model"] == model and record["estimated_error_px"] is not None
    common = geometry.grid_points(pair.size("fixed"), 12)[40:-40]
    assert result.transform.inverse_error(common) < 0.1


def test_fine_refinement_at_a_larger_width(small_fire):
    """With refine_width the ECC polish runs on finer maps and is recorded as a stage."""
    pair = FireDataset(small_fire)["S02"]
    registrar = Registrar(constant_model(0.0, work_width=128), iterations=1, refine="ecc",
                          refine_width=384, transform="none")
    result = registrar.register(pair.image("fixed"), pair.image("moving"))
    truth, _ = pair.ground_truth()
    grid = geometry.grid_points(pair.size("fixed"))
    assert "ecc_384px" in result.stages and "ecc_128px" in result.stages
    assert geometry.mean_point_distance(result.matrix, truth, grid) < \
        geometry.mean_point_distance(result.stages["ecc_128px"].matrix, truth, grid) + 0.05
    assert geometry.mean_point_distance(result.matrix, truth, grid) < 1.0


def test_unrelated_images_are_not_ok_and_not_an_exception():
    rng = np.random.default_rng(0)
    fixed = (rng.uniform(size=(256, 256, 3)) * 255).astype(np.uint8)
    moving = np.full((256, 256, 3), 90, np.uint8)
    result = Registrar(constant_model(0.0), refine="ecc").register(fixed, moving)
    assert result.status in ("suspect", "failed") and "evidence" in result.reason


def test_register_files_returns_original_pixels(small_fire):
    pair = FireDataset(small_fire)["P01"]
    registrar = Registrar(constant_model(0.0), refine=None)
    from_files = registrar.register_files(pair.fixed_path, pair.moving_path)
    direct = registrar.register(pair.image("fixed"), pair.image("moving"))
    assert from_files.fixed_size == pair.size("fixed")
    points = geometry.grid_points(pair.size("fixed"), 7)
    np.testing.assert_allclose(from_files.transform.fixed_to_moving(points),
                               direct.transform.fixed_to_moving(points), atol=1e-6)


def test_settings_out_of_range_are_refused(tiny_model_path):
    for kwargs, word in (({"iterations": 0}, "iterations"), ({"refine_width": -5}, "refine_width"),
                         ({"transform": "spline"}, "transform"), ({"refine": "sift"}, "refine")):
        with pytest.raises(ValueError, match=word):
            Registrar(tiny_model_path, **kwargs)


def test_the_model_s_own_preprocessing_is_applied(small_fire, tmp_path):
    """A model saved with a 256 px working width is applied at 256 px after loading."""
    model, settings = constant_model(0.0, work_width=256)
    model.save(tmp_path / "m.keras")
    registrar = Registrar(tmp_path / "m.keras", transform="none")
    assert registrar.work_width == 256 and registrar.settings == settings
    pair = FireDataset(small_fire)["S01"]
    result = registrar.register(pair.image("fixed"), pair.image("moving"))
    assert "ecc_256px" in result.stages


def test_vessel_map_is_zero_outside_the_aperture(small_fire):
    image = FireDataset(small_fire)["S01"].image("fixed")
    vessels, mask, scale = vessel_map(image, work_width=256)
    assert vessels.shape == (256, 256) and scale == pytest.approx((256 / image.shape[1],) * 2)
    assert vessels[~mask].max() == 0 and 0 < vessels[mask].mean() < 0.5
