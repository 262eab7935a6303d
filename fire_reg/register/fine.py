"""The fine stage: local tile evidence and a robust fit of the curved retina's transform.

:func:`fine_stage`: local evidence and a robust fit of a richer model. The moving map is
  warped into the fixed frame with the current transform; a grid of tiles of the fixed map
  with enough vessel content is matched there (``cv2.matchTemplate``, normalised correlation,
  in a small search window, sub-pixel peak); confident matches become point pairs
  (tile centre p in the fixed map, ``T(p + d)`` in the moving map); the model (quadratic,
  homography or affine) is fitted by iteratively trimmed least squares; the whole is repeated
  with a smaller window. A quadratic needs many inliers spread over the common field of view
  and no fold-over; otherwise the stage falls back to a homography, then an affine, and says
  why. The residuals of held-out matches (k-fold) estimate the error of the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.register.maps import VesselMaps, _WORKERS, _pool

@dataclass(frozen=True)
class FineOptions:
    """Settings of :func:`fine_stage`; lengths in px of maps ``reference_width`` px wide
    (scaled with the actual map width).

    ``tile``: side of the matched tiles; ``step``: their spacing; ``radii``: search radius of
    each pass (one pass per entry); ``min_score``: lowest accepted normalised correlation;
    ``min_content``: lowest mean vessel value of a tile; ``trim``: residuals above ``trim`` x
    the robust sigma (and above ``min_trim_px``) are outliers; ``min_inliers``: per model;
    ``min_spread``: share of the common field of view that the inliers' convex hull must
    cover for a quadratic; ``max_bend``: largest departure (fraction of the width) of a
    quadratic from its best affine over the common field of view; ``folds``: k of the k-fold
    residuals behind the error estimate.
    """

    reference_width: int = 512
    tile: int = 32
    step: int = 16
    radii: tuple[int, ...] = (8, 3)
    min_score: float = 0.5
    min_content: float = 0.04
    trim: float = 2.5
    min_trim_px: float = 0.75
    min_inliers: dict = field(default_factory=lambda: {"quadratic": 24, "homography": 12,
                                                       "affine": 6})
    min_spread: float = 0.25
    max_bend: float = 0.05
    folds: int = 4


@dataclass
class Matches:
    """Point pairs from tile matching, map px: ``fixed`` (N, 2) tile centres, ``moving``
    (N, 2) their matches in the moving map, ``score`` (N,) normalised correlation."""

    fixed: np.ndarray
    moving: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.fixed)

    def subset(self, keep) -> "Matches":
        return Matches(self.fixed[keep], self.moving[keep], self.score[keep])


@dataclass
class FineOutcome:
    """Result of :func:`fine_stage`: the transform (map px), the model kept and why, the
    inlier matches of the last pass, and the k-fold residual (map px) of held-out matches."""

    transform: transforms.Transform
    model: str
    reason: str
    matches: Matches
    heldout_residual: float | None


def _subpixel(scores: np.ndarray, row: int, col: int) -> tuple[float, float]:
    """Parabolic sub-pixel offset (dx, dy) of a peak inside a correlation surface."""
    def offset(minus, centre, plus):
        denominator = minus - 2 * centre + plus
        return 0.0 if denominator >= 0 else min(0.5, max(-0.5, 0.5 * (minus - plus) / denominator))
    dx = offset(scores[row, col - 1], scores[row, col], scores[row, col + 1])
    dy = offset(scores[row - 1, col], scores[row, col], scores[row + 1, col])
    return dx, dy


def match_tiles(maps: VesselMaps, transform: transforms.Transform, radius: int,
                options: FineOptions = FineOptions()) -> Matches:
    """Match tiles of the fixed map in the moving map warped by ``transform`` (map px).

    A tile is used when it lies inside the common field of view and its mean vessel value is
    at least ``min_content``; its match is kept when the correlation peak is inside the
    search window (not on its edge) and at least ``min_score``.
    """
    unit = maps.width / options.reference_width
    tile = max(8, int(round(options.tile * unit)))
    step = max(4, int(round(options.step * unit)))
    radius = max(2, int(round(radius * unit)))
    warped, warped_fov = maps.warped(transform)
    height, width = maps.fixed.shape
    # per-tile share of the common field of view and mean vessel value, from integral images
    common = cv2.integral((maps.fixed_fov & warped_fov).astype(np.uint8))
    content = cv2.integral(maps.fixed.astype(np.float64))
    ys, xs = np.mgrid[radius:height - tile - radius:step, radius:width - tile - radius:step]
    ys, xs = ys.ravel(), xs.ravel()

    def tile_sum(table):
        return (table[ys + tile, xs + tile] - table[ys, xs + tile] - table[ys + tile, xs]
                + table[ys, xs])

    usable = (tile_sum(common) == tile * tile) & (tile_sum(content) >= options.min_content
                                                  * tile * tile)
    corners = np.stack([ys[usable], xs[usable]], axis=1)
    chunks = np.array_split(corners, max(1, min(len(corners) // 64, _WORKERS)))
    found = list(_pool().map(lambda chunk: _match_chunk(maps.fixed, warped, chunk, tile, radius,
                                                        options.min_score), chunks))
    centres, offsets, scores = (np.concatenate(parts) for parts in zip(*found))
    return Matches(centres, transform.fixed_to_moving(centres + offsets), scores)


def _match_chunk(fixed, warped, corners, tile: int, radius: int, min_score: float):
    """Tile matches for the top-left ``corners`` (K, 2) (y, x) of fixed-map tiles: (tile
    centres (M, 2), offsets (M, 2) of their match in ``warped``, scores (M,)), map px."""
    centres, offsets, scores = [], [], []
    for y0, x0 in corners:
        template = fixed[y0:y0 + tile, x0:x0 + tile]
        window = warped[y0 - radius:y0 + tile + radius, x0 - radius:x0 + tile + radius]
        surface = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (col, row) = cv2.minMaxLoc(surface)
        if best < min_score or not (0 < row < 2 * radius and 0 < col < 2 * radius):
            continue
        dx, dy = _subpixel(surface, row, col)
        centres.append((x0 + (tile - 1) / 2.0, y0 + (tile - 1) / 2.0))
        offsets.append((col - radius + dx, row - radius + dy))
        scores.append(best)
    return (np.asarray(centres, np.float64).reshape(-1, 2),
            np.asarray(offsets, np.float64).reshape(-1, 2), np.asarray(scores, np.float64))


def _residuals(transform: transforms.Transform, matches: Matches) -> np.ndarray:
    return np.linalg.norm(transform.fixed_to_moving(matches.fixed) - matches.moving, axis=1)


def fit_trimmed(model: str, matches: Matches, domain, options: FineOptions = FineOptions(),
                unit: float = 1.0):
    """Fit ``model`` by iteratively trimmed least squares (weights = correlation scores).

    Returns (transform, inlier Matches) or (None, reason) when fewer than the model's
    ``min_inliers`` remain.
    """
    keep = np.ones(len(matches), bool)
    needed = options.min_inliers[model]
    transform = None
    for _ in range(6):
        if keep.sum() < needed:
            return None, f"{keep.sum()} consistent matches (a {model} needs {needed})"
        try:
            transform = _weighted_fit(model, matches.subset(keep))
        except ValueError as error:
            return None, str(error)
        residuals = _residuals(transform, matches)
        sigma = 1.4826 * np.median(residuals[keep])
        new_keep = residuals <= max(options.trim * sigma, options.min_trim_px * unit)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if keep.sum() < needed:
        return None, f"{keep.sum()} consistent matches (a {model} needs {needed})"
    inliers = matches.subset(keep)
    if model == "quadratic":  # the inverse is fitted once, over the domain
        transform = transforms.Quadratic.from_forward(transform.arrays()[0], domain)
    return transform, inliers


def _weighted_fit(model: str, matches: Matches) -> transforms.Transform:
    """``transforms.fit_transform`` weighted by the correlation scores (a homography unweighted);
    a quadratic's inverse is only fitted roughly here (over the matches' bounding box)."""
    weights = None if model == "homography" else matches.score
    return transforms.fit_transform(model, matches.fixed, matches.moving, weights=weights)


def _hull_share(points: np.ndarray, area: float) -> float:
    if len(points) < 3 or area <= 0:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32))
    return float(cv2.contourArea(hull) / area)


def plausible_quadratic(transform: transforms.Transform, domain: np.ndarray, width: int,
                        max_bend: float) -> str | None:
    """Why a quadratic is implausible over ``domain`` (fold-over: a Jacobian determinant
    <= 0; a bend from its best affine above ``max_bend`` x ``width``), or None."""
    if len(domain) < 3:
        return "no common field of view"
    (_, a1, a2, a3, a4, a5), (_, b1, b2, b3, b4, b5) = transform.arrays()[0]
    x, y = domain.T
    det = ((a1 + 2 * a3 * x + a4 * y) * (b2 + b4 * x + 2 * b5 * y)
           - (a2 + a4 * x + 2 * a5 * y) * (b1 + 2 * b3 * x + b4 * y))
    if det.min() <= 0:
        return "the quadratic folds over inside the common field of view"
    affine = transform.best_affine(domain)
    bend = np.linalg.norm(transform.fixed_to_moving(domain) - geometry.apply(affine, domain),
                          axis=1).max()
    if bend > max_bend * width:
        return f"the quadratic bends {bend:.1f} px from an affine (limit {max_bend * width:.1f})"
    return None


def heldout_residual(model: str, matches: Matches, folds: int) -> float | None:
    """Median distance (map px) between held-out matches and the ``model`` fitted to the
    others (k-fold): an estimate of the error at points the fit never saw."""
    needed = transforms.MIN_POINTS[model] * 2
    if len(matches) < max(needed, folds * 2):
        return None
    order = np.random.default_rng(0).permutation(len(matches))
    errors = []
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        try:
            fitted = _weighted_fit(model, matches.subset(train))
        except ValueError:
            return None
        errors.append(_residuals(fitted, matches.subset(test)))
    return float(np.median(np.concatenate(errors)))


def fine_stage(maps: VesselMaps, start: transforms.Transform, model: str = "quadratic",
               options: FineOptions = FineOptions()) -> FineOutcome:
    """Fit ``model`` (or the next simpler one the evidence supports) from ``start`` (map px).

    Models are tried in the order quadratic, homography, affine starting at ``model``; when
    even an affine has too little evidence the ``start`` is returned unchanged with the reason.
    """
    order = transforms.MODELS[::-1]
    candidates = order[order.index(model):]
    unit = maps.width / options.reference_width
    current, kept, notes = start, None, []
    inliers = Matches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    for radius in options.radii:
        matches = match_tiles(maps, current, radius, options)
        domain = maps.common_points(current)
        area = len(domain) * 256.0  # one point per 16 x 16 px
        notes = []
        for candidate in candidates:
            fitted, found = fit_trimmed(candidate, matches, domain, options, unit)
            if fitted is None:
                notes.append(f"no {candidate}: {found}")
                continue
            if candidate == "quadratic":
                spread = _hull_share(found.fixed, area)
                problem = (f"matches cover {spread:.0%} of the common field of view (needs "
                           f"{options.min_spread:.0%})" if spread < options.min_spread else
                           plausible_quadratic(fitted, domain, maps.width, options.max_bend))
                if problem:
                    notes.append(f"no quadratic: {problem}")
                    continue
            current, kept, inliers = fitted, candidate, found
            break
        if kept is None:
            break
    if kept is None:
        return FineOutcome(start, start.model, "; ".join(notes) or "no matches", inliers, None)
    reason = f"{kept} from {len(inliers)} tile matches"
    if kept != model:
        reason += f" ({'; '.join(notes)})"
    residual = heldout_residual(kept, inliers, options.folds)
    return FineOutcome(current, kept, reason, inliers, residual)
