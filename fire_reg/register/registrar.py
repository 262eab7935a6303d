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
   and a robust fit of the requested ``transform`` model (local by default: the curved
   retina), falling back to a homography, then an affine, when the evidence is too thin.
5. **Trust** (:mod:`fire_reg.register.trust`): the estimated error from held-out tile matches, the
   overlap and plausibility checks of the transform give ``status`` and ``reason``.

The returned transform is in the pixels of the images given (original pixels through
:func:`fire_reg.register.result.register_files`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fire_reg import geometry
from fire_reg.config import Config, FieldError, setting
from fire_reg.imaging import modality as modalities
from fire_reg.register.ecc import EccOptions, ecc_on_maps
from fire_reg.register import fine
from fire_reg.register.fine import FineOptions, fine_stage
from fire_reg.register.trust import TrustOptions
from fire_reg.io.images import image_size, read_for_width
from fire_reg.imaging.vessels import reduce
from fire_reg.register.maps import ImageMap, PreparedImage, VesselMaps, _pool, side_by_side
from fire_reg.register.pool import one_blas_thread
from fire_reg.geometry import transforms
from fire_reg.register import trust
from fire_reg.register.result import Registration, register_files

ECC_FINAL = EccOptions(levels=3, iterations=100, epsilon=1e-5)
"""ECC when its affine is the answer (``transform="none"``): three pyramid levels, converged."""
ECC_BEFORE_FINE = EccOptions(levels=2, iterations=20, epsilon=1e-3, finest_level=1)
"""ECC when the fine stage follows: it only has to bring the estimate into the fine stage's
search radius, so it stops at half the working width (a quarter of the pixels; the benchmark
sets within 0.002 mAUC of solving the full width too, 40 ms a pair faster)."""
POLISH_MIN_RATIO = 1.5
"""The ECC polish at ``refine_width`` runs only when it is this many times the working width
(a finer map adds too little below that)."""


def _pixels(image) -> np.ndarray:
    """The pixels of an image or of a :class:`PreparedImage`."""
    return image.image if isinstance(image, PreparedImage) else image


def _transform_choices() -> tuple[str, ...]:
    """The registered transform models, richest first, and "none" (asked each time, so that a
    model registered later is offered)."""
    return (*reversed(transforms.model_names()), "none")


@dataclass(frozen=True)
class RegistrarConfig(Config):
    """Settings of a :class:`Registrar`, each checked on construction (FieldError naming it).

    ``iterations``, ``refine``, ``refine_width`` and ``transform`` are the ``register`` and
    ``evaluate`` commands' flags (:func:`fire_reg.config.setting`). ``ecc``: options of the
    affine ECC after the network (None: :data:`ECC_BEFORE_FINE`, or :data:`ECC_FINAL` with
    ``transform="none"``); ``polish``: options of the ECC polish at ``refine_width`` (used when
    both images are at least :data:`POLISH_MIN_RATIO` x the working width); ``fine`` /
    ``trust``: the fine stage's and the verdict's thresholds.
    """

    iterations: int = setting(2, help="network passes (coarse to fine)")
    refine: str = setting("ecc", help="affine ECC refinement after the network (ecc) or none",
                          choices=lambda: ("ecc", "none"))
    refine_width: int | None = setting(
        None, help="also polish with ECC at this width in px (>= 64, e.g. 1024): more accurate "
                   "on large images, about 4x slower (default: off)")
    transform: str = setting(
        "local", choices=_transform_choices,
        help="richest model of the fine stage (local: the curved retina's quadratic plus a "
             "regularised local correction where it lowers the held-out residual; quadratic; "
             "each falls back to simpler models on thin evidence); none: network + ECC affine "
             "only")
    modality: str | None = setting(
        None, help="modalities of the images (colour, red-free, fa, ir, icg, af): one for both, "
                   "or fixed=M,moving=M (default: detected per image)")
    ecc: EccOptions | None = None
    polish: EccOptions = field(default_factory=lambda: EccOptions(levels=1, iterations=20,
                                                                  epsilon=1e-4))
    fine: FineOptions = field(default_factory=FineOptions)
    trust: TrustOptions = field(default_factory=TrustOptions)

    def __post_init__(self):
        self._integer("iterations", low=1)
        if self.refine is None:
            self._set("refine", "none")
        self._choice("refine")
        self._integer("refine_width", low=64, optional=True)
        self._choice("transform")
        self.given_modalities()
        if self.ecc is not None:
            self._nested("ecc", EccOptions)
        self._nested("polish", EccOptions)
        self._nested("fine", FineOptions)
        self._nested("trust", TrustOptions)

    def given_modalities(self) -> tuple[str | None, str | None]:
        """(fixed, moving) modalities that ``modality`` gives (None: detect that image's)."""
        if self.modality is None:
            return None, None
        if not isinstance(self.modality, str):
            raise FieldError("modality", f"must be a text like fa or fixed=colour,moving=fa, "
                                         f"got {self.modality!r}")
        given = {"fixed": None, "moving": None}
        for item in self.modality.split(","):
            name, _, value = item.strip().rpartition("=")
            keys = ("fixed", "moving") if not name else (name.strip(),)
            if any(key not in given for key in keys):
                raise FieldError("modality", f"names fixed or moving images, got {name!r}")
            try:
                given.update(dict.fromkeys(keys, modalities.check(value.strip())))
            except ValueError as error:
                raise FieldError("modality", str(error)) from None
        return given["fixed"], given["moving"]

    @property
    def ecc_options(self) -> EccOptions:
        """``ecc``, or its default for this ``transform``."""
        if self.ecc is not None:
            return self.ecc
        return ECC_FINAL if self.transform == "none" else ECC_BEFORE_FINE


_PRELOADED: dict[str, "Registrar"] = {}
"""The registrar :meth:`Registrar.preload` made in this process, by the sha256 of its model
file's bytes."""


class Registrar:
    """Registers pairs of fundus photographs with the learned network, ECC and the fine stage.

    ``model``: a ``.keras`` path or None (the shipped weights), loaded with
    :func:`fire_reg.learn.bundle.load_model`, or an already loaded ``(model, settings)`` pair: the
    vessel maps are made with the model's own preprocessing settings (working width, CLAHE,
    top-hat), so a model trained at another width is applied as it was trained.
    ``config``: a :class:`RegistrarConfig` (default: its defaults); keyword arguments change
    its fields (``Registrar(model, transform="affine")`` is
    ``Registrar(model, dataclasses.replace(config, transform="affine"))``), checked there.
    FieldError (a ValueError) for settings out of range, before the model loads; InputError
    for a missing or foreign model file, or one that changed while it loaded.
    """

    name = "fire-reg"

    def __init__(self, model=None, config: RegistrarConfig | None = None, **changes):
        self.config = dataclasses.replace(config or RegistrarConfig(), **changes)
        self._archive = None  # the model file's bytes, what a pickle holds (__getstate__)
        if isinstance(model, tuple):
            self.model, self.settings = model
        else:
            from fire_reg.learn import bundle

            self.model, self.settings, self._archive = bundle.load_archive(model)
        from fire_reg.learn import network

        self._network = network.inference_model(self.model)
        self.size = self.settings.input_size
        self.preprocessing = self.settings.preprocessing
        self.work_width = self.preprocessing.work_width
        blank = np.zeros((self.size, self.size), np.float32)
        self._predict(blank, blank)  # compile once here, so per-pair seconds are steady-state

    @property
    def decode_width(self) -> int:
        """Image files are decoded at no less than this width (px)."""
        return max(self.work_width, self.config.refine_width or 0)

    def prepare(self, image: np.ndarray, mask=None, modality: str | None = None
                ) -> PreparedImage:
        """``image`` (BGR or gray) made ready once for many registrations, as the fixed or
        the moving image of :meth:`register`: its modality (``modality``, checked, else
        detected) and its vessel map at this registrar's working width; as a fixed image,
        what the pairs derive from that map alone is also made once, by the first pair
        (:meth:`fire_reg.register.maps.VesselMaps.fixed_derived`). A pair with a
        prepared image gives the same result as with the image itself (``mask`` and
        ``modality`` given to ``register`` alike); its ``seconds`` leave the preparation out.
        ValueError for an unknown modality."""
        image = np.asarray(image)
        return self._prepared(image, mask, modality, (image.shape[1], image.shape[0]))

    def prepare_file(self, path, modality: str | None = None) -> PreparedImage:
        """An image file decoded as :meth:`register_files` decodes it (at no less than
        :attr:`decode_width`) and prepared (:meth:`prepare`); :meth:`register_files` takes it
        in place of the file's path. InputError for an unreadable image."""
        size = image_size(path)
        pixels, scale = read_for_width(path, self.decode_width)
        return self._prepared(pixels, None, modality, tuple(size), tuple(scale), str(path))

    def _prepared(self, image, mask, modality, size, decode_scale=(1.0, 1.0), path=None):
        name = (modalities.check(modality) if modality is not None
                else modalities.detect(image, mask).modality)
        prepared = PreparedImage(image, mask, name, modality is not None, self.preprocessing,
                                 modalities.polarity(name), size, decode_scale, path)
        prepared.image_map()  # made now, once
        return prepared

    def register(self, fixed, moving, fixed_mask=None, moving_mask=None,
                 modalities_given=(None, None)) -> Registration:
        """Register two BGR (or gray) images, or images :meth:`prepare` made ready; the
        transform is in these images' pixels. A prepared image brings its own mask.

        The images' modalities are ``modalities_given`` (fixed, moving), else the one given
        to :meth:`prepare`, else the config's ``modality``, else detected
        (:func:`fire_reg.imaging.modality.detect`; a prepared image's once); each image's
        vessel map takes its modality's polarity, so that an angiogram's bright vessels meet
        a photograph's dark ones."""
        start = time.perf_counter()
        sides, masks = (fixed, moving), (fixed_mask, moving_mask)
        if any(isinstance(side, PreparedImage) and mask is not None
               for side, mask in zip(sides, masks)):
            raise ValueError("a prepared image brings its own mask: give it to prepare()")
        with one_blas_thread():  # its linear algebra is small
            return self._registered(sides, masks, modalities_given, start)

    def _registered(self, sides, masks, modalities_given, start: float) -> Registration:
        """:meth:`register`'s steps (module notes), timed from ``start``
        (``time.perf_counter()``)."""
        maps, pair_modalities = self._pair_maps(sides, masks, modalities_given)
        polarities = tuple(modalities.polarity(name) for name in pair_modalities)
        groundwork = _pool().submit(self._groundwork, maps)  # on a core the network leaves idle
        estimate, similarity = self._network_estimate(maps)
        groundwork.result()
        stages = {"network": maps.to_full(estimate)}
        reason = "network"
        if self.config.refine == "ecc":
            estimate, similarity, reason = self._ecc_steps(sides, masks, maps, estimate,
                                                           similarity, stages, polarities)
        if self.config.transform != "none":
            fine = fine_stage(maps, estimate, self.config.transform, self.config.fine)
            estimate = fine.transform
            stages[f"fine_{fine.model}"] = maps.to_full(estimate)
            reason = f"{reason}, then {fine.reason}"
            similarity = maps.similarity(estimate)
        fixed_size, moving_size = (_pixels(side).shape[1::-1] for side in sides)
        verdict = trust.judge(maps, estimate, fixed_size, self.config.trust)
        if pair_modalities != ("colour", "colour"):
            reason = " -> ".join(pair_modalities[::-1]) + f": {reason}"
        return Registration(maps.to_full(estimate), verdict.status, f"{reason}; {verdict.reason}",
                            fixed_size, moving_size, seconds=time.perf_counter() - start,
                            estimated_error_px=verdict.estimated_error_px,
                            overlap=verdict.overlap, similarity=similarity,
                            checks=verdict.checks, stages=stages,
                            modalities=dict(zip(("fixed", "moving"), pair_modalities)))

    def _groundwork(self, maps: VesselMaps) -> None:
        """What the fine stage and trust derive from the fixed map alone (their tiles), made
        while the network runs (kept with the fixed map: a prepared reference has them)."""
        if self.config.transform != "none":
            fine.groundwork(maps, self.config.fine)
        trust.groundwork(maps, self.config.trust)

    def _pair_maps(self, sides, masks, given) -> tuple[VesselMaps, tuple[str, str]]:
        """The pair's vessel maps and (fixed, moving) modalities, both sides (:meth:`_side`)
        side by side (:func:`~fire_reg.register.maps.side_by_side`)."""
        (fixed_name, fixed_map), (moving_name, moving_map) = side_by_side(
            lambda job: self._side(*job),
            *zip(sides, masks, given, self.config.given_modalities()))
        return (VesselMaps.of_maps(fixed_map, moving_map, self.work_width),
                (fixed_name, moving_name))

    def _side(self, side, mask, here, configured) -> tuple[str, ImageMap]:
        """(modality, vessel map) of one side of a pair: the modality given here, else given
        to prepare, else configured, else detected (a prepared image's when it was prepared);
        a side that is not prepared is reduced to the working width once for both."""
        if isinstance(side, PreparedImage):
            name = (here or (side.modality_given and side.modality) or configured
                    or side.modality)
            return name, side.image_map(self.preprocessing, modalities.polarity(name))
        if self.work_width == modalities.WORK_WIDTH:
            side, mask = reduce(side, self.work_width, mask), None
        name = here or configured or modalities.detect(side, mask).modality
        return name, ImageMap.of(side, self.preprocessing, mask, modalities.polarity(name))

    def _ecc_steps(self, sides, masks, maps, estimate, similarity, stages, polarities):
        """ECC on the working maps, then optionally on finer maps of ``sides`` (the images or
        prepared images, with ``masks``); each step kept only when it raises that width's
        similarity. Returns (estimate, similarity, reason) in working px."""
        reason = "network"
        steps = [(maps, self.config.ecc_options)]
        fine_width = min(self.config.refine_width or 0,
                         *(_pixels(side).shape[1] for side in sides))
        if fine_width >= POLISH_MIN_RATIO * self.work_width:
            finer = dataclasses.replace(self.preprocessing, work_width=fine_width)
            steps.append((VesselMaps.of(*sides, finer, *masks, polarities),
                          self.config.polish))
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
        fixed_in, fixed_in_fov = maps.fixed_derived(("network input", size), lambda: (
            geometry.resample(maps.fixed, from_patch, (size, size)),
            geometry.resample(maps.fixed_fov.astype(np.float32), from_patch, (size, size)) > 0.5))
        estimate = geometry.pixel_from_letterboxed(geometry.identity(), maps.fixed_size,
                                                   maps.moving.shape[1::-1], size)
        similarity = -1.0
        for iteration in range(self.config.iterations):
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
        outputs = self._network.predict_on_batch(batch)  # compiled once, then fast
        return np.asarray(outputs["matrix"][0], np.float64), np.asarray(outputs["matches"][0])

    def register_files(self, fixed_path, moving_path) -> Registration:
        """Register two image files (either may be one :meth:`prepare_file` made ready); the
        transform is in the files' original pixels
        (:func:`fire_reg.register.result.register_files`)."""
        return register_files(self, fixed_path, moving_path)

    @classmethod
    def preload(cls, model=None) -> None:
        """Load ``model`` (a ``.keras`` path; None: the shipped model) in this process and
        make it ready (its prediction compiled) before a pickled registrar of the same file
        arrives: a worker process does it while the command loads its own, and unpickling
        then takes the model, its network and compiled prediction from here (matched by the
        file's bytes). One is kept."""
        ready = cls(model)
        _PRELOADED.clear()
        _PRELOADED[hashlib.sha256(ready._archive).hexdigest()] = ready

    def __getstate__(self) -> dict:
        """What a pickle holds (a worker process gets the registrar this way): the config and
        the model: the bytes of the file it was loaded from, else the model pickled by Keras
        (a ``.keras`` archive made now; Keras then imports TensorFlow, seconds under another
        backend) with its settings as plain JSON."""
        if self._archive is not None:
            return {"config": self.config, "archive": self._archive}
        return {"config": self.config, "model": pickle.dumps(self.model),
                "settings": json.loads(json.dumps(self.settings.to_dict()))}

    def __setstate__(self, state: dict) -> None:
        import fire_reg.learn.network  # noqa: F401  (registers fire-reg's layers with Keras)
        from fire_reg.learn.settings import ModelSettings

        if "archive" in state:
            ready = _PRELOADED.get(hashlib.sha256(state["archive"]).hexdigest())
            if ready is not None:  # the same model file, loaded and compiled here already
                self.__dict__.update(vars(ready), config=state["config"])
                return
            with tempfile.TemporaryDirectory(prefix="fire-reg-model-") as folder:
                path = Path(folder) / "model.keras"  # loaded as the file was, from a copy
                path.write_bytes(state["archive"])
                self.__init__(path, state["config"])
            return
        model = pickle.loads(state["model"])
        self.__init__((model, ModelSettings.from_dict(state["settings"])), state["config"])
