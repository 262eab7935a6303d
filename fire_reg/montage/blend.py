"""Blending placed fields into one colour picture, and the coverage picture.

Every field comes with its canvas transform (canvas px -> field px, the schema direction of
``mosaic.json``); pixels ``(x, y)``, x right, y down, (0, 0) the centre of the top-left pixel.
Each field is warped only into its own footprint (a region of interest of the canvas), its
field of view eroded by :data:`EDGE_PX` so that the dark rim of the aperture never shows.
Exposure is equalised with OpenCV's block gain compensator per channel
(``cv2.detail_BlocksChannelsCompensator``: vignetting and illumination differ between fields),
its blocks :data:`BLOCKS_ACROSS` to the canvas side (OpenCV's default 32 px blocks make its
cost grow with the square of the block count: 1.8 s against 0.26 s with 64 px blocks on a
1100 px canvas of five fields, the gains 0.7 grey levels apart on average), then the fields are
blended with OpenCV's multiband blender (``multiband``, default) or its feather blender
(``feather``), in colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fire_reg.geometry.transforms import Transform
from fire_reg.geometry.warping import warp_with_maps

BLENDS = ("multiband", "feather")
EDGE_PX = 3  # field-of-view erosion before blending, canvas px
BLOCKS_ACROSS = 16  # exposure blocks along the canvas' longer side (at least 32 px each)


@dataclass
class Warped:
    """One field warped into its region of the canvas: BGR uint8 image, uint8 mask (255
    inside its field of view) and the region's top-left corner (x, y) on the canvas."""

    image: np.ndarray
    mask: np.ndarray
    corner: tuple[int, int]


def footprint(transform: Transform, fov_points: np.ndarray, canvas_size) -> tuple[int, ...]:
    """(x0, y0, x1, y1) canvas box (exclusive end, clipped) holding the field, from (N, 2)
    field px on its field-of-view outline."""
    canvas = transform.moving_to_fixed(fov_points)
    low = np.floor(canvas.min(axis=0)).astype(int) - 1
    high = np.ceil(canvas.max(axis=0)).astype(int) + 2
    width, height = canvas_size
    return (max(0, low[0]), max(0, low[1]), min(width, high[0]), min(height, high[1]))


def warp_field(image, fov, transform: Transform, box) -> Warped:
    """The field (BGR uint8 and its bool field of view, in the transform's field px) in the
    canvas box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    shifted = transform.composed(np.eye(3)[:2], np.array([[1.0, 0, -x0], [0, 1.0, -y0]]))
    map_x, map_y = shifted.dense_map((x1 - x0, y1 - y0))  # once for the image and its mask
    warped = warp_with_maps(image, map_x, map_y, order=1)
    mask = warp_with_maps(fov.astype(np.uint8) * 255, map_x, map_y, order=0)
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                     (2 * EDGE_PX + 1, 2 * EDGE_PX + 1)))
    return Warped(np.ascontiguousarray(warped), mask, (int(x0), int(y0)))


def blend(fields: list[Warped], canvas_size, how: str = "multiband") -> np.ndarray:
    """Exposure-compensated, blended BGR uint8 picture of the canvas (black where no field)."""
    corners = [field.corner for field in fields]
    block = max(32, int(max(canvas_size)) // BLOCKS_ACROSS)
    compensator = cv2.detail_BlocksChannelsCompensator(block, block, 1)
    compensator.feed(corners=corners, images=[cv2.UMat(f.image) for f in fields],
                     masks=[cv2.UMat(f.mask) for f in fields])
    if how == "multiband":
        blender = cv2.detail_MultiBandBlender(0, _bands(canvas_size))
    else:
        blender = cv2.detail_FeatherBlender(0.05)
    width, height = canvas_size
    blender.prepare((0, 0, int(width), int(height)))
    for index, field in enumerate(fields):
        image = compensator.apply(index, field.corner, cv2.UMat(field.image),
                                  cv2.UMat(field.mask))
        image = image.get() if isinstance(image, cv2.UMat) else image
        blender.feed(image.astype(np.int16), field.mask, field.corner)
    result, mask = blender.blend(None, None)
    result = np.clip(result, 0, 255).astype(np.uint8)
    result[mask == 0] = 0
    return result


def _bands(canvas_size) -> int:
    """Pyramid bands: about log2 of the canvas width / 32, 3 to 6."""
    return int(np.clip(np.log2(max(canvas_size) / 32.0), 3, 6))


def coverage_picture(fields: list[Warped], labels: list[str], canvas_size) -> np.ndarray:
    """BGR picture of how many fields cover each canvas pixel (colour scale), with every
    field's outline and label at its centre."""
    width, height = canvas_size
    count = np.zeros((height, width), np.uint16)
    for field in fields:
        x0, y0 = field.corner
        h, w = field.mask.shape
        count[y0:y0 + h, x0:x0 + w] += field.mask > 0
    most = max(1, int(count.max()))
    picture = cv2.applyColorMap((count * (255 // most)).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    picture[count == 0] = 0
    font = max(0.4, width / 1500)
    for field, label in zip(fields, labels):
        contours, _ = cv2.findContours(field.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(picture, contours, -1, (255, 255, 255), max(1, width // 600),
                         offset=field.corner)
        ys, xs = np.nonzero(field.mask)
        centre = (int(xs.mean()) + field.corner[0], int(ys.mean()) + field.corner[1])
        cv2.putText(picture, label, centre, cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    max(1, int(2 * font)), cv2.LINE_AA)
    cv2.putText(picture, f"fields covering a pixel: 0 (black) to {most} (yellow)",
                (10, int(30 * font) + 5), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                max(1, int(2 * font)), cv2.LINE_AA)
    return picture
