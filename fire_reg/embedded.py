"""Embedded FIRE-layout sets: registration pairs with exact ground truth from single photographs.

Physical model
--------------
A fundus camera's circular aperture is fixed in its frame; between two examinations the retina
moves behind it. From one source photograph (first resized to ``size`` px wide if given):

* ``aperture`` = :func:`fire_reg.imaging.fov_mask` of the source: the aperture of every output
  frame, which has the size of the (resized) source.
* View k (fixed f, moving m) samples the source through a view transform ``T_k`` (2x3, output
  px -> source px): a camera zoom-in with a small rotation about a point near the aperture
  centre, composed with half of the relative retina motion: ``view_k(p) = source(T_k p)``.
  Pixels outside the aperture, or that would come from outside the source's own field of
  view, are black (0).
* Ground truth, fixed px -> moving px (the convention of :mod:`fire_reg.geometry`):
  ``M = T_m^-1 o T_f``; a fixed point p lies at ``M p`` in the moving image.
* Category A only: the retina of the moving view is also deformed by a smooth displacement
  field ``d`` (px, a few px at 1411 px width): ``moving(q) = view_m(q + d(q))``. A retina point
  at ``u`` in ``view_m`` lies at the q solving ``q + d(q) = u`` (fixed-point iteration), so its
  moving control point is that q with ``u = M p``, and no affine is exact.

Categories (relative motion in the output frame, about the aperture centre; shift as a fraction
of the frame width; overlap = share of fixed-aperture pixels whose ``M`` image lies inside the
moving aperture): S small motion, overlap > 75%, mild photometric change; P larger motion,
overlap < 75%; A like S plus strong photometric change (gamma, contrast, colour balance,
vignetting, blur, lesion-like blotches) and the non-rigid deformation. Every view gets its own
photometric change and sensor noise; images are written as JPEG (quality 92).

Layout (as FIRE): ``Images/<ID>_1.jpg`` (fixed), ``Images/<ID>_2.jpg`` (moving),
``Ground Truth/control_points_<ID>_1_2.txt`` (10 lines ``x1 y1 x2 y2``, 2 decimals, fixed then
moving px), ``Masks/mask.png`` (aperture of the first source, 255 inside; from a folder of
images also ``Masks/aperture_<name>.png`` per source) and ``embedded.json``, which records per
pair the matrix, the view transforms (in original source px), the motion, the photometric and
non-rigid parameters and the seed. Pair ``i`` (running over all pairs) draws from
``numpy.random.default_rng([seed, i])``, so a set is reproducible pair by pair.
"""
from __future__ import annotations

from dataclasses import dataclass
import fnmatch
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from fire_reg import geometry, imaging
from fire_reg.fire import CATEGORIES
from fire_reg.errors import InputError, atomic_path, write_json, write_text

DEFAULT_SINGLE = {"S": 6, "P": 4, "A": 2}
DEFAULT_FOLDER = {"S": 2, "P": 2, "A": 1}
DEFAULT_SOURCE_NAME = "skimage.data.retina"
POINTS_PER_PAIR = 10
JPEG_QUALITY = 92
REFERENCE_WIDTH = 1411.0  # blur, lesion and deformation sizes (px) are drawn for this width
MIN_COVERAGE = 0.985  # share of the aperture that each view must fill with retina
POINT_MARGIN = 0.03  # control points keep this fraction of the width from any black border
MAX_TRIES = 1000

# Relative retina motion fixed -> moving: max |rotation| (deg), scale range, shift range
# (fraction of the frame width), allowed overlap range; camera zoom range of both views.
MOTION = {
    "S": {"rotation": 5.0, "scale": (0.95, 1.05), "shift": (0.015, 0.05),
          "overlap": (0.78, 1.0), "zoom": (1.1, 1.3)},
    "P": {"rotation": 10.0, "scale": (0.9, 1.1), "shift": (0.15, 0.30),
          "overlap": (0.0, 0.72), "zoom": (1.25, 1.45)},
}
MOTION["A"] = MOTION["S"]
CAMERA_ROTATION = 8.0  # deg, max |rotation| of the common camera view
CAMERA_OFFSET = 0.02  # std of the view centre's offset from the aperture centre, x width


@dataclass
class _Source:
    """A source photograph in output-frame pixels."""

    name: str
    index: int
    image: np.ndarray  # BGR uint8, resized to the output frame
    aperture: np.ndarray  # bool, the aperture of every output frame
    inside: np.ndarray  # uint8 0/1: source pixels safely inside its own field of view
    scale: tuple[float, float]  # (sx, sy) output px per original source px
    mask_file: str  # aperture mask, relative to the output folder


def make_embedded_set(out_dir, images=None, pairs_per_image=None, categories=None, seed=0,
                      size=None, progress=True, select=("*",)) -> dict:
    """Write a FIRE-layout set of pairs with known ground truth; returns the summary.

    ``images``: a folder of photographs (suffixes :data:`fire_reg.imaging.IMAGE_SUFFIXES`);
    default ``skimage.data.retina()``. ``categories``: pairs per category per source image
    (default ``{"S": 6, "P": 4, "A": 2}`` for the default image, ``{"S": 2, "P": 2, "A": 1}``
    for a folder); ``select``: glob patterns of the folder's file names to use (e.g. to keep
    validation retinas apart); ``pairs_per_image`` instead scales the default mix to that many pairs.
    ``size``: output width in px (aspect kept; default the source's). IDs run per category
    across images (S01, S02 from the first image, S03 ... from the next). The summary is also
    written to ``out_dir/embedded.json``. Raises InputError for a missing or empty folder or
    an unreadable image.
    """
    out_dir = Path(out_dir)
    paths = None if images is None else _image_paths(images, select)
    counts = _category_counts(categories, pairs_per_image,
                              DEFAULT_SINGLE if paths is None else DEFAULT_FOLDER)
    if size is not None and int(size) < 32:
        raise InputError("--size", f"must be at least 32 px, got {size}")
    _refuse_other_set(out_dir, seed, size, counts,
                      [DEFAULT_SOURCE_NAME] if paths is None else [p.name for p in paths])
    n_sources = 1 if paths is None else len(paths)
    digits = 2 if max(counts.values()) * n_sources <= 99 else 3
    numbers = dict.fromkeys(CATEGORIES, 0)
    records, sources = [], []
    with tqdm(total=sum(counts.values()) * n_sources, desc="embedded pairs", unit="pair",
              disable=not progress) as bar:
        for index in range(n_sources):
            source = _load_source(None if paths is None else paths[index], index, size)
            if index == 0:
                _write_image(out_dir / "Masks" / "mask.png", source.aperture)
            if paths is not None:
                _write_image(out_dir / source.mask_file, source.aperture)
            sources.append({"name": source.name, "index": index, "mask": source.mask_file,
                            "size": [source.image.shape[1], source.image.shape[0]],
                            "scale": list(source.scale)})
            for category in CATEGORIES:
                for _ in range(counts[category]):
                    numbers[category] += 1
                    pair_id = f"{category}{numbers[category]:0{digits}d}"
                    try:
                        records.append(_make_pair(out_dir, source, pair_id, category, seed,
                                                  len(records)))
                    except _TooFewVessels:
                        raise InputError(source.name, "too few vessels visible for control "
                                         "points (is this a fundus photograph?)") from None
                    bar.update()
    summary = {
        "generator": "fire_reg.embedded", "seed": seed, "size": size,
        "categories_per_image": counts, "convention": {
            "matrix": "fixed_xy_to_moving_xy", "units": "pixels",
            "views": "output_xy_to_source_xy in original source pixels",
            "pixel_centres": "(0, 0) is the centre of the top-left pixel"},
        "sources": sources, "pairs": records,
    }
    write_json(out_dir / "embedded.json", summary)
    return summary


def _refuse_other_set(out_dir: Path, seed, size, counts, names) -> None:
    """InputError when ``out_dir`` already holds an embedded set made with other settings
    (its pairs would mix with the new ones); the same settings simply rewrite it."""
    summary_path = out_dir / "embedded.json"
    if not summary_path.is_file():
        return
    import json

    old = json.loads(summary_path.read_text())
    same = (old.get("seed") == seed and old.get("size") == size
            and old.get("categories_per_image") == counts
            and [s.get("name") for s in old.get("sources", [])] == names)
    if not same:
        raise InputError(out_dir, "holds an embedded set made with other settings; "
                                  "choose an empty folder")


def _image_paths(folder, select=("*",)) -> list[Path]:
    """Image files of a folder whose names match a ``select`` glob, sorted; InputError if
    the folder is missing, nothing matches, or an image is unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "images folder not found")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in imaging.IMAGE_SUFFIXES
                   and any(fnmatch.fnmatch(p.name, pattern) for pattern in select))
    if not paths:
        raise InputError(folder, f"no images ({', '.join(imaging.IMAGE_SUFFIXES)}) matching "
                                 f"{', '.join(select)} in folder")
    for path in paths:
        imaging.image_size(path)  # header check: fail before writing anything
    return paths


def _category_counts(categories, pairs_per_image, default) -> dict[str, int]:
    """Pairs per category per image from the arguments (see make_embedded_set)."""
    if categories is None:
        if pairs_per_image is None:
            return dict(default)
        total = sum(default.values())
        shares = {c: int(pairs_per_image) * default[c] / total for c in CATEGORIES}
        counts = {c: int(shares[c]) for c in CATEGORIES}
        by_remainder = sorted(CATEGORIES, key=lambda c: counts[c] - shares[c])
        for category in by_remainder[:int(pairs_per_image) - sum(counts.values())]:
            counts[category] += 1
        return counts
    unknown = set(categories) - set(CATEGORIES)
    if unknown or any(int(n) < 0 for n in categories.values()):
        raise InputError("--per-image",
                         f"categories must map S, P, A to counts >= 0, got {categories}")
    counts = {c: int(categories.get(c, 0)) for c in CATEGORIES}
    if pairs_per_image is not None and sum(counts.values()) != int(pairs_per_image):
        raise InputError("--per-image", "pairs_per_image disagrees with the sum of categories")
    return counts


def _load_source(path, index, size) -> _Source:
    """Read (or take skimage's) photograph, resize it to ``size`` wide, find its aperture."""
    if path is None:
        from skimage import data

        image, name = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), DEFAULT_SOURCE_NAME
        mask_file = "Masks/mask.png"
    else:
        image, name = imaging.read_image(path), Path(path).name
        mask_file = f"Masks/aperture_{name}.png"
    height, width = image.shape[:2]
    if size is not None:
        image, _ = imaging.resize_to_width(image, int(size))
    aperture = imaging.fov_mask(image)
    if aperture.mean() < 0.05:
        raise InputError(path or name, "no camera aperture (bright field of view) found")
    inside = _shrink(aperture, 0.005 * image.shape[1])
    return _Source(name, index, image, aperture, inside,
                   (image.shape[1] / width, image.shape[0] / height), mask_file)


def _make_pair(out_dir: Path, source: _Source, pair_id: str, category: str, seed: int,
               pair_index: int) -> dict:
    """Render, write and describe one pair."""
    rng = np.random.default_rng([seed, pair_index])
    height, width = source.aperture.shape
    unit = width / REFERENCE_WIDTH
    view = _sample_views(source, category, rng)
    field, nonrigid = None, None
    if category == "A":
        field, nonrigid = _displacement_field(rng, (height, width), rng.uniform(2.5, 5.0) * unit)
    fixed, fixed_valid = _render(source, view["fixed"])
    moving, moving_valid = _render(source, view["moving"], field)
    fixed, fixed_photo = _photometric(fixed, fixed_valid, rng, unit, strong=False)
    moving, moving_photo = _photometric(moving, moving_valid, rng, unit, strong=category == "A")
    matrix = view["matrix"]
    fixed_points = _control_points(fixed, fixed_valid, moving_valid, matrix, rng)
    moving_points = geometry.apply(matrix, fixed_points)
    if field is not None:
        moving_points = _undeform(moving_points, field)

    _write_image(out_dir / "Images" / f"{pair_id}_1.jpg", fixed)
    _write_image(out_dir / "Images" / f"{pair_id}_2.jpg", moving)
    lines = [f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}"
             for (x1, y1), (x2, y2) in zip(fixed_points, moving_points)]
    write_text(out_dir / "Ground Truth" / f"control_points_{pair_id}_1_2.txt",
               "\n".join(lines) + "\n")

    to_original = (1.0 / source.scale[0], 1.0 / source.scale[1])
    return {
        "id": pair_id, "category": category, "source": source.name,
        "source_index": source.index, "seed": [seed, pair_index], "size": [width, height],
        "matrix": matrix.tolist(), "inverse": geometry.invert(matrix).tolist(),
        "maps": "fixed_xy_to_moving_xy", "motion": view["motion"], "camera": view["camera"],
        "overlap": view["overlap"],
        "views": {k: geometry.rescale(view[k], 1.0, to_original).tolist()
                  for k in ("fixed", "moving")},
        "aperture": {"mask": source.mask_file, "area_px": int(source.aperture.sum()),
                     "centroid_xy": _centroid(source.aperture).round(2).tolist()},
        "photometric": {"fixed": fixed_photo, "moving": moving_photo},
        "nonrigid": nonrigid,
    }


def _sample_views(source: _Source, category: str, rng) -> dict:
    """Draw view transforms T_f, T_m (output px -> source px) meeting the category's limits.

    Relative motion (rotation a, scale s, shift t about the aperture centre c) is split in
    halves H_f, H_m with ``H_m^-1 o H_f = [p -> c + t + s R(a) (p - c)]``; both are composed
    with one camera view ``B``: ``T_k = B o H_k``, so ``M = T_m^-1 o T_f = H_m^-1 o H_f``.
    """
    limits = MOTION[category]
    height, width = source.aperture.shape
    centre = _centroid(source.aperture)
    stride = max(1, width // 160)
    ys, xs = np.nonzero(source.aperture[::stride, ::stride])
    probe = np.stack([xs, ys], axis=1).astype(np.float64) * stride
    for _ in range(MAX_TRIES):
        angle = rng.uniform(-1.0, 1.0) * limits["rotation"]
        scale = rng.uniform(*limits["scale"])
        direction = rng.uniform(0.0, 2.0 * np.pi)
        shift = rng.uniform(*limits["shift"]) * width * np.array([np.cos(direction),
                                                                   np.sin(direction)])
        zoom = rng.uniform(*limits["zoom"])
        camera_angle = rng.uniform(-1.0, 1.0) * CAMERA_ROTATION
        offset = rng.normal(0.0, CAMERA_OFFSET * width, 2)
        half = np.sqrt(scale)
        half_shift = _rotation(-angle / 2) @ shift / (2.0 * half)
        camera = _similarity(centre, camera_angle, 1.0 / zoom, offset)
        fixed = geometry.compose(camera, _similarity(centre, angle / 2, half, half_shift))
        moving = geometry.compose(camera, _similarity(centre, -angle / 2, 1 / half, -half_shift))
        matrix = geometry.compose(geometry.invert(moving), fixed)
        overlap = float(_lookup(source.aperture, geometry.apply(matrix, probe)).mean())
        coverage = min(float(_lookup(source.inside, geometry.apply(t, probe)).mean())
                       for t in (fixed, moving))
        if limits["overlap"][0] < overlap < limits["overlap"][1] and coverage >= MIN_COVERAGE:
            return {"fixed": fixed, "moving": moving, "matrix": matrix,
                    "overlap": round(overlap, 4),
                    "motion": {"rotation_deg": angle, "scale": scale,
                               "shift_px": shift.tolist(), "centre_xy": centre.tolist()},
                    "camera": {"zoom": zoom, "rotation_deg": camera_angle,
                               "offset_px": offset.tolist()}}
    raise InputError(source.name, f"no {category} views within the limits after {MAX_TRIES} "
                                  "tries (camera aperture too small or odd?)")


def _render(source: _Source, view, field=None) -> tuple[np.ndarray, np.ndarray]:
    """Sample the source through ``view`` (and ``moving(q) = view(q + field(q))``).

    Returns (BGR uint8 image, bool mask of pixels inside the aperture that show retina).
    """
    height, width = source.aperture.shape
    if field is None:
        image = imaging.resample(source.image, view, (width, height))
        inside = imaging.resample(source.inside, view, (width, height))
    else:
        grid = np.indices((height, width), dtype=np.float32)[::-1].transpose(1, 2, 0)
        source_xy = cv2.transform(grid + field, view)  # (H, W, 2): q -> T (q + d(q))
        image = cv2.remap(source.image, source_xy, None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
        inside = cv2.remap(source.inside, source_xy, None, cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT)
    valid = (inside > 0) & source.aperture
    return image * valid[..., None], valid


def _displacement_field(rng, shape, amplitude) -> tuple[np.ndarray, dict]:
    """Smooth random displacement field (H, W, 2) float32 in px, max length ``amplitude``.

    A 4x4 grid of random vectors, upsampled bicubically to 1/8 of the frame and then
    bilinearly to the frame: low-frequency, gradient ~ 1%.
    """
    height, width = shape
    coarse = rng.standard_normal((4, 4, 2))
    field = cv2.resize(coarse.astype(np.float32), (max(4, width // 8), max(4, height // 8)),
                       interpolation=cv2.INTER_CUBIC)
    field *= amplitude / max(float(np.hypot(field[..., 0], field[..., 1]).max()), 1e-9)
    field = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    return field, {"model": "moving(q) = view(q + d(q)); d: 4x4 grid, bicubic to 1/8 size, "
                            "bilinear to full size, scaled to max_displacement_px",
                   "max_displacement_px": float(amplitude), "grid": coarse.tolist()}


def _undeform(points, field, iterations: int = 12) -> np.ndarray:
    """Positions q with ``q + field(q) = u`` for (N, 2) points u (fixed-point iteration)."""
    points = np.asarray(points, dtype=np.float64)
    q = points.copy()
    for _ in range(iterations):
        shift = cv2.remap(field, q[None, :, 0].astype(np.float32), q[None, :, 1].astype(np.float32),
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
        q = points - shift
    return q


def _photometric(image, valid, rng, unit, strong: bool) -> tuple[np.ndarray, dict]:
    """Change exposure, colour, illumination and focus, add lesions (strong) and noise.

    Returns the BGR uint8 image (still black outside ``valid``) and the parameters drawn;
    intensities are in [0, 1], lengths in px of this frame. The tone curve per channel is
    ``clip(contrast * colour_gain * x + brightness, 0, 1) ** gamma``; illumination falls off
    as ``1 - vignetting * (r / R)^2`` (R: radius of a disc with the area of ``valid``).
    """
    height, width = valid.shape
    centre, radius = _centroid(valid), np.sqrt(np.count_nonzero(valid) / np.pi)
    params = {
        "contrast": float(np.exp(rng.uniform(-0.35, 0.35) if strong else rng.normal(0, 0.06))),
        "colour_gain_bgr": np.exp(rng.normal(0.0, 0.12 if strong else 0.03, 3)).tolist(),
        "brightness": float(rng.uniform(-0.08, 0.08) if strong else rng.normal(0, 0.015)),
        "gamma": float(np.exp(rng.uniform(-0.45, 0.45) if strong else rng.uniform(-0.1, 0.1))),
        "vignetting": float(rng.uniform(0.25, 0.55) if strong else rng.uniform(0.05, 0.2)),
        "vignetting_centre_xy": (centre + rng.normal(0.0, 0.1 * width, 2)).tolist(),
        "blur_sigma_px": float(unit * (rng.uniform(0.8, 3.0) if strong else rng.uniform(0, 0.8))),
        "noise_sigma": float(rng.uniform(2.0, 5.0) if strong else rng.uniform(1.0, 3.0)) / 255,
        "lesions": _lesions(rng, valid, unit) if strong else [],
    }

    def tone(values):
        gain = params["contrast"] * np.asarray(params["colour_gain_bgr"], np.float32)
        return np.clip(values * gain + params["brightness"], 0.0, 1.0) ** params["gamma"]

    table = tone(np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None])
    out = cv2.LUT(image, (table * 255.0 + 0.5).astype(np.uint8)[:, None, :])
    out = out.astype(np.float32) * np.float32(1 / 255)
    for lesion in params["lesions"]:
        _paint_lesion(out, lesion, tone(np.asarray(lesion["colour_bgr"], np.float32)))
    step = 8  # illumination is smooth: compute it coarsely, then upsample
    grid_x, grid_y = np.meshgrid(np.arange(0, width, step, dtype=np.float32),
                                 np.arange(0, height, step, dtype=np.float32))
    cx, cy = params["vignetting_centre_xy"]
    r2 = ((grid_x - cx) ** 2 + (grid_y - cy) ** 2) / radius ** 2
    light = cv2.resize(np.clip(1.0 - params["vignetting"] * r2, 0.2, 1.0),
                       (width, height), interpolation=cv2.INTER_LINEAR)
    out *= light[..., None]
    if params["blur_sigma_px"] > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), params["blur_sigma_px"])
    noise = rng.standard_normal((height, width), dtype=np.float32)  # luminance noise
    out += (noise * np.float32(params["noise_sigma"]))[..., None]
    out = cv2.convertScaleAbs(np.maximum(out, 0.0, out=out), alpha=255.0)
    return out * valid[..., None], params


def _lesions(rng, valid, unit) -> list[dict]:
    """4-12 elliptic blotches: bright yellowish (exudate-like) or dark red (haemorrhage-like)."""
    height, width = valid.shape
    lesions, count = [], int(rng.integers(4, 13))
    while len(lesions) < count:
        x, y = int(rng.integers(width)), int(rng.integers(height))
        if not valid[y, x]:
            continue
        bright = bool(rng.random() < 0.5)
        lesions.append({"centre_xy": [x, y], "radius_px": float(rng.uniform(3.0, 15.0) * unit),
                        "aspect": float(rng.uniform(0.5, 1.0)),
                        "angle_deg": float(rng.uniform(0.0, 180.0)),
                        "colour_bgr": [0.55, 0.85, 0.95] if bright else [0.1, 0.12, 0.42],
                        "opacity": float(rng.uniform(0.5, 0.9))})
    return lesions


def _paint_lesion(image, lesion, colour) -> None:
    """Blend an elliptic blotch of ``colour`` (BGR in [0, 1]) into a float image, in place."""
    height, width = image.shape[:2]
    cx, cy = lesion["centre_xy"]
    r = lesion["radius_px"]
    reach = int(np.ceil(2.5 * r)) + 1
    x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
    y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
    gx, gy = np.meshgrid(np.arange(x0, x1) - cx, np.arange(y0, y1) - cy)
    cos, sin = np.cos(np.deg2rad(lesion["angle_deg"])), np.sin(np.deg2rad(lesion["angle_deg"]))
    u, v = (cos * gx + sin * gy) / r, (-sin * gx + cos * gy) / (r * lesion["aspect"])
    alpha = (lesion["opacity"] * np.exp(-0.5 * (u ** 2 + v ** 2) ** 2))[..., None]
    patch = image[y0:y1, x0:x1]
    patch[:] = (1 - alpha) * patch + alpha * colour


class _TooFewVessels(Exception):
    """A view pair shows too few vessels in its common field of view for control points."""


def _control_points(fixed, fixed_valid, moving_valid, matrix, rng) -> np.ndarray:
    """POINTS_PER_PAIR fixed points (N, 2) on vessels, inside both views, spread out.

    Candidates: the strongest 10% of :func:`fire_reg.imaging.vessel_map` of the fixed image
    among pixels at least POINT_MARGIN x width inside both views' retina (moving side through
    ``matrix``); then farthest-point sampling from a random start.
    """
    margin = POINT_MARGIN * fixed.shape[1]
    fixed_ok, moving_ok = _shrink(fixed_valid, margin), _shrink(moving_valid, margin)
    vessels, _, scale = imaging.vessel_map(fixed, fixed_valid)
    ys, xs = np.nonzero(vessels > 0)
    points = (np.stack([xs, ys], axis=1) + 0.5) / np.asarray(scale) - 0.5
    keep = _lookup(fixed_ok, points) & _lookup(moving_ok, geometry.apply(matrix, points))
    points, strength = points[keep], vessels[ys[keep], xs[keep]]
    if len(points) < POINTS_PER_PAIR:
        raise _TooFewVessels()
    points = points[strength >= np.quantile(strength, 0.9)]
    chosen = [int(rng.integers(len(points)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(POINTS_PER_PAIR - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return points[chosen]


def _write_image(path: Path, image) -> None:
    """Write an image atomically (JPEG quality 92 for .jpg; a bool mask as 0/255)."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    options = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image, options):
            raise OSError(f"{path}: could not write image")


def _lookup(mask, points) -> np.ndarray:
    """Whether each (x, y) point's nearest pixel is inside ``mask`` (False off the image)."""
    height, width = mask.shape
    ix, iy = np.rint(points[:, 0]).astype(int), np.rint(points[:, 1]).astype(int)
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    result = np.zeros(len(points), bool)
    result[inside] = mask[iy[inside], ix[inside]] > 0
    return result


def _centroid(mask) -> np.ndarray:
    """(x, y) centroid of a mask, px."""
    moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    return np.array([moments["m10"], moments["m01"]]) / moments["m00"]


def _rotation(angle_deg) -> np.ndarray:
    rad = np.deg2rad(angle_deg)
    return np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])


def _similarity(centre, angle_deg, scale, shift) -> np.ndarray:
    """2x3 map ``p -> centre + shift + scale R(angle) (p - centre)``."""
    matrix = geometry.about_center(scale * _rotation(angle_deg), centre)
    matrix[:, 2] += shift
    return matrix


def _shrink(mask, distance) -> np.ndarray:
    """uint8 0/1 mask of the pixels more than ``distance`` px inside a bool mask."""
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return (inside > distance).astype(np.uint8)
