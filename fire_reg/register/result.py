"""One result type for every registration method, the one decode-and-register path, and the
files a result is written to.

* :class:`Registration`: the transform (fixed px -> moving px, :mod:`fire_reg.geometry.transforms`),
  its best affine ``matrix`` (for tools that read only matrices), ``status`` ("ok",
  "suspect" or "failed"), ``reason``, ``seconds`` and the trust evidence
  (``estimated_error_px``, ``overlap``, ``similarity``, ``checks``). The learned Registrar and
  every baseline return it.
* A *method* is any object with a ``name``, a ``decode_width`` (decode image files at no less
  than this width; None: full size) and ``register(fixed, moving) -> Registration`` on BGR
  images. :func:`register_files` is the only path from image files to a result in original
  pixels: ``fire-reg register``, ``register --batch``, ``evaluate`` and the demo use it.
* :func:`write_files`: ``transform.json``, ``transform.tfm``, ``warped.png`` and
  ``overlay.png``, each written under a temporary name and renamed when complete.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fire_reg.imaging.overlays import save_overlay_panel
from fire_reg.io.images import image_size, read_for_width, read_image
from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.io.output import atomic_path, write_json, write_text

STATUSES = ("ok", "suspect", "failed")
CONVENTION = ("x right, y down, (0, 0) = centre of the top-left pixel; fixed px -> moving px; "
              "affine: cv2.warpAffine(moving, matrix, (W_fixed, H_fixed), flags=INTER_LINEAR | "
              "WARP_INVERSE_MAP); any model: cv2.remap(moving, fixed_to_moving evaluated at "
              "every fixed pixel)")


@dataclass
class Registration:
    """Outcome of one registration, in the pixels of the images it was given."""

    transform: transforms.Transform
    status: str
    reason: str
    fixed_size: tuple[int, int]
    moving_size: tuple[int, int]
    seconds: float = 0.0
    matrix: np.ndarray | None = None
    estimated_error_px: float | None = None
    overlap: float | None = None
    similarity: float | None = None
    checks: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.matrix is None:
            self.matrix = self.transform.best_affine(geometry.grid_points(self.fixed_size, 9))
        self.matrix = np.asarray(self.matrix, dtype=np.float64)

    @property
    def inverse(self) -> np.ndarray:
        """Inverse of the best affine ``matrix`` (moving px -> fixed px)."""
        return geometry.invert(self.matrix)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def rescaled(self, fixed_scale, moving_scale, fixed_size, moving_size) -> "Registration":
        """The same result for images resampled by (sx, sy) factors (new px per old px), with
        their sizes; the error estimate is in fixed px, so it scales with ``fixed_scale``."""
        error = self.estimated_error_px
        if error is not None:
            error = error * float(np.mean(fixed_scale))
        return replace(self, transform=self.transform.rescaled(fixed_scale, moving_scale),
                       matrix=geometry.rescale(self.matrix, fixed_scale, moving_scale),
                       fixed_size=tuple(fixed_size), moving_size=tuple(moving_size),
                       estimated_error_px=error,
                       stages={name: stage.rescaled(fixed_scale, moving_scale)
                               for name, stage in self.stages.items()})

    def to_itk(self) -> str:
        """ITK ``.tfm`` text (``AffineTransform_double_2_2``, centre 0) of the best affine.

        ITK transforms map fixed-image physical points to moving-image physical points, which
        with unit spacing and zero origin are our pixel coordinates: ``Parameters: a00 a01 a10
        a11 tx ty``. ITK has no quadratic transform; the full model is in transform.json.
        """
        (a00, a01, tx), (a10, a11, ty) = self.matrix
        values = " ".join(f"{v:.12g}" for v in (a00, a01, a10, a11, tx, ty))
        return ("#Insight Transform File V1.0\n#Transform 0\n"
                "Transform: AffineTransform_double_2_2\n"
                f"Parameters: {values}\nFixedParameters: 0 0\n")

    def to_json(self) -> dict:
        """The ``transform.json`` schema (DESIGN.md, docs/conventions.md)."""
        return {"matrix": self.matrix.tolist(), "maps": "fixed_xy_to_moving_xy",
                "units": "pixels", "inverse": self.inverse.tolist(),
                "transform": self.transform.to_dict(),
                "fixed_size": list(self.fixed_size), "moving_size": list(self.moving_size),
                "seconds": self.seconds, "status": self.status, "reason": self.reason,
                "estimated_error_px": self.estimated_error_px, "overlap": self.overlap,
                "similarity": self.similarity, "checks": self.checks,
                "convention": CONVENTION,
                "stages": {name: stage.to_dict() for name, stage in self.stages.items()}}


def failed(reason: str, fixed_size, moving_size) -> Registration:
    """A failed registration: the identity affine and the reason."""
    return Registration(transforms.Affine(geometry.identity()), "failed", reason,
                        tuple(fixed_size), tuple(moving_size))


def register_files(method, fixed_path, moving_path) -> Registration:
    """Decode two image files (at reduced size where ``method.decode_width`` allows: JPEG 1/2,
    1/4, 1/8), register them with ``method`` and return the result in the files' original
    pixels. Raises InputError for an unreadable image."""
    fixed_size = image_size(fixed_path)
    moving_size = image_size(moving_path)
    width = method.decode_width
    fixed, fixed_scale = read_for_width(fixed_path, width)
    moving, moving_scale = read_for_width(moving_path, width)
    result = method.register(fixed, moving)
    return result.rescaled(1 / np.asarray(fixed_scale), 1 / np.asarray(moving_scale),
                           fixed_size, moving_size)


def write_files(out_dir, result: Registration, fixed_path, moving_path) -> None:
    """Write ``transform.json``, ``transform.tfm``, ``warped.png`` (the colour moving image in
    the fixed frame, full size) and ``overlay.png`` (before/after panels) to ``out_dir``."""
    import cv2


    out_dir = Path(out_dir)
    fixed, moving = read_image(fixed_path), read_image(moving_path)
    warped = result.transform.warp(moving, result.fixed_size)
    with atomic_path(out_dir / "warped.png") as tmp:
        if not cv2.imwrite(str(tmp), warped):
            raise OSError(f"could not write {out_dir / 'warped.png'}")
    save_overlay_panel(out_dir / "overlay.png", fixed, moving, result.transform,
                                 title=f"{Path(moving_path).name} -> {Path(fixed_path).name}: "
                                       f"{result.status}")
    record = result.to_json()
    record.update(fixed=str(fixed_path), moving=str(moving_path))
    write_text(out_dir / "transform.tfm", result.to_itk())
    write_json(out_dir / "transform.json", record)
