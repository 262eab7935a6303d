"""The fine stage: local tile evidence and a robust fit of the curved retina's transform.

:func:`fine_stage`: local evidence and a robust fit of a richer model. The moving map is
  warped into the fixed frame with the current transform; a grid of tiles of the fixed map
  with enough vessel content is matched there (the normalised correlation of OpenCV's
  ``TM_CCOEFF_NORMED``, :func:`fire_reg.imaging.similarity.ncc` of the tile and the window
  under it, at every offset of a small search window, sub-pixel peak; made from
  ``cv2.matchTemplate``'s plain correlation and integral images, :func:`match_tiles`);
  confident matches become point pairs
  (tile centre p in the fixed map, ``T(p + d)`` in the moving map); the model (quadratic,
  homography or affine: the registered models, :func:`fire_reg.geometry.transforms.model_names`)
  is fitted by iteratively trimmed least squares; the whole is repeated with a smaller window.
  A flexible model (the quadratic) needs many inliers spread over the common field of view,
  no fold-over and no large bend; otherwise the stage falls back to the next simpler
  registered model (homography, then affine) and says why. The residuals of held-out matches
  (k-fold) estimate the error of the result.
:func:`local_stage` (``model="local"``): on top of the quadratic, a regularised B-spline
  correction (:mod:`fire_reg.geometry.local`) fitted to the last pass's vessel-tile matches,
  kept only when it lowers the held-out residual; otherwise the quadratic, and the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from fire_reg.config import Config, FieldError
from fire_reg.geometry import transforms
from fire_reg.register.maps import VesselMaps, _WORKERS, _pool



@dataclass(frozen=True)
class FineOptions(Config):
    """Settings of :func:`fine_stage`; lengths in px of maps ``reference_width`` px wide
    (scaled with the actual map width). Checked on construction (FieldError naming the field).

    ``tile``: side of the matched tiles; ``step``: their spacing in the last pass,
    ``start_step`` in the passes before it (their fit is only the start the last pass refines: a
    quarter of the tiles); ``radii``: search radius of each pass (one pass per entry; the last
    one wide enough for a curved retina's departure from the first pass's quadratic);
    ``min_score``: lowest accepted normalised correlation; ``min_content``: lowest mean vessel
    value of a tile; ``trim``: residuals above ``trim`` x the robust sigma (and above
    ``min_trim_px``) are outliers; ``min_inliers``: overrides, per model (registered names,
    ``transforms.model_names()``), of the inliers its fit needs (default: each model's own
    ``min_inliers``: quadratic 24, homography 12, affine 6); ``min_spread``: share of the common
    field of view that the inliers' convex hull must cover for a flexible model (the quadratic);
    ``max_bend``: largest departure (fraction of the width) of a flexible model from its best
    affine over the common field of view; ``folds``: k of the k-fold residuals behind the error
    estimate.

    The local stage (``model="local"``, :func:`local_stage`): ``local_min_score``: lowest
    correlation of the last pass's matches it uses; ``local_smoothing``: the smoothings tried
    (:mod:`fire_reg.geometry.local`), the one with the lowest held-out residual kept;
    ``local_gain``: share by which the local model must lower the quadratic's held-out
    residual to be kept; ``local_block``: side of the square blocks the matches are split
    into for the held-out residuals (blocks, not single tiles: neighbouring tiles overlap);
    ``local_knots``: knots per side of the grid.
    """

    reference_width: int = 512
    tile: int = 32
    step: int = 16
    start_step: int = 32
    radii: tuple[int, ...] = (8, 4)
    min_score: float = 0.5
    min_content: float = 0.04
    trim: float = 2.5
    min_trim_px: float = 0.75
    min_inliers: dict = field(default_factory=dict)
    min_spread: float = 0.25
    max_bend: float = 0.05
    folds: int = 4
    local_min_score: float = 0.5
    local_smoothing: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
    local_gain: float = 0.15
    local_block: int = 48
    local_knots: int = 8

    def __post_init__(self):
        self._integer("reference_width", low=16)
        self._integer("tile", low=4)
        self._integer("step", low=1)
        self._integer("start_step", low=1)
        self._integers("radii", low=1)
        self._number("min_score", low=-1, high=1)
        self._number("min_content", low=0)
        self._number("trim", above=0)
        self._number("min_trim_px", low=0)
        known = transforms.model_names()
        counts = self.min_inliers
        if (not isinstance(counts, dict) or any(name not in known for name in counts)
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                       for n in counts.values())):
            raise FieldError("min_inliers", f"must map model names ({', '.join(known)}) to "
                                            f"whole numbers >= 1, got {counts!r}")
        self._number("min_spread", low=0, high=1)
        self._number("max_bend", above=0)
        self._integer("folds", low=2)
        self._number("local_min_score", low=-1, high=1)
        smoothing = self.local_smoothing
        if (not isinstance(smoothing, (list, tuple)) or not smoothing
                or any(isinstance(v, bool) or not isinstance(v, (int, float))
                       or not 0 < v < float("inf") for v in smoothing)):
            raise FieldError("local_smoothing", f"must be a list of numbers > 0, got "
                                                f"{smoothing!r}")
        self._set("local_smoothing", tuple(float(v) for v in smoothing))
        self._number("local_gain", low=0, high=1)
        self._integer("local_block", low=4)
        self._integer("local_knots", low=4)


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
    inlier matches of the last pass, the k-fold residual (map px) of held-out matches, and
    every match of the last pass (``candidates``, which the local stage starts from)."""

    transform: transforms.Transform
    model: str
    reason: str
    matches: Matches
    heldout_residual: float | None
    candidates: Matches | None = None


def _subpixel(minus: np.ndarray, centre: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """Parabolic sub-pixel offsets (in [-0.5, 0.5]) of peaks ``centre`` between their
    neighbours ``minus`` and ``plus`` along one axis (arrays of the same shape); 0 where the
    three do not curve down."""
    denominator = minus - 2 * centre + plus
    curved = denominator < 0
    offset = 0.5 * (minus - plus) / np.where(curved, denominator, -1.0)
    return np.where(curved, np.clip(offset, -0.5, 0.5), 0.0)


def match_tiles(maps: VesselMaps, transform: transforms.Transform, radius: int,
                options: FineOptions = FineOptions(), step: int | None = None) -> Matches:
    """Match tiles of the fixed map in the moving map warped by ``transform`` (map px), on a
    grid ``step`` px apart (at ``reference_width``; default: ``options.step``).

    A tile is used when it lies inside the common field of view and its mean vessel value is
    at least ``min_content``; its match is kept when the correlation peak is inside the
    search window (not on its edge) and at least ``min_score``. The correlation is
    ``cv2.TM_CCOEFF_NORMED``'s (to 1e-4), in two steps: OpenCV's plain correlation
    (``TM_CCORR``) of each zero-mean tile with its search window, one call per tile; then the
    normalisation (:func:`_normalised`, from integral images of the warped map), the peak,
    the edge check and the sub-pixel parabola of every tile at once.
    """
    (tile, step, radius), (ys, xs, templates, energies) = vessel_tiles(maps, radius, options,
                                                                      step)
    warped, warped_fov = maps.warped(transform)
    # those wholly inside the common field of view, from integral images
    common = cv2.integral((maps.fixed_fov & warped_fov).astype(np.uint8))
    used = np.flatnonzero(_tile_sums(common, ys, xs, tile) == tile * tile)
    if not len(used):
        return Matches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    corners = np.stack([ys[used] - radius, xs[used] - radius], axis=1)  # search windows
    products = np.empty((len(used), 2 * radius + 1, 2 * radius + 1), np.float32)
    jobs = list(zip(range(len(used)), used.tolist(), corners.tolist()))
    chunks = [jobs[i::_WORKERS] for i in range(_WORKERS)] if len(jobs) >= 64 else [jobs]
    list(_pool().map(lambda chunk: _correlate(warped, templates, products, chunk,
                                              tile + 2 * radius), chunks))
    scores = _normalised(products, warped, corners, energies[used], tile)
    flat = scores.reshape(len(used), -1)
    peak = flat.argmax(axis=1)  # the first of equal peaks, as cv2.minMaxLoc
    rows, cols = np.divmod(peak, 2 * radius + 1)
    best = flat[np.arange(len(used)), peak]
    keep = (best >= options.min_score) & (rows > 0) & (rows < 2 * radius) & (cols > 0) & (
        cols < 2 * radius)
    index, rows, cols, best = np.flatnonzero(keep), rows[keep], cols[keep], best[keep]
    dx = _subpixel(scores[index, rows, cols - 1], best, scores[index, rows, cols + 1])
    dy = _subpixel(scores[index, rows - 1, cols], best, scores[index, rows + 1, cols])
    centres = np.stack([xs[used][keep], ys[used][keep]], axis=1) + (tile - 1) / 2.0
    offsets = np.stack([cols - radius + dx, rows - radius + dy], axis=1)
    return Matches(centres, transform.fixed_to_moving(centres + offsets), best)


def vessel_tiles(maps: VesselMaps, radius: int, options: FineOptions = FineOptions(),
                 step: int | None = None):
    """((tile, step, radius) in map px, (ys, xs, templates, energies)): the fixed map's tiles
    that :func:`match_tiles` with these arguments matches (:func:`_vessel_tiles`), made once
    per fixed map and kept with it (:meth:`VesselMaps.fixed_derived`)."""
    unit = maps.width / options.reference_width
    tile = max(8, int(round(options.tile * unit)))
    step = max(4, int(round((step or options.step) * unit)))
    radius = max(2, int(round(radius * unit)))
    return (tile, step, radius), maps.fixed_derived(
        ("vessel tiles", tile, step, radius, options.min_content),
        lambda: _vessel_tiles(maps.fixed, tile, step, radius, options.min_content))


def passes(options: FineOptions) -> list[tuple[int, int]]:
    """(search radius, tile step) of each pass of :func:`fine_stage`: ``start_step`` but in
    the last pass (px at ``reference_width``)."""
    last = len(options.radii) - 1
    return [(radius, options.step if number == last else options.start_step)
            for number, radius in enumerate(options.radii)]


def groundwork(maps: VesselMaps, options: FineOptions = FineOptions()) -> None:
    """Make now what :func:`fine_stage` derives from the fixed map alone (the tiles of every
    pass), so that it can be made while other work runs (the network)."""
    for radius, step in passes(options):
        vessel_tiles(maps, radius, options, step)


def _tile_sums(table: np.ndarray, ys, xs, tile: int) -> np.ndarray:
    """Sums over the ``tile`` px squares with top-left corners (``ys``, ``xs``) (arrays of
    any one shape), from the integral image ``table`` (:func:`cv2.integral`); given a sliding
    window view of the table (windows n x n), the (..., n, n) sums at every offset of each
    window."""
    return table[ys + tile, xs + tile] - table[ys, xs + tile] - table[ys + tile, xs] + table[ys, xs]


def _vessel_tiles(fixed: np.ndarray, tile: int, step: int, radius: int, min_content: float):
    """(ys, xs, templates, energies): top-left corners of the ``tile`` px tiles of the fixed
    map on a ``step`` px grid, ``radius`` px clear of its edges, whose mean vessel value is at
    least ``min_content``; their pixels less their mean (K, tile, tile) float32, and the sum
    of those squared (K,) float64."""
    height, width = fixed.shape
    ys, xs = np.mgrid[radius:height - tile - radius:step, radius:width - tile - radius:step]
    ys, xs = ys.ravel(), xs.ravel()
    content = _tile_sums(cv2.integral(fixed.astype(np.float64)), ys, xs, tile)
    keep = content >= min_content * tile * tile
    ys, xs = ys[keep], xs[keep]
    if not len(ys):  # (also a map smaller than a tile)
        return ys, xs, np.zeros((0, tile, tile), np.float32), np.zeros(0)
    templates = np.lib.stride_tricks.sliding_window_view(fixed, (tile, tile))[ys, xs]
    templates = templates - (content[keep] / (tile * tile))[:, None, None].astype(np.float32)
    return ys, xs, templates, np.square(templates, dtype=np.float64).sum(axis=(1, 2))


def _correlate(warped, templates, products, jobs, window: int) -> None:
    """For each (k, template number, (y, x) corner) of ``jobs``, ``products[k]``: the plain
    correlation (``cv2.TM_CCORR``) of that template with the ``window`` px square of
    ``warped`` at that corner."""
    for k, number, (y0, x0) in jobs:
        products[k] = cv2.matchTemplate(warped[y0:y0 + window, x0:x0 + window],
                                        templates[number], cv2.TM_CCORR)


def _normalised(products, warped, corners, energies, tile: int) -> np.ndarray:
    """Normalised correlations (K, n, n) from the plain correlations ``products`` of K
    zero-mean templates (with ``energies``, their sums of squares) at every offset of their
    search windows at ``corners`` (K, 2) (y, x) in ``warped``: each divided by the root of
    the template's energy times the variance sum of the ``tile`` px square of ``warped``
    under it (from integral images), with OpenCV's rules for ``TM_CCOEFF_NORMED``: 0 where
    that square is flat (its variance sum at most 10 float32 epsilons of its sum of
    squares), +-1 for a ratio just past 1 by rounding, 0 beyond."""
    sums, squares = (_tile_sums(np.lib.stride_tricks.sliding_window_view(
        table, products.shape[1:]), corners[:, 0], corners[:, 1], tile)
        for table in cv2.integral2(warped, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F))
    variance = np.maximum(squares - sums ** 2 / (tile * tile), 0.0)
    flat = variance <= np.minimum(0.5, 10 * np.finfo(np.float32).eps * squares)
    scale = np.where(flat, 0.0, np.sqrt(variance * energies[:, None, None]))
    size = np.abs(products)
    ratio = np.divide(products, scale, out=np.zeros(products.shape), where=size < scale)
    return np.where(size < scale, ratio, np.where(size < 1.125 * scale, np.sign(products), 0.0))


def _residuals(transform: transforms.Transform, matches: Matches) -> np.ndarray:
    return np.linalg.norm(transform.fixed_to_moving(matches.fixed) - matches.moving, axis=1)


def fit_trimmed(model: str, matches: Matches, domain, options: FineOptions = FineOptions(),
                unit: float = 1.0):
    """Fit ``model`` by iteratively trimmed least squares (weights = correlation scores).

    Returns (transform, inlier Matches) or (None, reason) when fewer than the model's
    ``min_inliers`` remain.
    """
    needed = options.min_inliers.get(model, transforms.model_class(model).min_inliers)
    fitted = {}

    def residuals(keep):
        fitted["transform"] = _weighted_fit(model, matches.subset(keep))
        return _residuals(fitted["transform"], matches)

    try:
        keep = _trimmed(residuals, len(matches), needed, options, unit)
    except ValueError as error:
        return None, str(error)
    if keep.sum() < needed:
        return None, f"{keep.sum()} consistent matches (a {model} needs {needed})"
    # a quadratic's inverse: once, over the domain
    return fitted["transform"].for_domain(domain), matches.subset(keep)


def _trimmed(residuals_of, count: int, needed: int, options: FineOptions,
             unit: float) -> np.ndarray:
    """The (count,) inlier mask of an iteratively trimmed fit: ``residuals_of(keep)`` fits to
    the pairs ``keep`` and returns every pair's residual (map px); residuals above ``trim`` x
    the robust sigma (and above ``min_trim_px``) are outliers of the next round. It stops
    early when fewer than ``needed`` pairs remain (the caller checks the count)."""
    keep = np.ones(count, bool)
    for _ in range(6):
        if keep.sum() < needed:
            return keep
        residuals = residuals_of(keep)
        sigma = 1.4826 * np.median(residuals[keep])
        new_keep = residuals <= max(options.trim * sigma, options.min_trim_px * unit)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _weighted_fit(model: str, matches: Matches) -> transforms.Transform:
    """``transforms.fit_transform`` weighted by the correlation scores (unweighted for a model
    whose fit takes no weights: the homography); a quadratic's inverse is only fitted roughly
    here (over the matches' bounding box)."""
    weights = matches.score if transforms.model_class(model).weighted else None
    return transforms.fit_transform(model, matches.fixed, matches.moving, weights=weights)


def _hull_share(points: np.ndarray, area: float) -> float:
    if len(points) < 3 or area <= 0:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32))
    return float(cv2.contourArea(hull) / area)


def heldout_residual(model: str, matches: Matches, folds: int) -> float | None:
    """Median distance (map px) between held-out matches and the ``model`` fitted to the
    others (k-fold): an estimate of the error at points the fit never saw."""
    needed = transforms.model_class(model).min_points * 2
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

    Registered models are tried from ``model`` down to the simplest (quadratic, homography,
    affine); a flexible one must also pass the spread and :meth:`Transform.plausibility`
    checks. When even the simplest has too little evidence the ``start`` is returned
    unchanged with the reason. A local model (``local``) is its base model from this cascade,
    then :func:`local_stage`. ValueError for an unknown model.
    """
    cls = transforms.model_class(model)
    if cls.local:
        return local_stage(maps, fine_stage(maps, start, cls.base_model, options), model,
                           options)
    names = transforms.model_names()
    candidates = [name for name in names[:names.index(cls.model) + 1][::-1]
                  if not transforms.model_class(name).local]
    unit = maps.width / options.reference_width
    current, kept, notes = start, None, []
    inliers = Matches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    for radius, step in passes(options):
        matches = match_tiles(maps, current, radius, options, step)
        domain = maps.common_points(current)
        area = len(domain) * 256.0  # one point per 16 x 16 px
        notes = []
        for candidate in candidates:
            fitted, found = fit_trimmed(candidate, matches, domain, options, unit)
            if fitted is None:
                notes.append(f"no {candidate}: {found}")
                continue
            if transforms.model_class(candidate).flexible:
                spread = _hull_share(found.fixed, area)
                problem = (f"matches cover {spread:.0%} of the common field of view (needs "
                           f"{options.min_spread:.0%})" if spread < options.min_spread else
                           fitted.plausibility(domain, maps.width, options.max_bend))
                if problem:
                    notes.append(f"no {candidate}: {problem}")
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
    return FineOutcome(current, kept, reason, inliers, residual, matches)


def local_stage(maps: VesselMaps, outcome: FineOutcome, model: str = "local",
                options: FineOptions = FineOptions()) -> FineOutcome:
    """The local ``model`` (its base plus a regularised B-spline grid,
    :mod:`fire_reg.geometry.local`) on top of the cascade's ``outcome`` (map px), or that
    outcome with the reason it stays, said in its ``reason``.

    The evidence is every match of the cascade's last pass (``outcome.candidates``: tiles with
    vessel content only, ``min_content``; those scoring at least ``local_min_score``), not
    only the base's inliers, for those trimmed away where the retina moved are what the grid
    must follow; a lesion that grew or faded is no vessel and moves nothing. They are trimmed
    against a local fit at the strongest smoothing as :func:`fit_trimmed` trims. Each of
    ``local_smoothing`` is scored by the held-out residual of the matches, split into folds of
    ``local_block`` px blocks (:meth:`~fire_reg.geometry.local.Evidence.heldout`); the best
    one is kept when it lowers the base model's held-out residual (same matches, same folds)
    by ``local_gain`` and the map passes :meth:`Transform.plausibility` (the grid's stretch is
    bounded by construction, :data:`~fire_reg.geometry.local.MAX_STRETCH`); otherwise the base
    stays, and the reason says why.
    """
    cls = transforms.model_class(model)
    if outcome.model != cls.base_model:
        return _staying(outcome, f"no {model} correction: it needs a {cls.base_model} first")
    if outcome.candidates is None:
        return _staying(outcome, f"no {model} correction: no tile matches")
    base = outcome.transform
    unit = maps.width / options.reference_width
    matches = outcome.candidates.subset(outcome.candidates.score >= options.local_min_score)
    needed = options.min_inliers.get(model, cls.min_inliers)
    evidence = cls.evidence(matches.fixed, matches.moving, matches.score, maps.fixed_size,
                            options.local_knots)
    keep = _trimmed(lambda kept: evidence.residuals(base, kept, max(options.local_smoothing)),
                    len(matches), needed, options, unit)
    if keep.sum() < needed:
        return _staying(outcome, f"no {model} correction: {keep.sum()} consistent vessel "
                                 f"tile matches (a {model} needs {needed})")
    blocks = np.floor(matches.fixed / (options.local_block * unit)).astype(int) % 2
    base_errors, local_errors = evidence.heldout(blocks[:, 0] + 2 * blocks[:, 1],
                                                 options.local_smoothing, keep)
    measured = np.isfinite(base_errors)
    if measured.sum() < needed:
        return _staying(outcome, f"no {model} correction: too few matches to measure its "
                                 f"held-out residual")
    before = float(base_errors[measured].mean())
    after = {smoothing: float(errors[measured].mean())
             for smoothing, errors in local_errors.items()}
    smoothing = min(after, key=after.get)
    gain = 1.0 - after[smoothing] / max(before, 1e-12)
    if gain < options.local_gain:
        change = f"lowers it by {gain:.1%}" if gain > 0 else f"raises it by {-gain:.1%}"
        return _staying(outcome, f"no {model} correction: it does not lower the held-out "
                                 f"residual enough ({change}, needs {options.local_gain:.0%})")
    domain = maps.common_points(base)
    fitted = evidence.transform(base, keep, smoothing, domain)
    problem = fitted.plausibility(domain, maps.width, options.max_bend)
    if problem:
        return _staying(outcome, f"no {model} correction: {problem}")
    return FineOutcome(fitted, model, (
        f"{outcome.reason}, then {model} from {keep.sum()} vessel tile matches (smoothing "
        f"{smoothing:g}: held-out residual {gain:.0%} below the {cls.base_model}'s)"),
        matches.subset(keep), float(np.median(local_errors[smoothing][measured])))


def _staying(outcome: FineOutcome, note: str) -> FineOutcome:
    """``outcome`` with ``note`` added to its reason."""
    return replace(outcome, reason=f"{outcome.reason}; {note}")
