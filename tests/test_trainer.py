"""Trainer: exact augmentation, streaming, and a tiny run that writes every artefact."""
import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.learn import shards as shard_format
from fire_reg.learn.bundle import load_model
from fire_reg.cli import main
from fire_reg.learn.dataset_creator import DatasetCreator, PrepareConfig
from fire_reg.io.errors import InputError
from fire_reg.imaging.vessels import VesselMapSettings
from fire_reg.learn.augment import AugmentConfig, augment_batch, transform_sample
from fire_reg.learn.trainer import TrainConfig, Trainer, export_model

TINY_NETWORK = {"encoder_channels": [4, 8, 8, 8, 8], "trunk_units": 16}


def dot_image(size, point):
    image = np.zeros((size, size, 1), np.float32)
    cv2.circle(image, tuple(int(round(v)) for v in point), 2, 1.0, -1)
    return image


def centroid(image):
    ys, xs = np.nonzero(image[..., 0] > 0.5)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("k", range(8))
def test_augmentation_keeps_target_exact(k, swap):
    """After any symmetry and swap, the fixed dot maps through the new target onto the moving dot."""
    size = 32
    target_px = geometry.AffineParams(5, -3, 0.2, 1.05, 0.98).matrix()
    p_fixed = np.array([9.0, 20.0])
    p_moving = geometry.apply(target_px, [p_fixed])[0]
    target = geometry.normalized_from_pixel(target_px, (size, size), (size, size))
    f, m, t = transform_sample(dot_image(size, p_fixed), dot_image(size, p_moving), target,
                               swap=swap, symmetry=k)
    new_px = geometry.pixel_from_normalized(t, (size, size), (size, size))
    np.testing.assert_allclose(geometry.apply(new_px, [centroid(f)])[0], centroid(m), atol=0.6)


def test_augment_batch_keeps_field_of_view_black():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 32, 32, 1)).astype(np.float32)
    images[:, :8] = 0
    target = np.repeat(np.eye(2, 3)[None], 4, axis=0)
    f, m, t = augment_batch(images, images, target, rng)
    assert f.max() <= 1 and f.min() >= 0
    # the black region (8 rows of 32 per image) stays black wherever the symmetry moved it
    assert all((sample == 0).sum() >= 8 * 32 for sample in np.concatenate([f, m]))
    for matrix in t:  # identity stays identity under any symmetry or swap
        np.testing.assert_allclose(matrix, np.eye(2, 3), atol=1e-12)


TINY = TrainConfig(network=TINY_NETWORK, epochs=2, batch_size=8, steps_per_epoch=2,
                   validation_fraction=0.25, curriculum_epochs=2)


def log_epochs(run):
    return [int(row["epoch"]) for row in csv.DictReader(open(run / "log.csv"))]


def weights(path):
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


def test_tiny_training_run_writes_artefacts_resumes_and_finishes(shard_dir, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(shard_dir, run, TINY).fit(verbose=0)
    for name in ("model.keras", "last.keras", "log.csv", "curves.png", "config.json"):
        assert (run / name).is_file(), name
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["network"]["input_size"] == 32
    assert record["versions"]["keras"] and record["training_data"]["train"]["samples"] == 32
    assert log_epochs(run) == [0, 1]
    assert all(np.isfinite(float(r["val_loss"])) for r in csv.DictReader(open(run / "log.csv")))
    # asking for the same epochs again: finished, nothing is done or written
    before = {path: path.read_bytes() for path in run.glob("*.*")}
    trainer = Trainer(shard_dir, run, TINY)
    assert trainer.fit(resume=True, verbose=0) is None and trainer.completed_epochs == 2
    assert {path: path.read_bytes() for path in run.glob("*.*")} == before
    # more epochs than the run had: it continues from epoch 2, one log row per epoch
    history = Trainer(shard_dir, run, dataclasses.replace(TINY, epochs=3)).fit(resume=True,
                                                                               verbose=0)
    assert len(history.history["loss"]) == 1 and log_epochs(run) == [0, 1, 2]
    # the command line resumes with the recorded settings and says when there is nothing to do
    code, out, _ = run_cli(capsys, "train", "--data", shard_dir, "--out", run, "--resume")
    assert code == 0 and "finished (3 epochs, of 3); nothing to do" in out
    assert log_epochs(run) == [0, 1, 2]
    # other settings cannot resume this run
    with pytest.raises(InputError, match="config.json: .*batch_size differ"):
        Trainer(shard_dir, run, dataclasses.replace(TINY, batch_size=4)).fit(resume=True)
    # export: a loadable model without optimizer state and a card
    path = export_model(run, tmp_path / "ship")
    card = json.loads((tmp_path / "ship" / "fire_reg_affine.json").read_text())
    model, settings = load_model(path)
    assert card["input_size"] == settings.input_size == 32
    assert card["parameters"] == model.count_params()
    assert path.stat().st_size < 0.7 * (run / "last.keras").stat().st_size  # no Adam moments
    assert len(card["log"]) == 3 and card["training"]["config"]["epochs"] == 3
    with pytest.raises(InputError, match="model.keras"):
        export_model(tmp_path / "ship", tmp_path / "elsewhere")


def test_models_carry_the_preprocessing_of_their_shards(small_fire, tmp_path):
    """Shards made at a 256 px working width: every checkpoint and the export say so."""
    preprocessing = VesselMapSettings(work_width=256, clahe_clip=3.0)
    shards = tmp_path / "shards"
    prepare = PrepareConfig(patch_size=32, per_pair=2, preprocessing=preprocessing)
    DatasetCreator(small_fire, shards, prepare).run(progress=False)
    assert shard_format.load_manifest(shards)["config"]["preprocessing"]["work_width"] == 256
    config = dataclasses.replace(TINY, epochs=1, steps_per_epoch=1)
    Trainer(shards, tmp_path / "run", config).fit(verbose=0)
    for name in ("model.keras", "last.keras"):
        _, settings = load_model(tmp_path / "run" / name)
        assert settings.preprocessing == preprocessing and settings.input_size == 32
        assert settings.training_data["train"]["samples"] == 8
    export_model(tmp_path / "run", tmp_path / "ship")
    card = json.loads((tmp_path / "ship" / "fire_reg_affine.json").read_text())
    assert card["preprocessing"] == preprocessing.to_dict()
    with pytest.raises(InputError, match="other vessel-map settings"):
        Trainer(shards, tmp_path / "other", config,
                val_dir=shards_with_default_maps(small_fire, tmp_path))


def shards_with_default_maps(small_fire, tmp_path):
    out = tmp_path / "default_shards"
    DatasetCreator(small_fire, out, PrepareConfig(patch_size=32, per_pair=1)).run(progress=False)
    return out


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(shard_dir, tmp_path):
    """Interrupted inside epoch 2 (after epochs 0 and 1 were backed up), then resumed."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 2 and batch == 0:
                raise KeyboardInterrupt("killed")

    config = dataclasses.replace(TINY, epochs=3, batch_size=4, steps_per_epoch=5)
    Trainer(shard_dir, tmp_path / "whole", config).fit(verbose=0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(shard_dir, tmp_path / "cut", config).fit(verbose=0, callbacks=[Interrupt()])
    assert log_epochs(tmp_path / "cut") == [0, 1]
    history = Trainer(shard_dir, tmp_path / "cut", config).fit(resume=True, verbose=0)
    assert len(history.history["loss"]) == 1
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert (cut / "log.csv").read_text() == (whole / "log.csv").read_text()
    assert log_epochs(cut) == [0, 1, 2]
    for name in ("last.keras", "model.keras"):
        for a, b in zip(weights(whole / name), weights(cut / name), strict=True):
            np.testing.assert_array_equal(a, b)


def test_augmentation_settings_do_what_they_say():
    rng = np.random.default_rng(0)
    fixed = rng.uniform(0.1, 1.0, size=(6, 32, 32, 1)).astype(np.float32)
    moving = 0.5 * fixed[::-1]
    target = np.stack([geometry.matrix_from_params(0.1 * i, 0, 0.05 * i, 1, 1) for i in range(6)])
    off = AugmentConfig(symmetries=False, swap_probability=0, gamma_range=(1, 1),
                        gain_range=(1, 1), noise_sigma=0)
    f, m, t = augment_batch(fixed, moving, target, rng, off)
    np.testing.assert_array_equal(f, fixed)
    np.testing.assert_array_equal(m, moving)
    np.testing.assert_array_equal(t, target)
    swap = dataclasses.replace(off, swap_probability=1)
    f, m, t = augment_batch(fixed, moving, target, rng, swap)
    np.testing.assert_array_equal(f, moving)
    np.testing.assert_allclose(t[3], geometry.invert(target[3]), atol=1e-12)
    f, _, _ = augment_batch(fixed, moving, target, rng, dataclasses.replace(off, noise_sigma=0.05))
    inside = (fixed > 0.2) & (fixed < 0.9)  # away from the clipping at 0 and 1
    assert 0.045 < np.std((f - fixed)[inside]) < 0.055
    half = dataclasses.replace(off, gain_range=(0.5, 0.5))
    f, _, _ = augment_batch(fixed, moving, target, rng, half)
    np.testing.assert_allclose(f, 0.5 * fixed, rtol=1e-6)


def test_bad_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"epochz": 3}')
    with pytest.raises(InputError, match="config.json.*epochz is not a TrainConfig setting"):
        TrainConfig.load(path)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, *capsys.readouterr()


@pytest.mark.parametrize("flags,expected", [
    (["--steps-per-epoch", "-3"], "--steps-per-epoch: must be at least 1, got -3"),
    (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--epochs", "-1"], "--epochs: must be at least 1, got -1"),
])
def test_bad_train_flags_exit_2(shard_dir, tmp_path, capsys, flags, expected):
    code, _, err = run_cli(capsys, "train", "--data", shard_dir, "--out", tmp_path / "run",
                           *flags)
    assert code == 2 and err.strip() == f"fire-reg: error: {expected}"
    assert not (tmp_path / "run" / "config.json").exists()


def test_bad_config_value_exits_2(shard_dir, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"epochs": "ten"}')
    code, _, err = run_cli(capsys, "train", "--data", shard_dir, "--out", tmp_path / "run",
                           "--config", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{path}: not a valid training config (epochs must be a whole number" in err


def test_distribute_needs_jax_or_tensorflow(shard_dir, tmp_path, capsys, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    code, _, err = run_cli(capsys, "train", "--data", shard_dir, "--out", tmp_path / "run",
                           "--distribute")
    assert code == 2 and err.strip() == ("fire-reg: error: --distribute: is not supported on the "
                                         "torch backend; use jax or tensorflow")


def test_distributed_training_under_jax(shard_dir, tmp_path):
    """`fire-reg train --distribute` (keras.distribution.DataParallel) on the JAX backend."""
    import os
    import subprocess
    import sys

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": TINY_NETWORK, "epochs": 1, "steps_per_epoch": 2,
                                  "batch_size": 4}))
    done = subprocess.run(
        [sys.executable, "-m", "fire_reg.cli", "train", "--data", str(shard_dir), "--out",
         str(tmp_path / "run"), "--config", str(config), "--distribute"],
        env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["versions"]["backend"] == "jax"
    assert (tmp_path / "run" / "model.keras").is_file()
