"""Similarity measures: how alike two images are over the pixels they share. Every stage that
scores an alignment reads its measure here.

* :func:`ncc`: normalised cross-correlation (zero-mean, the Pearson correlation of the pixel
  values), in [-1, 1]; invariant to a gain and an offset of either image, not to an inversion
  (-1). Written once over an array namespace ``xp`` (numpy by default, ``keras.ops`` inside a
  training loss) so that the registration path and the network's loss compute the same thing.
* :func:`mutual_information`: mutual information (nats) of the joint grey-value histogram,
  >= 0; invariant to any one-to-one remapping of the grey values, an inversion included, which
  is what images of different modalities need (a vessel dark in one image, bright in the other).
* :func:`measure`: a measure by name from :data:`MEASURES`; :func:`register_measure` adds one
  (a learned measure, say), so that ``VesselMaps.similarity(transform, measure="name")`` and
  every stage built on it can use it.

A measure is ``f(a, b, mask=None) -> float``: ``a`` and ``b`` arrays of the same shape (the
fixed image and the moving image warped into the fixed frame), ``mask`` (bool, same shape)
the pixels to compare (None: all); higher is more alike.

Elsewhere the same NCC comes from OpenCV: the fine stage's tile matching
(:func:`fire_reg.register.fine.match_tiles`) computes ``cv2.TM_CCOEFF_NORMED``, :func:`ncc` of
the template and each window position (from ``cv2.matchTemplate``'s plain correlation of the
zero-mean template and integral images of the window), and the correlation
``cv2.findTransformECC`` returns (its acceptance in :func:`fire_reg.register.ecc.ecc_on_maps`)
is :func:`ncc` of the template and the warped input inside the mask, after OpenCV's Gaussian
filter.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

NCC_EPS = 1e-12
"""Added under the square root of :func:`ncc` (a constant image then scores 0, not NaN)."""
MI_BINS = 32
"""Grey-value bins per image of the joint histogram of :func:`mutual_information`."""


def ncc(a, b, mask=None, axis=None, eps: float = NCC_EPS, xp=np):
    """Normalised cross-correlation of ``a`` and ``b`` (same shape) in [-1, 1].

    ``sum(a' b') / sqrt(sum(a'^2) sum(b'^2) + eps)`` with ``a' = a - mean(a)`` (the same for
    ``b``); with a ``mask`` (0/1 values of ``a``'s dtype, same shape) only its pixels count:
    the means are taken over them (``sum(a mask) / (sum(mask) + eps)``) and ``a'``, ``b'`` are
    zero outside.
    ``axis``: the axes reduced (None: all, giving a scalar; ``(1, 2, 3)`` gives one value per
    sample of a batch (B, H, W, C)). ``xp``: the array namespace (numpy, ``keras.ops``); the
    result keeps the inputs' float type (float32 maps give a float32 value).
    """
    if mask is None:
        a = a - xp.mean(a, axis=axis, keepdims=True)
        b = b - xp.mean(b, axis=axis, keepdims=True)
    else:
        count = xp.sum(mask, axis=axis, keepdims=True) + eps
        a = (a - xp.sum(a * mask, axis=axis, keepdims=True) / count) * mask
        b = (b - xp.sum(b * mask, axis=axis, keepdims=True) / count) * mask
    return xp.sum(a * b, axis=axis) / xp.sqrt(
        xp.sum(xp.square(a), axis=axis) * xp.sum(xp.square(b), axis=axis) + eps)


def mutual_information(a, b, mask=None, bins: int = MI_BINS) -> float:
    """Mutual information (nats, >= 0) of the grey values of ``a`` and ``b`` (same shape) over
    ``mask`` (bool, None: all pixels), from their joint histogram with ``bins`` x ``bins``
    equal-width bins spanning each image's range: ``sum p(x, y) log(p(x, y) / (p(x) p(y)))``.
    0 for independent or constant images; the entropy of either image for a one-to-one
    relation between them."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        mask = np.asarray(mask, bool)
        a, b = a[mask], b[mask]
    if a.size == 0:
        return 0.0
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    joint /= joint.sum()
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    seen = joint > 0
    return max(0.0, float(np.sum(joint[seen] * np.log(joint[seen] / outer[seen]))))


def _ncc_measure(a, b, mask=None) -> float:
    """:func:`ncc` over ``mask`` as a Python float (the registry's form)."""
    if mask is not None:
        mask = np.asarray(mask, bool)
        a, b = a[mask], b[mask]
    return float(ncc(a, b))


MEASURES: dict[str, Callable] = {"ncc": _ncc_measure, "mi": mutual_information}
"""Similarity measures by name: ``f(a, b, mask=None) -> float``, higher is more alike."""


def measure(name) -> Callable:
    """The measure called ``name`` in :data:`MEASURES` (a callable is returned as it is);
    ValueError naming the choices for an unknown name."""
    if callable(name):
        return name
    if name not in MEASURES:
        raise ValueError(f"unknown similarity measure {name!r}; choose from "
                         f"{', '.join(MEASURES)}")
    return MEASURES[name]


def register_measure(name: str, function: Callable) -> Callable:
    """Add ``function`` (``f(a, b, mask=None) -> float``, higher is more alike) to
    :data:`MEASURES` as ``name``; ValueError when the name is taken. Returns ``function``."""
    if name in MEASURES:
        raise ValueError(f"similarity measure {name!r} already exists")
    MEASURES[name] = function
    return function
