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
* :func:`write_files`: ``transform.json``, ``transform.tfm`` (an affine result) or
  ``displacement.mha`` (any other model; :mod:`fire_reg.register.exports`), ``warped.png`` and
  ``overlay.png`` (or fewer pictures: :data:`PICTURES`), committed together as one result set
  (a failed result: no ``warped.png``).
  :meth:`Registration.load` reads a ``transform.json`` back.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fire_reg.imaging.overlays import save_overlay_panel
from fire_reg.io.images import decode, image_size, read_for_width, write_image
from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.data.fire import FIRE_WIDTH
from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_folder, write_json
from fire_reg.register import exports
from fire_reg.register.maps import PreparedImage, side_by_side

STATUSES = ("ok", "suspect", "failed")
CONVENTION = ("x right, y down, (0, 0) = centre of the top-left pixel; fixed px -> moving px; "
              "affine: cv2.warpAffine(moving, matrix, (W_fixed, H_fixed), flags=INTER_LINEAR | "
              "WARP_INVERSE_MAP); any model: cv2.remap(moving, fixed_to_moving evaluated at "
              "every fixed pixel)")


@dataclass
class Registration:
    """Outcome of one registration, in the pixels of the images it was given: every length
    (``estimated_error_px``, the numbers under keys ending in ``_px`` in ``checks``, the
    figures in ``reason``) is in px of the fixed image, and FIRE-equivalent figures (x 2912 /
    fixed width) are labelled so."""

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
    modalities: dict | None = None

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
        their sizes. Lengths in fixed px scale with ``fixed_scale`` (their mean): the
        estimated error, every number under a key ending in ``_px`` in ``checks``, and the
        reason's :func:`error_phrase`, rewritten so that it states the new estimate."""
        length = float(np.mean(fixed_scale))
        error, reason = self.estimated_error_px, self.reason
        if error is not None:
            reason = reason.replace(error_phrase(error, self.fixed_size[0]),
                                    error_phrase(error * length, fixed_size[0]))
            error = error * length
        return replace(self, transform=self.transform.rescaled(fixed_scale, moving_scale),
                       matrix=geometry.rescale(self.matrix, fixed_scale, moving_scale),
                       fixed_size=tuple(fixed_size), moving_size=tuple(moving_size),
                       estimated_error_px=error, reason=reason,
                       checks=_scaled_lengths(self.checks, length),
                       stages={name: stage.rescaled(fixed_scale, moving_scale)
                               for name, stage in self.stages.items()})

    def to_itk(self) -> str:
        """ITK ``.tfm`` text (``AffineTransform_double_2_2``, centre 0) of an affine result,
        exact: ITK transforms map fixed-image physical points to moving-image physical points,
        which with unit spacing and zero origin are our pixel coordinates. ValueError for any
        other model (ITK's .tfm cannot hold it; :mod:`fire_reg.register.exports` writes a
        displacement field instead)."""
        return exports.itk_affine_text(self.transform)

    @classmethod
    def load(cls, path) -> "Registration":
        """A result read back from its ``transform.json`` (as :func:`write_files` and
        ``fire-reg register`` write it): transform, status, reason, sizes, matrix, estimated
        error, overlap, similarity, checks and stages. InputError naming the file when it is
        missing, not JSON, or not a fire-reg transform.json."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(path, f"not a readable JSON file ({error})") from None
        try:
            return cls(transform=transforms.transform_from_dict(record["transform"]),
                       status=record["status"], reason=str(record.get("reason", "")),
                       fixed_size=tuple(int(v) for v in record["fixed_size"]),
                       moving_size=tuple(int(v) for v in record["moving_size"]),
                       seconds=float(record.get("seconds") or 0.0), matrix=record.get("matrix"),
                       estimated_error_px=record.get("estimated_error_px"),
                       overlap=record.get("overlap"), similarity=record.get("similarity"),
                       checks=dict(record.get("checks") or {}),
                       stages={name: transforms.transform_from_dict(stage)
                               for name, stage in (record.get("stages") or {}).items()},
                       modalities=record.get("modalities"))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            problem = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise InputError(path, f"not a fire-reg transform.json ({problem})") from None

    def to_json(self) -> dict:
        """The ``transform.json`` schema (DESIGN.md, docs/conventions.md)."""
        return {"matrix": self.matrix.tolist(), "maps": "fixed_xy_to_moving_xy",
                "units": "pixels", "inverse": self.inverse.tolist(),
                "transform": self.transform.to_dict(),
                "fixed_size": list(self.fixed_size), "moving_size": list(self.moving_size),
                "seconds": self.seconds, "status": self.status, "reason": self.reason,
                "estimated_error_px": self.estimated_error_px, "overlap": self.overlap,
                "similarity": self.similarity, "checks": self.checks,
                "convention": CONVENTION, "modalities": self.modalities,
                "stages": {name: stage.to_dict() for name, stage in self.stages.items()}}


def error_phrase(error_px: float, fixed_width: int) -> str:
    """How a reason states an estimated error of ``error_px`` px of a fixed image
    ``fixed_width`` px wide: "estimated error 1.12 px (1.12 FIRE-equivalent px)", the second
    figure x 2912 / width (:data:`fire_reg.data.fire.FIRE_WIDTH`). :meth:`Registration.rescaled`
    rewrites it, so the reason always states ``estimated_error_px`` (to 0.01 px)."""
    return (f"estimated error {error_px:.2f} px "
            f"({error_px * FIRE_WIDTH / fixed_width:.2f} FIRE-equivalent px)")


def _scaled_lengths(value, factor: float):
    """A copy of ``value`` (nested dicts) with every number under a key ending in ``_px``
    multiplied by ``factor``."""
    if not isinstance(value, dict):
        return value
    return {key: (item * factor if key.endswith("_px") and isinstance(item, numbers.Real)
                  and not isinstance(item, bool) else _scaled_lengths(item, factor))
            for key, item in value.items()}


def failed(reason: str, fixed_size, moving_size) -> Registration:
    """A failed registration: the identity affine and the reason."""
    return Registration(transforms.Affine(geometry.identity()), "failed", reason,
                        tuple(fixed_size), tuple(moving_size))


def register_files(method, fixed_path, moving_path) -> Registration:
    """Decode two image files (at reduced size where ``method.decode_width`` allows: JPEG 1/2,
    1/4, 1/8), register them with ``method`` and return the result in the files' original
    pixels. Either file may instead be a :class:`~fire_reg.register.maps.PreparedImage` the
    method made from it (a Registrar's ``prepare_file``: decoded and mapped once for many
    pairs). Raises InputError for an unreadable image."""
    sizes = [side.size if isinstance(side, PreparedImage) else image_size(side)
             for side in (fixed_path, moving_path)]  # both headers checked before decoding

    def decoded(job) -> tuple:
        side = job[0]
        if isinstance(side, PreparedImage):
            return side, side.decode_scale
        return read_for_width(side, method.decode_width)

    # the two files decoded side by side (OpenCV's decoders release the GIL)
    (fixed, fixed_scale), (moving, moving_scale) = side_by_side(
        decoded, (fixed_path,), (moving_path,))
    result = method.register(fixed, moving)
    return result.rescaled(1 / np.asarray(fixed_scale), 1 / np.asarray(moving_scale), *sizes)


def _decoded(image, pixels: bool = True) -> tuple:
    """(the full-size decode, the path) of an image file or of a prepared one's file (made
    once for all its pairs); ``pixels=False``: a file's header only, a prepared one's too."""
    if isinstance(image, PreparedImage):
        if pixels or image.path is None:  # without a file, decoded() says why there is none
            return image.decoded(), image.path
        image = image.path
    return decode(image, pixels=pixels), image


OUTPUTS = ("transform.json", exports.TFM_NAME, exports.FIELD_NAME, "warped.png", "overlay.png")
"""Every file a result set can have; ``transform.json``, moved in last, marks a complete one."""

PICTURES = {"all": ("warped.png", "overlay.png"), "overlay": ("overlay.png",), "none": ()}
"""The pictures a result set gets, by the name ``register --pictures`` takes: ``all`` (the
default), ``overlay`` (the check at a glance, without the full-size ``warped.png``), ``none``
(the transform's files only: a cohort that needs only the transforms, several times quicker
to write on full-size photographs, README "Cohorts")."""


def write_files(out_dir, result: Registration, fixed_path, moving_path,
                fingerprint: str | None = None, pictures: str = "all") -> None:
    """Write ``transform.json`` (with ``pixel_spacing_mm`` (x, y) of both images where their
    files record it, else null, and ``exports``), ``transform.tfm`` for an affine result or
    ``displacement.mha`` for any other (ITK; :func:`exports.write_exports`), and the pictures
    ``pictures`` names (:data:`PICTURES`): ``warped.png`` (the moving image in the fixed frame,
    full size, with its channels and bit depth: 16-bit stays 16-bit) and ``overlay.png``
    (before/after panels) to ``out_dir``. Without pictures, image files are read for their
    headers only.

    The set is committed as one (:func:`fire_reg.io.output.atomic_folder`): written into a
    hidden folder, then renamed into place (into an existing folder: moved in file by file,
    ``transform.json`` last, and files of :data:`OUTPUTS` the new set lacks removed), so a
    full disk or a stop leaves the previous set or none, never part of one. A ``failed``
    result gets no ``warped.png`` (its transform is not to be trusted). ``fingerprint``: the
    run's settings fingerprint (:mod:`fire_reg.io.runs`), recorded in transform.json for
    ``register --batch --resume``. Either image may be a
    :class:`~fire_reg.register.maps.PreparedImage` read from its file (``prepare_file``): its
    full-size decode is made once and reused by every pair it is part of.
    """
    if pictures not in PICTURES:
        raise ValueError(f"pictures must be one of {', '.join(PICTURES)}, got {pictures!r}")
    drawn = PICTURES[pictures]
    (fixed, fixed_path), (moving, moving_path) = (_decoded(image, pixels=bool(drawn))
                                                  for image in (fixed_path, moving_path))
    record = result.to_json()
    record.update(fixed=str(fixed_path), moving=str(moving_path),
                  pixel_spacing_mm={"fixed": fixed.pixel_spacing_mm,
                                    "moving": moving.pixel_spacing_mm})
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    with atomic_folder(out_dir, owned=OUTPUTS, last="transform.json") as folder:
        if "warped.png" in drawn and result.status != "failed":
            write_image(folder / "warped.png",
                        result.transform.warp(moving.pixels, result.fixed_size))
        if "overlay.png" in drawn:
            save_overlay_panel(
                folder / "overlay.png", fixed.bgr8(), moving.bgr8(), result.transform,
                title=f"{Path(moving_path).name} -> {Path(fixed_path).name}: {result.status}",
                modalities=None if not result.modalities else (
                    result.modalities["fixed"], result.modalities["moving"]))
        record["exports"] = exports.write_exports(folder, result.transform, result.fixed_size)
        write_json(folder / "transform.json", record)
