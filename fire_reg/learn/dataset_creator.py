"""DatasetCreator: sample network training pairs from a FIRE-layout set into ``.npy`` shards.

A sample is (fixed patch, moving patch, target) at ``patch_size`` x ``patch_size``:

* the patches are :func:`fire_reg.imaging.vessels.vessel_map` inputs (uint8, 0..255 for 0..1),
  letterboxed from the whole image (optionally zoomed on a random region, the same crop for
  both images, so the camera aperture stays where it is in each frame);
* the target is the 2x3 matrix mapping **fixed-patch normalised coordinates to
  moving-patch normalised coordinates** (``fire_reg.geometry`` conventions), float32.

With ``augment`` on, the target motion is drawn from the motion distribution below and the
moving patch shows the real moving photograph resampled so that its content moves by that
target while its aperture stays put: the pair's own ground truth is absorbed, so photometric
differences of the real pair are kept and any motion can be taught. With ``augment`` off the
target is the pair's real motion.

Modalities: each photograph's modality is detected (:func:`fire_reg.imaging.modality.detect`)
and its vessel map made with that modality's polarity, as the Registrar does. With
``modalities`` set, a colour photograph may be drawn as another modality of the same eye
(:func:`fire_reg.data.modalities.render`, no pixel moved, so the target stays exact) before its
vessel map is made: per sample, the moving one with chance ``modality_share``, the fixed one
with chance ``fixed_modality_share``, the modality chosen uniformly from ``modalities``. Each
photograph is rendered once per pair and modality (its own seeded random stream). Such a
sample also stores the moving patch drawn in the fixed patch's modality (``moving_same``: the
same content and aperture), so that the intra-modality loss compares like with like; a
photograph that is not colour is used as it is (and is its own same-modality target). The
fields of view of the fixed and of that moving patch are stored too (``fov``).

The output folder is in the shard format of :mod:`fire_reg.learn.shards` (written through it). A
re-run with the same configuration skips complete shards, so an interrupted run is finished by
running it again.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fire_reg import geometry
from fire_reg.data.modalities import RENDERED, render
from fire_reg.imaging import modality as modalities
from fire_reg.imaging.vessels import VesselMapSettings, vessel_map
from fire_reg.io.images import axis_scales, decode_reduction
from fire_reg.learn import shards
from fire_reg.config import Config, FieldError, NetworkConfig, setting
from fire_reg.io.errors import InputError
from fire_reg.io.output import write_json
from fire_reg.data.fire import FireDataset


@dataclass(frozen=True)
class MotionRange(Config):
    """Target motion distribution, in normalised patch units (1.0 = half the patch width).

    Translation radius is ``max_translation * u ** translation_power`` (u uniform), which puts
    more samples at small motions, as coarse-to-fine inference needs; rotation uniform in
    +-``max_rotation_deg`` degrees; scale log-uniform in ``scale_range``; anisotropy
    ``exp(+-max_anisotropy)`` (sx / sy) and shear up to +-``max_shear``.
    """

    max_translation: float = 0.6
    translation_power: float = 1.5
    max_rotation_deg: float = 20.0
    scale_range: tuple[float, float] = (0.87, 1.15)
    max_anisotropy: float = 0.04
    max_shear: float = 0.03

    def __post_init__(self):
        self._number("max_translation", low=0)
        self._number("translation_power", above=0)
        self._number("max_rotation_deg", low=0, high=180)
        self._range("scale_range", above=0)
        self._number("max_anisotropy", low=0)
        self._number("max_shear", low=0)

    def sample(self, rng: np.random.Generator) -> geometry.AffineParams:
        """Draw one motion (theta in radians)."""
        radius = self.max_translation * rng.uniform() ** self.translation_power
        angle = rng.uniform(0, 2 * math.pi)
        scale = math.exp(rng.uniform(*np.log(self.scale_range)))
        aniso = math.exp(rng.uniform(-self.max_anisotropy, self.max_anisotropy))
        return geometry.AffineParams(
            tx=radius * math.cos(angle), ty=radius * math.sin(angle),
            theta=math.radians(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)),
            sx=scale * aniso, sy=scale / aniso,
            shear=rng.uniform(-self.max_shear, self.max_shear))


@dataclass(frozen=True)
class PrepareConfig(Config):
    """Settings of one DatasetCreator run (the manifest's ``config``).

    ``patch_size``: side of the square patches in px (the network's input size); ``per_pair``
    samples per source pair, ``shard_size`` samples per shard; ``seed`` (>= 0) makes every
    sample reproducible; ``augment``: random target motions (``motion``) and zoom crops (up to
    ``max_zoom``, 1 = whole image) instead of the pairs' real motion; ``preprocessing``: how
    the vessel maps are made. ``modalities`` (comma-separated, from red-free, fa, ir; empty:
    none), ``modality_share`` and ``fixed_modality_share``: which modalities a colour
    photograph may be drawn as, and how often the moving / the fixed one is (module docstring).
    """

    patch_size: int = setting(128, help="side of the square patches in px: the input size of "
                                        "the network trained on them (a multiple of 8)")
    per_pair: int = setting(32, help="samples per source pair")
    seed: int = setting(0, help="random seed of the sampling (>= 0)")
    augment: bool = setting(True, help="random target motions and zoom crops; --no-augment: "
                                       "only the pairs' real motion")
    shard_size: int = setting(1024, help="samples per shard file")
    modalities: str = setting("", help="modalities a colour photograph may also be drawn as, "
                                       f"comma-separated from {', '.join(RENDERED)} (e.g. "
                                       "fa,ir,red-free; default: colour only)")
    modality_share: float = setting(0.75, help="share of samples whose moving photograph is "
                                               "drawn as one of --modalities")
    fixed_modality_share: float = setting(0.0, help="share of samples whose fixed photograph "
                                                    "is drawn as one of --modalities")
    max_zoom: float = 1.4
    motion: MotionRange = field(default_factory=MotionRange)
    preprocessing: VesselMapSettings = field(default_factory=VesselMapSettings)

    def __post_init__(self):
        self._integer("patch_size")
        try:
            NetworkConfig(input_size=self.patch_size)
        except FieldError as error:
            raise FieldError("patch_size", f"{error.problem} (the network's input size)") from None
        self._integer("per_pair", low=1)
        self._integer("seed", low=0)
        self._flag("augment")
        self._integer("shard_size", low=1)
        self._number("max_zoom", low=1)
        self._nested("motion", MotionRange)
        self._nested("preprocessing", VesselMapSettings)
        if not isinstance(self.modalities, str):
            raise FieldError("modalities", f"must be a text like fa,ir, got {self.modalities!r}")
        names = [name.strip() for name in self.modalities.split(",") if name.strip()]
        for name in names:
            if name not in RENDERED:
                raise FieldError("modalities", f"names {name!r}; choose from "
                                               f"{', '.join(RENDERED)}")
        if len(set(names)) != len(names):
            raise FieldError("modalities", f"names a modality twice: {self.modalities!r}")
        self._set("modalities", ",".join(names))
        self._number("modality_share", low=0, high=1)
        self._number("fixed_modality_share", low=0, high=1)

    @property
    def rendered(self) -> tuple[str, ...]:
        """The modalities a colour photograph may be drawn as (empty: colour only)."""
        return tuple(self.modalities.split(",")) if self.modalities else ()

    @property
    def parts(self) -> tuple[str, ...]:
        """The shard parts a run writes (fire_reg.learn.shards)."""
        return shards.PARTS if self.rendered else shards.PARTS[:5]


class DatasetCreator:
    """Samples patch pairs from every pair of a FIRE-layout set and writes shards + manifest."""

    def __init__(self, fire_root, out_dir, config: PrepareConfig | None = None):
        self.dataset = FireDataset(fire_root)
        self.out_dir = Path(out_dir)
        self.config = config or PrepareConfig()

    @property
    def total(self) -> int:
        """Number of samples the run produces."""
        return len(self.dataset) * self.config.per_pair

    def run(self, progress: bool = True) -> dict:
        """Write every missing shard, then the manifest; returns the manifest."""
        self._check_previous_run()
        pairs = list(self.dataset)
        size = self.config.shard_size
        shard_count = math.ceil(self.total / size)
        cache: dict[int, tuple] = {}
        written = []
        with tqdm(total=self.total, desc="prepare", unit="sample", disable=not progress) as bar:
            for shard in range(shard_count):
                start, stop = shard * size, min((shard + 1) * size, self.total)
                name = shards.shard_name(shard)
                if not shards.shard_complete(self.out_dir, name, stop - start,
                                             self.config.parts):
                    self._write_shard(name, pairs, range(start, stop), cache)
                written.append({"name": name, "count": stop - start})
                bar.update(stop - start)
        manifest = shards.make_manifest(
            self.dataset.root, self.config.to_dict(),
            pairs=[{"index": i, "id": p.id, "category": p.category} for i, p in enumerate(pairs)],
            shards=written, parts=self.config.parts)
        shards.write_manifest(self.out_dir, manifest)
        return manifest

    def _check_previous_run(self) -> None:
        """Refuse to mix shards of another configuration in one folder."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings = self.out_dir / "prepare_config.json"
        wanted = {"config": self.config.to_dict(), "pairs": list(self.dataset.ids)}
        if settings.exists():
            if json.loads(settings.read_text()) != wanted:
                raise InputError(self.out_dir, "holds shards made with another configuration or "
                                 "data set; choose an empty output folder")
        else:
            write_json(settings, wanted)

    def _write_shard(self, name, pairs, sample_indices, cache) -> None:
        per_pair = self.config.per_pair
        samples = [self._sample(pairs, index, cache) for index in sample_indices]
        # keep only the pair whose samples continue into the next shard
        last_pair = (sample_indices[-1]) // per_pair
        for key in list(cache):
            if key[0] != last_pair:
                del cache[key]
        shards.write_shard(self.out_dir, name, samples)

    def _photograph(self, pairs, pair_index: int, which: str, cache):
        """(image at the working width or above, its detected modality) of one photograph."""
        key = (pair_index, which)
        if key not in cache:
            pair = pairs[pair_index]
            image = pair.image(which, reduce=decode_reduction(
                pair.size(which)[0], self.config.preprocessing.work_width))
            cache[key] = (image, modalities.detect(image).modality)
        return cache[key]

    def _map(self, pairs, pair_index: int, which: str, drawn: str, cache):
        """(vessel map, field of view as float32) of one photograph drawn as ``drawn`` (its own
        modality, or one it is rendered as), with the polarity of that modality."""
        key = (pair_index, which, drawn)
        if key not in cache:
            image, source = self._photograph(pairs, pair_index, which, cache)
            if drawn != source:
                stream = [self.config.seed, pair_index, ("fixed", "moving").index(which),
                          modalities.MODALITIES.index(drawn)]
                image = render(image, drawn, np.random.default_rng(stream))
            vessels, mask, _ = vessel_map(image, settings=self.config.preprocessing,
                                          polarity=modalities.polarity(drawn))
            cache[key] = (vessels, mask.astype(np.float32))
        return cache[key]

    def _truth(self, pairs, pair_index: int, shapes, cache) -> np.ndarray:
        """The pair's ground-truth affine between its working-width maps (px) of ``shapes``
        (fixed, moving), which every modality of a photograph shares."""
        key = (pair_index, "truth")
        if key not in cache:
            pair = pairs[pair_index]
            truth_px, _ = pair.ground_truth()
            cache[key] = geometry.rescale(
                truth_px, axis_scales(pair.size("fixed")[::-1], shapes[0]),
                axis_scales(pair.size("moving")[::-1], shapes[1]))
        return cache[key]

    def _draw_modalities(self, pairs, pair_index: int, index: int, cache) -> tuple[str, str, str]:
        """(fixed, moving, same-modality moving) modalities of sample ``index``: a colour
        photograph drawn as one of ``modalities`` with the configured chance, the moving one
        again in the fixed one's modality when it can be (it is colour)."""
        sources = [self._photograph(pairs, pair_index, which, cache)[1]
                   for which in ("fixed", "moving")]
        rendered = self.config.rendered
        if not rendered:
            return sources[0], sources[1], sources[1]
        rng = np.random.default_rng([self.config.seed, index, 1])
        drawn = []
        for source, share in zip(sources, (self.config.fixed_modality_share,
                                           self.config.modality_share)):
            chosen, chance = rendered[rng.integers(len(rendered))], rng.uniform()
            drawn.append(chosen if source == "colour" and chance < share else source)
        same = drawn[0] if sources[1] == "colour" and drawn[0] in ("colour", *RENDERED) \
            else drawn[1]
        return drawn[0], drawn[1], same

    def _sample(self, pairs, index: int, cache):
        """Sample ``index`` of the run (deterministic in (seed, index))."""
        config = self.config
        pair_index = index // config.per_pair
        fixed_modality, moving_modality, same_modality = self._draw_modalities(
            pairs, pair_index, index, cache)
        fixed_pair = self._map(pairs, pair_index, "fixed", fixed_modality, cache)
        moving_pair = self._map(pairs, pair_index, "moving", moving_modality, cache)
        truth = self._truth(pairs, pair_index, (fixed_pair[0].shape, moving_pair[0].shape),
                            cache)
        rng = np.random.default_rng([config.seed, index])
        size = config.patch_size
        fixed_box = geometry.letterbox(fixed_pair[0].shape[1::-1], size)
        moving_box = geometry.letterbox(moving_pair[0].shape[1::-1], size)
        zoom, crop_x, crop_y = 1.0, 0.0, 0.0
        if config.augment and config.max_zoom > 1:
            zoom = rng.uniform(1.0, config.max_zoom)
            limit = (1 - 1 / zoom)  # normalised offset keeping the crop inside the square
            crop_x, crop_y = rng.uniform(-limit, limit, size=2)
        # crop: patch normalised -> square normalised (a zoom on a region), shared by both images
        crop = geometry.pixel_from_normalized(
            [[1 / zoom, 0, crop_x], [0, 1 / zoom, crop_y]], (size, size), (size, size))
        fixed_from_patch = geometry.compose(np.linalg.inv(fixed_box), crop)
        moving_frame = geometry.compose(np.linalg.inv(moving_box), crop)
        real_px = geometry.compose(geometry.invert(moving_frame), truth, fixed_from_patch)
        if config.augment:
            params = config.motion.sample(rng)
            target_px = geometry.pixel_from_normalized(params.matrix(), (size, size), (size, size))
            # moving content sampled so that fixed patch px p shows at target_px @ p
            content = geometry.compose(moving_frame, real_px, geometry.invert(target_px))
        else:
            target_px = real_px
            params = geometry.params_from_matrix(
                geometry.normalized_from_pixel(real_px, (size, size), (size, size)))
            content = moving_frame
        out = (size, size)

        def moving_patch(maps):
            """(patch, field of view) of a moving map: its content through ``content``, cut by
            the aperture, which stays where it is in the frame."""
            aperture = geometry.resample(maps[1], moving_frame, out) > 0.5
            retina = aperture & (geometry.resample(maps[1], content, out) > 0.5)
            return geometry.resample(maps[0], content, out) * aperture, retina

        fixed = geometry.resample(fixed_pair[0], fixed_from_patch, out)
        fixed_fov = geometry.resample(fixed_pair[1], fixed_from_patch, out) > 0.5
        moving, moving_fov = moving_patch(moving_pair)
        moving_same = None
        if config.rendered:
            moving_same, moving_fov = moving_patch(
                self._map(pairs, pair_index, "moving", same_modality, cache))
            moving_same = _to_uint8(moving_same)
        target = geometry.normalized_from_pixel(target_px, out, out)
        magnitude = geometry.mean_point_distance(target, geometry.identity(),
                                                 geometry.normalized_grid())
        info = shards.info_row(pair_index=pair_index, **asdict(params), magnitude=magnitude,
                               zoom=zoom, crop_x=crop_x, crop_y=crop_y,
                               fixed_modality=modalities.MODALITIES.index(fixed_modality),
                               moving_modality=modalities.MODALITIES.index(moving_modality))
        return shards.Sample(_to_uint8(fixed), _to_uint8(moving), target.astype(np.float32), info,
                             shards.pack_fov(fixed_fov, moving_fov), moving_same)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
