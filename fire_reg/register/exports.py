"""Exports of a registration for ITK, SimpleITK, elastix and ANTs: only files that are the result.

ITK transforms map fixed-image physical points to moving-image physical points, the direction
of fire-reg's transforms; with unit spacing and zero origin (how SimpleITK reads PNG, JPEG and
TIFF) physical points are fire-reg's pixel coordinates.

* ``transform.tfm``: ITK ``AffineTransform_double_2_2`` (centre 0, ``Parameters: a00 a01 a10
  a11 tx ty``), written only for an affine result, which it holds exactly. ITK's transform
  files have no 2-D homography (its transform factory lists none) and no quadratic, so
  those results get no ``.tfm``.
* ``displacement.mha``: for every other result, an ITK displacement field (MetaImage,
  2-component float64 vectors) for ``DisplacementFieldTransform``: at fixed point p it holds
  ``d(p) = fixed_to_moving(p) - p``, on a grid of spacing ``s`` px and origin 0 that covers
  the whole fixed image; ``s`` is the largest power of two (at most 32 px) for which linear
  interpolation between the nodes stays within :data:`FIELD_TOLERANCE_PX` of the transform
  (checked at the cell midpoints), but no finer than :data:`MIN_SPACING` px (a map with a kink,
  which no grid interpolates to the tolerance, is written at that spacing and the record states
  the largest interpolation error measured). Written through SimpleITK, an optional extra
  (``pip install 'fire-reg[itk]'``); without it the field is skipped and the record says so.

:func:`write_exports` writes what applies and returns the ``"exports"`` record of
``transform.json``: ``{"written": {file: what it holds}, "not_written": {file: why}}``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fire_reg.geometry import transforms
from fire_reg.io.output import atomic_path, write_text

TFM_NAME = "transform.tfm"
FIELD_NAME = "displacement.mha"
FIELD_TOLERANCE_PX = 0.01
MAX_SPACING = 32
MIN_SPACING = 4
"""Finest grid spacing (px): a field of one vector per 4 x 4 px, whatever the map."""
ITK_EXTRA = "pip install 'fire-reg[itk]'"


def itk_affine_text(transform: transforms.Transform) -> str:
    """ITK ``.tfm`` text of an affine transform (exact). ValueError for any other model:
    ITK's transform files cannot hold it (use :func:`write_displacement_field`)."""
    if not isinstance(transform, transforms.Affine):
        raise ValueError(f"an ITK .tfm holds a {transform.model} only approximately; "
                         f"export it as a displacement field ({FIELD_NAME})")
    (a00, a01, tx), (a10, a11, ty) = transform.matrix
    values = " ".join(f"{v:.17g}" for v in (a00, a01, a10, a11, tx, ty))
    return ("#Insight Transform File V1.0\n#Transform 0\n"
            "Transform: AffineTransform_double_2_2\n"
            f"Parameters: {values}\nFixedParameters: 0 0\n")


def displacement_field(transform: transforms.Transform, fixed_size,
                       tolerance: float = FIELD_TOLERANCE_PX) -> tuple[np.ndarray, int, float]:
    """(field, spacing, error): ``field[j, i] = fixed_to_moving(p) - p`` (float64, px) at the
    grid node ``p = (i * spacing, j * spacing)``; the grid covers the fixed image of
    ``fixed_size`` = (W, H) (its last nodes may lie beyond the image: there the field
    continues the transform's tangent at the nearest image point, so that the cells across
    the edge interpolate what lies inside). ``spacing`` (px) is the largest power of two from
    :data:`MAX_SPACING` down to :data:`MIN_SPACING` whose bilinear interpolation stays within
    ``tolerance`` px of the transform at the cell midpoints inside the image (else
    :data:`MIN_SPACING`); ``error``: that largest interpolation error (px)."""
    width, height = (int(v) for v in fixed_size)
    last = np.array([width - 1, height - 1], np.float64)
    spacing = MAX_SPACING
    while True:
        columns = np.arange(-(-(width - 1) // spacing) + 1) * float(spacing)
        rows = np.arange(-(-(height - 1) // spacing) + 1) * float(spacing)
        field = _displacements(transform, columns, rows, last)
        error = _interpolation_error(transform, field, columns, rows, last)
        if spacing <= MIN_SPACING or error <= tolerance:
            return field, spacing, error
        spacing //= 2


def _displacements(transform, columns, rows, last) -> np.ndarray:
    """(rows, columns, 2) displacements at the grid nodes; a node beyond the image (whose last
    pixel is ``last`` = (W - 1, H - 1)) gets the first-order extension of the transform from
    the nearest image point (:meth:`Transform.on_grid` of the nodes pulled into the image)."""
    inside_x, inside_y = np.clip(columns, 0.0, last[0]), np.clip(rows, 0.0, last[1])
    inside = np.stack(np.meshgrid(inside_x, inside_y), axis=-1)
    displacements = transform.on_grid(inside_x, inside_y) - inside
    beyond = (columns != inside_x)[None, :] | (rows != inside_y)[:, None]
    if beyond.any():
        step = (np.stack(np.meshgrid(columns, rows), axis=-1) - inside)[beyond]
        slope = transform.jacobian(inside[beyond]) - np.eye(2)
        displacements[beyond] += np.einsum("nij,nj->ni", slope, step)
    return displacements


def _interpolation_error(transform, field, columns, rows, last) -> float:
    """Largest distance (px) between the transform's displacement and the bilinear
    interpolation of ``field`` at the midpoints of the grid's edges and cells that lie in the
    image (last pixel ``last``)."""
    middle_x, middle_y = (columns[:-1] + columns[1:]) / 2, (rows[:-1] + rows[1:]) / 2
    candidates = [(middle_x, rows, (field[:, :-1] + field[:, 1:]) / 2),
                  (columns, middle_y, (field[:-1] + field[1:]) / 2),
                  (middle_x, middle_y, (field[:-1, :-1] + field[:-1, 1:] + field[1:, :-1]
                                        + field[1:, 1:]) / 4)]
    errors = []
    for xs, ys, interpolated in candidates:
        keep_x, keep_y = xs <= last[0], ys <= last[1]
        if keep_x.any() and keep_y.any():
            exact = _displacements(transform, xs[keep_x], ys[keep_y], last)
            errors.append(np.linalg.norm(exact - interpolated[keep_y][:, keep_x], axis=2).max())
    return float(max(errors, default=0.0))


def write_displacement_field(path, transform: transforms.Transform, fixed_size) -> str:
    """Write the displacement field of ``transform`` over a fixed image of ``fixed_size`` to
    ``path`` (``.mha``, compressed) through SimpleITK (ImportError without it); return what
    the file holds, for the record."""
    import SimpleITK as sitk

    field, spacing, error = displacement_field(transform, fixed_size)
    image = sitk.GetImageFromArray(field, isVector=True)  # (rows, columns, 2) -> size (W', H')
    image.SetSpacing((float(spacing), float(spacing)))
    image.SetOrigin((0.0, 0.0))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return (f"ITK displacement field for DisplacementFieldTransform: d(p) = fixed_to_moving(p) "
            f"- p at fixed px p, grid spacing {spacing} px, origin 0, within "
            f"{max(error, FIELD_TOLERANCE_PX):.3g} px of the {transform.model} (linear "
            "interpolation)")


def write_exports(out_dir, transform: transforms.Transform, fixed_size) -> dict:
    """Write ``transform.tfm`` (affine) or ``displacement.mha`` (any other model; skipped
    without SimpleITK) to ``out_dir``; return the ``"exports"`` record of transform.json."""
    out_dir = Path(out_dir)
    if isinstance(transform, transforms.Affine):
        write_text(out_dir / TFM_NAME, itk_affine_text(transform))
        return {"written": {TFM_NAME: "ITK AffineTransform_double_2_2, exactly this affine "
                                      "(fixed physical point -> moving physical point; unit "
                                      "spacing, zero origin = fire-reg px)"},
                "not_written": {FIELD_NAME: "not needed: the .tfm is exact"}}
    record = {"written": {}, "not_written": {
        TFM_NAME: f"an ITK .tfm cannot hold a {transform.model} exactly; use {FIELD_NAME}"}}
    try:
        record["written"][FIELD_NAME] = write_displacement_field(out_dir / FIELD_NAME, transform,
                                                                 fixed_size)
    except ImportError:
        record["not_written"][FIELD_NAME] = f"SimpleITK is not installed ({ITK_EXTRA})"
    return record
