"""Colour against angiogram end to end: an embedded pair whose moving photograph is drawn as a
fluorescein angiogram is registered `ok` and right by the shipped model, the modalities are
detected and recorded, `--modality` overrides detection, and a mirrored angiogram is not `ok`."""
import json

import cv2
import numpy as np
import pytest

from fire_reg.cli import main
from fire_reg.data.embedded import make_embedded_set
from fire_reg.data.fire import FireDataset
from fire_reg.evaluate import metrics
from fire_reg.register.registrar import Registrar


@pytest.fixture(scope="module")
def fa_set(tmp_path_factory):
    """Two curved pairs (S, P) of scikit-image's retina at 700 px, moving drawn as FA."""
    root = tmp_path_factory.mktemp("fa_set")
    make_embedded_set(root, size=700, categories={"S": 1, "P": 1, "A": 0}, modality="fa",
                      progress=False)
    return FireDataset(root)


@pytest.fixture(scope="module")
def registrar():
    return Registrar()


def test_colour_against_fa_is_registered_ok_and_right(fa_set, registrar):
    for pair in fa_set:
        result = registrar.register_files(pair.fixed_path, pair.moving_path)
        error = metrics.fire_error(result.transform, *pair.control_points(),
                                   scale=pair.scale_to_fire())
        assert result.modalities == {"fixed": "colour", "moving": "fa"}
        assert result.reason.startswith("fa -> colour: ")
        assert result.status == "ok", result.reason
        assert error < 10.0, (pair.id, error)


def test_without_the_angiogram_polarity_the_same_pair_fails(fa_set, registrar):
    """The representation is what makes it work: told both are colour, the pair fails."""
    pair = next(iter(fa_set))
    result = Registrar((registrar.model, registrar.settings),
                       modality="colour").register_files(pair.fixed_path, pair.moving_path)
    assert result.modalities == {"fixed": "colour", "moving": "colour"}
    assert result.status != "ok"


def test_a_mirrored_angiogram_is_not_ok(fa_set, registrar):
    pair = next(iter(fa_set))
    fixed = cv2.imread(str(pair.fixed_path))
    moving = np.ascontiguousarray(cv2.imread(str(pair.moving_path))[:, ::-1])
    assert registrar.register(fixed, moving).status != "ok"


def test_the_command_line_records_given_modalities(fa_set, tmp_path):
    pair = next(iter(fa_set))
    out = tmp_path / "out"
    status = main(["register", str(pair.fixed_path), str(pair.moving_path), "--out", str(out),
                   "--modality", "fixed=colour,moving=fa"])
    assert status == 0
    record = json.loads((out / "transform.json").read_text())
    assert record["modalities"] == {"fixed": "colour", "moving": "fa"}
    assert main(["register", str(pair.fixed_path), str(pair.moving_path), "--out",
                 str(tmp_path / "bad"), "--modality", "fixed=xray"]) == 2
    assert not (tmp_path / "bad").exists()
