"""The weights shipped in the package: present, described by their card, and they register."""
import hashlib
import json

import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.evaluate import metrics
from fire_reg.learn.bundle import ModelSettings, default_model_path, load_model
from fire_reg.data.fire import FireDataset
from fire_reg.imaging.vessels import VesselMapSettings
from fire_reg.register.registrar import Registrar


@pytest.fixture(scope="module")
def registrar():
    return Registrar()


def test_card_describes_the_shipped_file():
    path = default_model_path()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size < 8 * 2 ** 20
    model, settings = load_model()
    assert card["parameters"] == model.count_params()
    assert ModelSettings.from_dict({key: card[key] for key in settings.to_dict()}) == settings
    assert card["validation"]["summary"]["all"]["fire-reg"]["count"] > 0


def test_shipped_model_says_how_it_was_trained():
    """128 px input, vessel maps at 512 px with the default settings, 12,288 DRIVE samples."""
    _, settings = load_model()
    assert settings.input_size == 128 and settings.preprocessing == VesselMapSettings()
    assert settings.preprocessing.work_width == 512
    assert settings.training_data["train"]["samples"] == 12288


def test_network_alone_beats_the_identity_on_an_unseen_retina(small_fire, registrar):
    """Without ECC, on the embedded set (a retina never used in training)."""
    network_only = Registrar((registrar.model, registrar.settings), refine=None,
                             transform="none")
    dataset = FireDataset(small_fire)
    for pair in dataset:
        truth, _ = pair.ground_truth()
        grid = geometry.grid_points(pair.size("fixed"))
        result = network_only.register(pair.image("fixed"), pair.image("moving"))
        error = geometry.mean_point_distance(result.matrix, truth, grid)
        before = geometry.mean_point_distance(geometry.identity(), truth, grid)
        one_input_px = pair.size("fixed")[0] / registrar.size  # the network's resolution
        assert error < max(0.5 * before, one_input_px), (pair.id, error, before)


def test_with_refinement_it_is_accurate(small_fire, registrar):
    dataset = FireDataset(small_fire)
    errors = []
    for pair in dataset:
        fixed_pts, moving_pts = pair.control_points()
        result = registrar.register(pair.image("fixed"), pair.image("moving"))
        errors.append(metrics.fire_error(result.transform, fixed_pts, moving_pts,
                                         2912 / dataset.width))
        assert result.status == "ok", result.reason
    assert np.median(errors) < 2, errors
