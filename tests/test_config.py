"""One configuration style: every settings dataclass checks itself, names the bad field, and
round-trips through JSON."""
import dataclasses
import json

import pytest

from fire_reg.config import FieldError, NetworkConfig
from fire_reg.learn.dataset_creator import MotionRange, PrepareConfig
from fire_reg.imaging.vessels import VesselMapSettings
from fire_reg.learn.trainer import AugmentConfig, TrainConfig

ALL = (NetworkConfig, MotionRange, PrepareConfig, AugmentConfig, TrainConfig, VesselMapSettings)


@pytest.mark.parametrize("cls", ALL)
def test_defaults_round_trip_through_json(cls):
    config = cls()
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(FieldError, match=f"bogus is not a {cls.__name__} setting"):
        cls.from_dict({"bogus": 1})


@pytest.mark.parametrize("cls,values,field,problem", [
    (TrainConfig, {"epochs": "ten"}, "epochs", "must be a whole number, got 'ten'"),
    (TrainConfig, {"epochs": -1}, "epochs", "must be at least 1, got -1"),
    (TrainConfig, {"epochs": 2.5}, "epochs", "must be a whole number"),
    (TrainConfig, {"batch_size": 0}, "batch_size", "must be at least 1, got 0"),
    (TrainConfig, {"steps_per_epoch": -3}, "steps_per_epoch", "must be at least 1"),
    (TrainConfig, {"learning_rate": 0}, "learning_rate", "must be more than 0"),
    (TrainConfig, {"min_learning_rate": 0.1}, "min_learning_rate", "at most 0.001"),
    (TrainConfig, {"validation_fraction": 1}, "validation_fraction", "less than 1"),
    (TrainConfig, {"augment": "yes"}, "augment", "true or false"),
    (TrainConfig, {"network": {"input_size": 30}}, "network.input_size", "multiple of 8"),
    (TrainConfig, {"augmentation": {"noise_sigma": -1}}, "augmentation.noise_sigma",
     "at least 0"),
    (PrepareConfig, {"patch_size": 100}, "patch_size", "multiple of 8"),
    (PrepareConfig, {"per_pair": 0}, "per_pair", "at least 1"),
    (PrepareConfig, {"seed": -1}, "seed", "at least 0"),
    (PrepareConfig, {"motion": {"scale_range": [1.2, 0.9]}}, "motion.scale_range", "low <= high"),
    (PrepareConfig, {"preprocessing": {"work_width": 8}}, "preprocessing.work_width",
     "at least 16"),
    (MotionRange, {"max_rotation_deg": float("nan")}, "max_rotation_deg", "must be a number"),
    (AugmentConfig, {"gamma_range": [0, 1]}, "gamma_range", "low > 0"),
    (AugmentConfig, {"swap_probability": 2}, "swap_probability", "at most 1"),
    (VesselMapSettings, {"percentile": 0}, "percentile", "more than 0"),
    (VesselMapSettings, {"clahe_tiles": 0}, "clahe_tiles", "at least 1"),
    (NetworkConfig, {"encoder_channels": [8, 8]}, "encoder_channels", "at least 3"),
])
def test_bad_values_name_their_field(cls, values, field, problem):
    with pytest.raises(ValueError) as error:
        cls.from_dict(values)
    assert isinstance(error.value, FieldError) and error.value.field == field
    assert problem in error.value.problem


def test_settings_are_frozen_and_replace_checks_again():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert dataclasses.replace(config, epochs=3).epochs == 3
    with pytest.raises(FieldError, match="epochs"):
        dataclasses.replace(config, epochs=0)


def test_json_values_become_typed_settings():
    config = TrainConfig.from_dict({"network": {"encoder_channels": [4, 8, 8]},
                                    "augmentation": {"gain_range": [1, 1]}, "epochs": 3})
    assert config.network == NetworkConfig(encoder_channels=(4, 8, 8))
    assert config.augmentation.gain_range == (1.0, 1.0)
    prepare = PrepareConfig.from_dict(PrepareConfig(patch_size=64).to_dict())
    assert isinstance(prepare.motion, MotionRange) and prepare.motion.scale_range == (0.87, 1.15)
    assert isinstance(prepare.preprocessing, VesselMapSettings)
