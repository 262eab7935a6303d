"""The README's before/after picture of the local model: an A pair's difference image.

    .venv/bin/fire-reg data embedded --out out/embedded
    .venv/bin/python benchmarks/local_figure.py out/embedded A02 docs/local_before_after.jpg

The pair is registered twice with the shipped model, ``--transform quadratic`` and
``--transform local``; each panel is the absolute difference of the vessel maps (fire-reg's
own, :func:`fire_reg.imaging.vessels.vessel_map`) of the fixed image and the moving image
warped into the fixed frame, inside the common field of view, brighter = more misaligned
vessel. Each panel's title states the pair's FIRE error (control points, FIRE-equivalent px).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from fire_reg import Registrar
from fire_reg.data.fire import FireDataset
from fire_reg.evaluate import metrics
from fire_reg.imaging.vessels import vessel_map

PANEL_WIDTH = 640


def difference_panel(fixed, moving, transform, title: str) -> np.ndarray:
    """|vessel map of fixed - vessel map of warped moving| inside both apertures, titled."""
    size = (fixed.shape[1], fixed.shape[0])
    warped = transform.warp(moving, size)
    fixed_map, fixed_fov, _ = vessel_map(fixed, work_width=fixed.shape[1])
    moving_map, moving_fov, _ = vessel_map(warped, work_width=fixed.shape[1])
    difference = np.abs(fixed_map - moving_map) * (fixed_fov & moving_fov)
    panel = np.clip(difference * 2.0 * 255, 0, 255).astype(np.uint8)
    scale = PANEL_WIDTH / panel.shape[1]
    panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    panel = cv2.cvtColor(255 - panel, cv2.COLOR_GRAY2BGR)  # dark = misaligned vessel
    cv2.putText(panel, title, (12, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 200), 2,
                cv2.LINE_AA)
    return panel


def main() -> None:
    root, pair_id, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    pair = FireDataset(root)[pair_id]
    fixed, moving = pair.image("fixed"), pair.image("moving")
    fixed_pts, moving_pts = pair.control_points()
    quadratic = Registrar(transform="quadratic")
    local = Registrar((quadratic.model, quadratic.settings), transform="local")
    panels = []
    for name, registrar in (("quadratic", quadratic), ("local", local)):
        result = registrar.register_files(pair.fixed_path, pair.moving_path)
        error = metrics.fire_error(result.transform, fixed_pts, moving_pts,
                                   pair.scale_to_fire())
        panels.append(difference_panel(fixed, moving, result.transform,
                                       f"{pair_id} --transform {name} ({result.transform.model}):"
                                       f" {error:.2f} FIRE px"))
        print(f"{name}: {result.transform.model}, {error:.2f} FIRE-equivalent px; "
              f"{result.reason}")
    cv2.imwrite(str(out), np.hstack(panels), [cv2.IMWRITE_JPEG_QUALITY, 70])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
