"""On-the-fly augmentation of training batches that keeps the target exact.

A random symmetry of the square (flips, quarter turns) applied to both patches and conjugated
into the target, a fixed/moving swap (the target inverted), and photometric jitter (gamma,
gain, noise) inside the field of view. Targets are 2x3 matrices in normalised patch
coordinates, fixed -> moving (``fire_reg.geometry`` conventions). The Trainer applies
:func:`augment_batch` to every training batch with its ``TrainConfig.augmentation``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fire_reg import geometry
from fire_reg.config import Config


@dataclass(frozen=True)
class AugmentConfig(Config):
    """On-the-fly augmentation of training batches (:func:`augment_batch`), exact for the target.

    ``symmetries``: one of the 8 symmetries of the square (flips, quarter turns) per sample,
    applied to both patches and conjugated into the target. ``swap_probability``: chance that
    fixed and moving trade places (the target is inverted). Photometric jitter, drawn per
    image and applied inside the field of view only (pixels > 0), in vessel-map intensity
    units (1.0 = the map's maximum): ``v ** gamma`` with gamma uniform in ``gamma_range``,
    times a gain uniform in ``gain_range``, plus Gaussian noise of standard deviation
    ``noise_sigma``, clipped to [0, 1].
    """

    symmetries: bool = True
    swap_probability: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.4)
    gain_range: tuple[float, float] = (0.7, 1.3)
    noise_sigma: float = 0.03

    def __post_init__(self):
        self._flag("symmetries")
        self._number("swap_probability", low=0, high=1)
        self._range("gamma_range", above=0)
        self._range("gain_range", above=0)
        self._number("noise_sigma", low=0)


def _square_symmetries() -> list[np.ndarray]:
    """The 8 symmetries of the square as 2x2 maps of normalised coordinates."""
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    flip = np.array([[-1.0, 0.0], [0.0, 1.0]])
    return [np.linalg.matrix_power(turn, k) @ f for k in range(4) for f in (np.eye(2), flip)]


SYMMETRIES = _square_symmetries()


def transform_sample(fixed, moving, target, swap: bool, symmetry: int):
    """Exact geometric augmentation of one sample: optionally swap fixed and moving (the
    target is inverted), then apply SYMMETRIES[symmetry] to both images (the content at u
    moves to S u) and conjugate the target (S T S^-1). Images are (S, S, 1)."""
    if swap:
        fixed, moving, target = moving, fixed, geometry.invert(target)
    if symmetry:
        fixed = _apply_symmetry(fixed, symmetry)
        moving = _apply_symmetry(moving, symmetry)
        sym = np.hstack([SYMMETRIES[symmetry], np.zeros((2, 1))])
        target = geometry.compose(sym, target, geometry.invert(sym))
    return fixed, moving, target


def augment_batch(fixed, moving, target, rng: np.random.Generator,
                  config: AugmentConfig = AugmentConfig(), extra=None):
    """Random :func:`transform_sample` per sample, then photometric jitter inside the field
    of view, as ``config`` says. Images (B, S, S, 1) in [0, 1]; targets (B, 2, 3) normalised.

    ``extra``: optional ``(fixed_extra, moving_extra)``, (B, S, S, C) images that belong to
    the fixed and to the moving side (e.g. the intra-modality loss's same-modality maps and
    fields of view): they get the same symmetry and swap, no jitter, and are returned after
    the others, ``(fixed, moving, target, fixed_extra, moving_extra)``. The random draws do
    not depend on ``extra``."""
    fixed, moving, target = fixed.copy(), moving.copy(), target.copy()
    sides = None if extra is None else [np.array(images, copy=True) for images in extra]
    for i in range(len(target)):
        swap = rng.uniform() < config.swap_probability
        symmetry = int(rng.integers(len(SYMMETRIES)))
        symmetry = symmetry if config.symmetries else 0
        fixed[i], moving[i], target[i] = transform_sample(
            fixed[i], moving[i], target[i], swap=swap, symmetry=symmetry)
        if sides is not None:
            sides[0][i], sides[1][i], _ = transform_sample(
                sides[0][i], sides[1][i], target[i], swap=swap, symmetry=symmetry)
    for images in (fixed, moving):
        gamma = rng.uniform(*config.gamma_range, size=(len(images), 1, 1, 1))
        gain = rng.uniform(*config.gain_range, size=(len(images), 1, 1, 1))
        noisy = gain * images ** gamma + rng.normal(0, config.noise_sigma, images.shape)
        images[...] = np.where(images > 0, np.clip(noisy, 0.0, 1.0), 0.0)
    return (fixed, moving, target) if sides is None else (fixed, moving, target, *sides)


def _apply_symmetry(image, k: int):
    """Apply SYMMETRIES[k] to an (S, S, 1) image: the content at u moves to S u."""
    turns, flipped = divmod(k, 2)
    if flipped:
        image = image[:, ::-1]
    # np.rot90 with k=-1 turns the picture clockwise on screen (x right, y down): u -> turn @ u
    return np.ascontiguousarray(np.rot90(image, k=-turns, axes=(0, 1)))
