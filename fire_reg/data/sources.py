"""Source photographs of the embedded sets, and the pixel helpers that every view shares.

Pixel coordinates are ``(x, y)``, x right, y down, (0, 0) the centre of the top-left pixel;
masks and images are indexed ``[y, x]``. Every map of a pair goes **fixed px -> moving px**
(the convention of :mod:`fire_reg.geometry`).

Physical setting (both geometries): a fundus camera's circular aperture is fixed in its frame;
between two photographs the retina moves behind it. From one source photograph (first resized
to ``size`` px wide if given): ``aperture`` = :func:`fire_reg.imaging.vessels.fov_mask` of the
source is the aperture of every output frame (which has the size of the resized source). Each
view (fixed f, moving m) samples the source: ``view_k(p) = source(S_k(p))`` with a map ``S_k``
(output px -> source px; :mod:`fire_reg.data.sphere`, :mod:`fire_reg.data.affine`). Pixels
outside the aperture, or that would come from outside the source's own field of view
(:attr:`Source.inside`), are black (0): :func:`sample_source`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fire_reg.imaging.vessels import fov_mask, resize_to_width
from fire_reg.io.errors import InputError
from fire_reg.io.images import read_image

DEFAULT_SOURCE_NAME = "skimage.data.retina"
MIN_COVERAGE = 0.985  # share of the aperture that each view must fill with retina
MAX_TRIES = 1000  # draws of a pair's views before giving up on the limits
CAMERA_ROTATION = 8.0  # deg, max |rotation| of the common camera view (both geometries)


@dataclass
class Source:
    """A source photograph in output-frame pixels."""

    name: str
    index: int
    image: np.ndarray  # BGR uint8, resized to the output frame
    aperture: np.ndarray  # bool, the aperture of every output frame
    inside: np.ndarray  # uint8 0/1: source pixels safely inside its own field of view
    scale: tuple[float, float]  # (sx, sy) output px per original source px
    mask_file: str  # aperture mask, relative to the output folder


def load_source(path, index, size) -> Source:
    """Read (or take skimage's) photograph, resize it to ``size`` wide, find its aperture."""
    if path is None:
        from skimage import data

        image, name = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), DEFAULT_SOURCE_NAME
        mask_file = "Masks/mask.png"
    else:
        image, name = read_image(path), Path(path).name
        mask_file = f"Masks/aperture_{name}.png"
    height, width = image.shape[:2]
    if size is not None:
        image, _ = resize_to_width(image, int(size))
    aperture = fov_mask(image)
    if aperture.mean() < 0.05:
        raise InputError(path or name, "no camera aperture (bright field of view) found")
    inside = shrink(aperture, 0.005 * image.shape[1])
    return Source(name, index, image, aperture, inside,
                  (image.shape[1] / width, image.shape[0] / height), mask_file)


def sample_source(source: Source, source_xy) -> tuple[np.ndarray, np.ndarray]:
    """The source image at the source px of every output pixel ((H, W, 2) float32 map),
    black where that is outside the aperture or the source's own field of view; returns
    (BGR uint8 image, bool mask of the pixels that show retina)."""
    image = cv2.remap(source.image, source_xy, None, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.remap(source.inside, source_xy, None, cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT)
    valid = (inside > 0) & source.aperture
    return image * valid[..., None], valid


def lookup(mask, points) -> np.ndarray:
    """Whether each (x, y) point's nearest pixel is inside ``mask`` (False off the image)."""
    height, width = mask.shape
    ix, iy = np.rint(points[:, 0]).astype(int), np.rint(points[:, 1]).astype(int)
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    result = np.zeros(len(points), bool)
    result[inside] = mask[iy[inside], ix[inside]] > 0
    return result


def centroid(mask) -> np.ndarray:
    """(x, y) centroid of a mask, px."""
    moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    return np.array([moments["m10"], moments["m01"]]) / moments["m00"]


def shrink(mask, distance) -> np.ndarray:
    """uint8 0/1 mask of the pixels more than ``distance`` px inside a bool mask."""
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return (inside > distance).astype(np.uint8)
