"""Multi-field sets: several photographs (fields) of one retina at ETDRS-like gaze positions,
with exact correspondences between every overlapping pair, for montages (``fire-reg mosaic``).

Units and conventions: pixels ``(x, y)``, x right, y down, (0, 0) the centre of the top-left
pixel; angles in degrees; maps go field a px -> field b px.

Geometry: the curved eye of :mod:`fire_reg.data.sphere`. One source photograph is the
retina, seen as view "source" with field zoom :data:`FIELD_ZOOM` (a field shows a 45 deg part
of the source's ``FIELD_ZOOM`` x 45 deg). Field 1 looks straight ahead (gaze 0); fields 2..n
lie on a ring around it (ETDRS-like: a centre field and fields around it), at gaze
``r (cos a_k, sin a_k)`` with ``a_k`` evenly spaced from a random start and ``r`` drawn from
:data:`RING_DEG` per set. The eye turns about its centre of rotation to that gaze (rotation
vector ``(gy, -gx, 0)`` deg: a gaze to the right moves the view right on the retina) and the
operator re-aligns the camera on the pupil (pupil following 1), as one does for a new
fixation; each field has its own camera roll N(0, :data:`ROLL_SD`) and zoom
exp N(0, 0.007) within 0.98-1.02, distortion ``kappa`` as the pairs, and a mild photometric
change (:mod:`fire_reg.data.photometric`: exposure, colour, vignetting, noise). The exact map
between fields a and b is ``pi_b o pi_a^-1`` (:func:`field_map`).

Layout of a set (``out_dir``; with a folder of sources, one such set per source in
``out_dir/<stem>/``): ``Images/field_<k>.jpg`` (JPEG quality 92, k = 1..n), ``Masks/mask.png``
(the aperture, 255 inside) and ``fields.json``: the eye, the cameras of every field
(``"model"``, readable by :func:`fire_reg.data.sphere.sphere_map` with view names
``field_<k>``), each field's gaze, roll, zoom and photometric change, and ``"pairs"``: every
pair (a < b) whose overlap (share of field a's aperture probes whose image lies in field b's
aperture) is at least :data:`MIN_PAIR_OVERLAP`, with that overlap and up to
:data:`POINTS_PER_PAIR` exact correspondences ``[x_a, y_a, x_b, y_b]`` (field px, 4 decimals)
on a grid over the common retina at least 3 % of the width inside both views.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from fire_reg.data.embedded import REFERENCE_WIDTH, _image_paths, _write_image
from fire_reg.data.photometric import photometric_change
from fire_reg.data.sources import MIN_COVERAGE, lookup, load_source, shrink
from fire_reg.data.sphere import (DISTORTION, EYE, ZOOM_RANGE, ZOOM_SD, _aperture_geometry,
                                  _camera, render_sphere, sphere_map)
from fire_reg.io.errors import InputError
from fire_reg.io.output import write_json

FIELD_ZOOM = 1.6  # the source spans FIELD_ZOOM x 45 deg; each field 45 deg of it
RING_DEG = (11.0, 14.0)  # eye turn of the ring fields from the centre field, deg
ROLL_SD = 3.0  # deg, camera roll of each field
FIELD_COUNT = (5, 9)  # fields per set, least and most
MIN_PAIR_OVERLAP = 0.05  # pairs overlapping less are not listed
POINTS_PER_PAIR = 64
POINT_MARGIN = 0.03  # correspondences keep this fraction of the width from any black border


def field_name(index: int) -> str:
    """View name of field ``index`` (1-based) in ``fields.json["model"]``."""
    return f"field_{index}"


def field_map(summary: dict, points, frm: int, to: int) -> np.ndarray:
    """Exact map of (N, 2) px of field ``frm`` to px of field ``to`` (1-based indices) of a
    set's ``fields.json`` summary (float64)."""
    return sphere_map(summary["model"], points, field_name(frm), field_name(to))


def make_field_set(out_dir, images=None, select=("*",), fields: int = 7, seed: int = 0,
                   size=None) -> list[dict]:
    """Write one multi-field set per source photograph (default ``skimage.data.retina()``;
    ``images``: a folder, ``select``: globs of its file names); returns the summaries.

    ``fields``: fields per set (5-9), ``size``: output width in px (default the source's).
    Set k draws from ``numpy.random.default_rng([seed, k])``. InputError for a bad count or
    size, a missing or empty folder, an unreadable image, or a photograph whose aperture
    cannot hold the fields.
    """
    fields = int(fields)
    if not FIELD_COUNT[0] <= fields <= FIELD_COUNT[1]:
        raise InputError("--fields", f"must be {FIELD_COUNT[0]} to {FIELD_COUNT[1]}, got {fields}")
    if size is not None and int(size) < 64:
        raise InputError("--size", f"must be at least 64 px, got {size}")
    paths = None if images is None else _image_paths(images, select)
    out_dir = Path(out_dir)
    summaries = []
    for index, path in enumerate([None] if paths is None else paths):
        target = out_dir if paths is None else out_dir / path.stem
        summaries.append(_make_set(target, load_source(path, index, size), fields,
                                   np.random.default_rng([seed, index]), [seed, index], size))
    return summaries


def _ring(fields: int, rng) -> list[np.ndarray]:
    """Gaze (x, y) deg of every field: the centre, then a ring."""
    radius, start = rng.uniform(*RING_DEG), rng.uniform(0.0, 2.0 * np.pi)
    angles = start + 2.0 * np.pi * np.arange(fields - 1) / (fields - 1)
    return [np.zeros(2)] + [radius * np.array([np.cos(a), np.sin(a)]) for a in angles]


def _make_set(out_dir: Path, source, fields: int, rng, seed, size) -> dict:
    height, width = source.aperture.shape
    centre, radius = _aperture_geometry(source.aperture)
    eye = dict(EYE)
    nodal = np.array([0.0, 0.0, eye["nodal_point_z_mm"]])
    pivot = np.array([0.0, 0.0, eye["rotation_centre_z_mm"]])
    model = {"eye": eye, "source": _camera(centre, radius, 1.0 / FIELD_ZOOM, 0.0, 0.0,
                                           np.eye(3), nodal)}
    records = []
    for index, gaze in enumerate(_ring(fields, rng), start=1):
        pose = cv2.Rodrigues(np.deg2rad([gaze[1], -gaze[0], 0.0]).reshape(3, 1))[0]
        roll = float(rng.normal(0.0, ROLL_SD))
        zoom = float(np.clip(np.exp(rng.normal(0.0, ZOOM_SD)), *ZOOM_RANGE))
        model[field_name(index)] = _camera(centre, radius, zoom, roll, DISTORTION, pose,
                                           pivot + pose @ (nodal - pivot))
        records.append({"name": field_name(index), "image": f"Images/{field_name(index)}.jpg",
                        "gaze_deg": gaze.round(4).tolist(), "roll_deg": roll, "zoom": zoom})
    valid = {}
    for record in records:
        image, inside = render_sphere(source, model, record["name"])
        if inside.sum() < MIN_COVERAGE * source.aperture.sum():
            raise InputError(source.name, "the photograph's field of view is too small for "
                                          "the montage's fields")
        image, record["photometric"] = photometric_change(image, inside, rng,
                                                          width / REFERENCE_WIDTH, strong=False)
        valid[record["name"]] = inside
        _write_image(out_dir / record["image"], image)
    _write_image(out_dir / "Masks" / "mask.png", source.aperture)
    summary = {"generator": "fire_reg.data.fields", "seed": seed, "size": size,
               "source": source.name,
               "image_size": [width, height], "field_zoom": FIELD_ZOOM,
               "convention": "x right, y down, (0, 0) = centre of the top-left pixel; "
                             "points [x_a, y_a, x_b, y_b] in px of fields a and b; exact map: "
                             "fire_reg.data.fields.field_map(summary, points, a, b)",
               "model": model, "fields": records,
               "pairs": _pairs(model, valid, fields, width)}
    write_json(out_dir / "fields.json", summary)
    return summary


def _pairs(model: dict, valid: dict, count: int, width: int) -> list[dict]:
    """Every pair (a < b) overlapping at least MIN_PAIR_OVERLAP, with exact points."""
    margin = POINT_MARGIN * width
    inner = {name: shrink(mask, margin) for name, mask in valid.items()}
    step = max(4, width // 25)
    pairs = []
    for a in range(1, count + 1):
        mask_a = valid[field_name(a)]
        ys, xs = np.nonzero(mask_a[::step, ::step])
        grid = np.stack([xs, ys], axis=1).astype(np.float64) * step
        for b in range(a + 1, count + 1):
            mapped = sphere_map(model, grid, field_name(a), field_name(b))
            overlap = float(lookup(valid[field_name(b)], mapped).mean())
            if overlap < MIN_PAIR_OVERLAP:
                continue
            keep = lookup(inner[field_name(a)], grid) & lookup(inner[field_name(b)], mapped)
            chosen = np.flatnonzero(keep)
            if len(chosen) > POINTS_PER_PAIR:
                chosen = chosen[np.linspace(0, len(chosen) - 1, POINTS_PER_PAIR).astype(int)]
            points = np.hstack([grid[chosen], mapped[chosen]]).round(4)
            pairs.append({"fields": [a, b], "overlap": round(overlap, 4),
                          "points": points.tolist()})
    return pairs


def load_field_set(folder) -> dict:
    """A set's ``fields.json`` summary; InputError when it is missing or not JSON."""
    path = Path(folder) / "fields.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "not found (not a multi-field set?)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(path, f"not readable JSON ({error})") from None
