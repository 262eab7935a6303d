"""Modalities: the renderers keep the geometry, the detector reads every renderer (and the real
colour / angiogram pair when ../shared is there), polarity-aware vessel maps agree across
modalities, and embedded multimodal sets keep the exact ground truth of the colour set."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg.data.embedded import make_embedded_set
from fire_reg.data.modalities import RENDERED, render
from fire_reg.imaging import modality
from fire_reg.imaging.similarity import ncc
from fire_reg.imaging.vessels import fov_mask, reduce, vessel_map

MULTIMODAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "multimodal"


@pytest.fixture(scope="module")
def retina():
    """scikit-image's colour fundus photograph (BGR), 700 px wide, and its field of view."""
    image = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR)
    image = cv2.resize(image, (700, 700), interpolation=cv2.INTER_AREA)
    return image, fov_mask(image)


@pytest.mark.parametrize("name", ["colour", *RENDERED])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_rendering_is_detected_as_its_modality(retina, name, seed):
    image, mask = retina
    rendered = render(image, name, np.random.default_rng(seed), mask)
    assert rendered.dtype == np.uint8 and rendered.shape == image.shape
    assert modality.detect(rendered).modality == name


def test_grey_renderings_have_equal_channels_and_black_outside_the_field(retina):
    image, mask = retina
    for name in RENDERED:
        rendered = render(image, name, np.random.default_rng(0), mask)
        assert (rendered[..., 0] == rendered[..., 2]).all()
        assert not rendered[~mask].any()


def test_a_grey_angiogram_is_never_read_as_red_free(retina):
    """The same angiogram dimmer, brighter, noisier or at another size: still an angiogram."""
    image, mask = retina
    fa = render(image, "fa", np.random.default_rng(3), mask).astype(np.float32)
    noise = np.random.default_rng(4).normal(0, 6, fa.shape).astype(np.float32)
    variants = [fa * 0.5, np.clip(fa * 1.4, 0, 255), fa + noise * mask[..., None]]
    for variant in variants:
        variant = np.clip(variant, 0, 255).astype(np.uint8)
        assert modality.detect(variant).modality == "fa"
        assert modality.detect(cv2.resize(variant, (1400, 1400))).modality == "fa"


def test_renderers_move_no_pixel(retina):
    """The polarity-aware vessel map of each rendering lines up with the photograph's own: the
    phase-correlation shift is zero and the maps agree far better than the plain map does."""
    image, mask = retina
    colour_map, small_mask, _ = vessel_map(image, mask)
    for name in RENDERED:
        rendered = render(image, name, np.random.default_rng(0), mask)
        aware = vessel_map(rendered, mask, polarity=modality.polarity(name))[0]
        (dx, dy), _ = cv2.phaseCorrelate(colour_map.astype(np.float64), aware.astype(np.float64))
        assert abs(dx) < 0.05 and abs(dy) < 0.05, (name, dx, dy)
        agreement = ncc(colour_map, aware, small_mask)
        assert agreement > 0.6, (name, agreement)
        if name == "fa":
            plain = vessel_map(rendered, mask)[0]
            assert agreement > ncc(colour_map, plain, small_mask) + 0.3


def test_polarity_and_names_are_checked():
    assert modality.polarity("fa") == "bright" and modality.polarity("ir") == "dark"
    with pytest.raises(ValueError, match="unknown modality 'xray'"):
        modality.polarity("xray")
    with pytest.raises(ValueError, match="cannot render"):
        render(np.zeros((200, 200, 3), np.uint8), "xray", np.random.default_rng(0))
    with pytest.raises(ValueError, match="polarity"):
        vessel_map(np.zeros((200, 200, 3), np.uint8), polarity="sideways")


@pytest.mark.parametrize("name", ["colour", "fa"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_one_reduced_image_serves_the_detector_and_the_map(retina, name, with_mask):
    """A pair's image is reduced to the working width once for both the modality and the
    vessel map (:func:`reduce`): the very same verdict and map as from the image itself."""
    image, mask = retina
    image = image if name == "colour" else render(image, name, np.random.default_rng(0))
    mask = mask if with_mask else None
    reduced = reduce(image, modality.WORK_WIDTH, mask)
    assert reduced.width == modality.WORK_WIDTH and reduced.fov.shape == reduced.pixels.shape[:2]
    assert modality.detect(reduced) == modality.detect(image, mask)
    polarity = modality.polarity(modality.detect(reduced).modality)
    for made, direct in zip(vessel_map(reduced, polarity=polarity),
                            vessel_map(image, mask, polarity=polarity)):
        np.testing.assert_array_equal(made, direct)
    with pytest.raises(ValueError, match="700 px"):  # a reduced image only at its own width
        modality.detect(reduce(image, 700))
    with pytest.raises(ValueError, match="for a 256 px map"):
        vessel_map(reduced, work_width=256)


def test_a_multimodal_embedded_set_keeps_the_colour_sets_ground_truth(tmp_path):
    """Same seed, colour and FA: identical fixed images, control points and dense maps (exact
    ground truth); only the moving images differ, and they read as angiograms."""
    sets = {}
    for name in ("colour", "fa"):
        sets[name] = tmp_path / name
        make_embedded_set(sets[name], size=400, categories={"S": 1, "P": 1, "A": 0},
                          modality=name, progress=False)
    for relative in sorted(p.relative_to(sets["colour"]) for p in sets["colour"].rglob("*")
                           if p.is_file() and p.name != "embedded.json"):
        same = (sets["colour"] / relative).read_bytes() == (sets["fa"] / relative).read_bytes()
        moving_image = relative.name.endswith("_2.jpg")
        assert same != moving_image, relative
        if moving_image:
            moving = cv2.imread(str(sets["fa"] / relative))
            assert modality.detect(moving).modality == "fa"


@pytest.mark.skipif(not MULTIMODAL.is_dir(), reason=f"needs the real pair in {MULTIMODAL}")
def test_the_real_colour_and_angiogram_are_told_apart():
    colour = cv2.imread(str(MULTIMODAL / "colour.jpg"))
    angiogram = cv2.imread(str(MULTIMODAL / "angiogram.jpg"))
    assert modality.detect(colour).modality == "colour"
    assert modality.detect(angiogram).modality == "fa"
    green = cv2.merge([colour[..., 1]] * 3)  # a red-free photograph of the same eye
    assert modality.detect(green).modality in ("red-free", "ir")
