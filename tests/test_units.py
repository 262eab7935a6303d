"""One unit per number: every printed or stored error is in px of the original fixed image,
and the FIRE-equivalent figure (x 2912 / fixed width) is labelled as such."""
import re

import cv2
import numpy as np
import pytest

from fire_reg.data.embedded import make_embedded_set
from fire_reg.data.fire import FIRE_WIDTH
from fire_reg.geometry import transforms
from fire_reg.imaging.vessels import VesselMapSettings
from fire_reg.io.images import image_size, read_for_width
from fire_reg.learn import bundle, network
from fire_reg.register import trust
from fire_reg.register.maps import VesselMaps
from fire_reg.register.registrar import Registrar
from fire_reg.register.result import Registration, error_phrase

WIDTH = 600          # the pair's width: not 2912
WORK_WIDTH = 256     # so that the JPEGs are decoded at half size (300 px)
STATEMENT = re.compile(r"estimated error ([0-9.]+) px \(([0-9.]+) FIRE-equivalent px\)")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(fixed path, moving path) of an embedded S pair WIDTH px wide (JPEG)."""
    root = tmp_path_factory.mktemp("units")
    make_embedded_set(root, categories={"S": 1, "P": 0, "A": 0}, size=WIDTH, seed=3,
                      progress=False)
    return root / "Images" / "S01_1.jpg", root / "Images" / "S01_2.jpg"


@pytest.fixture(scope="module")
def model():
    """An untrained (identity) model working on vessel maps WORK_WIDTH px wide: ECC and the
    fine stage do the registering."""
    settings = bundle.ModelSettings(input_size=32,
                                    preprocessing=VesselMapSettings(work_width=WORK_WIDTH))
    return network.build_model({"input_size": 32, "encoder_channels": [4, 8, 8, 8],
                                "trunk_units": 8}, settings), settings


def _statement(reason: str) -> tuple[float, float]:
    """(px, FIRE-equivalent px) the reason states for the estimated error."""
    found = STATEMENT.findall(reason)
    assert len(found) == 1, reason
    return float(found[0][0]), float(found[0][1])


def test_reason_states_the_stored_error_of_a_file_decoded_at_reduced_size(pair, model):
    fixed_path, moving_path = pair
    registrar = Registrar(model, iterations=1)
    _, scales = read_for_width(fixed_path, registrar.decode_width)
    assert scales == (0.5, 0.5)  # the Registrar works on the half-size decode
    result = registrar.register_files(fixed_path, moving_path)
    assert result.status == "ok" and result.fixed_size == image_size(fixed_path) == (WIDTH, WIDTH)
    error = result.estimated_error_px
    px, fire = _statement(result.reason)
    assert px == round(error, 2)
    assert fire == round(error * FIRE_WIDTH / WIDTH, 2)
    record = result.to_json()
    assert _statement(record["reason"])[0] == round(record["estimated_error_px"], 2)
    # the stored lengths behind the estimate are in the same (original) px
    lengths = record["checks"]["estimated_error"]["value"]
    assert lengths["estimated_px"] == pytest.approx(error)
    assert lengths["limit_px"] == pytest.approx(25.0 * WIDTH / FIRE_WIDTH)
    assert np.hypot(lengths["departure_px"], lengths["heldout_px"]) == pytest.approx(error)
    # the same pair registered from the decoded images says the same in their (half) px
    on_arrays = registrar.register(read_for_width(fixed_path, registrar.decode_width)[0],
                                   read_for_width(moving_path, registrar.decode_width)[0])
    assert on_arrays.estimated_error_px == pytest.approx(error / 2)
    assert _statement(on_arrays.reason) == (round(error / 2, 2), fire)


def test_fire_equivalent_threshold_on_a_non_2912_image(pair, model):
    """The 'ok' limit is max_error_fire_px FIRE-equivalent px, i.e. x WIDTH / 2912 image px,
    whatever size the image is decoded at."""
    fixed_path, moving_path = pair
    result = Registrar(model, iterations=1).register_files(fixed_path, moving_path)
    fire = result.estimated_error_px * FIRE_WIDTH / WIDTH
    assert result.status == "ok"
    # a limit just below the FIRE-equivalent estimate makes it suspect, just above keeps it ok
    below = Registrar(model, iterations=1, trust=trust.TrustOptions(
        max_error_fire_px=0.9 * fire)).register_files(fixed_path, moving_path)
    above = Registrar(model, iterations=1, trust=trust.TrustOptions(
        max_error_fire_px=1.1 * fire)).register_files(fixed_path, moving_path)
    assert above.status == "ok" and below.status == "suspect"
    assert f"is over {0.9 * fire:g} FIRE-equivalent px" in below.reason
    assert _statement(below.reason) == (round(below.estimated_error_px, 2), round(fire, 2))
    assert below.checks["estimated_error"]["value"]["limit_px"] == pytest.approx(
        0.9 * fire * WIDTH / FIRE_WIDTH)


def test_judge_limit_scales_with_the_fixed_width():
    """trust.judge on the same maps: the limit in image px is the FIRE-equivalent limit x
    width / 2912, so the verdict depends on the estimate in FIRE-equivalent px only."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((256, 256)).astype(np.float32), (0, 0), 2)
    image = (image - image.min()) / (image.max() - image.min())
    fov = np.ones(image.shape, bool)
    maps = VesselMaps(image, fov, np.roll(image, 2, axis=1), fov, (1.0, 1.0), (1.0, 1.0), 256)
    shifted = transforms.Affine(np.array([[1.0, 0, 2.4], [0, 1, 0]]))  # 0.4 map px off
    for width in (512, 2912, 5000):
        verdict = trust.judge(maps, shifted, (width, width))
        estimate = verdict.estimated_error_px
        assert estimate is not None and estimate > 0
        fire = estimate * FIRE_WIDTH / width
        for limit, status in ((0.95 * fire, "suspect"), (1.05 * fire, "ok")):
            judged = trust.judge(maps, shifted, (width, width),
                                 trust.TrustOptions(max_error_fire_px=limit))
            assert judged.status == status, (width, limit, judged.reason)
            assert error_phrase(estimate, width) in judged.reason


def test_rescaled_rewrites_the_reason_and_the_stored_lengths():
    fixed_size = (728, 728)
    checks = {"evidence": {"value": {"matches": 197, "share": 0.99}, "ok": True},
              "estimated_error": {"value": {"estimated_px": 0.28, "limit_px": 6.25,
                                            "departure_px": None}, "ok": True}}
    result = Registration(transforms.Affine(np.eye(2, 3)), "ok",
                          f"network; checks passed, {error_phrase(0.28, 728)}", fixed_size,
                          fixed_size, estimated_error_px=0.28, checks=checks)
    full = result.rescaled((4.0, 4.0), (4.0, 4.0), (2912, 2912), (2912, 2912))
    assert full.estimated_error_px == pytest.approx(1.12)
    assert full.reason == ("network; checks passed, estimated error 1.12 px "
                           "(1.12 FIRE-equivalent px)")
    assert _statement(result.reason) == (0.28, 1.12)  # the FIRE-equivalent figure is unchanged
    assert full.checks["estimated_error"]["value"] == {"estimated_px": 1.12, "limit_px": 25.0,
                                                       "departure_px": None}
    assert full.checks["evidence"] == checks["evidence"]  # counts and shares are not lengths
    assert result.checks["estimated_error"]["value"]["estimated_px"] == 0.28  # not modified
