"""Geometry "sphere" of the embedded sets (the default): a curved retina seen through the
eye's nodal point.

Units and conventions: pixels ``(x, y)``, x right, y down, (0, 0) the centre of the top-left
pixel; maps go fixed px -> moving px (``T``) and output px -> source px (``S_k``); lengths in
mm, angles in degrees (rotation vectors in radians).

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
  is exact; :func:`sphere_map`), composed with the non-rigid step for category A
  (:mod:`fire_reg.data.nonrigid`). :func:`fire_reg.data.ground_truth.exact_map` evaluates it
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
and the non-rigid field (max 6-9 px at 1411 px width, :data:`NONRIGID_SPHERE`). All: base
gaze N(0, 1.5 deg) per axis, camera roll +-8 deg common and N(0, 1 deg) relative
(|.| <= 7 deg), relative zoom exp N(0, 0.007) within 0.98-1.02, field zoom Z 1.1-1.3 (S, A)
or 1.3-1.6 (P) so that both views stay inside the source's field of view (checked, as the
overlap, on ~8000 aperture pixels), distortion kappa = -0.015. How these ranges were
calibrated against FIRE: :mod:`fire_reg.data.statistics`.
"""
from __future__ import annotations

import cv2
import numpy as np

from fire_reg.data.sources import (CAMERA_ROTATION, MAX_TRIES, MIN_COVERAGE, Source, centroid,
                                   lookup, sample_source)
from fire_reg.io.errors import InputError

MAP_STEP = 8  # px between the nodes where the source maps are evaluated exactly
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
NONRIGID_SPHERE = (6.0, 9.0)  # px at a 1411 px wide frame, max of the A field


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


def sphere_map(model: dict, points, frm: str = "fixed", to: str = "moving") -> np.ndarray:
    """``pi_to o pi_from^-1`` of (N, 2) pixels (views "fixed", "moving", "source")."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return _eye_to_pixels(_pixels_to_eye(points, model[frm], model["eye"]), model[to],
                          model["eye"])


def _aperture_geometry(aperture) -> tuple[np.ndarray, float]:
    """(centroid (x, y), radius = half the larger side of the bounding box), px."""
    ys, xs = np.nonzero(aperture)
    radius = 0.5 * max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    return centroid(aperture), float(radius)


def sample_sphere(source: Source, category: str, rng) -> dict:
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
        overlap = float(lookup(source.aperture,
                               _eye_to_pixels(fixed_retina, model["moving"], eye)).mean())
        if not limits["overlap"][0] < overlap < limits["overlap"][1]:
            continue
        fixed_source = _eye_to_pixels(fixed_retina, model["source"], eye)
        moving_source = sphere_map(model, probe, "moving", "source")
        coverage = min(float(lookup(source.inside, fixed_source).mean()),
                       float(lookup(source.inside, moving_source).mean()))
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
    coarse = sphere_map(model, nodes, which, "source").reshape(ny, nx, 2).astype(np.float32)
    fine = cv2.resize(coarse, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(fine[step:step + height, step:step + width])


def render_sphere(source: Source, model: dict, which: str, field=None):
    """Sample the source through ``S_k`` (and ``moving(q) = view(q + field(q))``).

    Returns (BGR uint8 image, bool mask of pixels inside the aperture that show retina).
    """
    height, width = source.aperture.shape
    source_xy = _source_map(model, which, (height, width))
    if field is not None:
        grid = np.indices((height, width), dtype=np.float32)[::-1].transpose(1, 2, 0) + field
        source_xy = cv2.remap(source_xy, grid, None, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    return sample_source(source, source_xy)
