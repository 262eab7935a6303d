"""The model bundle: a .keras file carries its settings, load_model returns them or names the
file's problem (a foreign file before Keras is imported), and Keras itself loads fire-reg files
once fire_reg.learn.network is imported."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from fire_reg.learn import bundle, network
from fire_reg.cli import main
from fire_reg.io.errors import InputError
from fire_reg.imaging.vessels import VesselMapSettings

SMALL = {"input_size": 32, "encoder_channels": [4, 8, 8], "trunk_units": 8}
SETTINGS = bundle.ModelSettings(input_size=32, preprocessing=VesselMapSettings(work_width=256),
                                training_data={"train": {"samples": 7, "config": {"seed": 1}}})


def perturbed(model, seed=0):
    """Non-zero heads, so that predictions tell weights apart."""
    rng = np.random.default_rng(seed)
    for name in ("translation", "rotation", "scale"):
        layer = model.get_layer(name)
        layer.set_weights([0.05 * rng.standard_normal(w.shape).astype("float32")
                           for w in layer.get_weights()])
    return model


def predict(model):
    images = np.random.default_rng(1).random((2, 32, 32, 1)).astype("float32")
    return model.predict({"fixed": images, "moving": images[::-1]}, verbose=0)["matrix"]


def without_settings(model):
    """The same network as fire-reg made it before models carried their settings."""
    return keras.Model(model.input, {"matrix": model.get_layer("affine").output,
                                     "warped": model.output["warped"],
                                     "matches": model.output["matches"]}, name=bundle.MODEL_NAME)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "model.keras"
    perturbed(network.build_model(SMALL, SETTINGS)).save(path)
    return path


def test_settings_travel_inside_the_file(saved):
    model, settings = bundle.load_model(saved)
    assert settings == SETTINGS and settings.preprocessing.work_width == 256
    assert settings.training_data["train"]["config"] == {"seed": 1}
    assert model.input["fixed"].shape[1] == 32
    assert np.abs(predict(model) - np.eye(2, 3)).max() > 1e-3  # the trained (perturbed) heads


def test_default_settings_and_input_size_must_agree():
    assert network.build_model(SMALL).get_layer("settings").settings == \
        bundle.ModelSettings(input_size=32).to_dict()
    with pytest.raises(ValueError, match="64 px input"):
        network.build_model(SMALL, bundle.ModelSettings(input_size=64))


def test_upgrade_keeps_every_weight(tmp_path):
    model = perturbed(network.build_model(SMALL))
    old = tmp_path / "old.keras"
    without_settings(model).save(old)
    with pytest.raises(InputError, match="old.keras: made by an older fire-reg"):
        bundle.load_model(old)
    bundle.upgrade_model(old, tmp_path / "new.keras", SETTINGS)
    loaded, settings = bundle.load_model(tmp_path / "new.keras")
    assert settings == SETTINGS
    before = keras.saving.load_model(old, compile=False)
    for a, b in zip(before.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(predict(before), predict(loaded))
    with pytest.raises(InputError, match="already carries"):
        bundle.upgrade_model(tmp_path / "new.keras", tmp_path / "again.keras", SETTINGS)


def test_bad_model_files_are_named(saved, tmp_path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"PK not a zip")
    other = tmp_path / "other.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="other").save(other)
    outputs = tmp_path / "outputs.keras"
    full = network.build_model(SMALL)
    keras.Model(full.input, {"matrix": full.output["matrix"]}, name=bundle.MODEL_NAME).save(outputs)
    cases = {tmp_path / "missing.keras": "model file not found",
             garbage: "not a readable Keras model",
             other: "not a fire-reg model (model 'other'",
             outputs: "outputs ['matrix']"}
    for path, problem in cases.items():
        with pytest.raises(InputError) as error:
            bundle.load_model(path)
        assert str(error.value).startswith(f"{path}: ") and problem in str(error.value)


def test_export_of_a_model_with_wrong_outputs_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    full = network.build_model(SMALL)
    keras.Model(full.input, {"matrix": full.output["matrix"], "warped": full.output["warped"]},
                name=bundle.MODEL_NAME).save(run / "model.keras")
    code = main(["export", "--run", str(run), "--out", str(tmp_path / "ship")])
    err = capsys.readouterr().err
    assert code == 2 and "model.keras: not a fire-reg model" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ship" / "fire_reg_affine.keras").exists()


def test_card_describes_file_and_settings(saved):
    model, settings = bundle.load_model(saved)
    card = bundle.card(saved, model, settings)
    assert card["parameters"] == model.count_params() and card["model"] == "model.keras"
    assert bundle.ModelSettings.from_dict(
        {key: card[key] for key in settings.to_dict()}) == settings
    assert card["preprocessing"]["work_width"] == 256
    assert "longer side" in card["conventions"]["letterbox"]
    json.dumps(card)  # plain JSON


HEAVY = ("keras", "tensorflow", "jax", "torch")

KERAS_LOADS = textwrap.dedent("""
    import sys
    import fire_reg, fire_reg.learn.bundle, fire_reg.learn.settings, fire_reg.cli
    heavy = {heavy!r}
    assert not set(heavy) & {{name.split(".")[0] for name in sys.modules}}, "heavy import"
    assert not [f for f in sys.meta_path if type(f).__module__.startswith("fire_reg")], "hook"
    {keras_import}
    try:  # Keras alone does not know fire-reg's layers: nothing registers them behind its back
        {load}({path!r}, compile=False)
    except Exception as error:
        assert "FeatureCorrelation" in str(error), error
    else:
        raise AssertionError("loaded without fire_reg.learn.network")
    import fire_reg.learn.network  # its decorators register the layers and losses
    model = {load}({path!r}, compile=False)
    assert model.get_layer("settings").settings["preprocessing"]["work_width"] == 256
    print("loaded", model.name)
""")


@pytest.mark.parametrize("backend,keras_import,load", [
    ("tensorflow", "import keras", "keras.saving.load_model"),
    ("tensorflow", "import tensorflow as tf", "tf.keras.models.load_model"),
    ("jax", "import keras", "keras.saving.load_model"),
    ("torch", "import keras", "keras.saving.load_model"),
])
def test_keras_loads_fire_reg_files_after_the_network_is_imported(saved, backend, keras_import,
                                                                   load):
    """`import fire_reg` (and the bundle, settings, CLI modules) import no framework and install
    no import hook; Keras' own loader works once fire_reg.learn.network is imported."""
    script = KERAS_LOADS.format(heavy=HEAVY, keras_import=keras_import, load=load,
                                path=str(saved))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": backend}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded fire_reg_affine" in done.stdout
