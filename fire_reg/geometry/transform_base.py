"""The :class:`Transform` every model derives from, and the exact :class:`Inverse` of any.

Conventions (as :mod:`fire_reg.geometry`): points are ``(x, y)`` px, x right, y down, (0, 0)
the centre of the top-left pixel; a transform maps **fixed-image px to moving-image px**
(``T(points)`` = :meth:`Transform.fixed_to_moving`) and back (:meth:`Transform.moving_to_fixed`).
The models themselves live in :mod:`fire_reg.geometry.transforms` and are found through
:mod:`fire_reg.geometry.registry`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fire_reg import geometry
from fire_reg.geometry import registry, warping

_JACOBIAN_STEP = 0.01  # px, central differences of the default Jacobian


def _points(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


class Transform(ABC):
    """A map fixed px -> moving px with its inverse; subclasses hold the arrays.

    Class attributes a registered model declares (:mod:`fire_reg.geometry.registry`):
    ``model``, ``parameters``, ``min_points``, ``min_inliers``, ``weighted``, ``flexible``;
    ``local`` (a model that follows local evidence on top of the registered ``base_model``,
    :mod:`fire_reg.geometry.local`: the fine stage fits it after its base, and it is never
    fitted to a pair's few control points nor used by trust to judge another model).
    """

    model: str = ""
    parameters: int = 0
    min_points: int = 0
    min_inliers: int = 0
    weighted: bool = False
    flexible: bool = False
    local: bool = False

    @abstractmethod
    def fixed_to_moving(self, points) -> np.ndarray:
        """Map (N, 2) fixed-image points to the moving image."""

    @abstractmethod
    def moving_to_fixed(self, points) -> np.ndarray:
        """Map (N, 2) moving-image points to the fixed image."""

    @abstractmethod
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(fixed_to_moving, moving_to_fixed) arrays of the schema."""

    @abstractmethod
    def composed(self, moving_affine, fixed_affine) -> "Transform":
        """``moving_affine o self o fixed_affine^-1`` (both 2x3 or 3x3): the same map seen in
        other pixel grids, e.g. ``geometry.scaling`` for another resolution."""

    def __call__(self, points) -> np.ndarray:
        """``fixed_to_moving(points)``, as a scikit-image transform is called."""
        return self.fixed_to_moving(points)

    @property
    def inverse(self) -> "Transform":
        """The exact inverse, a Transform mapping moving px -> fixed px (its ``fixed`` image is
        this one's moving image)."""
        return Inverse(self)

    def jacobian(self, points) -> np.ndarray:
        """(N, 2, 2) derivatives d(moving x, y) / d(fixed x, y) at (N, 2) fixed points (here by
        central differences of 0.01 px; the models give theirs in closed form)."""
        points = _points(points)
        columns = [(self.fixed_to_moving(points + step) - self.fixed_to_moving(points - step))
                   / (2 * _JACOBIAN_STEP)
                   for step in ((_JACOBIAN_STEP, 0.0), (0.0, _JACOBIAN_STEP))]
        return np.stack(columns, axis=2)

    def for_domain(self, domain) -> "Transform":
        """The same map with whatever depends on where it is used (a quadratic's fitted
        inverse coefficients) fitted over ``domain`` ((N, 2) fixed points); as is here."""
        return self

    def plausibility(self, domain, width: float, max_bend: float) -> str | None:
        """Why this map is implausible over ``domain`` ((N, 2) fixed points, e.g. the common
        field of view), or None: a fold-over (Jacobian determinant <= 0 somewhere) or a bend
        from its best affine of more than ``max_bend`` x ``width`` (px of ``domain``; stated
        as a share of the width, so the reason reads the same at any resolution)."""
        domain = _points(domain)
        if len(domain) < 3:
            return "no common field of view"
        jacobian = self.jacobian(domain)
        det = jacobian[:, 0, 0] * jacobian[:, 1, 1] - jacobian[:, 0, 1] * jacobian[:, 1, 0]
        if det.min() <= 0:
            return f"the {self.model} folds over inside the common field of view"
        affine = self.best_affine(domain)
        bend = np.linalg.norm(self.fixed_to_moving(domain) - geometry.apply(affine, domain),
                              axis=1).max()
        if bend > max_bend * width:
            return (f"the {self.model} bends {bend / width:.1%} of the width from an affine "
                    f"(limit {max_bend:.1%})")
        return None

    def rescaled(self, fixed_scale, moving_scale) -> "Transform":
        """The same map at other resolutions; scales are (sx, sy) or one float, new px per old
        px of each image (pixel centres kept consistent as in :func:`geometry.rescale`)."""
        return self.composed(geometry.scaling(moving_scale), geometry.scaling(fixed_scale))

    def to_dict(self) -> dict:
        """``{"model", "fixed_to_moving", "moving_to_fixed"}`` (plain lists)."""
        forward, backward = self.arrays()
        return {"model": self.model, "fixed_to_moving": forward.tolist(),
                "moving_to_fixed": backward.tolist()}

    @classmethod
    def from_dict(cls, data) -> "Transform":
        """Read the schema back through the registry: on ``Transform`` any registered model,
        on a model class only that model. ValueError for an unknown model or bad arrays."""
        if not isinstance(data, dict):
            raise ValueError(f"a transform must be a JSON object, got {type(data).__name__}")
        target = registry.model_class(data.get("model"))
        if cls is not Transform and target is not cls:
            raise ValueError(f"{cls.__name__} reads {cls.model!r} transforms, got "
                             f"{data.get('model')!r}")
        def entry(value):  # an array, or an object of arrays (a local model's) as it is
            return value if isinstance(value, dict) else np.asarray(value, dtype=np.float64)

        try:
            backward = data.get("moving_to_fixed")
            return target.from_arrays(entry(data.get("fixed_to_moving")),
                                      None if backward is None else entry(backward))
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad {target.model} transform arrays: {error}") from None

    def to_skimage(self):
        """The scikit-image transform of the same map (``skimage.transform.warp(moving,
        T.to_skimage(), output_shape=(H_fixed, W_fixed))`` warps like :meth:`warp`). TypeError
        for a model scikit-image has no class for."""
        raise TypeError(f"scikit-image has no transform for a {self.model or type(self).__name__}")

    @classmethod
    def from_skimage(cls, transform, domain=None) -> "Transform":
        """A Transform from a scikit-image transform (its ``params`` map fixed px -> moving px):
        on ``Transform`` the simplest registered model that represents it exactly, on a model
        class that model. ``domain``: (N, 2) fixed points where the map is used (a quadratic
        fits its inverse there). TypeError when no model represents it."""
        candidates = registry.model_classes() if cls is Transform else (cls,)
        for candidate in candidates:
            converted = candidate._from_skimage(transform, domain)
            if converted is not None:
                return converted
        raise TypeError(f"no registered transform model represents a {type(transform).__name__}"
                        + ("" if cls is Transform else f" as a {cls.model}"))

    @classmethod
    def _from_skimage(cls, transform, domain) -> "Transform | None":
        """This model exactly equal to a scikit-image transform, or None (not representable)."""
        return None

    def best_affine(self, points) -> np.ndarray:
        """Least-squares 2x3 affine of this map over (N, 2) fixed points (e.g. a grid over the
        common field of view): the ``"matrix"`` kept for tools that read only matrices."""
        points = _points(points)
        return geometry.fit_affine(points, self.fixed_to_moving(points))[0]

    def warp(self, moving: np.ndarray, fixed_size=None, border_value: float = 0.0,
             order: int = 1) -> np.ndarray:
        """The moving image resampled into a fixed frame of ``fixed_size`` = (W, H) (default:
        the moving image's own size, as scikit-image's ``warp``): output pixel p reads the
        moving image at ``fixed_to_moving(p)``, ``border_value`` outside.

        ``order``: 0 nearest (a label image or mask keeps exactly its values), 1 bilinear,
        3 bicubic. Any dtype (uint8, uint16, float32, int32, bool, ...) and any number of
        channels come back as they went in; images with a side over 32767 px are warped in
        tiles. With order >= 1, a map that shrinks the image 2x or more first reduces it with
        ``cv2.pyrDown`` (no aliasing).
        """
        return self.warp_images([moving], fixed_size, border_value, order)[0]

    def warp_images(self, images, fixed_size=None, border_value: float = 0.0,
                    order: int = 1) -> list[np.ndarray]:
        """:meth:`warp` of each of ``images`` (moving images of one size), the map computed
        once. Warping images one by one is faster than one image of their channels stacked:
        OpenCV (5.x) resamples float32 images of 1, 3 or 4 channels at exact sub-pixel
        positions, and others (2 channels, 5 and more) at 1/32 px, several times slower."""
        images = [np.asarray(image) for image in images]
        if fixed_size is None:
            fixed_size = (images[0].shape[1], images[0].shape[0])
        map_x, map_y = self.dense_map(fixed_size)
        shrink = np.sqrt(abs(np.linalg.det(
            self.best_affine(geometry.grid_points(fixed_size))[:, :2])))
        return [warping.warp_with_maps(image, map_x, map_y, order, border_value, shrink)
                for image in images]

    def on_grid(self, xs, ys) -> np.ndarray:
        """(len(ys), len(xs), 2) ``fixed_to_moving`` (float64 px) of the points (x, y) of
        every x of ``xs`` and y of ``ys`` (fixed px): a field sampled on grid nodes."""
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        grid_x, grid_y = np.meshgrid(xs, ys)
        mapped = self.fixed_to_moving(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
        return mapped.reshape(len(ys), len(xs), 2)

    def dense_map(self, fixed_size) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) float32 (H, W): ``fixed_to_moving`` of every pixel of a fixed frame
        of ``fixed_size`` = (W, H), as ``cv2.remap`` takes them."""
        width, height = (int(v) for v in fixed_size)
        xs, ys = np.meshgrid(np.arange(width, dtype=np.float64),
                             np.arange(height, dtype=np.float64))
        mapped = self.fixed_to_moving(np.stack([xs.ravel(), ys.ravel()], axis=1))
        return (mapped[:, 0].reshape(height, width).astype(np.float32),
                mapped[:, 1].reshape(height, width).astype(np.float32))

    def inverse_error(self, points) -> float:
        """Largest distance (px) between p and ``moving_to_fixed(fixed_to_moving(p))`` over
        (N, 2) fixed points."""
        points = _points(points)
        back = self.moving_to_fixed(self.fixed_to_moving(points))
        return float(np.linalg.norm(back - points, axis=1).max()) if len(points) else 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.arrays()[0].round(6).tolist()})"


class Inverse(Transform):
    """The exact inverse of a transform without a closed-form one (a quadratic): maps the
    base's moving px -> its fixed px through the base's own two directions (for a quadratic,
    Newton's method), so ``T.inverse.inverse`` is ``T`` again. It is not a model of the
    schema: save the base transform and take ``.inverse`` after loading it."""

    def __init__(self, base: Transform):
        self.base = base
        self.model = f"inverse of {base.model}"
        self.parameters = base.parameters

    def fixed_to_moving(self, points) -> np.ndarray:
        return self.base.moving_to_fixed(points)

    def moving_to_fixed(self, points) -> np.ndarray:
        return self.base.fixed_to_moving(points)

    @property
    def inverse(self) -> Transform:
        return self.base

    def jacobian(self, points) -> np.ndarray:
        """Inverse of the base's Jacobian at the mapped points (exact where the base's is)."""
        return np.linalg.inv(self.base.jacobian(self.fixed_to_moving(points)))

    def arrays(self):
        """The base's schema arrays, swapped (for a quadratic the first is the fitted inverse,
        an approximation: this map itself is exact)."""
        forward, backward = self.base.arrays()
        return backward, forward

    def composed(self, moving_affine, fixed_affine) -> "Inverse":
        return Inverse(self.base.composed(fixed_affine, moving_affine))

    def to_dict(self) -> dict:
        raise TypeError(f"the inverse of a {self.base.model} is not a model of the transform "
                        "schema: save the transform itself and take .inverse after loading it")

    def __repr__(self) -> str:
        return f"Inverse({self.base!r})"
