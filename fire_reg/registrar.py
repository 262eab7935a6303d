"""Registrar: full photographs in, the 2x3 pixel matrix (fixed px -> moving px) out.

Steps, for images of any size and aspect:

1. Both images become vessel maps (:func:`fire_reg.imaging.vessel_map`) at ``work_width`` px
   and are letterboxed into the network's square input (``geometry.letterbox``).
2. **Coarse to fine**: the network predicts the motion; for each further iteration the moving
   map is resampled through the current estimate (cut to the fixed aperture, so that both
   apertures coincide as in training), the network predicts the residual, and it is composed
   onto the estimate. Each pass has two candidates from the same forward pass, the regression
   heads and a RANSAC fit to the network's own cell matches; the better-aligning one is kept.
3. Optional local refinement: OpenCV ECC (:func:`fire_reg.baselines.ecc_on_maps`) started from
   the network's answer on the working maps (3-level pyramid), then, when ``refine_width`` is
   set (e.g. 1024) and the images are wider than 1.5x the working width, once more on vessel
   maps at that width (more accurate, about 4x slower); each step is kept only when it raises
   the vessel-map similarity.
4. Trust: the normalised cross-correlation of the vessel maps inside the common field of view
   after warping; below ``min_similarity`` the status is "suspect" with the reason.

The returned matrix is in the original pixels of both images, with its inverse.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from fire_reg import geometry, imaging
from fire_reg.errors import InputError

def default_model_path() -> Path:
    """The weights shipped inside the package."""
    from fire_reg.network import MODEL_NAME

    return Path(str(resources.files("fire_reg") / "weights" / f"{MODEL_NAME}.keras"))


def load_model(path=None):
    """Load a fire-reg ``.keras`` model (the shipped one when ``path`` is None).

    Raises InputError when the file is missing or is not a fire-reg model.
    """
    import keras

    from fire_reg.network import MODEL_NAME  # also registers the custom layers

    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise InputError(path, "model file not found")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise InputError(path, f"not a readable fire-reg model ({type(error).__name__})") from None
    names = set(getattr(model, "input_names", None) or _input_names(model))
    if model.name != MODEL_NAME or names != {"fixed", "moving"}:
        raise InputError(path, f"not a fire-reg model (model '{model.name}' with inputs "
                               f"{sorted(names)})")
    return model


def _input_names(model) -> list[str]:
    inputs = model.inputs if isinstance(model.inputs, (list, tuple)) else [model.inputs]
    return [getattr(tensor, "name", "").split(":")[0] for tensor in inputs]


@dataclass
class Registration:
    """One registration result; ``matrix`` maps fixed px to moving px (original sizes)."""

    matrix: np.ndarray
    status: str
    reason: str
    seconds: float
    similarity: float
    fixed_size: tuple[int, int]
    moving_size: tuple[int, int]
    stages: dict = field(default_factory=dict)

    @property
    def inverse(self) -> np.ndarray:
        """Moving px -> fixed px."""
        return geometry.invert(self.matrix)

    def to_itk(self) -> str:
        """ITK ``.tfm`` text (``AffineTransform_double_2_2``, centre 0) of the same map.

        ITK transforms map fixed-image physical points to moving-image physical points, which
        with unit spacing and zero origin are our pixel coordinates (index (0, 0) = centre of
        the top-left pixel, y down): ``Parameters: a00 a01 a10 a11 tx ty``.
        """
        (a00, a01, tx), (a10, a11, ty) = self.matrix
        values = " ".join(f"{v:.12g}" for v in (a00, a01, a10, a11, tx, ty))
        return ("#Insight Transform File V1.0\n#Transform 0\n"
                "Transform: AffineTransform_double_2_2\n"
                f"Parameters: {values}\nFixedParameters: 0 0\n")

    def to_json(self) -> dict:
        """The ``transform.json`` schema of DESIGN.md."""
        return {"matrix": self.matrix.tolist(), "maps": "fixed_xy_to_moving_xy",
                "units": "pixels", "inverse": self.inverse.tolist(),
                "fixed_size": list(self.fixed_size), "moving_size": list(self.moving_size),
                "seconds": self.seconds, "status": self.status, "reason": self.reason,
                "similarity": self.similarity,
                "convention": "x right, y down, (0, 0) = centre of the top-left pixel; "
                              "warp the moving image with cv2.warpAffine(moving, matrix, "
                              "(W_fixed, H_fixed), flags=INTER_LINEAR | WARP_INVERSE_MAP)",
                "stages": {name: m.tolist() for name, m in self.stages.items()}}


class Registrar:
    """Registers pairs of fundus photographs with the learned network (+ optional ECC)."""

    def __init__(self, model=None, iterations: int = 2, refine: str | None = "ecc",
                 work_width: int = imaging.WORK_WIDTH, refine_width: int | None = None,
                 min_similarity: float = 0.15):
        if refine not in (None, "none", "ecc"):
            raise ValueError(f"refine must be 'ecc' or None, got {refine!r}")
        self.model = model if hasattr(model, "predict") else load_model(model)
        self.size = int(self.model.inputs[0].shape[1])
        self.iterations = max(1, int(iterations))
        self.refine = None if refine == "none" else refine
        self.work_width = work_width
        self.refine_width = refine_width
        self.min_similarity = min_similarity
        blank = np.zeros((self.size, self.size), np.float32)
        self._predict(blank, blank)  # compile once here, so per-pair seconds are steady-state

    def register(self, fixed: np.ndarray, moving: np.ndarray, fixed_mask=None,
                 moving_mask=None) -> Registration:
        """Register two BGR (or gray) images; the matrix is in these images' pixels."""
        start = time.perf_counter()
        work_maps = _maps(fixed, moving, fixed_mask, moving_mask, self.work_width)
        estimate, similarity = self._network_estimate(*work_maps.arrays)
        matrix = work_maps.to_full(estimate)
        stages, reason = {"network": matrix}, "network"
        if self.refine == "ecc":
            from fire_reg import baselines

            fine_width = min(self.refine_width or 0, fixed.shape[1], moving.shape[1])
            steps = [(work_maps, {"levels": 3})]  # then a short polish at the finer width
            if fine_width >= 1.5 * self.work_width:
                steps.append((_maps(fixed, moving, fixed_mask, moving_mask, fine_width),
                              {"levels": 1, "iterations": 20, "epsilon": 1e-4}))
            for maps, options in steps:
                current = maps.to_maps(matrix)
                before = similarity if maps is work_maps else maps.similarity(current)
                refined = baselines.ecc_on_maps(*maps.arrays, current, **options)
                if not refined.ok:
                    reason += f" (ECC at {maps.width} px rejected: {refined.reason})"
                    break
                after = maps.similarity(refined.matrix)
                if after < before:
                    break
                matrix = stages[f"ecc_{maps.width}px"] = maps.to_full(refined.matrix)
                reason = "network + ECC"
                # the status is judged on the working maps
                similarity = after if maps is work_maps else work_maps.similarity(
                    work_maps.to_maps(matrix))
        status = "ok" if similarity >= self.min_similarity else "suspect"
        if status == "suspect":
            reason = (f"{reason}; vessel similarity {similarity:.3f} after warping is below "
                      f"{self.min_similarity}")
        return Registration(matrix=matrix, status=status, reason=reason,
                            seconds=time.perf_counter() - start, similarity=similarity,
                            fixed_size=(fixed.shape[1], fixed.shape[0]),
                            moving_size=(moving.shape[1], moving.shape[0]), stages=stages)

    def _network_estimate(self, fixed_map, fixed_fov, moving_map,
                          moving_fov) -> tuple[np.ndarray, float]:
        """Coarse-to-fine network estimate in working-resolution px (fixed -> moving), with
        its vessel-map similarity.

        Each pass gives two candidates for the residual, the regression heads' matrix and the
        robust fit to the network's matches (:func:`fire_reg.network.affine_from_matches`);
        the one whose composed estimate aligns the vessel maps better is kept.
        """
        from fire_reg import network

        size = self.size
        fixed_box = geometry.letterbox(fixed_map.shape[1::-1], size)
        from_patch = np.linalg.inv(fixed_box)
        fixed_in = imaging.resample(fixed_map, from_patch, (size, size))
        fixed_in_fov = imaging.resample(fixed_fov.astype(np.float32), from_patch, (size, size)) > 0.5
        estimate = geometry.pixel_from_letterboxed(geometry.identity(), fixed_map.shape[1::-1],
                                                   moving_map.shape[1::-1], size)
        for iteration in range(self.iterations):
            moving_in = imaging.resample(moving_map, geometry.compose(estimate, from_patch),
                                         (size, size))
            if iteration:
                moving_in = moving_in * fixed_in_fov
            heads, logits = self._predict(fixed_in, moving_in)
            candidates = [heads, network.affine_from_matches(logits)]
            composed = [geometry.compose(estimate, from_patch,
                                         geometry.pixel_from_normalized(c, (size,) * 2, (size,) * 2),
                                         fixed_box)
                        for c in candidates if c is not None]
            similarities = [warped_similarity(fixed_map, fixed_fov, moving_map, moving_fov, m)
                            for m in composed]
            best = int(np.argmax(similarities))  # the heads' answer on a tie
            estimate, similarity = composed[best], similarities[best]
        return estimate, similarity

    def _predict(self, fixed_in, moving_in) -> tuple[np.ndarray, np.ndarray]:
        """The network's normalised matrix (heads) and match logits for one input pair."""
        batch = {"fixed": fixed_in[None, ..., None].astype(np.float32),
                 "moving": moving_in[None, ..., None].astype(np.float32)}
        outputs = self.model.predict_on_batch(batch)  # compiled once, then fast
        return np.asarray(outputs["matrix"][0], np.float64), np.asarray(outputs["matches"][0])

    def register_files(self, fixed_path, moving_path) -> Registration:
        """Register two image files, decoded at reduced size where the work needs no more
        (JPEG: 1/2, 1/4, 1/8); the matrix is returned in the files' original pixels."""
        width = max(self.work_width, self.refine_width or 0)
        fixed, fixed_scale = imaging.read_for_width(fixed_path, width)
        moving, moving_scale = imaging.read_for_width(moving_path, width)
        result = self.register(fixed, moving)
        to_full = lambda m: geometry.rescale(  # noqa: E731
            m, 1 / np.asarray(fixed_scale), 1 / np.asarray(moving_scale))
        result.matrix = to_full(result.matrix)
        result.stages = {name: to_full(m) for name, m in result.stages.items()}
        fixed_size, moving_size = imaging.image_size(fixed_path), imaging.image_size(moving_path)
        result.fixed_size, result.moving_size = tuple(fixed_size), tuple(moving_size)
        return result


@dataclass
class _VesselMaps:
    """Vessel maps and fields of view of a pair at one working width, with the per-axis
    scales from the original images (``fire_reg.imaging.vessel_map``)."""

    fixed: np.ndarray
    fixed_fov: np.ndarray
    moving: np.ndarray
    moving_fov: np.ndarray
    fixed_scale: tuple[float, float]
    moving_scale: tuple[float, float]
    width: int

    @property
    def arrays(self):
        return self.fixed, self.fixed_fov, self.moving, self.moving_fov

    def to_maps(self, matrix_px):
        """Original-pixel matrix -> matrix between these maps."""
        return geometry.rescale(matrix_px, self.fixed_scale, self.moving_scale)

    def to_full(self, matrix_maps):
        """Matrix between these maps -> original-pixel matrix."""
        return geometry.rescale(matrix_maps, 1 / np.asarray(self.fixed_scale),
                                1 / np.asarray(self.moving_scale))

    def similarity(self, matrix_maps) -> float:
        return warped_similarity(*self.arrays, matrix_maps)


def _maps(fixed, moving, fixed_mask, moving_mask, width: int) -> _VesselMaps:
    fixed_map, fixed_fov, fixed_scale = imaging.vessel_map(fixed, fixed_mask, width)
    moving_map, moving_fov, moving_scale = imaging.vessel_map(moving, moving_mask, width)
    return _VesselMaps(fixed_map, fixed_fov, moving_map, moving_fov, fixed_scale, moving_scale,
                       width)


def warped_similarity(fixed_map, fixed_fov, moving_map, moving_fov, matrix) -> float:
    """NCC of two vessel maps inside their common field of view after warping the moving one
    with ``matrix`` (fixed px -> moving px at the maps' resolution); -1 when they hardly overlap."""
    size = fixed_map.shape[1::-1]
    warped = imaging.resample(moving_map, matrix, size)
    warped_fov = imaging.resample(moving_fov.astype(np.float32), matrix, size) > 0.5
    common = fixed_fov & warped_fov
    if common.sum() < max(64, 0.05 * fixed_fov.sum()):
        return -1.0
    a = fixed_map[common] - fixed_map[common].mean()
    b = warped[common] - warped[common].mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))
