"""How an embedded set's geometry compares with the real FIRE's: statistics of a set's
control points, FIRE's own, and a text table of both.

Per category, the median over pairs of the mean control-point distance before registration
(displacement) and after the least-squares affine / homography / 12-parameter quadratic
fitted to the pair's own ten points, in FIRE-equivalent px (px x 2912 / width of the pair's
fixed image). Points are ``(x, y)`` px, fixed then moving; maps go fixed px -> moving px.

Calibration of :mod:`fire_reg.data.sphere`: turn ranges were set for FIRE's displacements,
``lambda`` and ``kappa`` for its affine and homography residuals (S, P), the non-rigid
amplitude for A's residual. Results (displacement / affine / homography / quadratic):

    set (pairs S/P/A)              S                    P                   A
    real FIRE (71/49/14)           29.2/1.21/1.06/0.68  785/13.2/9.9/1.49   44.3/5.27/4.70/3.44
    skimage, 1411 px (60/40/30)    28.1/1.01/0.69/0.01  754/12.8/10.2/0.08  50.7/5.13/4.91/3.62
    DRIVE x40, 565 px (120/80/80)  29.1/0.97/0.66/0.01  745/11.8/10.0/0.07  40.7/5.02/4.56/3.34
    default set, seed 0 (6/4/2)    35.1/1.40/0.95/0.01  722/13.6/10.7/0.11  42.6/5.65/5.37/4.40

(DRIVE x40: all 40 DRIVE photographs; the large samples used seed 31.) Displacements and
affine residuals agree within 20 %
(S's affine residual is ~17 % low: FIRE's points carry about 1 px of annotation noise, which
also makes its S quadratic residual 0.7 px; exact points leave almost none).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from fire_reg import geometry
from fire_reg.data.fire import CATEGORIES, FireDataset, read_control_points
from fire_reg.data.ground_truth import fit_quadratic
from fire_reg.geometry.transforms import quadratic_terms
from fire_reg.io.errors import InputError

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


def pair_statistics(fixed, moving) -> np.ndarray:
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
    coefficients, _ = fit_quadratic(fixed, moving)
    quadratic = np.linalg.norm(quadratic_terms(fixed) @ coefficients.T - moving, axis=1).mean()
    return np.array([displacement, affine.mean(), projective, quadratic])


def summarise(points: dict, label: str) -> dict:
    """Medians per category of :func:`pair_statistics` in FIRE-equivalent px.

    ``points``: {pair ID: (category, (N, 4) points x1 y1 x2 y2, factor to FIRE px)}.
    """
    per_pair = {pair_id: (category, pair_statistics(rows[:, :2], rows[:, 2:]) * factor)
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
    """Statistics (:func:`summarise`) of a FIRE-layout folder's control points, in
    FIRE-equivalent px (the width of each pair's fixed image from its file header)."""
    dataset = FireDataset(fire_dir)
    points = {}
    for pair in dataset:
        fixed, moving = pair.control_points()
        points[pair.id] = (pair.category, np.hstack([fixed, moving]), pair.scale_to_fire())
    return summarise(points, str(fire_dir))


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
    summary = summarise(points, f"FIRE ({len(points)} pairs, ground truth)")
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
