"""Overlays and plots of registrations (conventions: :mod:`fire_reg.geometry`).

Images are OpenCV arrays (BGR uint8, or gray). Transforms (:mod:`fire_reg.transforms`, or a
2x3 matrix M) map **fixed px -> moving px**; :func:`warp_to_fixed` brings the moving image
into the fixed frame, and control points move the other way (a moving point q lies at
``moving_to_fixed(q)``, ``M^-1 q`` for a matrix, in the fixed frame). Comparison images
(checkerboard, blends, differences) take two images of the same size: the fixed one and the
warped moving one. The overlay panel is drawn with OpenCV (fast: it is written for every
registration); the plots with matplotlib's Agg canvas (``matplotlib.figure.Figure``, no pyplot
state, no display needed, imported only when a plot is drawn). Every writer saves atomically
through :func:`fire_reg.errors.atomic_path` (the temporary name keeps the ``.png`` suffix).
"""
from __future__ import annotations

import cv2
import numpy as np

from fire_reg import geometry, imaging, metrics, transforms
from fire_reg.errors import atomic_path

DISPLAY_PX = 384  # longest side (px) of the images drawn in a panel figure


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _stretched_green(image: np.ndarray) -> np.ndarray:
    """Green channel stretched to the full 0..255 range (uint8)."""
    return cv2.normalize(np.ascontiguousarray(imaging.green(image)), None, 0, 255,
                         cv2.NORM_MINMAX, cv2.CV_8U)


def warp_to_fixed(moving: np.ndarray, transform, fixed_size) -> np.ndarray:
    """The moving image resampled into the fixed frame of size ``fixed_size`` = (W, H).

    Output pixel p reads the moving image at ``fixed_to_moving(p)`` (bilinear, black outside;
    for a 2x3 matrix M: ``cv2.warpAffine(moving, M, (W, H), flags=INTER_LINEAR |
    WARP_INVERSE_MAP)``); see :meth:`fire_reg.transforms.Transform.warp`.
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


def alpha_blend(fixed: np.ndarray, warped: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * fixed + alpha * warped`` (uint8; BGR if either is colour)."""
    fixed, warped = (_bgr(fixed), _bgr(warped)) if fixed.ndim != warped.ndim else (fixed, warped)
    return cv2.addWeighted(fixed, 1.0 - alpha, warped, alpha, 0.0)


def abs_difference(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """|fixed - warped| of the green channels (uint8, H x W); dark where aligned."""
    return cv2.absdiff(np.ascontiguousarray(imaging.green(fixed)),
                       np.ascontiguousarray(imaging.green(warped)))


def _figure(**kwargs):
    """A matplotlib Figure on the Agg canvas (imported here: the overlay path needs none)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


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
                       fixed_pts=None, moving_pts=None, title: str = "") -> None:
    """One PNG (drawn with OpenCV): before / after magenta-green, checkerboard, |difference|
    and, with control points, their errors before (identity) and after (the transform's
    ``moving_to_fixed`` on the moving points). ``transform``: a
    :class:`fire_reg.transforms.Transform` or a 2x3 matrix, fixed px -> moving px.

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
    top = [("before (identity)", blend_magenta_green(fixed_small, before)),
           ("after", blend_magenta_green(fixed_small, after))]
    bottom = [("checkerboard", checkerboard(fixed_small, after)),
              ("|difference| after", abs_difference(fixed_small, after))]
    if fixed_pts is not None and moving_pts is not None:
        for row, name, used in ((top, "points before", transforms.Affine(geometry.identity())),
                                (bottom, "points after", transform)):
            moved = used.moving_to_fixed(moving_pts)
            error = metrics.fire_error(used, fixed_pts, moving_pts)
            row.append((f"{name}: mean error {error:.2f} px",
                        _points_image(fixed_small, fixed_pts, moved, to_display)))
    rows = [np.hstack([_panel(image, caption, shown) for caption, image in row])
            for row in (top, bottom)]
    header = np.full((TITLE_PX + 6, rows[0].shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (6, TITLE_PX - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.vstack([header, *rows])):
            raise OSError(f"could not write {path}")


def save_success_curves(path, errors_by_method: dict, categories: dict) -> None:
    """Success rate vs threshold (0..25 px), one panel per category present (S, P, A) plus
    all pairs, one line per method with its AUC in the legend.

    ``errors_by_method``: method -> {pair id -> error px}; ``categories``: id -> category.
    """
    groups = [c for c in metrics.CATEGORIES if c in set(categories.values())] + ["all"]
    figure = _figure(figsize=(4 * len(groups), 3.6))
    for ax, group in zip(figure.subplots(1, len(groups), squeeze=False).ravel(), groups):
        for method, errors in errors_by_method.items():
            chosen = [e for i, e in errors.items() if group == "all" or categories.get(i) == group]
            if chosen:
                ax.plot(metrics.THRESHOLDS, metrics.success_curve(chosen),
                        label=f"{method} (AUC {metrics.auc(chosen):.3f})")
        ax.set(title=f"{group}", xlabel="threshold (px)", ylabel="success rate",
               xlim=(0, metrics.THRESHOLDS[-1]), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    _save(figure, path)


def save_error_boxplot(path, errors_by_method: dict) -> None:
    """Box plot of the finite pair errors (px, symlog axis) per method; dashed line at 25 px.

    ``errors_by_method``: method -> {pair id -> error px}.
    """
    names = list(errors_by_method)
    values = [[e for e in errors_by_method[n].values() if np.isfinite(e)] for n in names]
    figure = _figure(figsize=(max(4.0, 1.2 * len(names) + 2), 4))
    ax = figure.subplots()
    ax.boxplot(values)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.axhline(metrics.FAILURE_PX, color="red", linestyle="--", linewidth=1)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set(ylabel="registration error (px)")
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    _save(figure, path)


def save_training_curves(path, history: dict) -> None:
    """Every ``*loss`` series of a Keras-style ``history`` (name -> per-epoch values, e.g.
    loss and val_loss) against the epoch (1-based), log y-axis."""
    figure = _figure(figsize=(6, 4))
    ax = figure.subplots()
    for name, values in history.items():
        if name.endswith("loss"):
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=name)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    figure.tight_layout()
    _save(figure, path)


def save_trust_scatter(path, rows_by_method: dict) -> None:
    """Estimated against true error (FIRE-equivalent px, log axes), one panel per method,
    points coloured by status; the band where the estimate is within a factor of 2 (or 2 px)
    of the truth is shaded and the 25 px lines are dashed.

    ``rows_by_method``: method -> [(estimated or None, true, status)]; missing estimates are
    drawn at the bottom edge.
    """
    names = list(rows_by_method) or ["(no estimates)"]
    figure = _figure(figsize=(4.2 * len(names), 4))
    colours = {"ok": "tab:green", "suspect": "tab:orange", "failed": "tab:red"}
    for ax, name in zip(figure.subplots(1, len(names), squeeze=False).ravel(), names):
        rows = rows_by_method.get(name, [])
        truth = np.array([max(row[1], 0.05) for row in rows])
        estimate = np.array([0.05 if row[0] is None else max(row[0], 0.05) for row in rows])
        grid = np.geomspace(0.05, 2000, 200)
        ax.fill_between(grid, np.maximum(grid / 2, grid - 2).clip(0.05), np.maximum(grid * 2, grid + 2),
                        color="0.9", label="within x2 or 2 px")
        for status, colour in colours.items():
            chosen = [i for i, row in enumerate(rows) if row[2] == status]
            if chosen:
                ax.scatter(truth[chosen], estimate[chosen], s=14, color=colour, label=status)
        ax.axvline(metrics.FAILURE_PX, color="red", linestyle="--", linewidth=1)
        ax.axhline(metrics.FAILURE_PX, color="red", linestyle="--", linewidth=1)
        ax.set(xscale="log", yscale="log", xlim=(0.05, 2000), ylim=(0.05, 2000),
               xlabel="true error (FIRE-equivalent px)", ylabel="estimated error (FIRE-eq. px)",
               title=name)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
