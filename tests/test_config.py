"""One configuration style: every settings dataclass checks itself, names the bad field, and
round-trips through JSON."""
import dataclasses
import json

import pytest

from fire_reg.config import FieldError, NetworkConfig
from fire_reg.imaging.vessels import VesselMapSettings
from fire_reg.io.errors import InputError
from fire_reg.learn.augment import AugmentConfig
from fire_reg.learn.dataset_creator import MotionRange, PrepareConfig
from fire_reg.learn.settings import ModelSettings
from fire_reg.learn.trainer import TrainConfig, Trainer
from fire_reg.register.ecc import EccOptions
from fire_reg.register.fine import FineOptions
from fire_reg.register.registrar import ECC_BEFORE_FINE, ECC_FINAL, Registrar, RegistrarConfig
from fire_reg.register.trust import TrustOptions

ALL = (NetworkConfig, MotionRange, PrepareConfig, AugmentConfig, TrainConfig, VesselMapSettings,
       ModelSettings, EccOptions, FineOptions, TrustOptions, RegistrarConfig)


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
    (EccOptions, {"levels": 0}, "levels", "at least 1"),
    (EccOptions, {"epsilon": 0}, "epsilon", "more than 0"),
    (EccOptions, {"gauss_filter_size": 4}, "gauss_filter_size", "must be odd"),
    (EccOptions, {"levels": 2, "finest_level": 2}, "finest_level", "below levels (2)"),
    (FineOptions, {"start_step": 0}, "start_step", "at least 1"),
    (FineOptions, {"radii": []}, "radii", "at least 1 whole number"),
    (FineOptions, {"radii": [8, 0]}, "radii", ">= 1"),
    (FineOptions, {"min_score": 1.5}, "min_score", "at most 1"),
    (FineOptions, {"min_inliers": {"spline": 3}}, "min_inliers", "model names"),
    (FineOptions, {"min_inliers": {"affine": 0}}, "min_inliers", ">= 1"),
    (FineOptions, {"folds": 1}, "folds", "at least 2"),
    (TrustOptions, {"scale_range": [1.5, 0.7]}, "scale_range", "low <= high"),
    (TrustOptions, {"min_overlap": 2}, "min_overlap", "at most 1"),
    (TrustOptions, {"fine": {"tile": 2}}, "fine.tile", "at least 4"),
    (RegistrarConfig, {"iterations": 0}, "iterations", "at least 1"),
    (RegistrarConfig, {"refine": "sift"}, "refine", "must be one of ecc, none"),
    (RegistrarConfig, {"refine_width": 10}, "refine_width", "at least 64"),
    (RegistrarConfig, {"transform": "spline"}, "transform", "quadratic"),
    (RegistrarConfig, {"ecc": {"iterations": -1}}, "ecc.iterations", "at least 1"),
    (RegistrarConfig, {"trust": {"fine": {"folds": 0}}}, "trust.fine.folds", "at least 2"),
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


def test_registrar_config_is_the_one_place_of_registrar_settings(tiny_model_path):
    """Keyword arguments of Registrar go through RegistrarConfig: checked before the model
    loads, the same whichever way they are given."""
    config = RegistrarConfig(iterations=1, transform="affine")
    assert RegistrarConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RegistrarConfig(refine=None).refine == "none"
    assert RegistrarConfig().ecc_options == ECC_BEFORE_FINE
    assert RegistrarConfig(transform="none").ecc_options == ECC_FINAL
    assert RegistrarConfig(ecc=EccOptions(levels=1)).ecc_options.levels == 1
    with pytest.raises(FieldError, match="iterations must be at least 1"):
        Registrar(tiny_model_path / "not even read", iterations=0)  # refused before loading
    given = Registrar(tiny_model_path, config, refine_width=128)
    assert given.config == dataclasses.replace(config, refine_width=128)
    assert Registrar(tiny_model_path, transform="affine").config.transform == "affine"


def test_the_input_size_has_one_source(shard_dir):
    """The shards' patch size is the network's input size: a config without one takes it, a
    config naming another is refused, naming the shards and the setting; build_model takes
    its settings' size and refuses another."""
    from fire_reg.learn import network

    assert TrainConfig().network.input_size is None
    trainer = Trainer(shard_dir, shard_dir.parent / "unused_run", TrainConfig())
    assert trainer.config.network.input_size == 32 == trainer.stream.patch_size
    same = TrainConfig(network=NetworkConfig(input_size=32))
    assert Trainer(shard_dir, shard_dir.parent / "unused_run", same).config == trainer.config
    with pytest.raises(InputError) as error:
        Trainer(shard_dir, shard_dir.parent / "unused_run",
                TrainConfig(network=NetworkConfig(input_size=64)))
    message = str(error.value)
    assert "manifest.json" in message and "32 px patches" in message
    assert "network.input_size 64" in message
    small = {"encoder_channels": [4, 8, 8], "trunk_units": 4}
    model = network.build_model(small, ModelSettings(input_size=32))
    assert model.input["fixed"].shape[1] == 32
    with pytest.raises(FieldError, match="input_size is 64 px, but the settings are for a 32"):
        network.build_model({**small, "input_size": 64}, ModelSettings(input_size=32))

