"""Registrar: full photographs in, one transform (fixed px -> moving px) with its trust out.

Steps, for images of any size and aspect:

1. Both images become vessel maps (:class:`fire_reg.register.maps.VesselMaps`) at ``work_width`` px
   and are letterboxed into the network's square input (``geometry.letterbox``).
2. **Coarse to fine**: the network predicts the motion; for each further iteration the moving
   map is resampled through the current estimate (cut to the fixed aperture, so that both
   apertures coincide as in training), the network predicts the residual, and it is composed
   onto the estimate. Each pass has two candidates from the same forward pass, the regression
   heads and a RANSAC fit to the network's own cell matches; the better-aligning one is kept.
3. Affine refinement: OpenCV ECC (:func:`fire_reg.register.ecc.ecc_on_maps`) from the network's
   answer on the working maps, then, when ``refine_width`` is set (e.g. 1024) and the images
   are wider than 1.5x the working width, once more on vessel maps at that width; each step is
   kept only when it raises the vessel-map similarity.
4. **Fine stage** (:func:`fire_reg.register.fine.fine_stage`): local tile matches on the working maps
   and a robust fit of the requested ``transform`` model (quadratic by default: the curved
   retina), falling back to a homography, then an affine, when the evidence is too thin.
5. **Trust** (:mod:`fire_reg.register.trust`): the estimated error from held-out tile matches, the
   overlap and plausibility checks of the transform give ``status`` and ``reason``.

The returned transform is in the pixels of the images given (original pixels through
:func:`fire_reg.register.result.register_files`).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from fire_reg import geometry
from fire_reg.register.ecc import EccOptions, ecc_on_maps
from fire_reg.register.fine import FineOptions, fine_stage
from fire_reg.register.maps import VesselMaps
from fire_reg.geometry import transforms
from fire_reg.register import trust
from fire_reg.register.result import Registration, register_files

ECC_FINAL = EccOptions(levels=3, iterations=100, epsilon=1e-5)
"""ECC when its affine is the answer (``transform="none"``): three pyramid levels, converged."""
ECC_BEFORE_FINE = EccOptions(levels=2, iterations=20, epsilon=1e-3)
"""ECC when the fine stage follows: it only has to bring the estimate into the fine stage's
search radius (same accuracy on the benchmark sets, half the time)."""
POLISH_MIN_RATIO = 1.5
"""The ECC polish at ``refine_width`` runs only when it is this many times the working width
(a finer map adds too little below that)."""


class Registrar:
    """Registers pairs of fundus photographs with the learned network, ECC and the fine stage.

    ``model``: a ``.keras`` path or None (the shipped weights), loaded with
    :func:`fire_reg.learn.bundle.load_model`, or an already loaded ``(model, settings)`` pair: the
    vessel maps are made with the model's own preprocessing settings (working width, CLAHE,
    top-hat), so a model trained at another width is applied as it was trained.
    ``iterations``: network passes (>= 1); ``refine``: "ecc" or "none" (affine ECC after the
    network, with ``ecc`` options; default :data:`ECC_BEFORE_FINE`, or :data:`ECC_FINAL`
    with ``transform="none"``); ``transform``: the richest model the fine stage may fit
    ("quadratic", "homography", "affine") or "none" (network + ECC affine only);
    ``refine_width``: optional finer ECC polish width (px, with ``polish`` options; used
    when both images are at least :data:`POLISH_MIN_RATIO` x the working width);
    ``fine`` / ``trust_options``: the fine stage's and the verdict's thresholds.
    ValueError for settings out of range; InputError for a missing or foreign model file.
    """

    name = "fire-reg"

    def __init__(self, model=None, iterations: int = 2, refine: str | None = "ecc",
                 refine_width: int | None = None, transform: str = "quadratic",
                 ecc: EccOptions | None = None,
                 polish: EccOptions = EccOptions(
                     levels=1, iterations=20, epsilon=1e-4),
                 fine: FineOptions | None = None,
                 trust_options: trust.TrustOptions | None = None):
        refine = "none" if refine is None else refine
        if refine not in ("none", "ecc"):
            raise ValueError(f"refine must be 'ecc' or 'none', got {refine!r}")
        if transform not in (*transforms.MODELS, "none"):
            raise ValueError(f"transform must be one of {', '.join(transforms.MODELS)} or "
                             f"'none', got {transform!r}")
        if int(iterations) < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        if refine_width is not None and int(refine_width) < 64:
            raise ValueError(f"refine width must be at least 64 px, got {refine_width}")
        if isinstance(model, tuple):
            self.model, self.settings = model
        else:
            from fire_reg.learn import bundle

            self.model, self.settings = bundle.load_model(model)
        self.size = self.settings.input_size
        self.preprocessing = self.settings.preprocessing
        self.work_width = self.preprocessing.work_width
        self.iterations = int(iterations)
        self.refine = refine
        self.refine_width = None if refine_width is None else int(refine_width)
        self.transform = transform
        self.ecc = ecc or (ECC_FINAL if transform == "none" else ECC_BEFORE_FINE)
        self.polish = polish
        self.fine = fine or FineOptions()
        self.trust_options = trust_options or trust.TrustOptions()
        blank = np.zeros((self.size, self.size), np.float32)
        self._predict(blank, blank)  # compile once here, so per-pair seconds are steady-state

    @property
    def decode_width(self) -> int:
        """Image files are decoded at no less than this width (px)."""
        return max(self.work_width, self.refine_width or 0)

    def register(self, fixed: np.ndarray, moving: np.ndarray, fixed_mask=None,
                 moving_mask=None) -> Registration:
        """Register two BGR (or gray) images; the transform is in these images' pixels."""
        start = time.perf_counter()
        maps = VesselMaps.of(fixed, moving, self.preprocessing, fixed_mask,
                                           moving_mask)
        estimate, similarity = self._network_estimate(maps)
        stages = {"network": maps.to_full(estimate)}
        reason = "network"
        if self.refine == "ecc":
            estimate, similarity, reason = self._ecc_steps(fixed, moving, fixed_mask, moving_mask,
                                                           maps, estimate, similarity, stages)
        if self.transform != "none":
            fine = fine_stage(maps, estimate, self.transform, self.fine)
            estimate = fine.transform
            stages[f"fine_{fine.model}"] = maps.to_full(estimate)
            reason = f"{reason}, then {fine.reason}"
            similarity = maps.similarity(estimate)
        fixed_size, moving_size = (fixed.shape[1], fixed.shape[0]), (moving.shape[1], moving.shape[0])
        verdict = trust.judge(maps, estimate, fixed_size, self.trust_options)
        return Registration(maps.to_full(estimate), verdict.status, f"{reason}; {verdict.reason}",
                            fixed_size, moving_size, seconds=time.perf_counter() - start,
                            estimated_error_px=verdict.estimated_error_px,
                            overlap=verdict.overlap, similarity=similarity,
                            checks=verdict.checks, stages=stages)

    def _ecc_steps(self, fixed, moving, fixed_mask, moving_mask, maps, estimate, similarity,
                   stages):
        """ECC on the working maps, then optionally on finer maps; each step kept only when it
        raises that width's similarity. Returns (estimate, similarity, reason) in working px."""
        reason = "network"
        steps = [(maps, self.ecc)]
        fine_width = min(self.refine_width or 0, fixed.shape[1], moving.shape[1])
        if fine_width >= POLISH_MIN_RATIO * self.work_width:
            finer = dataclasses.replace(self.preprocessing, work_width=fine_width)
            steps.append((VesselMaps.of(fixed, moving, finer, fixed_mask,
                                                      moving_mask), self.polish))
        full = maps.to_full(estimate)
        for step_maps, options in steps:
            current = step_maps.to_maps(full)
            before = similarity if step_maps is maps else step_maps.similarity(current)
            outcome = ecc_on_maps(step_maps, current.matrix, options)
            if outcome.matrix is None:
                reason += f" (ECC at {step_maps.width} px rejected: {outcome.reason})"
                break
            refined = transforms.Affine(outcome.matrix)
            after = step_maps.similarity(refined)
            if after < before:
                break
            full = stages[f"ecc_{step_maps.width}px"] = step_maps.to_full(refined)
            reason = "network + ECC"
            estimate = maps.to_maps(full)
            similarity = after if step_maps is maps else maps.similarity(estimate)
        return estimate, similarity, reason

    def _network_estimate(self, maps) -> tuple[transforms.Affine, float]:
        """Coarse-to-fine network estimate in working-map px (fixed -> moving), with its
        vessel-map similarity.

        Each pass gives two candidates for the residual, the regression heads' matrix and the
        robust fit to the network's matches (:func:`fire_reg.learn.network.affine_from_matches`);
        the one whose composed estimate aligns the vessel maps better is kept.
        """
        from fire_reg.learn import network

        size = self.size
        fixed_box = geometry.letterbox(maps.fixed_size, size)
        from_patch = np.linalg.inv(fixed_box)
        fixed_in = geometry.resample(maps.fixed, from_patch, (size, size))
        fixed_in_fov = geometry.resample(maps.fixed_fov.astype(np.float32), from_patch,
                                        (size, size)) > 0.5
        estimate = geometry.pixel_from_letterboxed(geometry.identity(), maps.fixed_size,
                                                   maps.moving.shape[1::-1], size)
        similarity = -1.0
        for iteration in range(self.iterations):
            moving_in = geometry.resample(maps.moving, geometry.compose(estimate, from_patch),
                                         (size, size))
            if iteration:
                moving_in = moving_in * fixed_in_fov
            heads, logits = self._predict(fixed_in, moving_in)
            candidates = [heads, network.affine_from_matches(logits)]
            composed = [geometry.compose(estimate, from_patch,
                                         geometry.pixel_from_normalized(c, (size,) * 2, (size,) * 2),
                                         fixed_box)
                        for c in candidates if c is not None]
            similarities = maps.similarities([transforms.Affine(m) for m in composed])
            best = int(np.argmax(similarities))  # the heads' answer on a tie
            estimate, similarity = composed[best], similarities[best]
        return transforms.Affine(estimate), similarity

    def _predict(self, fixed_in, moving_in) -> tuple[np.ndarray, np.ndarray]:
        """The network's normalised matrix (heads) and match logits for one input pair."""
        batch = {"fixed": fixed_in[None, ..., None].astype(np.float32),
                 "moving": moving_in[None, ..., None].astype(np.float32)}
        outputs = self.model.predict_on_batch(batch)  # compiled once, then fast
        return np.asarray(outputs["matrix"][0], np.float64), np.asarray(outputs["matches"][0])

    def register_files(self, fixed_path, moving_path) -> Registration:
        """Register two image files; the transform is in the files' original pixels
        (:func:`fire_reg.register.result.register_files`)."""
        return register_files(self, fixed_path, moving_path)
