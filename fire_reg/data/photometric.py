"""Photometric change of a rendered view: exposure, colour balance, illumination, focus,
lesion-like blotches and sensor noise.

Images are BGR uint8 (OpenCV order); intensities are handled in [0, 1]; lengths are px of
the output frame (``unit`` = frame width / 1411 px scales blur and lesion sizes); points are
``(x, y)``, (0, 0) the centre of the top-left pixel. Every view gets its own change and noise:
mild, or strong for the moving view of category A (gamma, contrast, colour balance,
vignetting, blur, lesion-like blotches). Pixels outside the view's valid mask stay black.
"""
from __future__ import annotations

import cv2
import numpy as np

from fire_reg.data.sources import centroid


def photometric_change(image, valid, rng, unit, strong: bool) -> tuple[np.ndarray, dict]:
    """Change exposure, colour, illumination and focus, add lesions (strong) and noise.

    Returns the BGR uint8 image (still black outside ``valid``) and the parameters drawn;
    intensities are in [0, 1], lengths in px of this frame. The tone curve per channel is
    ``clip(contrast * colour_gain * x + brightness, 0, 1) ** gamma``; illumination falls off
    as ``1 - vignetting * (r / R)^2`` (R: radius of a disc with the area of ``valid``).
    """
    height, width = valid.shape
    centre, radius = centroid(valid), np.sqrt(np.count_nonzero(valid) / np.pi)
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
