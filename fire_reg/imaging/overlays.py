"""Overlay pictures of a registration, drawn with OpenCV (conventions: :mod:`fire_reg.geometry`).

Images are OpenCV arrays (BGR uint8, or gray). Transforms (:mod:`fire_reg.geometry.transforms`,
or a 2x3 matrix M) map **fixed px -> moving px**; :func:`warp_to_fixed` brings the moving image
into the fixed frame, and control points move the other way (a moving point q lies at
``moving_to_fixed(q)``, ``M^-1 q`` for a matrix, in the fixed frame). Comparison images
(checkerboard, blends, differences) take two images of the same size: the fixed one and the
warped moving one. The overlay panel is written for every registration, atomically.

Two modalities (a colour photograph against a fluorescein angiogram, ...) do not compare by
intensity: their vessels may point opposite ways. For them the panel shows the
polarity-aware vessel maps (:func:`vessel_blend`: fixed in magenta, moving in green, white
where they coincide) and a checkerboard of :func:`dark_vessel_grey` pictures (an angiogram
inverted, so that vessels are dark in every square).
"""
from __future__ import annotations

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.imaging import vessels
from fire_reg.imaging.modality import detect, polarity
from fire_reg.io.images import write_image

DISPLAY_PX = 384  # longest side (px) of the images drawn in a panel figure


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _stretched_green(image: np.ndarray) -> np.ndarray:
    """Green channel stretched to the full 0..255 range (uint8)."""
    return cv2.normalize(np.ascontiguousarray(vessels.green(image)), None, 0, 255,
                         cv2.NORM_MINMAX, cv2.CV_8U)


def warp_to_fixed(moving: np.ndarray, transform, fixed_size) -> np.ndarray:
    """The moving image resampled into the fixed frame of size ``fixed_size`` = (W, H).

    Output pixel p reads the moving image at ``fixed_to_moving(p)`` (bilinear, black outside;
    for a 2x3 matrix M: ``cv2.warpAffine(moving, M, (W, H), flags=INTER_LINEAR |
    WARP_INVERSE_MAP)``); see :meth:`fire_reg.geometry.transforms.Transform.warp`.
    """
    return transforms.as_transform(transform).warp(moving, fixed_size)


def checkerboard(fixed: np.ndarray, warped: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternating ``tiles`` x ``tiles`` squares of fixed and warped (fixed's shape, BGR if
    either is colour); vessels continue across tile edges when aligned."""
    fixed, warped = (_bgr(fixed), _bgr(warped)) if fixed.ndim != warped.ndim else (fixed, warped)
    height, width = fixed.shape[:2]
    rows = (np.arange(height) * tiles // height)[:, None]
    cols = (np.arange(width) * tiles // width)[None, :]
    choose_warped = (rows + cols) % 2 == 1
    if fixed.ndim == 3:
        choose_warped = choose_warped[..., None]
    return np.where(choose_warped, warped, fixed)


def blend_magenta_green(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """BGR false colour: fixed's green channel in magenta, warped's in green.

    Each channel is stretched to 0..255; where the images agree the result is gray/white,
    misaligned vessels show as magenta/green fringes.
    """
    fixed_g, warped_g = _stretched_green(fixed), _stretched_green(warped)
    return cv2.merge([fixed_g, warped_g, fixed_g])


def vessel_blend(fixed: np.ndarray, warped: np.ndarray,
                 polarities: tuple[str, str] = ("dark", "dark")) -> np.ndarray:
    """BGR false colour of two images of any modalities: the vessel map of fixed
    (:func:`fire_reg.imaging.vessels.vessel_map` at the image's own size, with
    ``polarities[0]``: "dark" or "bright" vessels) in magenta, warped's (``polarities[1]``) in
    green; black background, white where the vessels coincide."""
    fixed_map, warped_map = (_vessels_shown(image, side)
                             for image, side in zip((fixed, warped), polarities))
    return cv2.merge([fixed_map, warped_map, fixed_map])


VESSEL_GAMMA = 1.5  # power applied to vessel maps for display: dims the background texture


def _vessels_shown(image: np.ndarray, side: str) -> np.ndarray:
    """Vessel map (uint8 0..255, vessels bright) of ``image`` at its own size, raised to
    :data:`VESSEL_GAMMA`."""
    vessel_map = vessels.vessel_map(image, work_width=image.shape[1], polarity=side)[0]
    return np.round(255 * vessel_map ** VESSEL_GAMMA).astype(np.uint8)


def dark_vessel_grey(image: np.ndarray, side: str = "dark") -> np.ndarray:
    """Grey picture (uint8) with dark vessels whatever the modality: the green channel,
    CLAHE-equalised, inverted when ``side`` is "bright" (an angiogram), its 1st..99th
    percentiles inside the field of view stretched to 0..255 (so that two modalities look
    alike); black outside the field."""
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(
        np.ascontiguousarray(vessels.green(image))).astype(np.float32)
    if side == "bright":
        grey = 255 - grey
    inside = vessels.fov_mask(image)
    if not inside.any():
        return np.zeros(grey.shape, np.uint8)
    low, high = np.percentile(grey[inside], (1, 99))
    stretched = np.clip((grey - low) * 255 / max(high - low, 1.0), 0, 255)
    return np.where(inside, stretched, 0).astype(np.uint8)


def alpha_blend(fixed: np.ndarray, warped: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * fixed + alpha * warped`` (uint8; BGR if either is colour)."""
    fixed, warped = (_bgr(fixed), _bgr(warped)) if fixed.ndim != warped.ndim else (fixed, warped)
    return cv2.addWeighted(fixed, 1.0 - alpha, warped, alpha, 0.0)


def abs_difference(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """|fixed - warped| of the green channels (uint8, H x W); dark where aligned."""
    return cv2.absdiff(np.ascontiguousarray(vessels.green(fixed)),
                       np.ascontiguousarray(vessels.green(warped)))


TITLE_PX = 26  # height of the caption bar above each panel of the overlay


def _panel(image: np.ndarray, caption: str, size) -> np.ndarray:
    """A BGR panel of ``size`` (W, H) with a caption bar above it."""
    width, height = size
    canvas = np.full((height + TITLE_PX, width, 3), 255, np.uint8)
    canvas[TITLE_PX:] = _bgr(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    cv2.putText(canvas, caption, (6, TITLE_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    return canvas


def _points_image(fixed_small, fixed_pts, moved_pts, to_display) -> np.ndarray:
    """The fixed image with an arrow (yellow, true scale) from each fixed point (cyan +) to
    the moving point mapped into the fixed frame (magenta x)."""
    canvas = _bgr(fixed_small).copy()
    start = (np.asarray(fixed_pts, dtype=np.float64).reshape(-1, 2) + 0.5) * to_display - 0.5
    end = (np.asarray(moved_pts, dtype=np.float64).reshape(-1, 2) + 0.5) * to_display - 0.5
    for (x0, y0), (x1, y1) in zip(start, end):
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
        cv2.arrowedLine(canvas, p0, p1, (0, 255, 255), 1, cv2.LINE_AA, tipLength=0.2)
        cv2.drawMarker(canvas, p0, (255, 255, 0), cv2.MARKER_CROSS, 9, 1)
        cv2.drawMarker(canvas, p1, (255, 0, 255), cv2.MARKER_TILTED_CROSS, 7, 1)
    return canvas


def save_overlay_panel(path, fixed: np.ndarray, moving: np.ndarray, transform,
                       fixed_pts=None, moving_pts=None, title: str = "",
                       modalities: tuple[str, str] | None = None) -> None:
    """One PNG (drawn with OpenCV): before / after magenta-green, checkerboard, |difference|
    and, with control points, their errors before (identity) and after (the transform's
    ``moving_to_fixed`` on the moving points). ``transform``: a
    :class:`fire_reg.geometry.transforms.Transform` or a 2x3 matrix, fixed px -> moving px.

    ``modalities``: (fixed, moving) names of :data:`fire_reg.imaging.modality.MODALITIES`,
    detected (:func:`fire_reg.imaging.modality.detect`) when None. Two different modalities
    get :func:`vessel_blend` blends, a checkerboard of :func:`dark_vessel_grey` pictures, the
    |difference| of the vessel maps and a legend line naming the modalities; one modality
    gets the green channels as they are.

    Images are shown at most :data:`DISPLAY_PX` px on their longest side (the moving image is
    resampled straight to that grid); point errors in the captions are mean distances in px
    of the full-resolution fixed image. Arrows (true scale) run from each fixed point (cyan
    +) to its moving point mapped into the fixed frame (magenta x).
    """
    height, width = fixed.shape[:2]
    scale = min(1.0, DISPLAY_PX / max(height, width))
    shown = (max(1, round(width * scale)), max(1, round(height * scale)))
    to_display = (shown[0] / width, shown[1] / height)
    fixed_small = cv2.resize(fixed, shown, interpolation=cv2.INTER_AREA)
    transform = transforms.as_transform(transform)
    before = warp_to_fixed(moving, geometry.rescale(geometry.identity(), to_display, 1.0), shown)
    after = warp_to_fixed(moving, transform.rescaled(to_display, 1.0), shown)
    if modalities is None:
        modalities = (detect(fixed).modality, detect(moving).modality)
    legend = ""
    if modalities[0] == modalities[1]:
        top = [("before (identity)", blend_magenta_green(fixed_small, before)),
               ("after", blend_magenta_green(fixed_small, after))]
        bottom = [("checkerboard", checkerboard(fixed_small, after)),
                  ("|difference| after", abs_difference(fixed_small, after))]
    else:
        sides = (polarity(modalities[0]), polarity(modalities[1]))
        after_blend = vessel_blend(fixed_small, after, sides)
        inverted = [name for name, side in zip(modalities, sides) if side == "bright"]
        top = [("before (identity): vessel maps", vessel_blend(fixed_small, before, sides)),
               ("after: vessel maps", after_blend)]
        bottom = [("checkerboard" + "".join(f", {name} inverted" for name in inverted),
                   checkerboard(dark_vessel_grey(fixed_small, sides[0]),
                                dark_vessel_grey(after, sides[1]))),
                  ("|difference| of vessel maps", cv2.absdiff(after_blend[..., 2],
                                                              after_blend[..., 1]))]
        legend = (f"vessels of the fixed image ({modalities[0]}) in magenta, of the moving "
                  f"image ({modalities[1]}) in green, white where they coincide")
    if fixed_pts is not None and moving_pts is not None:
        for row, name, used in ((top, "points before", transforms.Affine(geometry.identity())),
                                (bottom, "points after", transform)):
            moved = used.moving_to_fixed(moving_pts)
            error = float(transforms.control_point_errors(used, fixed_pts, moving_pts).mean())
            row.append((f"{name}: mean error {error:.2f} px",
                        _points_image(fixed_small, fixed_pts, moved, to_display)))
    rows = [np.hstack([_panel(image, caption, shown) for caption, image in row])
            for row in (top, bottom)]
    header = np.full((TITLE_PX + 6 + (TITLE_PX if legend else 0), rows[0].shape[1], 3), 255,
                     np.uint8)
    cv2.putText(header, title, (6, TITLE_PX - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    if legend:
        cv2.putText(header, legend, (6, 2 * TITLE_PX - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    write_image(path, np.vstack([header, *rows]))
