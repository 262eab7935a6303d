"""Embedded FIRE-layout sets: registration pairs with exact ground truth from single photographs.

Every map below goes **fixed px -> moving px** (the convention of :mod:`fire_reg.geometry`):
pixel coordinates are ``(x, y)``, x right, y down, (0, 0) the centre of the top-left pixel.

Physical setting (both geometries)
----------------------------------
A fundus camera's circular aperture is fixed in its frame; between two photographs the retina
moves behind it. From one source photograph (first resized to ``size`` px wide if given):
``aperture`` = :func:`fire_reg.imaging.vessels.fov_mask` of the source is the aperture of every output
frame (which has the size of the resized source). Each view (fixed f, moving m) samples the
source: ``view_k(p) = source(S_k(p))`` with a map ``S_k`` (output px -> source px). Pixels
outside the aperture, or that would come from outside the source's own field of view, are
black (0). Category A only: the retina of the moving view is also deformed by a smooth
displacement field ``d`` (px): ``moving(q) = view_m(q + d(q))``; a retina point at ``u`` in
``view_m`` lies at the q solving ``q + d(q) = u`` (fixed-point iteration), so the exact map is
``p -> that q`` with ``u = T(p)``.

Geometry "sphere" (the default): a curved retina seen through the eye's nodal point
-------------------------------------------------------------------------------------
Eye frame, millimetres: origin at the centre of the retinal sphere (radius ``R`` = 12 mm);
z along the eye's optical axis, pointing out of the eye towards the camera; x and y parallel
to the image x (right) and y (down) axes. On the axis lie the nodal point ``N = (0, 0, 5)``
(17 mm in front of the posterior pole) and the centre of rotation ``Q = (0, 0, -1.5)``
(13.5 mm behind the cornea of a 24 mm eye): the eye turns about Q, not about N (:data:`EYE`).
The world (camera) frame is the eye frame of the reference pose, in which the source
photograph was taken.

* Eye pose ``G_k`` (a rotation about Q): the eye point P lies at ``X = Q + G_k (P - Q)``.
* Camera of view k: projection centre ``E_k`` (world mm), principal point ``c`` (the aperture
  centroid, px), aperture radius ``rho`` (px, half the larger side of the aperture's bounding
  box), zoom ``s_k``, in-plane roll ``gamma_k``, radial distortion ``kappa``. A world point X
  is seen along ``w = X - E_k`` at field angle ``theta = atan2(|w_xy|, -w_z)`` and azimuth
  ``phi = atan2(w_y, w_x)``; image position is proportional to the ray angle (an
  equidistant projection) with the 45 degree field across the aperture:
  ``u = theta / 22.5 deg``, ``u_d = u (1 + kappa (u^2 - 1))`` (the aperture edge stays at
  22.5 deg), ``p = c + rho s_k Rot(gamma_k) u_d (cos phi, sin phi)``.
* Pixel -> retina (``pi_k^-1``): undo roll and zoom, solve ``u`` from ``u_d`` (Newton,
  monotone for ``|kappa| < 0.2``), ray ``w = (sin theta cos phi, sin theta sin phi,
  -cos theta)``; in the eye frame it starts at ``e = Q + G_k^T (E_k - Q)`` (inside the
  sphere) with direction ``v = G_k^T w`` and meets the retina at ``P = e + t v``,
  ``t = -e.v + sqrt((e.v)^2 - |e|^2 + R^2)``. Retina -> pixel (``pi_k``) is the forward
  projection above.
* The source photograph is view 0: reference pose ``G_0 = I``, ``E_0 = N``, zoom ``1 / Z``
  (the source's aperture spans ``Z`` x 45 deg, so a view shows a 45 deg part of it), no
  roll, no distortion. ``S_k = pi_0 o pi_k^-1``.
* A pair: base gaze ``B`` (where on the source the pair lies) and relative turn ``omega``
  (rotation vector perpendicular to the axis, ``|omega|`` = the turn):
  ``G_f = Exp(-omega / 2) B``, ``G_m = Exp(omega / 2) B``, so ``G_m G_f^T = Exp(omega)``.
  The camera stays where it was, except that it is re-centred on the moved pupil by a
  fraction ``lambda``: ``E_k = N + lambda (Q + G_k (N - Q) - N)``. With ``lambda = 0`` the eye
  turning about Q moves its nodal point by ``|omega| |N - Q|`` (6.5 mm x angle) against the
  camera, so the retina is seen from another point (parallax on a curved surface); with
  ``lambda = 1`` (an operator re-aligning on the pupil for a new fixation) only the ray
  directions turn, which the equidistant projection renders non-affine too. The camera's own
  change: roll ``gamma_f,m = gamma_0 -/+ gamma / 2``, zoom ``s_f,m = z^-/+1/2``.
* Exact ground truth: ``T = pi_m o pi_f^-1`` (nonlinear; no affine, homography or quadratic
  is exact), composed with the non-rigid step for category A. :func:`exact_map` evaluates it
  from a pair's record; the control points are ``T`` of the fixed points (the fixed points
  are rounded to the 2 decimals written first, so the file is exact to its 2 decimals).
* Rendering: ``S_k`` is evaluated exactly on a grid every :data:`MAP_STEP` px (nodes at
  ``8 i + 3.5``, one beyond each edge) and upsampled bilinearly (``cv2.resize``, nodes
  aligned), which is exact to ~0.001 px for maps this smooth; then ``cv2.remap``. For
  category A the map is then sampled at ``q + d(q)`` (``cv2.remap``) before the image is.

Categories (overlap = share of fixed-aperture pixels whose ``T`` image lies inside the moving
aperture; :data:`SPHERE_MOTION`): S turn 0.1-1.05 deg, the camera follows the pupil by
lambda 0-0.1, overlap > 78 %; P turn 6.5-16.5 deg, lambda 0.5-1 (re-aligned for a new
fixation), overlap < 72 %; A turn 0.2-1.7 deg, lambda 0-0.1, plus strong photometric change
and the non-rigid field (max 6-9 px at 1411 px width). All: base gaze N(0, 1.5 deg) per axis,
camera roll +-8 deg common and N(0, 1 deg) relative (|.| <= 7 deg), relative zoom
exp N(0, 0.007) within 0.98-1.02, field zoom Z 1.1-1.3 (S, A) or 1.3-1.6 (P) so that both
views stay inside the source's field of view (checked, as the overlap, on ~8000 aperture
pixels), distortion kappa = -0.015.

Calibration: :func:`set_statistics` / :func:`fire_statistics` give per category the median
over pairs of the mean control-point distance before registration (displacement) and after
the least-squares affine / homography / 12-parameter quadratic fitted to the pair's own ten
points, in FIRE-equivalent px (px x 2912 / width). Turn ranges were set for FIRE's
displacements, ``lambda`` and ``kappa`` for its affine and homography residuals (S, P), the
non-rigid amplitude for A's residual. Results (displacement / affine / homography / quadratic):

    set (pairs S/P/A)              S                    P                   A
    real FIRE (71/49/14)           29.2/1.21/1.06/0.68  785/13.2/9.9/1.49   44.3/5.27/4.70/3.44
    skimage, 1411 px (60/40/30)    28.1/1.01/0.69/0.01  754/12.8/10.2/0.08  50.7/5.13/4.91/3.62
    DRIVE x40, 565 px (120/80/80)  29.1/0.97/0.66/0.01  745/11.8/10.0/0.07  40.7/5.02/4.56/3.34
    default set, seed 0 (6/4/2)    35.1/1.40/0.95/0.01  722/13.6/10.7/0.11  42.6/5.65/5.37/4.40

(DRIVE x40: all 40 DRIVE photographs; the large samples used seed 31.) Displacements and
affine residuals agree within 20 %
(S's affine residual is ~17 % low: FIRE's points carry about 1 px of annotation noise, which
also makes its S quadratic residual 0.7 px; exact points leave almost none).

Geometry "affine" (``geometry="affine"``, the generator before the curved model; the same
seed gives the same images and points as then): ``S_k = T_k`` is affine, a camera zoom-in
with a small rotation about a point near the aperture centre, composed with half of the
relative retina motion, and ``T = T_m^-1 o T_f`` exactly (:data:`MOTION`; S rotation <= 5 deg,
scale 0.95-1.05, shift 1.5-5 % of the width; P rotation <= 10 deg, scale 0.9-1.1, shift
15-30 %; non-rigid field 2.5-5 px at 1411 px for A).

Every view gets its own photometric change and sensor noise (mild; strong for the moving
view of A: gamma, contrast, colour balance, vignetting, blur, lesion-like blotches); images
are written as JPEG (quality 92).

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

from dataclasses import dataclass
import fnmatch
import json
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from fire_reg import geometry
from fire_reg.imaging.vessels import fov_mask, resize_to_width, vessel_map
from fire_reg.io.images import IMAGE_SUFFIXES, image_size, read_image
from fire_reg.io.fire import CATEGORIES, FIRE_WIDTH, read_control_points
from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_path, write_json, write_text

DEFAULT_SINGLE = {"S": 6, "P": 4, "A": 2}
DEFAULT_FOLDER = {"S": 2, "P": 2, "A": 1}
DEFAULT_SOURCE_NAME = "skimage.data.retina"
GEOMETRIES = ("sphere", "affine")
POINTS_PER_PAIR = 10
JPEG_QUALITY = 92
REFERENCE_WIDTH = 1411.0  # blur, lesion and deformation sizes (px) are drawn for this width
MIN_COVERAGE = 0.985  # share of the aperture that each view must fill with retina
POINT_MARGIN = 0.03  # control points keep this fraction of the width from any black border
MAX_TRIES = 1000
DENSE_STEP = 8  # px between the nodes of the dense ground-truth maps
MAP_STEP = 8  # px between the nodes where the sphere's source maps are evaluated exactly

# Geometry "affine": relative retina motion fixed -> moving: max |rotation| (deg), scale range,
# shift range (fraction of the frame width), allowed overlap range; camera zoom of both views.
MOTION = {
    "S": {"rotation": 5.0, "scale": (0.95, 1.05), "shift": (0.015, 0.05),
          "overlap": (0.78, 1.0), "zoom": (1.1, 1.3)},
    "P": {"rotation": 10.0, "scale": (0.9, 1.1), "shift": (0.15, 0.30),
          "overlap": (0.0, 0.72), "zoom": (1.25, 1.45)},
}
MOTION["A"] = MOTION["S"]
CAMERA_ROTATION = 8.0  # deg, max |rotation| of the common camera view
CAMERA_OFFSET = 0.02  # std of the view centre's offset from the aperture centre, x width
NONRIGID_AFFINE = (2.5, 5.0)  # px at REFERENCE_WIDTH, max of the A field (geometry "affine")

# Geometry "sphere" (see the module docstring; lengths in mm, angles in degrees).
EYE = {"retina_radius_mm": 12.0, "nodal_point_z_mm": 5.0, "rotation_centre_z_mm": -1.5,
       "half_field_deg": 22.5}
DISTORTION = -0.015  # kappa: u_d = u (1 + kappa (u^2 - 1)), u = field angle / 22.5 deg
SPHERE_MOTION = {  # relative eye turn, pupil following (lambda), overlap, field zoom Z
    "S": {"turn": (0.1, 1.05), "follow": (0.0, 0.1), "overlap": (0.78, 1.0), "zoom": (1.1, 1.3)},
    "P": {"turn": (6.5, 16.5), "follow": (0.5, 1.0), "overlap": (0.0, 0.72), "zoom": (1.3, 1.6)},
    "A": {"turn": (0.2, 1.7), "follow": (0.0, 0.1), "overlap": (0.78, 1.0), "zoom": (1.1, 1.3)},
}
GAZE_SD = 1.5  # deg per axis, base gaze of a pair on the source
ROLL_SD, ROLL_MAX = 1.0, 7.0  # deg, relative camera roll between the two photographs
ZOOM_SD, ZOOM_RANGE = 0.007, (0.98, 1.02)  # relative camera zoom (log std, limits)
NONRIGID_SPHERE = (6.0, 9.0)  # px at REFERENCE_WIDTH, max of the A field (geometry "sphere")

# What the FIRE README documents (median per category, 2912 px; used when the ground truth
# files are not at hand).
FIRE_DOCUMENTED = {
    "S": {"pairs": 71, "displacement": 29.0, "affine": 1.2, "homography": 1.1, "quadratic": 0.7},
    "P": {"pairs": 49, "displacement": 785.0, "affine": 13.0, "homography": 9.8,
          "quadratic": 1.5},
    "A": {"pairs": 14, "displacement": 44.0, "affine": 5.2, "homography": 4.6, "quadratic": 3.4},
}
FIRE_GROUND_TRUTH_ENV = "FIRE_REG_FIRE_GROUND_TRUTH"
STATISTIC_KEYS = ("displacement", "affine", "homography", "quadratic")


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
                      size=None, progress=True, select=("*",), geometry="sphere") -> dict:
    """Write a FIRE-layout set of pairs with known ground truth; returns the summary.

    ``images``: a folder of photographs (suffixes :data:`fire_reg.io.images.IMAGE_SUFFIXES`);
    default ``skimage.data.retina()``. ``categories``: pairs per category per source image
    (default ``{"S": 6, "P": 4, "A": 2}`` for the default image, ``{"S": 2, "P": 2, "A": 1}``
    for a folder); ``select``: glob patterns of the folder's file names to use (e.g. to keep
    validation retinas apart); ``pairs_per_image`` instead scales the default mix to that many pairs.
    ``size``: output width in px (aspect kept; default the source's). ``geometry``: "sphere"
    (curved retina, the default) or "affine" (the earlier generator: the same seed gives the
    same images and points as before the sphere model). IDs run per category across images
    (S01, S02 from the first image, S03 ... from the next). The summary is also written to
    ``out_dir/embedded.json``. Raises InputError for a missing or empty folder, an unreadable
    image, an unknown geometry, or a folder holding a set made with other settings.
    """
    out_dir = Path(out_dir)
    geometry_name = _check_geometry(geometry)
    paths = None if images is None else _image_paths(images, select)
    counts = _category_counts(categories, pairs_per_image,
                              DEFAULT_SINGLE if paths is None else DEFAULT_FOLDER)
    if size is not None and int(size) < 32:
        raise InputError("--size", f"must be at least 32 px, got {size}")
    _refuse_other_set(out_dir, seed, size, counts,
                      [DEFAULT_SOURCE_NAME] if paths is None else [p.name for p in paths],
                      geometry_name)
    n_sources = 1 if paths is None else len(paths)
    digits = 2 if max(counts.values()) * n_sources <= 99 else 3
    numbers = dict.fromkeys(CATEGORIES, 0)
    records, sources, points = [], [], {}
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
                        record, written = _make_pair(out_dir, source, pair_id, category, seed,
                                                     len(records), geometry_name)
                    except _TooFewVessels:
                        raise InputError(source.name, "too few vessels visible for control "
                                         "points (is this a fundus photograph?)") from None
                    records.append(record)
                    points[pair_id] = (category, written, FIRE_WIDTH / record["size"][0])
                    bar.update()
    summary = {
        "generator": "fire_reg.data.embedded", "geometry": geometry_name, "seed": seed, "size": size,
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
        "statistics": _summarise(points, "this set"),
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


def _refuse_other_set(out_dir: Path, seed, size, counts, names, geometry_name="affine") -> None:
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


def _load_source(path, index, size) -> _Source:
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
    inside = _shrink(aperture, 0.005 * image.shape[1])
    return _Source(name, index, image, aperture, inside,
                   (image.shape[1] / width, image.shape[0] / height), mask_file)


# ----------------------------------------------------------------------------- one pair

def _make_pair(out_dir: Path, source: _Source, pair_id: str, category: str, seed: int,
               pair_index: int, geometry_name: str = "sphere") -> tuple[dict, np.ndarray]:
    """Render, write and describe one pair; returns (record, the (10, 4) points written)."""
    rng = np.random.default_rng([seed, pair_index])
    height, width = source.aperture.shape
    unit = width / REFERENCE_WIDTH
    record = {"id": pair_id, "category": category, "source": source.name,
              "source_index": source.index, "seed": [seed, pair_index], "size": [width, height],
              "geometry": geometry_name}
    field = None
    if geometry_name == "affine":
        view = _sample_views(source, category, rng)
        if category == "A":
            field, record["nonrigid"] = _displacement_field(
                rng, (height, width), rng.uniform(*NONRIGID_AFFINE) * unit)
        fixed, fixed_valid = _render(source, view["fixed"])
        moving, moving_valid = _render(source, view["moving"], field)
        matrix = view["matrix"]
        to_original = (1.0 / source.scale[0], 1.0 / source.scale[1])
        record.update({"matrix": matrix.tolist(), "motion": view["motion"],
                       "camera": view["camera"], "overlap": view["overlap"],
                       "views": {k: geometry.rescale(view[k], 1.0, to_original).tolist()
                                 for k in ("fixed", "moving")}})
        rigid = lambda points: geometry.apply(matrix, points)  # noqa: E731
    else:
        view = _sample_sphere(source, category, rng)
        if category == "A":
            field, record["nonrigid"] = _displacement_field(
                rng, (height, width), rng.uniform(*NONRIGID_SPHERE) * unit)
        record.update({"model": view["model"], "motion": view["motion"],
                       "camera": view["camera"], "overlap": view["overlap"]})
        fixed, fixed_valid = _render_sphere(source, view["model"], "fixed")
        moving, moving_valid = _render_sphere(source, view["model"], "moving", field)
    record.setdefault("nonrigid", None)
    nodes = _dense_nodes(width, height)
    exact = exact_map(record, nodes.reshape(-1, 2))  # fixed nodes -> moving px, float64
    dense = exact.reshape(nodes.shape).astype(np.float32)
    if geometry_name == "sphere":  # for choosing points only: bilinear between the nodes
        rigid = lambda points: _interpolate(dense, points, DENSE_STEP)  # noqa: E731
    fixed, fixed_photo = _photometric(fixed, fixed_valid, rng, unit, strong=False)
    moving, moving_photo = _photometric(moving, moving_valid, rng, unit, strong=category == "A")
    fixed_points = _control_points(fixed, fixed_valid, moving_valid, rigid, rng)
    if geometry_name == "affine":  # as before the sphere model: the unrounded points mapped
        moving_points = rigid(fixed_points)
        if field is not None:
            moving_points = _undeform(moving_points, field)
    else:
        fixed_points = np.round(fixed_points, 2)
        moving_points = exact_map(record, fixed_points)

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
    common = _lookup(source.aperture, nodes) & _lookup(source.aperture, exact)
    if geometry_name == "sphere":
        matrix, residuals = geometry.fit_affine(nodes[common], exact[common])
        record["matrix"] = matrix.tolist()
        record["matrix_fit"] = {"over": "dense nodes in the common field of view",
                                "nodes": int(common.sum()),
                                "rms_px": float(np.sqrt(np.mean(residuals ** 2))),
                                "max_px": float(residuals.max())}
    record["inverse"] = geometry.invert(record["matrix"]).tolist()
    record["maps"] = "fixed_xy_to_moving_xy"
    record["transform"] = _quadratic_transform(nodes[common], exact[common])
    record.update({
        "aperture": {"mask": source.mask_file, "area_px": int(source.aperture.sum()),
                     "centroid_xy": _centroid(source.aperture).round(2).tolist()},
        "photometric": {"fixed": fixed_photo, "moving": moving_photo},
    })
    return record, written


def exact_map(record: dict, points) -> np.ndarray:
    """Exact ground truth of a pair: (N, 2) fixed px -> (N, 2) moving px (float64).

    ``record`` is one entry of ``embedded.json["pairs"]``: geometry "sphere" evaluates the
    model of the module docstring, "affine" (and records written before the sphere model,
    which have no "geometry") the exact matrix; category A then applies the non-rigid step
    (the q with ``q + d(q) = u``). The control points of a sphere pair are this map of its
    fixed points, to the 2 decimals written.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if record.get("geometry", "affine") == "sphere":
        mapped = _sphere_map(record["model"], points)
    else:
        mapped = geometry.apply(record["matrix"], points)
    nonrigid = record.get("nonrigid")
    if nonrigid:
        width, height = record["size"]
        field = _field_from_grid(np.asarray(nonrigid["grid"]), (height, width),
                                 nonrigid["max_displacement_px"])
        mapped = _undeform(mapped, field)
    return mapped


def dense_map(record: dict, step: int = DENSE_STEP) -> np.ndarray:
    """float32 ``(ceil((H - 1) / step) + 1, ceil((W - 1) / step) + 1, 2)``: ``[j, i]`` =
    :func:`exact_map` of the fixed pixel ``(step i, step j)``; the last nodes lie on or just
    beyond the image's last pixels (what ``Dense/<ID>_fixed_to_moving.npy`` holds)."""
    width, height = record["size"]
    nodes = _dense_nodes(width, height, step)
    return exact_map(record, nodes.reshape(-1, 2)).reshape(nodes.shape).astype(np.float32)


def _interpolate(dense, points, step: int = DENSE_STEP) -> np.ndarray:
    """Bilinear interpolation of a dense map (nodes every ``step`` px from 0, as
    :func:`dense_map`) at (N, 2) fixed px; linear extrapolation beyond the outer nodes."""
    grid = np.asarray(points, dtype=np.float64).reshape(-1, 2) / step
    corner = np.floor(grid).astype(int)
    corner[:, 0] = np.clip(corner[:, 0], 0, dense.shape[1] - 2)
    corner[:, 1] = np.clip(corner[:, 1], 0, dense.shape[0] - 2)
    tx, ty = (grid - corner).T[:, :, None]
    values = np.asarray(dense, dtype=np.float64)
    i, j = corner[:, 0], corner[:, 1]
    top = values[j, i] * (1 - tx) + values[j, i + 1] * tx
    bottom = values[j + 1, i] * (1 - tx) + values[j + 1, i + 1] * tx
    return top * (1 - ty) + bottom * ty


def _dense_nodes(width: int, height: int, step: int = DENSE_STEP) -> np.ndarray:
    """Nodes (x, y) = (step i, step j) up to the first multiple of step >= W - 1 (H - 1)."""
    xs = np.arange(-(-(width - 1) // step) + 1, dtype=np.float64) * step
    ys = np.arange(-(-(height - 1) // step) + 1, dtype=np.float64) * step
    return np.stack(np.meshgrid(xs, ys), axis=-1)


def _quadratic_transform(fixed, moving) -> dict:
    """Least-squares quadratic both ways (schema of docs/conventions.md, "Beyond affine")."""
    forward, forward_error = _fit_quadratic(fixed, moving)
    backward, backward_error = _fit_quadratic(moving, fixed)
    return {"model": "quadratic", "fixed_to_moving": forward.tolist(),
            "moving_to_fixed": backward.tolist(),
            "fit": "least squares over the dense nodes in the common field of view",
            "fit_rms_px": {"fixed_to_moving": forward_error, "moving_to_fixed": backward_error}}


def _quadratic_design(points) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _fit_quadratic(src, dst) -> tuple[np.ndarray, float]:
    """(2, 6) coefficients a, b with ``dst ~ [a . q, b . q]``, q = [1, x, y, x^2, xy, y^2];
    solved in coordinates scaled to ~1 for conditioning; returns (coefficients, rms px)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    scale = max(float(np.abs(src).max()), 1.0)
    design = _quadratic_design(src / scale)
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    rms = float(np.sqrt(np.mean(np.sum((design @ solution - dst) ** 2, axis=1))))
    factors = np.array([1.0, scale, scale, scale ** 2, scale ** 2, scale ** 2])
    return (solution / factors[:, None]).T, rms


# ----------------------------------------------------------------------- sphere model

def _rotation_3d(vector) -> np.ndarray:
    """Rotation matrix of a rotation vector (axis x angle, rad)."""
    return cv2.Rodrigues(np.asarray(vector, dtype=np.float64).reshape(3, 1))[0]


def _camera(centre, radius, zoom, roll, distortion, rotation, projection_centre) -> dict:
    return {"centre_xy": [float(v) for v in centre], "radius_px": float(radius),
            "zoom": float(zoom), "roll_deg": float(roll), "distortion": float(distortion),
            "eye_rotation": np.asarray(rotation, dtype=np.float64).tolist(),
            "projection_centre_mm": [float(v) for v in projection_centre]}


def _pixels_to_eye(points, camera: dict, eye: dict) -> np.ndarray:
    """(N, 2) pixels of a view -> (N, 3) retina points in the eye frame (mm)."""
    d = (points - np.asarray(camera["centre_xy"])) / (camera["radius_px"] * camera["zoom"])
    roll = np.deg2rad(camera["roll_deg"])
    cos, sin = np.cos(roll), np.sin(roll)
    dx, dy = cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1]
    distorted = np.hypot(dx, dy)
    kappa = camera["distortion"]
    u = distorted.copy()
    if kappa:
        for _ in range(8):  # Newton on kappa u^3 + (1 - kappa) u - u_d
            u -= (u * (1.0 + kappa * (u * u - 1.0)) - distorted) / (1.0 + kappa * (3 * u * u - 1))
    theta = u * np.deg2rad(eye["half_field_deg"])
    phi = np.arctan2(dy, dx)
    sin_theta = np.sin(theta)
    rays = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), -np.cos(theta)], axis=1)
    rotation = np.asarray(camera["eye_rotation"])
    pivot = np.array([0.0, 0.0, eye["rotation_centre_z_mm"]])
    start = pivot + rotation.T @ (np.asarray(camera["projection_centre_mm"]) - pivot)
    rays = rays @ rotation  # G^T w, row by row
    along = rays @ start
    reach = -along + np.sqrt(along ** 2 - start @ start + eye["retina_radius_mm"] ** 2)
    return start + reach[:, None] * rays


def _eye_to_pixels(retina, camera: dict, eye: dict) -> np.ndarray:
    """(N, 3) retina points (eye frame, mm) -> (N, 2) pixels of a view."""
    rotation = np.asarray(camera["eye_rotation"])
    pivot = np.array([0.0, 0.0, eye["rotation_centre_z_mm"]])
    rays = pivot + (retina - pivot) @ rotation.T - np.asarray(camera["projection_centre_mm"])
    theta = np.arctan2(np.hypot(rays[:, 0], rays[:, 1]), -rays[:, 2])
    phi = np.arctan2(rays[:, 1], rays[:, 0])
    u = theta / np.deg2rad(eye["half_field_deg"])
    distorted = u * (1.0 + camera["distortion"] * (u * u - 1.0))
    dx, dy = distorted * np.cos(phi), distorted * np.sin(phi)
    roll = np.deg2rad(camera["roll_deg"])
    cos, sin = np.cos(roll), np.sin(roll)
    scale = camera["radius_px"] * camera["zoom"]
    return np.asarray(camera["centre_xy"]) + scale * np.stack(
        [cos * dx - sin * dy, sin * dx + cos * dy], axis=1)


def _sphere_map(model: dict, points, frm: str = "fixed", to: str = "moving") -> np.ndarray:
    """``pi_to o pi_from^-1`` of (N, 2) pixels (views "fixed", "moving", "source")."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return _eye_to_pixels(_pixels_to_eye(points, model[frm], model["eye"]), model[to],
                          model["eye"])


def _aperture_geometry(aperture) -> tuple[np.ndarray, float]:
    """(centroid (x, y), radius = half the larger side of the bounding box), px."""
    ys, xs = np.nonzero(aperture)
    radius = 0.5 * max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    return _centroid(aperture), float(radius)


def _sample_sphere(source: _Source, category: str, rng) -> dict:
    """Draw a sphere model (docstring) meeting the category's overlap and coverage limits."""
    limits = SPHERE_MOTION[category]
    height, width = source.aperture.shape
    centre, radius = _aperture_geometry(source.aperture)
    stride = max(1, int(round(width / 100)))  # ~8000 probe pixels
    ys, xs = np.nonzero(source.aperture[::stride, ::stride])
    probe = np.stack([xs, ys], axis=1).astype(np.float64) * stride
    eye = dict(EYE)
    nodal = np.array([0.0, 0.0, eye["nodal_point_z_mm"]])
    pivot = np.array([0.0, 0.0, eye["rotation_centre_z_mm"]])
    for _ in range(MAX_TRIES):
        turn = rng.uniform(*limits["turn"])
        direction = rng.uniform(0.0, 2.0 * np.pi)
        follow = rng.uniform(*limits["follow"])
        field_zoom = rng.uniform(*limits["zoom"])
        gaze = rng.normal(0.0, GAZE_SD, 2)
        base_roll = rng.uniform(-1.0, 1.0) * CAMERA_ROTATION
        roll = float(np.clip(rng.normal(0.0, ROLL_SD), -ROLL_MAX, ROLL_MAX))
        zoom = float(np.clip(np.exp(rng.normal(0.0, ZOOM_SD)), *ZOOM_RANGE))
        omega = np.deg2rad(turn) * np.array([np.cos(direction), np.sin(direction), 0.0])
        base = _rotation_3d(np.deg2rad([gaze[0], gaze[1], 0.0]))
        poses = {"fixed": _rotation_3d(-omega / 2) @ base,
                 "moving": _rotation_3d(omega / 2) @ base}
        cameras = {}
        for which, sign in (("fixed", -1.0), ("moving", 1.0)):
            pose = poses[which]
            moved_nodal = pivot + pose @ (nodal - pivot)
            cameras[which] = _camera(centre, radius, zoom ** (sign / 2),
                                     base_roll + sign * roll / 2, DISTORTION, pose,
                                     nodal + follow * (moved_nodal - nodal))
        model = {"eye": eye, "source": _camera(centre, radius, 1.0 / field_zoom, 0.0, 0.0,
                                               np.eye(3), nodal), **cameras}
        fixed_retina = _pixels_to_eye(probe, model["fixed"], eye)
        overlap = float(_lookup(source.aperture,
                                _eye_to_pixels(fixed_retina, model["moving"], eye)).mean())
        if not limits["overlap"][0] < overlap < limits["overlap"][1]:
            continue
        fixed_source = _eye_to_pixels(fixed_retina, model["source"], eye)
        moving_source = _sphere_map(model, probe, "moving", "source")
        coverage = min(float(_lookup(source.inside, fixed_source).mean()),
                       float(_lookup(source.inside, moving_source).mean()))
        if coverage >= MIN_COVERAGE:
            return {"model": model, "overlap": round(overlap, 4),
                    "motion": {"turn_deg": float(turn),
                               "direction_deg": float(np.rad2deg(direction)),
                               "turn_vector_rad": omega.tolist(), "pupil_follow": float(follow),
                               "gaze_deg": gaze.tolist(), "roll_deg": roll, "zoom": zoom},
                    "camera": {"field_zoom": float(field_zoom), "roll_deg": float(base_roll),
                               "distortion": DISTORTION}}
    raise InputError(source.name, f"no {category} views within the limits after {MAX_TRIES} "
                                  "tries (camera aperture too small or odd?)")


def _source_map(model: dict, which: str, shape) -> np.ndarray:
    """(H, W, 2) float32 source px of every pixel of a view (``S_k``), exact on nodes every
    MAP_STEP px (at ``step i + step / 2 - 0.5``, one beyond each edge) and bilinear between
    them (``cv2.resize`` samples exactly there)."""
    height, width = shape
    step = MAP_STEP
    nx, ny = -(-width // step) + 2, -(-height // step) + 2
    xs = (np.arange(nx) - 1 + 0.5) * step - 0.5
    ys = (np.arange(ny) - 1 + 0.5) * step - 0.5
    nodes = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    coarse = _sphere_map(model, nodes, which, "source").reshape(ny, nx, 2).astype(np.float32)
    fine = cv2.resize(coarse, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(fine[step:step + height, step:step + width])


def _render_sphere(source: _Source, model: dict, which: str, field=None):
    """Sample the source through ``S_k`` (and ``moving(q) = view(q + field(q))``).

    Returns (BGR uint8 image, bool mask of pixels inside the aperture that show retina).
    """
    height, width = source.aperture.shape
    source_xy = _source_map(model, which, (height, width))
    if field is not None:
        grid = np.indices((height, width), dtype=np.float32)[::-1].transpose(1, 2, 0) + field
        source_xy = cv2.remap(source_xy, grid, None, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    return _sample_source(source, source_xy)


def _sample_source(source: _Source, source_xy) -> tuple[np.ndarray, np.ndarray]:
    """The source image at the source px of every output pixel ((H, W, 2) float32 map),
    black where that is outside the aperture or the source's own field of view; returns
    (BGR uint8 image, bool mask of the pixels that show retina)."""
    image = cv2.remap(source.image, source_xy, None, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.remap(source.inside, source_xy, None, cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT)
    valid = (inside > 0) & source.aperture
    return image * valid[..., None], valid


# ------------------------------------------------------------------------- statistics

def _pair_statistics(fixed, moving) -> np.ndarray:
    """[displacement, affine, homography, quadratic]: mean control-point distance (px)
    before registration and after the least-squares fit of each model to the pair's points
    (homography: ``cv2.findHomography`` method 0; quadratic: 12 parameters)."""
    fixed = np.asarray(fixed, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    displacement = np.linalg.norm(fixed - moving, axis=1).mean()
    _, affine = geometry.fit_affine(fixed, moving)
    homography, _ = cv2.findHomography(fixed, moving, 0)
    if homography is None:
        projective = np.nan
    else:
        mapped = cv2.perspectiveTransform(fixed[None], homography)[0]
        projective = np.linalg.norm(mapped - moving, axis=1).mean()
    coefficients, _ = _fit_quadratic(fixed, moving)
    quadratic = np.linalg.norm(_quadratic_design(fixed) @ coefficients.T - moving, axis=1).mean()
    return np.array([displacement, affine.mean(), projective, quadratic])


def _summarise(points: dict, label: str) -> dict:
    """Medians per category of :func:`_pair_statistics` in FIRE-equivalent px.

    ``points``: {pair ID: (category, (N, 4) points x1 y1 x2 y2, factor to FIRE px)}.
    """
    per_pair = {pair_id: (category, _pair_statistics(rows[:, :2], rows[:, 2:]) * factor)
                for pair_id, (category, rows, factor) in points.items()}
    categories = {}
    for category in CATEGORIES:
        values = np.array([v for c, v in per_pair.values() if c == category])
        if len(values):
            medians = np.nanmedian(values, axis=0)
            categories[category] = {"pairs": len(values), **{
                key: round(float(value), 3) for key, value in zip(STATISTIC_KEYS, medians)}}
    return {"label": label, "units": "FIRE-equivalent px (px x 2912 / image width)",
            "statistic": "median over the category of each pair's mean control-point distance: "
                         "before registration (displacement) and after the least-squares "
                         "affine, homography (cv2.findHomography, method 0) and 12-parameter "
                         "quadratic fitted to the pair's own points",
            "categories": categories}


def set_statistics(fire_dir) -> dict:
    """Statistics (:func:`_summarise`) of a FIRE-layout folder's control points, in
    FIRE-equivalent px (the width of each pair's fixed image from its file header)."""
    from fire_reg.io.fire import FireDataset

    dataset = FireDataset(fire_dir)
    points = {}
    for pair in dataset:
        fixed, moving = pair.control_points()
        points[pair.id] = (pair.category, np.hstack([fixed, moving]), pair.scale_to_fire())
    return _summarise(points, str(fire_dir))


def _default_ground_truth() -> Path:
    """``$FIRE_REG_FIRE_GROUND_TRUTH``, else ``../shared/data/fire_ground_truth`` beside the
    repository (where the project keeps FIRE's control points; read by path only)."""
    if os.environ.get(FIRE_GROUND_TRUTH_ENV):
        return Path(os.environ[FIRE_GROUND_TRUTH_ENV])
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "fire_ground_truth"


def fire_statistics(ground_truth_dir=None) -> dict:
    """The same statistics for the real FIRE, from its control-point files.

    ``ground_truth_dir`` holds ``control_points_<ID>_1_2.txt`` (2912 px), directly or in
    ``Ground Truth/``; default :func:`_default_ground_truth`. When the default is absent the
    values documented in the FIRE README are returned, labelled so; a given folder that is
    missing or holds no such files raises InputError.
    """
    folder = _default_ground_truth() if ground_truth_dir is None else Path(ground_truth_dir)
    files = []
    for candidate in (folder, folder / "Ground Truth"):
        if candidate.is_dir():
            files = sorted(candidate.glob("control_points_*_1_2.txt"))
            if files:
                break
    if not files:
        if ground_truth_dir is not None:
            raise InputError(folder, "no FIRE control-point files control_points_<ID>_1_2.txt")
        return {"label": "FIRE (documented values)",
                "units": "FIRE px (2912 px images)", "categories": {
                    c: dict(v) for c, v in FIRE_DOCUMENTED.items()}}
    points = {}
    for path in files:
        pair_id = path.name[len("control_points_"):-len("_1_2.txt")]
        if pair_id[:1] in CATEGORIES:
            fixed, moving = read_control_points(path)
            points[pair_id] = (pair_id[0], np.hstack([fixed, moving]), 1.0)
    summary = _summarise(points, f"FIRE ({len(points)} pairs, ground truth)")
    summary["units"] = "FIRE px (2912 px images)"
    return summary


def format_statistics(ours: dict, fire: dict | None = None) -> str:
    """A small text table of two statistics dicts side by side (default: this set beside
    :func:`fire_statistics`), one line per category and source."""
    fire = fire_statistics() if fire is None else fire
    width = max(len(stats["label"]) for stats in (ours, fire)) + 2
    lines = ["median per category of the mean control-point distance, FIRE-equivalent px: "
             "before registration, after the best fit of each model to the pair's points",
             f"{'':4}{'':{width}}{'pairs':>6}" + "".join(f"{k:>14}" for k in STATISTIC_KEYS)]
    for category in CATEGORIES:
        for stats in (ours, fire):
            values = stats["categories"].get(category)
            if values is not None:
                lines.append(f"{category:4}{stats['label']:{width}}{values['pairs']:>6}"
                             + "".join(f"{values[k]:>14.2f}" for k in STATISTIC_KEYS))
    return "\n".join(lines)


# -------------------------------------------------------------------- affine geometry

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
    if field is not None:
        grid = np.indices((height, width), dtype=np.float32)[::-1].transpose(1, 2, 0)
        return _sample_source(source, cv2.transform(grid + field, view))  # q -> T (q + d(q))
    image = geometry.resample(source.image, view, (width, height))
    inside = geometry.resample(source.inside, view, (width, height))
    valid = (inside > 0) & source.aperture
    return image * valid[..., None], valid


def _displacement_field(rng, shape, amplitude) -> tuple[np.ndarray, dict]:
    """Smooth random displacement field (H, W, 2) float32 in px, max length ``amplitude``.

    A 4x4 grid of random vectors, upsampled bicubically to 1/8 of the frame and then
    bilinearly to the frame: low-frequency, gradient ~ 1%.
    """
    coarse = rng.standard_normal((4, 4, 2))
    return _field_from_grid(coarse, shape, amplitude), {
        "model": "moving(q) = view(q + d(q)); d: 4x4 grid, bicubic to 1/8 size, "
                 "bilinear to full size, scaled to max_displacement_px",
        "max_displacement_px": float(amplitude), "grid": coarse.tolist()}


def _field_from_grid(coarse, shape, amplitude) -> np.ndarray:
    """The (H, W, 2) float32 field of :func:`_displacement_field` from its 4x4 grid."""
    height, width = shape
    field = cv2.resize(np.asarray(coarse).astype(np.float32),
                       (max(4, width // 8), max(4, height // 8)), interpolation=cv2.INTER_CUBIC)
    field *= amplitude / max(float(np.hypot(field[..., 0], field[..., 1]).max()), 1e-9)
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)


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


def _control_points(fixed, fixed_valid, moving_valid, mapping, rng) -> np.ndarray:
    """POINTS_PER_PAIR fixed points (N, 2) on vessels, inside both views, spread out.

    Candidates: the strongest 10% of :func:`fire_reg.imaging.vessels.vessel_map` of the fixed image
    among pixels at least POINT_MARGIN x width inside both views' retina (moving side through
    ``mapping``, (N, 2) fixed px -> moving px); then farthest-point sampling from a random start.
    """
    margin = POINT_MARGIN * fixed.shape[1]
    fixed_ok, moving_ok = _shrink(fixed_valid, margin), _shrink(moving_valid, margin)
    vessels, _, scale = vessel_map(fixed, fixed_valid)
    ys, xs = np.nonzero(vessels > 0)
    points = (np.stack([xs, ys], axis=1) + 0.5) / np.asarray(scale) - 0.5
    keep = _lookup(fixed_ok, points) & _lookup(moving_ok, mapping(points))
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
