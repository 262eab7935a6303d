"""The registration network: a Siamese encoder, global feature correlation and affine heads.

Conventions (as in fire_reg.geometry)
-----------------------------------
* Inputs are two vessel maps ``{"fixed": (S, S, 1), "moving": (S, S, 1)}``, float32 in
  [0, 1], zero outside the field of view; S is ``NetworkConfig.input_size``.
* The predicted ``matrix`` (B, 2, 3) is in **normalised coordinates of the input** and maps
  **fixed to moving**: ``[u_m, v_m] = A @ [u_f, v_f, 1]`` with ``u = (2 x + 1) / S - 1``
  (pixel centres; the image edges at -1 and +1). ``geometry.pixel_from_normalized(A, (S, S),
  (S, S))`` gives the pixel matrix that ``cv2.warpAffine(..., WARP_INVERSE_MAP)`` takes.
* ``warped`` (B, S, S, 1) is the moving image sampled at ``A p`` for every fixed pixel p
  (bilinear, zero outside the moving image), i.e. the moving image in the fixed frame.

Architecture: one shared convolutional encoder (features at S/8 x S/8) -> cosine
correlation of every fixed cell with every moving cell -> soft-argmax displacement and
confidence per fixed cell -> two dense layers -> parallel heads (translation, rotation,
log-scale, optional shear), zero-initialised so that the model starts at the identity.
The network regresses from the geometry of the correlation, not from image appearance.
"""
from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import layers, ops

from fire_reg import geometry
from fire_reg.imaging import similarity
from fire_reg.config import FieldError, NetworkConfig
from fire_reg.learn.settings import MODEL_NAME, SETTINGS_LAYER, ModelSettings


def _cell_centres(height: int, width: int) -> np.ndarray:
    """(height * width, 2) normalised (u, v) centres of a height x width grid, row-major."""
    u = (2.0 * np.arange(width) + 1.0) / width - 1.0
    v = (2.0 * np.arange(height) + 1.0) / height - 1.0
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu.ravel(), vv.ravel()], axis=-1).astype("float32")


@keras.saving.register_keras_serializable(package="fire_reg")
class FeatureCorrelation(layers.Layer):
    """Global cosine correlation of two feature maps.

    Inputs ``[fixed, moving]``, each (B, h, w, c). Both are L2-normalised over channels
    (``eps`` guards all-zero features); output (B, h, w, h * w): for fixed cell i, its dot
    product with every moving cell j (row-major order of j).
    """

    def __init__(self, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps

    def call(self, inputs):
        fixed, moving = inputs
        _, height, width, channels = fixed.shape
        cells = height * width

        def unit(x):
            x = ops.reshape(x, (-1, cells, channels))
            return x / ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + self.eps)

        corr = ops.matmul(unit(fixed), ops.transpose(unit(moving), (0, 2, 1)))
        return ops.reshape(corr, (-1, height, width, cells))

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape[0]
        return (batch, height, width, height * width)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="fire_reg")
class MatchLogits(layers.Layer):
    """Correlation (B, h, w, h * w) -> match logits (B, h * w, h * w) = ``beta * corr``.

    ``beta = exp(log_beta) > 0`` is a trainable inverse temperature; ``softmax`` of row i over
    the moving cells j is the probability that fixed cell i matches moving cell j. The logits
    are a model output so that a dense matching loss (:func:`match_loss`) can train the encoder
    directly.
    """

    def __init__(self, temperature_init: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature_init = float(temperature_init)

    def build(self, input_shape):
        self.log_beta = self.add_weight(
            name="log_beta", shape=(),
            initializer=keras.initializers.Constant(math.log(self.temperature_init)))

    def call(self, corr):
        _, height, width, cells = corr.shape
        return ops.exp(self.log_beta) * ops.reshape(corr, (-1, height * width, cells))

    def compute_output_shape(self, input_shape):
        batch, height, width, cells = input_shape
        return (batch, height * width, cells)

    def get_config(self):
        return {**super().get_config(), "temperature_init": self.temperature_init}


@keras.saving.register_keras_serializable(package="fire_reg")
class SoftArgmaxDisplacement(layers.Layer):
    """Per fixed cell: expected displacement to its match and a confidence.

    Input: match logits (B, h * w, h * w) of an ``grid`` x ``grid`` cell layout;
    ``p = softmax(logits)`` over the moving cells; output (B, h, w, 3) = ``[dx, dy, conf]``
    where ``(dx, dy) = sum_j p_j c_j - c_i`` in normalised units (cell centres c in [-1, 1])
    and ``conf = max_j p_j``.
    """

    def __init__(self, grid: int, **kwargs):
        super().__init__(**kwargs)
        self.grid = int(grid)
        self.centres = _cell_centres(self.grid, self.grid)

    def call(self, logits):
        probs = ops.softmax(logits, axis=-1)
        centres = ops.convert_to_tensor(self.centres, dtype=probs.dtype)
        expected = ops.matmul(probs, centres)  # (B, h * w, 2)
        confidence = ops.max(probs, axis=-1, keepdims=True)
        flow = ops.concatenate([expected - centres[None], confidence], axis=-1)
        return ops.reshape(flow, (-1, self.grid, self.grid, 3))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid, self.grid, 3)

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package="fire_reg")
class AffineFromParams(layers.Layer):
    """Head outputs -> (B, 2, 3) normalised matrix (fixed -> moving).

    Inputs ``[translation (B, 2), rotation (B, 1), log_scale (B, 2)]`` plus ``shear (B, 1)``
    when ``use_shear``. ``tx, ty = translation_scale * translation`` (normalised units),
    theta in radians, ``sx, sy = exp(log_scale)``; combined by
    :func:`fire_reg.geometry.matrix_from_params`.
    """

    def __init__(self, use_shear: bool = False, translation_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.use_shear = bool(use_shear)
        self.translation_scale = float(translation_scale)

    def call(self, inputs):
        translation, rotation, log_scale = inputs[:3]
        translation = translation * self.translation_scale
        shear = inputs[3][:, 0] if self.use_shear else 0.0
        scale = ops.exp(log_scale)
        return geometry.matrix_from_params(translation[:, 0], translation[:, 1], rotation[:, 0],
                                           scale[:, 0], scale[:, 1], shear, xp=ops)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2, 3)

    def get_config(self):
        return {**super().get_config(), "use_shear": self.use_shear,
                "translation_scale": self.translation_scale}


@keras.saving.register_keras_serializable(package="fire_reg")
class BilinearWarp(layers.Layer):
    """Warp ``moving`` (B, H, W, C) into the fixed frame with normalised ``matrix`` (B, 2, 3).

    Output pixel p (same H x W grid) reads the moving image at ``A p`` (normalised
    coordinates, pixel centres) with bilinear interpolation; neighbours outside the image
    count as zero. This equals ``cv2.warpAffine(moving, M_px, (W, H), flags=INTER_LINEAR |
    WARP_INVERSE_MAP, borderMode=BORDER_CONSTANT)`` with ``M_px =
    geometry.pixel_from_normalized(A, (W, H), (W, H))``, and it is built from gathers so that
    the gradient reaches the matrix (``keras.ops.image.affine_transform`` passes none).
    """

    def build(self, input_shape):
        _, height, width, _ = input_shape[0]
        centres = _cell_centres(height, width)
        self.grid = np.concatenate([centres, np.ones((len(centres), 1), "float32")], axis=1)

    def call(self, inputs):
        moving, matrix = inputs
        _, height, width, channels = moving.shape
        grid = ops.convert_to_tensor(self.grid, dtype=moving.dtype)
        coords = ops.einsum("nk,bik->bni", grid, ops.cast(matrix, moving.dtype))  # (B, N, 2)
        x = ((coords[..., 0] + 1.0) * width - 1.0) / 2.0  # moving pixel coordinates
        y = ((coords[..., 1] + 1.0) * height - 1.0) / 2.0
        x0, y0 = ops.floor(x), ops.floor(y)
        wx, wy = (x - x0)[..., None], (y - y0)[..., None]
        x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
        flat = ops.reshape(moving, (-1, height * width, channels))

        def corner(xi, yi):
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = ops.clip(yi, 0, height - 1) * width + ops.clip(xi, 0, width - 1)
            values = ops.take_along_axis(flat, index[..., None], axis=1)
            return values * ops.cast(inside, moving.dtype)[..., None]

        out = ((1.0 - wx) * (1.0 - wy) * corner(x0, y0) + wx * (1.0 - wy) * corner(x0 + 1, y0)
               + (1.0 - wx) * wy * corner(x0, y0 + 1) + wx * wy * corner(x0 + 1, y0 + 1))
        return ops.reshape(out, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="fire_reg")
class SettingsLayer(layers.Layer):
    """Identity whose config carries the model's settings (:class:`fire_reg.learn.settings.ModelSettings`
    as JSON), so that every saved ``.keras`` file says how to apply it; read them with
    :func:`fire_reg.learn.bundle.load_model`."""

    def __init__(self, settings: dict, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "settings": self.settings}


def feature_grid(config: NetworkConfig) -> int:
    """Side of the encoder's cell grid: the input size over 8 (three stride-2 convolutions)."""
    return config.input_size // 8


def _encoder(config: NetworkConfig) -> keras.Sequential:
    """Shared encoder: 3x3 convs, the first three with stride 2, the rest stride 1 (wider
    receptive field at S/8), ReLU, 'same' padding; the last one linear (signed features)."""
    channels = config.encoder_channels
    last = len(channels) - 1
    convs = [layers.Conv2D(c, 3, strides=2 if i < 3 else 1, padding="same",
                           activation=None if i == last else "relu", name=f"conv{i}")
             for i, c in enumerate(channels)]
    size = config.input_size
    return keras.Sequential([keras.Input((size, size, 1)), *convs], name="encoder")


def build_model(config: NetworkConfig | dict | None = None,
                settings: ModelSettings | None = None) -> keras.Model:
    """Build the registration model (identity transform at initialisation).

    Inputs ``{"fixed", "moving"}`` (B, S, S, 1) float32; outputs ``{"matrix": (B, 2, 3)
    normalised fixed -> moving, "warped": (B, S, S, 1) moving image in the fixed frame,
    "matches": (B, g*g, g*g) match logits of the g = S/8 cell grid}``. ``settings`` (default:
    the default preprocessing, no training data) go into the model (:class:`SettingsLayer`).
    The input size S is the settings' (the config may leave it out, or must name the same).
    """
    if config is None:
        config = NetworkConfig()
    elif isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    if settings is None:
        settings = ModelSettings(**({} if config.input_size is None
                                    else {"input_size": config.input_size}))
    elif config.input_size not in (None, settings.input_size):
        raise FieldError("input_size", f"is {config.input_size} px, but the settings are for a "
                                       f"{settings.input_size} px input")
    config = dataclasses.replace(config, input_size=settings.input_size)
    size = config.input_size
    fixed = keras.Input((size, size, 1), name="fixed")
    moving = keras.Input((size, size, 1), name="moving")
    encoder = _encoder(config)
    corr = FeatureCorrelation(name="correlation")([encoder(fixed), encoder(moving)])
    logits = MatchLogits(config.softmax_temperature_init, name="match_logits")(corr)
    flow = SoftArgmaxDisplacement(feature_grid(config), name="soft_argmax")(logits)
    trunk = layers.Flatten(name="flatten")(flow)
    trunk = layers.Dense(config.trunk_units, activation="relu", name="trunk0")(trunk)
    trunk = layers.Dense(config.trunk_units, activation="relu", name="trunk1")(trunk)
    heads = {"translation": 2, "rotation": 1, "scale": 2}
    if config.use_shear:
        heads["shear"] = 1
    params = [layers.Dense(units, kernel_initializer="zeros", bias_initializer="zeros",
                           name=name)(trunk) for name, units in heads.items()]
    matrix = AffineFromParams(config.use_shear, config.max_translation, name="affine")(params)
    warped = BilinearWarp(name="warp")([moving, matrix])
    matrix = SettingsLayer(settings.to_dict(), name=SETTINGS_LAYER)(matrix)
    return keras.Model({"fixed": fixed, "moving": moving},
                       {"matrix": matrix, "warped": warped, "matches": logits}, name=MODEL_NAME)


GRID_POINTS = np.concatenate([geometry.normalized_grid(5, 0.8), np.ones((25, 1))],
                             axis=1).astype("float32")
"""Homogeneous (25, 3) normalised points of :func:`grid_loss`: a 5x5 grid over [-0.8, 0.8]^2."""


@keras.saving.register_keras_serializable(package="fire_reg")
def grid_loss(y_true, y_pred):
    """Mean distance (normalised units) between :data:`GRID_POINTS` mapped by two matrices.

    ``y_true``, ``y_pred``: (B, 2, 3) normalised matrices. Returns a scalar (mean over points
    and batch); a tiny eps inside the square root keeps the gradient finite at zero.
    """
    points = ops.convert_to_tensor(GRID_POINTS, dtype=y_pred.dtype)
    diff = ops.einsum("bik,nk->bni", ops.cast(y_true, y_pred.dtype) - y_pred, points)
    return ops.mean(ops.sqrt(ops.sum(ops.square(diff), axis=-1) + 1e-12))


MATCH_SIGMA_CELLS = 0.5
"""Width (in cells) of the Gaussian soft target of :func:`match_loss`."""


def match_targets(target, fixed, moving, grid: int) -> np.ndarray:
    """Per-cell targets of :func:`match_loss` from normalised matrices and input images.

    ``target`` (B, 2, 3) normalised fixed -> moving; ``fixed``, ``moving`` (B, S, S[, 1]).
    Returns (B, grid*grid, 3) float32 ``[u, v, weight]``: where fixed cell i's centre lands in
    the moving input, and weight 1 when the fixed cell shows retina and its match lands on
    retina of the moving input (0 otherwise).
    """
    target = np.asarray(target, np.float64)
    size = np.asarray(fixed).shape[1]
    fixed = np.asarray(fixed).reshape(len(target), size, size)
    moving = np.asarray(moving).reshape(len(target), size, size)
    centres = _cell_centres(grid, grid).astype(np.float64)
    landed = np.einsum("bij,nj->bni", target[:, :, :2], centres) + target[:, None, :, 2]
    cell = size // grid
    fixed_cells = fixed.reshape(len(target), grid, cell, grid, cell).mean(axis=(2, 4))
    moving_cells = moving.reshape(len(target), grid, cell, grid, cell).mean(axis=(2, 4))
    col = np.floor((landed[..., 0] + 1) / 2 * grid).astype(int)
    row = np.floor((landed[..., 1] + 1) / 2 * grid).astype(int)
    inside = (col >= 0) & (col < grid) & (row >= 0) & (row < grid)
    batch = np.arange(len(target))[:, None]
    on_retina = moving_cells[batch, row.clip(0, grid - 1), col.clip(0, grid - 1)] > 0.02
    weight = inside & on_retina & (fixed_cells.reshape(len(target), -1) > 0.02)
    return np.concatenate([landed, weight[..., None]], axis=-1).astype(np.float32)


@keras.saving.register_keras_serializable(package="fire_reg")
def match_loss(y_true, logits):
    """Cross-entropy of the match distribution against a Gaussian soft target.

    ``y_true`` (B, n, 3) from :func:`match_targets`; ``logits`` (B, n, n) from
    :class:`MatchLogits` (n = g*g cells). The target of fixed cell i is a Gaussian of
    :data:`MATCH_SIGMA_CELLS` cells around its true landing point over the moving cell
    centres; the loss is averaged over cells with weight 1 (scalar).
    """
    cells = logits.shape[-1]
    grid = int(round(math.sqrt(cells)))
    centres = ops.convert_to_tensor(_cell_centres(grid, grid), dtype=logits.dtype)
    y_true = ops.cast(y_true, logits.dtype)
    landed, weight = y_true[..., :2], y_true[..., 2]
    sigma = MATCH_SIGMA_CELLS * 2.0 / grid
    dist2 = ops.sum(ops.square(landed[:, :, None, :] - centres[None, None]), axis=-1)
    soft = ops.softmax(-dist2 / (2 * sigma * sigma), axis=-1)
    cross = -ops.sum(soft * ops.log_softmax(logits, axis=-1), axis=-1)
    return ops.sum(cross * weight) / (ops.sum(weight) + 1.0)


@keras.saving.register_keras_serializable(package="fire_reg")
def masked_ncc_loss(fixed, warped, eps: float = 1e-6):
    """``1 - NCC`` of two (B, H, W, C) images over the pixels where both are > 0.

    NCC (:func:`fire_reg.imaging.similarity.ncc`, the measure the Registrar scores alignments
    with, here over ``keras.ops``) is computed per sample inside the joint field of view
    (fixed > 0 and warped > 0) and the losses are averaged over the batch (scalar, in [0, 2]).
    """
    fixed = ops.cast(fixed, warped.dtype)
    mask = ops.cast((fixed > 0) & (warped > 0), warped.dtype)
    axes = tuple(range(1, len(warped.shape)))
    return ops.mean(1.0 - similarity.ncc(fixed, warped, mask, axis=axes, eps=eps, xp=ops))


@keras.saving.register_keras_serializable(package="fire_reg")
def intra_modality_loss(y_true, y_pred, eps: float = 1e-6):
    """``1 - NCC`` of the fixed patch and the moving patch **in the fixed patch's modality**
    warped by the predicted matrix, inside both fields of view (the classic recipe for training
    across modalities: the network sees the pair in two modalities, the loss compares like with
    like).

    ``y_true`` (B, S, S, 2): the fixed patch's vessel map and its field of view (0 / 1);
    ``y_pred`` (B, S, S, 2): the same-modality moving map and its field of view warped into
    the fixed frame by :class:`BilinearWarp` with the predicted matrix (the ``intra`` output
    of :func:`training_model`), so the gradient reaches the matrix through the map. NCC is
    :func:`fire_reg.imaging.similarity.ncc` over the pixels where both fields of view are
    > 0.5 (a mask without gradient), per sample; the losses are averaged (scalar in [0, 2]).
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    mask = ops.cast((y_true[..., 1:] > 0.5) & (y_pred[..., 1:] > 0.5), y_pred.dtype)
    ncc = similarity.ncc(y_true[..., :1], y_pred[..., :1], mask, axis=(1, 2, 3), eps=eps, xp=ops)
    return ops.mean(1.0 - ncc)


INTRA_INPUT = "intra_moving"
"""Extra input of :func:`training_model`: the same-modality moving map and its field of view."""


def training_model(model: keras.Model) -> keras.Model:
    """``model`` with an intra-modality output, for training only (the fire-reg model inside
    is what is saved and shipped; this wrapper adds no weights).

    Inputs ``{"fixed", "moving", "intra_moving": (B, S, S, 2)}`` (the moving patch in the fixed
    patch's modality and its field of view); outputs the model's plus ``"intra"``: that input
    warped into the fixed frame with the predicted ``matrix`` (:class:`BilinearWarp`), for
    :func:`intra_modality_loss`.
    """
    size = model.input["fixed"].shape[1]
    inputs = {name: keras.Input((size, size, 1), name=name) for name in ("fixed", "moving")}
    inputs[INTRA_INPUT] = keras.Input((size, size, 2), name=INTRA_INPUT)
    outputs = dict(model({"fixed": inputs["fixed"], "moving": inputs["moving"]}))
    outputs["intra"] = BilinearWarp(name="intra_warp")([inputs[INTRA_INPUT], outputs["matrix"]])
    return keras.Model(inputs, outputs, name=f"{MODEL_NAME}_training")


def inference_model(model: keras.Model, outputs=("matrix", "matches")) -> keras.Model:
    """``model`` with only the ``outputs`` registration reads (its layers, weights shared): a
    pair's prediction then skips the ``"warped"`` patch, about a third of its time on a CPU."""
    return keras.Model(model.input, {name: model.output[name] for name in outputs},
                       name=f"{model.name}_inference")


def network_config(model: keras.Model) -> NetworkConfig:
    """The :class:`NetworkConfig` a fire-reg model was built with, read from its layers (the
    softmax temperature is the initial one only in an untrained model: the trained value is a
    weight)."""
    encoder = model.get_layer("encoder")
    affine = model.get_layer("affine")
    return NetworkConfig(
        input_size=int(model.input["fixed"].shape[1]),
        encoder_channels=tuple(int(layer.filters) for layer in encoder.layers),
        trunk_units=int(model.get_layer("trunk0").units), use_shear=affine.use_shear,
        max_translation=affine.translation_scale,
        softmax_temperature_init=model.get_layer("match_logits").temperature_init)


def affine_from_matches(logits, min_inliers: int = 6, threshold_cells: float = 0.75,
                        ransac_iterations: int = 2000, ransac_confidence: float = 0.995):
    """Robust affine (normalised, fixed -> moving) from one sample's match logits, or None.

    ``logits`` (g*g, g*g) of :class:`MatchLogits`. Mutual nearest neighbours between fixed and
    moving cells, each refined to sub-cell precision by a soft-argmax over the 3 x 3 moving
    cells around its match, then ``cv2.estimateAffine2D`` with RANSAC at ``threshold_cells``
    cells (``ransac_iterations``, ``ransac_confidence``: OpenCV's). None when fewer than
    ``min_inliers`` matches agree. A second estimate beside the regression heads: the
    Registrar keeps whichever aligns the vessels better.
    """
    import cv2

    logits = np.asarray(logits, np.float64)
    cells = logits.shape[0]
    grid = int(round(math.sqrt(cells)))
    centres = _cell_centres(grid, grid).astype(np.float64)
    forward, backward = logits.argmax(1), logits.argmax(0)
    fixed_cells = np.flatnonzero(backward[forward] == np.arange(cells))
    if len(fixed_cells) < min_inliers:
        return None
    rows, cols = np.divmod(forward[fixed_cells], grid)
    offsets = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
    near_rows = np.clip(rows[:, None] + offsets[:, 0], 0, grid - 1)
    near_cols = np.clip(cols[:, None] + offsets[:, 1], 0, grid - 1)
    near = near_rows * grid + near_cols  # (n, 9) neighbouring moving cells
    weights = np.take_along_axis(logits[fixed_cells], near, axis=1)
    weights = np.exp(weights - weights.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    landed = np.einsum("nk,nkd->nd", weights, centres[near])
    matrix, inliers = cv2.estimateAffine2D(
        centres[fixed_cells], landed, method=cv2.RANSAC,
        ransacReprojThreshold=threshold_cells * 2.0 / grid, maxIters=ransac_iterations,
        confidence=ransac_confidence)
    if matrix is None or inliers is None or int(inliers.sum()) < min_inliers:
        return None
    return matrix


def predict_matrices(model: keras.Model, fixed, moving, batch_size: int = 32) -> np.ndarray:
    """Normalised matrices (N, 2, 3) float64 (fixed -> moving) for arrays (N, S, S[, 1])."""
    def as_input(images):
        images = np.asarray(images, dtype="float32")
        return images[..., None] if images.ndim == 3 else images

    outputs = model.predict({"fixed": as_input(fixed), "moving": as_input(moving)},
                            batch_size=batch_size, verbose=0)
    return np.asarray(outputs["matrix"], dtype=np.float64)
