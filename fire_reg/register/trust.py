"""Trust: how far a registration is likely off, and a status built on evidence.

The evidence is independent of what the optimisers maximised: a fresh set of local tile
matches (:func:`fire_reg.register.fine.match_tiles`, normalised correlation of vessel-map tiles in a
search window around where the transform puts them) between the fixed map and the moving map
warped by the final transform. A robust fit through those matches (the richest registered
model they support, :func:`fire_reg.geometry.transforms.model_names`: the quadratic) says
where the retina really is; its distance from the transform over the common field of view,
combined with the held-out (k-fold) residual of the matches, is ``estimated_error_px`` (px of
the fixed image given to the Registrar, as is every length in the verdict's checks; the reason
states it with its FIRE-equivalent figure, :func:`fire_reg.register.result.error_phrase`).
Consensus (the share of tiles that agree) tells a real pair from an unrelated one. Plausibility checks on the transform (scale, reflection, anisotropy, shear,
fold-over and bend of a flexible model such as the quadratic, :meth:`Transform.plausibility`)
and the overlap of the two fields of view complete the verdict:

* ``failed``: a reflection, an impossible scale, almost no overlap, or hardly any tile
  agreeing (fewer than half of ``min_consensus``: probably not the same retina);
* ``suspect``: too little consensus or evidence, an estimated error above ``max_error_fire_px``
  (FIRE-equivalent px: px x 2912 / fixed width), or any other check failed, with every reason;
* ``ok`` otherwise.

The thresholds are :class:`TrustOptions` fields, calibrated on the benchmark sets (README).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fire_reg.config import Config
from fire_reg.register.fine import (FineOptions, fit_trimmed, heldout_residual, match_tiles,
                                   vessel_tiles)
from fire_reg.register.maps import VesselMaps
from fire_reg.register.result import error_phrase
from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.data.fire import FIRE_WIDTH


@dataclass(frozen=True)
class TrustOptions(Config):
    """Thresholds of :func:`judge`; lengths in px of a 512 px wide working map unless named.
    Checked on construction (FieldError naming the field).

    ``radius``: search radius of the evidence matches; ``consensus_px``: a match agrees
    when within this distance of the robust fit; ``min_consensus`` / ``min_consensus_share``:
    agreeing matches needed (count, share of all matches); ``max_error_fire_px``: largest
    estimated error still "ok"; ``scale_range``: plausible sqrt(|det|) of the best affine
    between working maps (both images at the same width); ``max_anisotropy``: largest ratio
    of the two axis scales; ``max_shear``; ``min_overlap``: share of the fixed field of view
    below which a result fails; ``fine``: the tile matching of the evidence (tiles every 24
    px: fewer than the fine stage's, enough for a verdict).
    """

    radius: int = 8
    consensus_px: float = 1.5
    min_consensus: int = 12
    min_consensus_share: float = 0.35
    max_error_fire_px: float = 25.0
    scale_range: tuple[float, float] = (0.67, 1.5)
    max_anisotropy: float = 1.25
    max_shear: float = 0.15
    min_overlap: float = 0.05
    fine: FineOptions = field(default_factory=lambda: FineOptions(step=24))

    def __post_init__(self):
        self._integer("radius", low=1)
        self._number("consensus_px", above=0)
        self._integer("min_consensus", low=1)
        self._number("min_consensus_share", low=0, high=1)
        self._number("max_error_fire_px", above=0)
        self._range("scale_range", above=0)
        self._number("max_anisotropy", low=1)
        self._number("max_shear", low=0)
        self._number("min_overlap", low=0, high=1)
        self._nested("fine", FineOptions)


@dataclass
class Verdict:
    """Status, reasons, estimated error (fixed-image px), overlap and the checks made."""

    status: str
    reason: str
    estimated_error_px: float | None
    overlap: float
    checks: dict


def shape_checks(matrix, options: TrustOptions) -> dict:
    """Plausibility of a 2x3 affine between working maps: {name: {"value", "ok"}}."""
    linear = np.asarray(matrix, dtype=np.float64)[:, :2]
    det = float(np.linalg.det(linear))
    scale = float(np.sqrt(abs(det)))
    checks = {"reflection": {"value": det, "ok": det > 0},
              "scale": {"value": scale,
                        "ok": options.scale_range[0] <= scale <= options.scale_range[1]}}
    if det > 0:
        params = geometry.params_from_matrix(matrix)
        ratio = max(params.sx / params.sy, params.sy / params.sx)
        checks["anisotropy"] = {"value": float(ratio), "ok": bool(ratio <= options.max_anisotropy)}
        checks["shear"] = {"value": float(params.shear),
                           "ok": bool(abs(params.shear) <= options.max_shear)}
    return checks


def groundwork(maps: VesselMaps, options: TrustOptions) -> None:
    """Make now what :func:`evidence` derives from the fixed map alone (its tiles), so that it
    can be made while other work runs (the network)."""
    vessel_tiles(maps, options.radius, options.fine)


def evidence(maps: VesselMaps, transform: transforms.Transform,
             options: TrustOptions) -> dict:
    """Fresh tile matches around ``transform`` (map px) and what they say: ``matches``,
    ``consensus`` (count agreeing with a robust fit of the richest registered model the
    matches support; a local model only for a result of that model), ``share``,
    ``departure_px`` (RMS distance between that fit and
    ``transform`` over the common field of view) and ``heldout_px`` (k-fold residual), all in
    map px; None entries when too few matches."""
    unit = maps.width / options.fine.reference_width
    matches = match_tiles(maps, transform, options.radius, options.fine)
    found = {"matches": len(matches), "consensus": 0, "share": 0.0, "departure_px": None,
             "heldout_px": None}
    if len(matches) < options.min_consensus:
        return found
    domain = maps.common_points(transform)
    for model in transforms.model_names()[::-1]:  # the richest registered model first
        if transforms.model_class(model).local and model != transform.model:
            continue  # a local model judges only its own kind (it would follow noise)
        fitted, inliers = fit_trimmed(model, matches, domain, options.fine, unit)
        if fitted is not None:
            break
    if fitted is None:
        return found
    residuals = np.linalg.norm(fitted.fixed_to_moving(matches.fixed) - matches.moving, axis=1)
    agreeing = residuals <= options.consensus_px * unit
    found.update(consensus=int(agreeing.sum()), share=float(agreeing.mean()))
    if len(domain):
        distance = np.linalg.norm(fitted.fixed_to_moving(domain)
                                  - transform.fixed_to_moving(domain), axis=1)
        found["departure_px"] = float(np.sqrt(np.mean(distance ** 2)))
    found["heldout_px"] = heldout_residual(model, inliers, options.fine.folds)
    return found


def judge(maps: VesselMaps, transform: transforms.Transform, fixed_size,
          options: TrustOptions = TrustOptions()) -> Verdict:
    """The verdict on ``transform`` (working-map px, fixed -> moving) of a pair whose fixed
    image is ``fixed_size`` (W, H) px; its estimated error, the lengths in its checks (keys
    ending in ``_px``) and the figures in its reason are in px of that image."""
    domain = maps.common_points(transform)
    matrix = transform.best_affine(domain if len(domain) >= 3 else
                                   geometry.grid_points(maps.fixed_size))
    checks = shape_checks(matrix, options)
    if transform.flexible:  # a model that can fold over or bend (the quadratic)
        problem = transform.plausibility(domain, maps.width, options.fine.max_bend)
        checks[transform.model] = {"value": problem or "monotonic, no fold-over",
                                   "ok": problem is None}
    overlap = maps.overlap(transform)
    checks["overlap"] = {"value": overlap, "ok": overlap >= options.min_overlap}
    found = evidence(maps, transform, options) if overlap >= options.min_overlap else {}
    to_image = fixed_size[0] / maps.width  # map px -> fixed-image px
    lengths = {key: None if found.get(key) is None else found[key] * to_image
               for key in ("departure_px", "heldout_px")}
    estimate = None
    if found.get("departure_px") is not None:
        noise = found["heldout_px"] or 0.0
        estimate = float(np.hypot(found["departure_px"], noise)) * to_image
    checks["evidence"] = {"value": {key: found[key] for key in ("matches", "consensus", "share")
                                    if key in found}, "ok": bool(
        found and found["consensus"] >= options.min_consensus
        and found["share"] >= options.min_consensus_share)}
    max_error = options.max_error_fire_px * fixed_size[0] / FIRE_WIDTH  # fixed-image px
    checks["estimated_error"] = {
        "value": {"estimated_px": estimate, "limit_px": max_error, **lengths},
        "ok": bool(estimate is not None and estimate <= max_error)}
    problems = [f"{name} {_describe(check['value'])}" for name, check in checks.items()
                if not check["ok"] and name != "estimated_error"]
    statement = None if estimate is None else error_phrase(estimate, fixed_size[0])
    if estimate is None:
        problems.append("no estimate of the error (too few tile matches)")
    elif estimate > max_error:
        problems.append(f"{statement} is over {options.max_error_fire_px:g} FIRE-equivalent px")
    fatal = [name for name in ("reflection", "scale", "overlap") if not checks[name]["ok"]]
    if found.get("consensus", 0) < options.min_consensus / 2:
        fatal.append("evidence")  # nothing agrees: probably not the same retina
    status = "failed" if fatal else ("suspect" if problems else "ok")
    if status == "ok":
        reason = f"checks passed, {statement}"
    else:  # every problem, then the estimate when it is not one of them
        within = estimate is not None and estimate <= max_error
        reason = "; ".join(problems + ([statement] if within else []))
    return Verdict(status, reason, estimate, overlap, checks)


def _describe(value) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_describe(v)}" for k, v in value.items()) + ")"
    if isinstance(value, float):
        return f"{value:.3g}"
    return "none" if value is None else str(value)
