"""Embedded FIRE-layout sets: registration pairs with exact ground truth from single photographs.

Every map goes **fixed px -> moving px** (the convention of :mod:`fire_reg.geometry`):
pixel coordinates are ``(x, y)``, x right, y down, (0, 0) the centre of the top-left pixel.
Lengths are px of the output frame unless named otherwise.

This module writes a set (:func:`make_embedded_set`); the parts live beside it:

* :mod:`fire_reg.data.sources`: the source photograph, its aperture (fixed in every frame
  while the retina moves behind it) and how a view samples it.
* :mod:`fire_reg.data.sphere`: geometry "sphere" (the default), a curved retina seen through
  the eye's nodal point; the categories' motion ranges.
* :mod:`fire_reg.data.affine`: geometry "affine" (``geometry="affine"``), the generator
  before the curved model; the same seed gives the same images and points as then.
* :mod:`fire_reg.data.nonrigid`: category A's smooth non-rigid displacement.
* :mod:`fire_reg.data.photometric`: every view's photometric change and sensor noise (mild;
  strong for the moving view of A: gamma, contrast, colour balance, vignetting, blur,
  lesion-like blotches).
* :mod:`fire_reg.data.ground_truth`: :func:`~fire_reg.data.ground_truth.exact_map` and
  :func:`~fire_reg.data.ground_truth.dense_map` of a pair's record (``exact_map`` is
  importable from here too, where ``embedded.json`` names it).
* :mod:`fire_reg.data.statistics`: the set's control-point statistics beside FIRE's, and
  how the geometry was calibrated against them.

Control points: ten fixed points on strong vessels at least 3 % of the width inside both
views (farthest-point sampling), and the exact map of them. Images are written as JPEG
(quality 92).

Layout (as FIRE): ``Images/<ID>_1.jpg`` (fixed), ``Images/<ID>_2.jpg`` (moving),
``Ground Truth/control_points_<ID>_1_2.txt`` (10 lines ``x1 y1 x2 y2``, 2 decimals, fixed then
moving px), ``Masks/mask.png`` (aperture of the first source, 255 inside; from a folder of
images also ``Masks/aperture_<name>.png`` per source), ``Dense/<ID>_fixed_to_moving.npy``
(float32 ``(ceil((H - 1) / 8) + 1, ceil((W - 1) / 8) + 1, 2)``: entry ``[j, i]`` is the exact
moving (x, y) px of the fixed pixel ``(8 i, 8 j)``, nodes from 0 to the first multiple of 8 at
or beyond the last pixel; bilinear interpolation between nodes is within ~0.01 px of the exact
map, both geometries) and ``embedded.json``:
the geometry, the sampling of the dense maps, the set's statistics beside FIRE's, and per
pair the model parameters (``"model"`` for sphere, ``"views"`` for affine), the motion, the
photometric and non-rigid parameters, the seed, ``"matrix"`` (sphere: the least-squares
affine of the exact map over the dense nodes in the common field of view, i.e. inside the
fixed aperture with their image inside the moving aperture; affine: the exact matrix) and
``"transform"`` (the least-squares quadratic over the same nodes, both ways, in the schema of
docs/conventions.md). Pair ``i`` (running over all pairs) draws from
``numpy.random.default_rng([seed, i])``, so a set is reproducible pair by pair.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from fire_reg import geometry
from fire_reg.data.affine import NONRIGID_AFFINE, render_affine, sample_affine_views
from fire_reg.data.fire import CATEGORIES, FIRE_WIDTH
from fire_reg.data.ground_truth import (DENSE_STEP, dense_nodes, exact_map, interpolate,
                                        quadratic_transform)
from fire_reg.data.nonrigid import displacement_field, undeform
from fire_reg.data.modalities import RENDERED, render
from fire_reg.data.photometric import photometric_change
from fire_reg.data.sources import (DEFAULT_SOURCE_NAME, Source, centroid, load_source, lookup,
                                   shrink)
from fire_reg.data.sphere import EYE, NONRIGID_SPHERE, render_sphere, sample_sphere
from fire_reg.data.statistics import summarise
from fire_reg.imaging.vessels import vessel_map
from fire_reg.io.errors import InputError
from fire_reg.io.images import IMAGE_SUFFIXES, image_size
from fire_reg.io.output import atomic_path, write_json, write_text

__all__ = ["make_embedded_set", "exact_map"]  # embedded.json names exact_map here

DEFAULT_SINGLE = {"S": 6, "P": 4, "A": 2}
DEFAULT_FOLDER = {"S": 2, "P": 2, "A": 1}
GEOMETRIES = ("sphere", "affine")
POINTS_PER_PAIR = 10
JPEG_QUALITY = 92
REFERENCE_WIDTH = 1411.0  # blur, lesion and deformation sizes (px) are drawn for this width
POINT_MARGIN = 0.03  # control points keep this fraction of the width from any black border


def make_embedded_set(out_dir, images=None, pairs_per_image=None, categories=None, seed=0,
                      size=None, progress=True, select=("*",), geometry="sphere",
                      modality="colour") -> dict:
    """Write a FIRE-layout set of pairs with known ground truth; returns the summary.

    ``images``: a folder of photographs (suffixes :data:`fire_reg.io.images.IMAGE_SUFFIXES`);
    default ``skimage.data.retina()``. ``categories``: pairs per category per source image
    (default ``{"S": 6, "P": 4, "A": 2}`` for the default image, ``{"S": 2, "P": 2, "A": 1}``
    for a folder); ``select``: glob patterns of the folder's file names to use (e.g. to keep
    validation retinas apart); ``pairs_per_image`` instead scales the default mix to that many pairs.
    ``size``: output width in px (aspect kept; default the source's). ``geometry``: "sphere"
    (curved retina, the default) or "affine" (the earlier generator: the same seed gives the
    same images and points as before the sphere model). ``modality``: the moving photograph of
    every pair is rendered as this modality (:mod:`fire_reg.data.modalities`: red-free, fa,
    ir; default colour, unchanged), geometry and ground truth untouched. IDs run per category across images
    (S01, S02 from the first image, S03 ... from the next). The summary is also written to
    ``out_dir/embedded.json``. Raises InputError for a missing or empty folder, an unreadable
    image, an unknown geometry, or a folder holding a set made with other settings.
    """
    out_dir = Path(out_dir)
    geometry_name = _check_geometry(geometry)
    if modality != "colour" and modality not in RENDERED:
        raise InputError("--modality", f"must be colour or one of {', '.join(RENDERED)}, "
                                       f"got {modality!r}")
    paths = None if images is None else _image_paths(images, select)
    counts = _category_counts(categories, pairs_per_image,
                              DEFAULT_SINGLE if paths is None else DEFAULT_FOLDER)
    if size is not None and int(size) < 32:
        raise InputError("--size", f"must be at least 32 px, got {size}")
    _refuse_other_set(out_dir, seed, size, counts,
                      [DEFAULT_SOURCE_NAME] if paths is None else [p.name for p in paths],
                      geometry_name, modality)
    n_sources = 1 if paths is None else len(paths)
    digits = 2 if max(counts.values()) * n_sources <= 99 else 3
    numbers = dict.fromkeys(CATEGORIES, 0)
    records, sources, points = [], [], {}
    with tqdm(total=sum(counts.values()) * n_sources, desc="embedded pairs", unit="pair",
              disable=not progress) as bar:
        for index in range(n_sources):
            source = load_source(None if paths is None else paths[index], index, size)
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
                        record, written = _make_pair(out_dir, source, pair_id, category, seed,
                                                     len(records), geometry_name, modality)
                    except _TooFewVessels:
                        raise InputError(source.name, "too few vessels visible for control "
                                         "points (is this a fundus photograph?)") from None
                    records.append(record)
                    points[pair_id] = (category, written, FIRE_WIDTH / record["size"][0])
                    bar.update()
    summary = {
        "generator": "fire_reg.data.embedded", "geometry": geometry_name, "seed": seed, "size": size,
        **({} if modality == "colour" else {"modalities": {"fixed": "colour", "moving": modality}}),
        "categories_per_image": counts, "convention": {
            "matrix": "fixed_xy_to_moving_xy", "units": "pixels",
            "pixel_centres": "(0, 0) is the centre of the top-left pixel",
            "exact_map": "fire_reg.data.embedded.exact_map(record, points): fixed px -> moving px",
            **({"views": "output_xy_to_source_xy in original source pixels",
                "matrix_is": "the exact map (category A: before the non-rigid field)"}
               if geometry_name == "affine" else
               {"model": "sphere model of the module docstring; mm, degrees, pixels of the "
                         "output frame; eye_rotation maps eye to world directions",
                "matrix_is": "least-squares affine of the exact map over the dense nodes in "
                             "the common field of view"})},
        "dense": {"file": "Dense/<ID>_fixed_to_moving.npy", "dtype": "float32",
                  "shape": "(ceil((H - 1) / 8) + 1, ceil((W - 1) / 8) + 1, 2)",
                  "step_px": DENSE_STEP,
                  "sampling": f"entry [j, i] = exact moving (x, y) px of the fixed pixel "
                              f"({DENSE_STEP} i, {DENSE_STEP} j); the last nodes lie on or just "
                              f"beyond the last pixels; bilinear between nodes is within "
                              f"~0.01 px"},
        "statistics": summarise(points, "this set"),
        "sources": sources, "pairs": records,
    }
    if geometry_name == "sphere":
        summary["eye"] = dict(EYE)
    write_json(out_dir / "embedded.json", summary)
    return summary


def _check_geometry(name) -> str:
    if name not in GEOMETRIES:
        raise InputError("--geometry", f"must be one of {', '.join(GEOMETRIES)}, got {name!r}")
    return name


def _refuse_other_set(out_dir: Path, seed, size, counts, names, geometry_name="affine",
                      modality="colour") -> None:
    """InputError when ``out_dir`` already holds an embedded set made with other settings
    (its pairs would mix with the new ones); the same settings simply rewrite it. Sets
    written before the sphere model carry no "geometry" and are affine."""
    summary_path = out_dir / "embedded.json"
    if not summary_path.is_file():
        return
    old = json.loads(summary_path.read_text())
    old_geometry = old.get("geometry", "affine")
    if old_geometry != geometry_name:
        raise InputError(out_dir, f"holds an embedded set of geometry {old_geometry!r}, not "
                                  f"{geometry_name!r} (other settings); choose an empty folder")
    same = (old.get("seed") == seed and old.get("size") == size
            and old.get("categories_per_image") == counts
            and [s.get("name") for s in old.get("sources", [])] == names
            and old.get("modalities", {}).get("moving", "colour") == modality)
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
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and any(fnmatch.fnmatch(p.name, pattern) for pattern in select))
    if not paths:
        raise InputError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) matching "
                                 f"{', '.join(select)} in folder")
    for path in paths:
        image_size(path)  # header check: fail before writing anything
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


def _make_pair(out_dir: Path, source: Source, pair_id: str, category: str, seed: int,
               pair_index: int, geometry_name: str = "sphere",
               modality: str = "colour") -> tuple[dict, np.ndarray]:
    """Render, write and describe one pair; returns (record, the (10, 4) points written).
    The moving image is drawn as ``modality`` last, with a random stream of its own (a colour
    set is the same whatever the modalities of other sets)."""
    rng = np.random.default_rng([seed, pair_index])
    height, width = source.aperture.shape
    unit = width / REFERENCE_WIDTH
    record = {"id": pair_id, "category": category, "source": source.name,
              "source_index": source.index, "seed": [seed, pair_index], "size": [width, height],
              "geometry": geometry_name}
    field = None
    if geometry_name == "affine":
        view = sample_affine_views(source, category, rng)
        if category == "A":
            field, record["nonrigid"] = displacement_field(
                rng, (height, width), rng.uniform(*NONRIGID_AFFINE) * unit)
        fixed, fixed_valid = render_affine(source, view["fixed"])
        moving, moving_valid = render_affine(source, view["moving"], field)
        matrix = view["matrix"]
        to_original = (1.0 / source.scale[0], 1.0 / source.scale[1])
        record.update({"matrix": matrix.tolist(), "motion": view["motion"],
                       "camera": view["camera"], "overlap": view["overlap"],
                       "views": {k: geometry.rescale(view[k], 1.0, to_original).tolist()
                                 for k in ("fixed", "moving")}})
        rigid = lambda points: geometry.apply(matrix, points)  # noqa: E731
    else:
        view = sample_sphere(source, category, rng)
        if category == "A":
            field, record["nonrigid"] = displacement_field(
                rng, (height, width), rng.uniform(*NONRIGID_SPHERE) * unit)
        record.update({"model": view["model"], "motion": view["motion"],
                       "camera": view["camera"], "overlap": view["overlap"]})
        fixed, fixed_valid = render_sphere(source, view["model"], "fixed")
        moving, moving_valid = render_sphere(source, view["model"], "moving", field)
    record.setdefault("nonrigid", None)
    nodes = dense_nodes(width, height)
    exact = exact_map(record, nodes.reshape(-1, 2))  # fixed nodes -> moving px, float64
    dense = exact.reshape(nodes.shape).astype(np.float32)
    if geometry_name == "sphere":  # for choosing points only: bilinear between the nodes
        rigid = lambda points: interpolate(dense, points, DENSE_STEP)  # noqa: E731
    fixed, fixed_photo = photometric_change(fixed, fixed_valid, rng, unit, strong=False)
    moving, moving_photo = photometric_change(moving, moving_valid, rng, unit,
                                              strong=category == "A")
    fixed_points = _control_points(fixed, fixed_valid, moving_valid, rigid, rng)
    if geometry_name == "affine":  # as before the sphere model: the unrounded points mapped
        moving_points = rigid(fixed_points)
        if field is not None:
            moving_points = undeform(moving_points, field)
    else:
        fixed_points = np.round(fixed_points, 2)
        moving_points = exact_map(record, fixed_points)

    if modality != "colour":
        moving = render(moving, modality, np.random.default_rng([seed, pair_index, 1]),
                        moving_valid)
        record["modalities"] = {"fixed": "colour", "moving": modality}
    _write_image(out_dir / "Images" / f"{pair_id}_1.jpg", fixed)
    _write_image(out_dir / "Images" / f"{pair_id}_2.jpg", moving)
    lines = [f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}"
             for (x1, y1), (x2, y2) in zip(fixed_points, moving_points)]
    write_text(out_dir / "Ground Truth" / f"control_points_{pair_id}_1_2.txt",
               "\n".join(lines) + "\n")
    written = np.array([[float(v) for v in line.split()] for line in lines])
    record["dense"] = f"Dense/{pair_id}_fixed_to_moving.npy"
    with atomic_path(out_dir / record["dense"]) as tmp:
        np.save(tmp, dense)

    nodes = nodes.reshape(-1, 2)
    common = lookup(source.aperture, nodes) & lookup(source.aperture, exact)
    if geometry_name == "sphere":
        matrix, residuals = geometry.fit_affine(nodes[common], exact[common])
        record["matrix"] = matrix.tolist()
        record["matrix_fit"] = {"over": "dense nodes in the common field of view",
                                "nodes": int(common.sum()),
                                "rms_px": float(np.sqrt(np.mean(residuals ** 2))),
                                "max_px": float(residuals.max())}
    record["inverse"] = geometry.invert(record["matrix"]).tolist()
    record["maps"] = "fixed_xy_to_moving_xy"
    record["transform"] = quadratic_transform(nodes[common], exact[common])
    record.update({
        "aperture": {"mask": source.mask_file, "area_px": int(source.aperture.sum()),
                     "centroid_xy": centroid(source.aperture).round(2).tolist()},
        "photometric": {"fixed": fixed_photo, "moving": moving_photo},
    })
    return record, written


class _TooFewVessels(Exception):
    """A view pair shows too few vessels in its common field of view for control points."""


def _control_points(fixed, fixed_valid, moving_valid, mapping, rng) -> np.ndarray:
    """POINTS_PER_PAIR fixed points (N, 2) on vessels, inside both views, spread out.

    Candidates: the strongest 10% of :func:`fire_reg.imaging.vessels.vessel_map` of the fixed image
    among pixels at least POINT_MARGIN x width inside both views' retina (moving side through
    ``mapping``, (N, 2) fixed px -> moving px); then farthest-point sampling from a random start.
    """
    margin = POINT_MARGIN * fixed.shape[1]
    fixed_ok, moving_ok = shrink(fixed_valid, margin), shrink(moving_valid, margin)
    vessels, _, scale = vessel_map(fixed, fixed_valid)
    ys, xs = np.nonzero(vessels > 0)
    points = (np.stack([xs, ys], axis=1) + 0.5) / np.asarray(scale) - 0.5
    keep = lookup(fixed_ok, points) & lookup(moving_ok, mapping(points))
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
