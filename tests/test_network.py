"""Tests of fire_reg.learn.network: shapes, identity start, the warp against OpenCV, gradients,
serialisation, a short training run and the JAX / PyTorch backends."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import cv2
import keras
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.learn import network

IDENTITY = np.eye(2, 3)


def _pair(size=32, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((2, batch, size, size, 1)).astype("float32")
    return {"fixed": images[0], "moving": images[1]}


def test_config_round_trips_through_json():
    config = network.NetworkConfig(input_size=64, encoder_channels=(8, 8, 16, 16), use_shear=True)
    again = network.NetworkConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="size is not a NetworkConfig setting"):
        network.NetworkConfig.from_dict({"size": 3})
    with pytest.raises(ValueError, match="input_size must be a multiple of 8"):
        network.NetworkConfig(input_size=36)


@pytest.mark.parametrize("use_shear", [False, True])
def test_output_shapes_dtypes_and_identity_at_initialisation(use_shear):
    model = network.build_model({"input_size": 32, "use_shear": use_shear})
    assert model.name == "fire_reg_affine"
    inputs = _pair(32, batch=3)
    out = model(inputs)
    assert tuple(out["matrix"].shape) == (3, 2, 3)
    assert tuple(out["warped"].shape) == (3, 32, 32, 1)
    assert keras.backend.standardize_dtype(out["matrix"].dtype) == "float32"
    assert keras.backend.standardize_dtype(out["warped"].dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["matrix"]),
                               np.broadcast_to(IDENTITY, (3, 2, 3)), atol=1e-7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["warped"]), inputs["moving"],
                               atol=1e-6)


def test_inference_model_predicts_what_the_model_does_without_the_warped_patch():
    model = network.build_model({"input_size": 32})
    inference = network.inference_model(model)
    inputs = _pair(32, batch=2)
    full, reduced = model.predict_on_batch(inputs), inference.predict_on_batch(inputs)
    assert set(reduced) == {"matrix", "matches"}
    for name in reduced:
        np.testing.assert_array_equal(reduced[name], full[name])
    assert inference.count_params() == model.count_params()  # the same weights


def test_parameter_count_is_small():
    assert network.build_model().count_params() < 1_500_000


def test_predict_matrices_accepts_both_layouts():
    model = network.build_model({"input_size": 32})
    inputs = _pair(32, batch=5)
    for fixed, moving in [(inputs["fixed"], inputs["moving"]),
                          (inputs["fixed"][..., 0], inputs["moving"][..., 0])]:
        matrices = network.predict_matrices(model, fixed, moving, batch_size=2)
        assert matrices.shape == (5, 2, 3) and matrices.dtype == np.float64
        np.testing.assert_allclose(matrices, np.broadcast_to(IDENTITY, (5, 2, 3)), atol=1e-7)


def test_match_targets_and_loss_prefer_the_true_match():
    """Logits peaked at the true landing cell give a lower matching loss than shifted ones."""
    size, grid = 32, 4
    shift = np.array([[[1, 0, 0.5], [0, 1, 0]]], np.float32)  # one cell (2/grid) right
    images = np.ones((1, size, size, 1), np.float32)
    y_true = network.match_targets(shift, images, images, grid)
    assert y_true.shape == (1, grid * grid, 3)
    # cells of the last column land outside the moving image: weight 0
    weights = y_true[0, :, 2].reshape(grid, grid)
    assert weights[:, -1].sum() == 0 and weights[:, :-1].all()
    right = np.zeros((1, 16, 16), np.float32)
    wrong = np.zeros((1, 16, 16), np.float32)
    for i in range(16):
        right[0, i, (i + 1) % 16] = 20.0
        wrong[0, i, i] = 20.0
    good = float(network.match_loss(y_true, right))
    bad = float(network.match_loss(y_true, wrong))
    assert good < bad


def test_affine_from_matches_recovers_a_known_motion():
    """Logits peaked where a known affine sends each cell give back that affine."""
    grid = 8
    truth = geometry.AffineParams(0.1, -0.05, 0.05, 1.02, 0.98).matrix()
    centres = network._cell_centres(grid, grid).astype(np.float64)
    landed = geometry.apply(truth, centres)
    dist2 = ((landed[:, None, :] - centres[None]) ** 2).sum(-1)
    logits = -dist2 / (2 * (0.5 * 2 / grid) ** 2)
    logits[3, :] = logits.min()  # an uninformative cell
    found = network.affine_from_matches(logits)
    assert found is not None
    assert geometry.mean_point_distance(found, truth, geometry.normalized_grid()) < 0.02
    assert network.affine_from_matches(np.zeros((grid * grid, grid * grid))) is None


def test_soft_argmax_recovers_a_known_cell_shift():
    # one-hot features: moving cell j holds the pattern of fixed cell j - 1 (one cell to the right)
    size = 4
    fixed = np.eye(size * size, dtype="float32").reshape(1, size, size, -1)
    moving = np.roll(fixed, 1, axis=2)
    corr = network.FeatureCorrelation()([fixed, moving])
    logits = network.MatchLogits(200.0)(corr)
    flow = keras.ops.convert_to_numpy(network.SoftArgmaxDisplacement(size)(logits))[0]
    inner = flow[:, :-1]  # the last column's match wrapped around
    np.testing.assert_allclose(inner[..., 0], 2.0 / size, atol=1e-4)
    np.testing.assert_allclose(inner[..., 1], 0.0, atol=1e-4)
    np.testing.assert_allclose(inner[..., 2], 1.0, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_bilinear_warp_equals_opencv_inverse_map(channels):
    size = 48
    image = np.random.default_rng(1).random((size, size, channels)).astype("float32")
    # rotation ~15.9 deg, scale ~0.91, translation; dyadic entries so that OpenCV's 1/32-px
    # fixed-point coordinates (older versions) are exact too
    m_px = np.array([[0.875, -0.25, 9.5], [0.25, 0.875, -6.25]])
    matrix = geometry.normalized_from_pixel(m_px, (size, size), (size, size)).astype("float32")
    ref = cv2.warpAffine(image, m_px, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(size, size, channels)
    out = keras.ops.convert_to_numpy(network.BilinearWarp()([image[None], matrix[None]]))[0]

    xy = geometry.apply(m_px, geometry.grid_points((size, size), size)).reshape(size, size, 2)
    interior = ((xy >= 0) & (xy <= size - 1)).all(-1)
    outside = ((xy < -1) | (xy > size)).any(-1)
    border = ~interior & ~outside
    assert interior.sum() > 500 and border.sum() > 20 and outside.sum() > 20
    np.testing.assert_allclose(out[interior], ref[interior], atol=1e-4)
    np.testing.assert_allclose(out[border], ref[border], atol=1e-4)  # zero-padded neighbours
    assert np.abs(out[border]).max() > 0.1  # partly inside: not simply blanked
    np.testing.assert_allclose(out[outside], 0.0, atol=1e-6)
    np.testing.assert_allclose(ref[outside], 0.0, atol=1e-6)


def test_gradient_through_warp_reaches_the_matrix():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("GradientTape check needs the TensorFlow backend")
    size = 32
    yy, xx = np.mgrid[:size, :size]
    image = np.exp(-((xx - 14.0) ** 2 + (yy - 17.0) ** 2) / 40.0).astype("float32")[None, ..., None]
    target = np.roll(image, 2, axis=2)
    warp = network.BilinearWarp()
    base = geometry.normalized_from_pixel([[1.0, 0.05, 0.7], [-0.05, 1.0, -0.4]],
                                          (size, size), (size, size)).astype("float32")[None]

    def loss(matrix):
        return keras.ops.mean(keras.ops.square(warp([image, matrix]) - target))

    matrix = tf.Variable(base)
    with tf.GradientTape() as tape:
        value = loss(matrix)
    grad = tape.gradient(value, matrix).numpy()[0]
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    step = 1e-3  # central differences agree with the analytic gradient
    numeric = np.zeros((2, 3))
    for i, j in np.ndindex(2, 3):
        delta = np.zeros((1, 2, 3), "float32")
        delta[0, i, j] = step
        numeric[i, j] = float(loss(base + delta) - loss(base - delta)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=0.1, atol=1e-3 * np.abs(numeric).max())


@pytest.mark.parametrize("use_shear", [False, True])
def test_affine_layer_round_trips_with_geometry(use_shear):
    tx, ty, theta, sx, sy, shear = 0.12, -0.3, 0.4, 1.2, 0.85, (0.1 if use_shear else 0.0)
    heads = [np.array([[tx / 0.5, ty / 0.5]], "float32"), np.array([[theta]], "float32"),
             np.log(np.array([[sx, sy]], "float32"))]
    if use_shear:
        heads.append(np.array([[shear]], "float32"))
    layer = network.AffineFromParams(use_shear=use_shear, translation_scale=0.5)
    matrix = keras.ops.convert_to_numpy(layer(heads))[0]
    np.testing.assert_allclose(matrix, geometry.matrix_from_params(tx, ty, theta, sx, sy, shear),
                               atol=1e-6)
    params = geometry.params_from_matrix(matrix)
    np.testing.assert_allclose([params.tx, params.ty, params.theta, params.sx, params.sy,
                                params.shear], [tx, ty, theta, sx, sy, shear], atol=1e-5)


def test_losses_are_zero_at_agreement_and_positive_otherwise():
    batch = np.stack([IDENTITY, geometry.matrix_from_params(0.1, 0, 0.2, 1.1, 0.9)]).astype("float32")
    assert float(network.grid_loss(batch, batch)) < 1e-5
    shifted = batch.copy()
    shifted[:, 0, 2] += 0.1
    np.testing.assert_allclose(float(network.grid_loss(batch, shifted)), 0.1, rtol=1e-4)

    image = _pair(32)["fixed"]
    image[:, :4] = 0.0  # outside the field of view
    assert float(network.masked_ncc_loss(image, image)) < 1e-4
    assert float(network.masked_ncc_loss(image, np.where(image > 0, 2 * image + 1, 0))) < 1e-4
    other = _pair(32, seed=5)["moving"]
    assert float(network.masked_ncc_loss(image, other)) > 0.5


def _perturb_heads(model, seed=0):
    rng = np.random.default_rng(seed)
    for name in ("translation", "rotation", "scale"):
        layer = model.get_layer(name)
        layer.set_weights([0.02 * rng.standard_normal(w.shape).astype("float32")
                           for w in layer.get_weights()])


def test_keras_file_save_load_gives_identical_predictions(tmp_path):
    model = network.build_model({"input_size": 32})
    _perturb_heads(model)
    model.compile(optimizer="adam", loss={"matrix": network.grid_loss,
                                          "warped": network.masked_ncc_loss})
    inputs = _pair(32, batch=4)
    model.fit(inputs, {"matrix": np.broadcast_to(IDENTITY, (4, 2, 3)), "warped": inputs["fixed"]},
              epochs=1, verbose=0)  # builds the optimizer state that is saved too
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    before, after = model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0)
    assert np.abs(before["matrix"] - IDENTITY).max() > 1e-3  # a non-trivial prediction
    for key in ("matrix", "warped"):
        np.testing.assert_array_equal(before[key], after[key])


def _shifted_blobs(count, size, seed=0):
    """Smooth blob images and copies shifted by known translations (moving = fixed + shift)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype("float32")
    fixed = np.zeros((count, size, size, 1), "float32")
    moving = np.zeros_like(fixed)
    matrices = np.zeros((count, 2, 3), "float32")
    for k in range(count):
        shift = rng.uniform(-6, 6, 2)
        centres = rng.uniform(8, size - 8, (6, 2))
        for cx, cy in centres:
            fixed[k, ..., 0] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0)
            moving[k, ..., 0] += np.exp(-((xx - cx - shift[0]) ** 2 + (yy - cy - shift[1]) ** 2) / 18.0)
        m_px = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        matrices[k] = geometry.normalized_from_pixel(m_px, (size, size), (size, size))
    return {"fixed": np.clip(fixed, 0, 1), "moving": np.clip(moving, 0, 1)}, matrices


def test_a_few_training_steps_reduce_the_grid_loss():
    keras.utils.set_random_seed(0)
    inputs, matrices = _shifted_blobs(64, 64)
    model = network.build_model({"input_size": 64})
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={"matrix": network.grid_loss})
    targets = {"matrix": matrices}
    before = model.evaluate(inputs, targets, batch_size=16, verbose=0, return_dict=True)["loss"]
    model.fit(inputs, targets, batch_size=16, epochs=8, verbose=0)
    after = model.evaluate(inputs, targets, batch_size=16, verbose=0, return_dict=True)["loss"]
    assert after < 0.7 * before, (before, after)


BACKEND_SCRIPT = textwrap.dedent("""
    import numpy as np, keras
    from fire_reg.learn import network
    assert keras.backend.backend() == "{backend}", keras.backend.backend()
    model = network.build_model({{"input_size": 32}})
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    out = model.predict({{"fixed": images, "moving": images[::-1]}}, verbose=0)
    assert out["matrix"].shape == (3, 2, 3) and out["warped"].shape == (3, 32, 32, 1)
    np.testing.assert_allclose(out["matrix"], np.broadcast_to(np.eye(2, 3), (3, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(out["warped"], images[::-1], atol=1e-5)
    print("ok")
""")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_model_builds_and_predicts_under_other_backends(backend):
    assert importlib.util.find_spec(backend) is not None, \
        f"{backend} is not installed: `pip install -e .[test]` brings it"
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT.format(backend=backend)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
