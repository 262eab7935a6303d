"""DatasetCreator: shards match their manifest, targets align the patches, runs are resumable."""
import json

import cv2
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.learn import shards as shard_format
from fire_reg.learn.dataset_creator import DatasetCreator, PrepareConfig
from fire_reg.io.errors import InputError
from fire_reg.learn.shards import load_manifest

CONFIG = dict(patch_size=64, per_pair=6, shard_size=10, seed=5)


@pytest.fixture(scope="module")
def shards(small_fire, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    manifest = DatasetCreator(small_fire, out, PrepareConfig(**CONFIG)).run(progress=False)
    return out, manifest


def load(out, name, part):
    return np.load(shard_format.part_path(out, name, part))


def ncc(a, b, mask):
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_shards_match_manifest(shards):
    out, manifest = shards
    assert manifest == load_manifest(out)
    assert manifest["count"] == 4 * CONFIG["per_pair"] == 24
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 4]
    for shard in manifest["shards"]:
        fixed, moving = load(out, shard["name"], "fixed"), load(out, shard["name"], "moving")
        target, info = load(out, shard["name"], "target"), load(out, shard["name"], "info")
        assert fixed.shape == moving.shape == (shard["count"], 64, 64) and fixed.dtype == np.uint8
        assert target.shape == (shard["count"], 2, 3) and target.dtype == np.float32
        assert info.shape == (shard["count"], len(manifest["info_columns"]))
        # the info columns describe the target
        for row, matrix in zip(info, target):
            columns = dict(zip(manifest["info_columns"], row))
            params = geometry.AffineParams(*(columns[k] for k in geometry.PARAM_NAMES))
            np.testing.assert_allclose(params.matrix(), matrix, atol=1e-4)
    assert {p["id"] for p in manifest["pairs"]} == {"S01", "S02", "P01", "A01"}
    assert manifest["versions"]["numpy"] == np.__version__


def test_targets_align_patches(shards):
    """Warping the moving patch by the stored target brings its vessels onto the fixed patch."""
    out, manifest = shards
    gains = []
    for shard in manifest["shards"]:
        fixed = load(out, shard["name"], "fixed").astype(np.float32)
        moving = load(out, shard["name"], "moving").astype(np.float32)
        target = load(out, shard["name"], "target")
        for f, m, t in zip(fixed, moving, target):
            px = geometry.pixel_from_normalized(t, (64, 64), (64, 64))
            warped = cv2.warpAffine(m, px, (64, 64), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            common = (f > 0) & (warped > 0)
            if common.sum() > 400:
                gains.append((ncc(f, warped, common), ncc(f, m, (f > 0) & (m > 0))))
    after, before = np.array(gains).T
    assert len(gains) >= 15
    assert np.median(after) > 0.5
    assert np.median(after) > np.median(before) + 0.2


def test_reproducible_and_resumable(small_fire, shards, tmp_path):
    out, manifest = shards
    again = DatasetCreator(small_fire, tmp_path, PrepareConfig(**CONFIG)).run(progress=False)
    name = manifest["shards"][1]["name"]
    for part in ("fixed", "moving", "target", "info"):
        np.testing.assert_array_equal(load(out, name, part), load(tmp_path, name, part))
    # an interrupted run: a shard and the manifest missing, a stray temporary file
    (tmp_path / f"{name}_moving.npy").unlink()
    (tmp_path / "manifest.json").unlink()
    (tmp_path / f".{name}_moving.part.npy").write_bytes(b"half")
    resumed = DatasetCreator(small_fire, tmp_path, PrepareConfig(**CONFIG)).run(progress=False)
    assert resumed["shards"] == again["shards"]
    np.testing.assert_array_equal(load(out, name, "moving"), load(tmp_path, name, "moving"))


def test_refuses_other_configuration(small_fire, shards):
    out, _ = shards
    with pytest.raises(InputError, match="another configuration"):
        DatasetCreator(small_fire, out, PrepareConfig(**{**CONFIG, "seed": 6})).run(progress=False)


def test_real_motion_without_augmentation(small_fire, tmp_path):
    manifest = DatasetCreator(small_fire, tmp_path,
                              PrepareConfig(patch_size=64, per_pair=1, augment=False)).run(
        progress=False)
    target = load(tmp_path, manifest["shards"][0]["name"], "target")
    truth = json.loads((small_fire / "embedded.json").read_text())
    assert len(target) == len(truth["pairs"]) == 4
    # S pairs move little, the P pair a lot (normalised grid displacement)
    magnitudes = load(tmp_path, manifest["shards"][0]["name"], "info")[:, 7]
    ids = [p["id"] for p in manifest["pairs"]]
    assert magnitudes[ids.index("P01")] > max(magnitudes[ids.index("S01")],
                                              magnitudes[ids.index("S02")])


@pytest.mark.parametrize("flags,expected", [
    (["--per-pair", "0"], "--per-pair: must be at least 1, got 0"),
    (["--patch-size", "100"], "--patch-size: must be a multiple of 8, got 100"),
    (["--seed", "-2"], "--seed: must be at least 0, got -2"),
])
def test_bad_prepare_flags_exit_2(small_fire, tmp_path, capsys, flags, expected):
    from fire_reg.cli import main

    code = main(["prepare", "--fire", str(small_fire), "--out", str(tmp_path / "s"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith(f"fire-reg: error: {expected}")
    assert not list((tmp_path / "s").glob("*.json"))  # no manifest or config written


def test_bad_input(tmp_path):
    with pytest.raises(InputError, match="missing_folder"):
        DatasetCreator(tmp_path / "missing_folder", tmp_path / "out")
    with pytest.raises(InputError, match="manifest"):
        load_manifest(tmp_path)
