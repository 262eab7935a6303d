"""Training across modalities: multimodal shards, the intra-modality loss, fine-tuning from the
shipped weights (``train --init-from``)."""
import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.cli import main
from fire_reg.imaging.vessels import VesselMapSettings
from fire_reg.io.errors import InputError
from fire_reg.learn import bundle, shards
from fire_reg.learn.augment import AugmentConfig, augment_batch
from fire_reg.learn.dataset_creator import DatasetCreator, PrepareConfig
from fire_reg.learn.trainer import TrainConfig, Trainer

COLOUR = dict(patch_size=32, per_pair=6, shard_size=10, seed=4)
MULTI = dict(COLOUR, modalities="fa,ir,red-free", modality_share=0.75)
TINY_NETWORK = {"encoder_channels": [4, 8, 8, 8, 8], "trunk_units": 16}


@pytest.fixture(scope="module")
def colour_and_multimodal(small_fire, tmp_path_factory):
    """The same sampling (seed, sizes) of ``small_fire`` without and with modalities."""
    folders = []
    for config in (COLOUR, MULTI):
        out = tmp_path_factory.mktemp("shards")
        DatasetCreator(small_fire, out, PrepareConfig(**config)).run(progress=False)
        folders.append(out)
    return folders


def take_all(folder, parts):
    stream = shards.ShardStream(folder)
    return stream, stream.take(np.arange(len(stream)), parts)


def test_multimodal_shards_keep_geometry_and_store_the_same_modality_target(
        colour_and_multimodal):
    colour_dir, multi_dir = colour_and_multimodal
    manifest = shards.load_manifest(multi_dir)
    assert manifest["manifest_version"] == 3 and manifest["parts"] == list(shards.PARTS)
    assert shards.load_manifest(colour_dir)["parts"] == list(shards.PARTS[:5])  # no moving_same
    parts = ("fixed", "moving", "moving_same", "target", "fov")
    colour_stream, colour = take_all(colour_dir, parts)
    stream, multi = take_all(multi_dir, parts)
    fixed_modality, moving_modality = stream.modalities("fixed"), stream.modalities("moving")
    assert set(fixed_modality) == {"colour"}  # fixed_modality_share 0
    assert set(moving_modality) <= {"colour", "fa", "ir", "red-free"}
    rendered = moving_modality != "colour"
    assert 0.5 <= rendered.mean() < 1.0 and len(set(moving_modality[rendered])) >= 2
    assert set(colour_stream.modalities("moving")) == {"colour"}
    # rendering moves no pixel: the geometry of every sample is the colour run's, and the
    # same-modality target is exactly the colour moving patch
    for c, m in zip(colour[:1] + colour[3:], multi[:1] + multi[3:]):
        np.testing.assert_array_equal(c, m)
    np.testing.assert_array_equal(multi[2], colour[1])
    np.testing.assert_array_equal(multi[1][~rendered], colour[1][~rendered])
    assert all(np.abs(multi[1][i] - colour[1][i]).mean() > 0.01 for i in np.flatnonzero(rendered))
    # each rendered moving patch still aligns through the target: its vessels meet the fixed's
    fixed, moving, target = multi[0][..., 0], multi[1][..., 0], multi[3]
    gains = []
    for i in np.flatnonzero(rendered):
        px = geometry.pixel_from_normalized(target[i], (32, 32), (32, 32))
        warped = cv2.warpAffine(moving[i], px, (32, 32),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        gains.append(np.corrcoef(fixed[i].ravel(), warped.ravel())[0, 1]
                     - np.corrcoef(fixed[i].ravel(), moving[i].ravel())[0, 1])
    assert np.median(gains) > 0.1
    # the fields of view hold the patches' retina (all but a rim blurred by the pyramid) and
    # not much else
    fov = multi[4]
    assert set(np.unique(fov)) == {0.0, 1.0}
    for inside, image in ((fov[..., :1], multi[0]), (fov[..., 1:], multi[2])):
        assert np.mean(inside[image > 0]) > 0.95 and np.mean(image[inside > 0] > 0) > 0.6


def test_version_2_shards_are_still_read(tmp_path):
    """A folder of the previous format: four parts, eleven info columns, all colour."""
    name = shards.shard_name(0)
    images = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    arrays = {"fixed": images, "moving": 255 - images,
              "target": np.repeat(np.eye(2, 3, dtype=np.float32)[None], 2, axis=0),
              "info": np.zeros((2, 11), np.float32)}
    for part, array in arrays.items():
        np.save(shards.part_path(tmp_path, name, part), array)
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": shards.FORMAT, "manifest_version": 2, "source": "old", "config":
        {"patch_size": 8}, "info_columns": list(shards.V2_INFO_COLUMNS), "pairs": [],
        "shards": [{"name": name, "count": 2}], "count": 2}))
    stream = shards.ShardStream(tmp_path)
    moving, moving_same, fov = stream.take([1, 0], ("moving", "moving_same", "fov"))
    np.testing.assert_array_equal(moving_same, moving)  # the moving patch stands for it
    np.testing.assert_allclose(moving[1, ..., 0], (255 - images[0]) / 255.0)
    assert fov.shape == (2, 8, 8, 2) and np.all(fov == 1)
    assert list(stream.modalities("moving")) == ["colour", "colour"]
    with pytest.raises(KeyError, match="moving_modality"):
        stream.column("moving_modality")


def test_augmentation_moves_the_intra_modality_images_with_the_pair():
    rng = np.random.default_rng(1)
    fixed = rng.uniform(0.1, 1, (8, 16, 16, 1)).astype(np.float32)
    moving = rng.uniform(0.1, 1, (8, 16, 16, 1)).astype(np.float32)
    target = np.repeat(np.eye(2, 3)[None], 8, axis=0) + rng.normal(0, 0.05, (8, 2, 3))
    config = AugmentConfig(swap_probability=0.5, gamma_range=(1, 1), gain_range=(1, 1),
                           noise_sigma=0)
    plain = augment_batch(fixed, moving, target, np.random.default_rng(7), config)
    extra = (np.concatenate([fixed, 2 * fixed], -1), np.concatenate([moving, 2 * moving], -1))
    f, m, t, fe, me = augment_batch(fixed, moving, target, np.random.default_rng(7), config,
                                    extra=extra)
    for a, b in zip(plain, (f, m, t)):  # the same draws with or without extra images
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fe[..., :1], f)  # the same symmetry and swap
    np.testing.assert_array_equal(me[..., 1:], 2 * m)
    assert not np.array_equal(f, fixed)  # something did move


def test_intra_modality_loss_gradient_reaches_the_matrix():
    tf = pytest.importorskip("tensorflow")
    import keras

    from fire_reg.learn import network

    if keras.backend.backend() != "tensorflow":
        pytest.skip("GradientTape check needs the TensorFlow backend")
    size = 32
    yy, xx = np.mgrid[:size, :size]
    vessels = (np.exp(-((xx - 12.0 - 0.3 * yy) ** 2) / 6.0)
               + np.exp(-((yy - 20.0) ** 2) / 5.0)).astype("float32")
    fov = ((xx - 15.5) ** 2 + (yy - 15.5) ** 2 < 14 ** 2).astype("float32")
    truth = geometry.normalized_from_pixel([[1, 0, 2.0], [0, 1, -1.5]], (size, size),
                                           (size, size)).astype("float32")[None]
    moving = np.stack([vessels, fov], -1)[None]
    # the fixed patch: the moving one warped by the true matrix (same modality)
    fixed = network.BilinearWarp()([moving, truth]).numpy()
    fixed[..., 1] = (fixed[..., 1] > 0.5)
    warp = network.BilinearWarp()

    def loss(matrix):
        return network.intra_modality_loss(fixed, warp([moving, matrix]))

    assert float(loss(truth)) < 1e-3
    start = tf.Variable(geometry.normalized_from_pixel(
        [[1, 0.03, 0.5], [-0.03, 1, -0.2]], (size, size), (size, size)).astype("float32")[None])
    with tf.GradientTape() as tape:
        value = loss(start)
    grad = tape.gradient(value, start).numpy()[0]
    assert float(value) > 0.05 and np.all(np.isfinite(grad)) and np.abs(grad[:, 2]).max() > 0.1
    # a step down the gradient brings the translation towards the truth
    moved = start.numpy() - 0.02 * grad / np.abs(grad).max()
    assert float(loss(moved)) < float(value)
    assert np.abs(moved[0, :, 2] - truth[0, :, 2]).sum() < np.abs(
        start.numpy()[0, :, 2] - truth[0, :, 2]).sum()


TINY = TrainConfig(network=TINY_NETWORK, epochs=2, batch_size=4, steps_per_epoch=2,
                   validation_fraction=0.25, curriculum_epochs=1, intra_weight=0.5)


def test_training_with_the_intra_modality_loss_writes_fire_reg_models(colour_and_multimodal,
                                                                      tmp_path):
    _, multi_dir = colour_and_multimodal
    run = tmp_path / "run"
    history = Trainer(multi_dir, run, TINY).fit(verbose=0)
    assert all(np.isfinite(history.history["intra_loss"]))
    assert all(np.isfinite(history.history["val_intra_loss"]))
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 2 and "intra_loss" in rows[0]
    for name in ("model.keras", "last.keras"):  # the fire-reg model, not the training wrapper
        model, settings = bundle.load_model(run / name)
        assert settings.input_size == 32 and sorted(model.output) == ["matches", "matrix",
                                                                      "warped"]
    # resuming continues the wrapped run from its backup
    more = Trainer(multi_dir, run, dataclasses.replace(TINY, epochs=3)).fit(resume=True,
                                                                            verbose=0)
    assert len(more.history["loss"]) == 1


@pytest.fixture(scope="module")
def shipped_size_shards(small_fire, tmp_path_factory):
    """Shards at the shipped model's input size and preprocessing: 2 samples per pair."""
    _, settings = bundle.load_model()
    out = tmp_path_factory.mktemp("shards_128")
    DatasetCreator(small_fire, out, PrepareConfig(
        patch_size=settings.input_size, per_pair=2, modalities="fa",
        preprocessing=settings.preprocessing)).run(progress=False)
    return out


def test_fine_tuning_starts_from_the_shipped_weights(shipped_size_shards, tmp_path):
    shipped, _ = bundle.load_model()
    config = TrainConfig(epochs=1, batch_size=2, steps_per_epoch=1, validation_fraction=0,
                         init_from="shipped", intra_weight=1.0)
    trainer = Trainer(shipped_size_shards, tmp_path / "run", config)
    trainer.build()
    for ours, theirs in zip(trainer.network.get_weights(), shipped.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    fixed, moving = trainer.stream.take([0, 1, 2])[:2]
    inputs = {"fixed": fixed, "moving": moving}
    np.testing.assert_array_equal(trainer.network.predict(inputs, verbose=0)["matrix"],
                                  shipped.predict(inputs, verbose=0)["matrix"])
    trainer.fit(verbose=0)
    tuned, settings = bundle.load_model(tmp_path / "run" / "model.keras")
    assert settings.training_data["train"]["samples"] == 8
    assert any(not np.array_equal(a, b) for a, b in zip(tuned.get_weights(),
                                                        shipped.get_weights()))
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["init_from"] == "shipped"


def test_fine_tuning_refuses_a_model_that_does_not_fit_the_data(
        shipped_size_shards, shard_dir, tiny_model_path, small_fire, tmp_path, capsys):
    shipped = bundle.default_model_path()
    # shards of 32 px patches, the shipped model takes 128 px: one line, exit 2, nothing written
    code = main(["train", "--data", str(shard_dir), "--out", str(tmp_path / "run"),
                 "--init-from", "shipped"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"fire-reg: error: {shipped}: takes 128 px inputs, the shards hold "
                          "32 px patches")
    assert not (tmp_path / "run").exists()
    # the same input size, other vessel-map settings
    other = tmp_path / "other_maps"
    DatasetCreator(small_fire, other, PrepareConfig(
        patch_size=128, per_pair=1, preprocessing=VesselMapSettings(work_width=256))).run(
        progress=False)
    with pytest.raises(InputError, match="vessel maps are made with other settings than the "
                                         r"shards' \(work_width differ\)"):
        Trainer(other, tmp_path / "run", TrainConfig(init_from="shipped"))
    # a model of another network
    with pytest.raises(InputError, match="network differs .*encoder_channels"):
        Trainer(shard_dir, tmp_path / "run", TrainConfig(init_from=str(tiny_model_path),
                                                         network=TINY_NETWORK))
    with pytest.raises(InputError, match="model file not found"):
        Trainer(shard_dir, tmp_path / "run", TrainConfig(init_from=str(tmp_path / "no.keras")))


@pytest.mark.parametrize("flags,expected", [
    (["--modalities", "fa,xray"], "--modalities: names 'xray'; choose from red-free, fa, ir"),
    (["--modalities", "fa,fa"], "--modalities: names a modality twice: 'fa,fa'"),
    (["--modality-share", "1.5"], "--modality-share: must be at most 1, got 1.5"),
])
def test_bad_modality_flags_exit_2(small_fire, tmp_path, capsys, flags, expected):
    code = main(["prepare", "--fire", str(small_fire), "--out", str(tmp_path / "s"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"fire-reg: error: {expected}"
    assert not (tmp_path / "s").exists()
