"""Embedded FIRE-layout sets: layout, determinism, exact ground truth, aperture, categories,
the curved (sphere) geometry and its calibration against FIRE, the earlier affine geometry."""
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg.cli import main
from fire_reg.imaging.vessels import fov_mask, vessel_map
from fire_reg import geometry
from fire_reg.data import embedded, statistics
from fire_reg.data.affine import render_affine
from fire_reg.data.ground_truth import dense_map, exact_map, interpolate
from fire_reg.data.nonrigid import displacement_field, field_at, undeform
from fire_reg.data.sources import Source, load_source, lookup, shrink
from fire_reg.data.sphere import EYE, render_sphere, sample_sphere, sphere_map
from fire_reg.data.statistics import (FIRE_DOCUMENTED, FIRE_GROUND_TRUTH_ENV, STATISTIC_KEYS,
                                      fire_statistics, format_statistics, pair_statistics,
                                      set_statistics)
from fire_reg.io.errors import InputError

SIZE = 448
CATEGORIES = {"S": 2, "P": 2, "A": 2}
FIRE_PX = 2912 / SIZE


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    """The default (sphere) geometry."""
    out = tmp_path_factory.mktemp("emb")
    summary = embedded.make_embedded_set(out, categories=CATEGORIES, seed=3, size=SIZE,
                                         progress=False)
    return out, summary


@pytest.fixture(scope="module")
def emb_affine(tmp_path_factory):
    out = tmp_path_factory.mktemp("emb_affine")
    summary = embedded.make_embedded_set(out, categories=CATEGORIES, seed=3, size=SIZE,
                                         progress=False, geometry="affine")
    return out, summary


def load_pair(out: Path, record: dict):
    fixed = cv2.imread(str(out / "Images" / f"{record['id']}_1.jpg"))
    moving = cv2.imread(str(out / "Images" / f"{record['id']}_2.jpg"))
    points = np.loadtxt(out / "Ground Truth" / f"control_points_{record['id']}_1_2.txt")
    return fixed, moving, points, np.array(record["matrix"])


def read_mask(out: Path) -> np.ndarray:
    return cv2.imread(str(out / "Masks" / "mask.png"), cv2.IMREAD_GRAYSCALE) > 127


def bilinear(dense, points, step=8):
    """Plain bilinear interpolation of a dense map with nodes every ``step`` px from 0."""
    grid = points / step
    corner = np.minimum(np.floor(grid).astype(int), np.array(dense.shape[1::-1]) - 2)
    t = grid - corner
    i, j = corner.T
    d = dense.astype(np.float64)
    top = d[j, i] * (1 - t[:, :1]) + d[j, i + 1] * t[:, :1]
    bottom = d[j + 1, i] * (1 - t[:, :1]) + d[j + 1, i + 1] * t[:, :1]
    return top * (1 - t[:, 1:]) + bottom * t[:, 1:]


def full_map(out: Path, record: dict) -> np.ndarray:
    """(H, W, 2) float32 moving px of every fixed pixel, from the pair's dense file."""
    width, height = record["size"]
    ys, xs = np.mgrid[:height, :width]
    pixels = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    dense = np.load(out / record["dense"])
    return bilinear(dense, pixels).reshape(height, width, 2).astype(np.float32)


def overlap(mask, mapping) -> float:
    """Share of the fixed aperture whose image (``mapping``: (H, W, 2) moving px) lands
    inside the moving aperture."""
    mapped = np.rint(mapping[mask]).astype(int)
    ok = ((mapped >= 0) & (mapped < [mask.shape[1], mask.shape[0]])).all(1)
    inside = np.zeros(len(mapped), bool)
    inside[ok] = mask[mapped[ok, 1], mapped[ok, 0]]
    return inside.mean()


def vessel_ncc(fixed, other, common) -> float:
    """Normalised cross-correlation of the vessel maps inside a common mask."""
    a, small, _ = vessel_map(fixed, common)
    b, _, _ = vessel_map(other, common)
    inner = cv2.erode(small.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return float(np.corrcoef(a[inner], b[inner])[0, 1])


def test_layout(emb):
    out, summary = emb
    ids = ["S01", "S02", "P01", "P02", "A01", "A02"]
    assert [p["id"] for p in summary["pairs"]] == ids
    assert json.loads((out / "embedded.json").read_text()) == summary
    assert summary["geometry"] == "sphere" and summary["eye"] == EYE
    assert sorted(p.name for p in (out / "Images").iterdir()) == sorted(
        f"{i}_{k}.jpg" for i in ids for k in (1, 2))
    assert sorted(p.name for p in (out / "Ground Truth").iterdir()) == sorted(
        f"control_points_{i}_1_2.txt" for i in ids)
    assert sorted(p.name for p in (out / "Dense").iterdir()) == sorted(
        f"{i}_fixed_to_moving.npy" for i in ids)
    mask = cv2.imread(str(out / "Masks" / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
    nodes = -(-(SIZE - 1) // 8) + 1
    for record in summary["pairs"]:
        fixed, moving, points, matrix = load_pair(out, record)
        assert fixed.shape == moving.shape == (SIZE, SIZE, 3)
        assert points.shape == (10, 4)
        assert record["source"] == "skimage.data.retina" and record["source_index"] == 0
        assert record["geometry"] == "sphere" and record["dense"].startswith("Dense/")
        assert set(record["model"]) == {"eye", "source", "fixed", "moving"}
        dense = np.load(out / record["dense"])
        assert dense.dtype == np.float32 and dense.shape == (nodes, nodes, 2)
        np.testing.assert_allclose(geometry.compose(matrix, record["inverse"]), np.eye(2, 3),
                                   atol=1e-9)
        assert record["transform"]["model"] == "quadratic"
        assert np.shape(record["transform"]["fixed_to_moving"]) == (2, 6)
        assert (record["nonrigid"] is None) == (record["category"] != "A")
    assert not list(out.rglob("*.part*"))


def test_deterministic(emb, tmp_path):
    out, _ = emb
    embedded.make_embedded_set(tmp_path, categories=CATEGORIES, seed=3, size=SIZE,
                               progress=False)
    for path in out.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / path.relative_to(out)).read_bytes(), path
    other = embedded.make_embedded_set(tmp_path / "other", categories={"S": 1}, seed=4,
                                       size=SIZE, progress=False)
    assert other["pairs"][0]["matrix"] != emb[1]["pairs"][0]["matrix"]


def test_control_points_are_the_exact_map(emb, emb_affine):
    for (out, summary), decimals in ((emb, 0.0051), (emb_affine, 0.0101)):
        for record in summary["pairs"]:
            _, _, points, _ = load_pair(out, record)
            expected = exact_map(record, points[:, :2])
            # sphere: the written fixed points are mapped; affine (as before): the unrounded
            assert np.abs(expected - points[:, 2:]).max() <= decimals, record["id"]


def test_dense_map_agrees_with_exact_map(emb, emb_affine):
    rng = np.random.default_rng(0)
    for out, summary in (emb, emb_affine):
        for record in summary["pairs"]:
            dense = np.load(out / record["dense"])
            np.testing.assert_array_equal(dense, dense_map(record))
            last = dense.shape[0] - 1  # nodes every 8 px up to the first at or beyond SIZE - 1
            assert 8 * last >= SIZE - 1 > 8 * (last - 1)
            for i, j in ((0, 0), (1, 0), (0, 2), (last, last)):
                np.testing.assert_allclose(
                    dense[j, i], exact_map(record, [[8 * i, 8 * j]])[0], atol=1e-3)
            between = rng.uniform(0, SIZE - 1, (500, 2))
            exact = exact_map(record, between)
            assert np.abs(bilinear(dense, between) - exact).max() < 0.02, record["id"]
            assert np.abs(interpolate(dense, between) - exact).max() < 0.02


def test_sphere_render_follows_the_exact_map():
    """Dots of a synthetic source appear in both views where the model puts them."""
    size = 320
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[:size, :size]
    centre = (size - 1) / 2
    disc = np.hypot(xs - centre, ys - centre) < 0.48 * size
    dots = np.stack(np.meshgrid(np.arange(40, size - 39, 30), np.arange(40, size - 39, 30)),
                    -1).reshape(-1, 2) + rng.uniform(-4, 4, (81, 2))
    image = np.zeros((size, size, 3), np.uint8)
    green = np.zeros((size, size))
    for x, y in dots:
        green = np.maximum(green, 250 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2)))
    image[..., 1] = green * disc
    image[..., 2] = 60 * disc  # a bright aperture
    source = Source("dots", 0, image, disc, shrink(disc, 1.0), (1.0, 1.0), "")
    for category in ("S", "P"):
        model = sample_sphere(source, category, rng)["model"]
        fixed, _ = render_sphere(source, model, "fixed")
        moving, _ = render_sphere(source, model, "moving")
        in_fixed = sphere_map(model, dots, "source", "fixed")
        in_moving = exact_map({"geometry": "sphere", "model": model}, in_fixed)
        np.testing.assert_allclose(sphere_map(model, dots, "source", "moving"),
                                   in_moving, atol=1e-6)
        checked = 0
        for view, expected in ((fixed, in_fixed), (moving, in_moving)):
            plane = view[..., 1].astype(float)
            for x, y in expected:
                x0, y0 = int(round(x)) - 5, int(round(y)) - 5
                if not (np.hypot(x - centre, y - centre) < 0.40 * size):
                    continue
                window = plane[y0:y0 + 11, x0:x0 + 11]
                wy, wx = np.mgrid[y0:y0 + 11, x0:x0 + 11]
                found = np.array([(window * wx).sum(), (window * wy).sum()]) / window.sum()
                assert np.linalg.norm(found - (x, y)) < 0.3, (category, found, (x, y))
                checked += 1
        assert checked > 40


def test_dense_map_aligns_vessels(emb):
    """Warping with the dense map aligns the views; better than the best affine on P."""
    out, summary = emb
    mask = read_mask(out)
    for record in summary["pairs"]:
        if record["category"] == "A":
            continue
        fixed, moving, _, matrix = load_pair(out, record)
        mapping = full_map(out, record)
        warped = cv2.remap(moving, mapping, None, cv2.INTER_LINEAR)
        warped_mask = cv2.remap(mask.astype(np.uint8), mapping, None, cv2.INTER_NEAREST) > 0
        dense = vessel_ncc(fixed, warped, mask & warped_mask)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        affine = vessel_ncc(fixed, cv2.warpAffine(moving, matrix, (SIZE, SIZE), flags=flags),
                            mask & (cv2.warpAffine(mask.astype(np.uint8), matrix, (SIZE, SIZE),
                                                   flags=flags) > 0))
        assert dense > 0.75 and dense > affine - 0.01, (record["id"], dense, affine)
        if record["category"] == "P":
            assert dense > affine + 0.05, (record["id"], dense, affine)


def test_matrix_is_the_best_affine(emb):
    """"matrix": the least-squares affine of the exact map over the dense nodes inside the
    fixed aperture whose image lies inside the moving aperture."""
    out, summary = emb
    mask = read_mask(out)
    grid = geometry.grid_points((SIZE, SIZE))
    for record in summary["pairs"]:
        _, _, points, matrix = load_pair(out, record)
        dense = np.load(out / record["dense"]).astype(np.float64)
        nodes = np.stack(np.meshgrid(np.arange(dense.shape[1]) * 8.0,
                                     np.arange(dense.shape[0]) * 8.0), -1).reshape(-1, 2)
        dense = dense.reshape(-1, 2)
        common = lookup(mask, nodes) & lookup(mask, dense)
        fitted, residuals = geometry.fit_affine(nodes[common], dense[common])
        assert geometry.mean_point_distance(fitted, matrix, grid) < 1e-3, record["id"]
        assert record["matrix_fit"]["nodes"] == common.sum()
        assert abs(record["matrix_fit"]["rms_px"] - np.sqrt(np.mean(residuals ** 2))) < 1e-3
        # the control points' own best affine is close to it (a few FIRE px)
        own, _ = geometry.fit_affine(points[:, :2], points[:, 2:])
        assert geometry.mean_point_distance(own, matrix, points[:, :2]) < 25 / FIRE_PX


def test_sphere_pairs_are_not_affine(emb, emb_affine):
    sphere = emb[1]["statistics"]["categories"]
    affine = emb_affine[1]["statistics"]["categories"]
    assert sphere["P"]["affine"] > 5.0 > 20 * affine["P"]["affine"]  # FIRE-equivalent px
    assert sphere["P"]["quadratic"] < 0.2 * sphere["P"]["affine"]
    assert sphere["S"]["affine"] > 5 * affine["S"]["affine"]
    for record in emb[1]["pairs"]:
        _, _, points, _ = load_pair(emb[0], record)
        _, residuals = geometry.fit_affine(points[:, :2], points[:, 2:])
        assert residuals.max() > 0.02, record["id"]


def test_calibrated_to_fire():
    """Medians of displacement and best-affine residual of sphere models (no rendering: ten
    points spread over the common field) within 35 % of FIRE's (S, P)."""
    source = load_source(None, 0, 256)
    width = source.aperture.shape[1]
    inner = shrink(source.aperture, 0.06 * width)
    ys, xs = np.nonzero(inner[::4, ::4])
    candidates = np.stack([xs, ys], 1) * 4.0
    for category in ("S", "P"):
        rng = np.random.default_rng(7)
        rows = []
        for _ in range(30):
            model = sample_sphere(source, category, rng)["model"]
            usable = candidates[lookup(inner, sphere_map(model, candidates))]
            chosen = [int(rng.integers(len(usable)))]
            distance = np.linalg.norm(usable - usable[chosen[0]], axis=1)
            for _ in range(9):
                chosen.append(int(np.argmax(distance)))
                distance = np.minimum(distance,
                                      np.linalg.norm(usable - usable[chosen[-1]], axis=1))
            fixed = usable[chosen]
            rows.append(pair_statistics(fixed, sphere_map(model, fixed))
                        * 2912 / width)
        displacement, affine = np.median(rows, axis=0)[:2]
        target = FIRE_DOCUMENTED[category]
        assert abs(displacement / target["displacement"] - 1) < 0.35, (category, displacement)
        assert abs(affine / target["affine"] - 1) < 0.35, (category, affine)


def test_points_inside_both_apertures(emb):
    out, summary = emb
    inner = cv2.erode(read_mask(out).astype(np.uint8), np.ones((9, 9), np.uint8))
    for record in summary["pairs"]:
        _, _, points, _ = load_pair(out, record)
        for xy in (points[:, :2], points[:, 2:]):
            ix, iy = np.rint(xy).astype(int).T
            assert inner[iy, ix].all(), record["id"]
        spacing = np.linalg.norm(points[:, None, :2] - points[None, :, :2], axis=2)
        assert spacing[~np.eye(10, dtype=bool)].min() > 0.05 * SIZE  # spread out


def test_aperture_stays_put(emb):
    out, summary = emb
    mask = read_mask(out)
    outside = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    for record in summary["pairs"]:
        for image in load_pair(out, record)[:2]:
            assert image[outside].max() <= 20, record["id"]  # black up to JPEG ringing
            found = fov_mask(image)
            assert (found & mask).sum() / (found | mask).sum() > 0.97, record["id"]


def test_overlap_by_category(emb):
    out, summary = emb
    mask = read_mask(out)
    for record in summary["pairs"]:
        share = overlap(mask, full_map(out, record))
        assert abs(share - record["overlap"]) < 0.02
        assert (share < 0.75) if record["category"] == "P" else (share > 0.75), record["id"]


def test_nonrigid_points_follow_the_image():
    """A point u of the undeformed view is drawn at the q with q + d(q) = u."""
    size = 256
    rng = np.random.default_rng(0)
    dots = geometry.grid_points((size - 80, size - 80), 4) + 40 + rng.uniform(-5, 5, (16, 2))
    image = np.zeros((size, size, 3), np.uint8)
    ys, xs = np.mgrid[:size, :size]
    for x, y in dots:
        image[..., 1] = np.maximum(image[..., 1], 250 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2)
                                                                / (2 * 1.5 ** 2)))
    ones = np.ones((size, size), np.uint8)
    source = Source("dots", 0, image, ones.astype(bool), ones, (1.0, 1.0), "")
    view = geometry.about_center(0.95 * np.eye(2), (size / 2, size / 2))
    field, nonrigid = displacement_field(rng, (size, size), 6.0)
    rendered, _ = render_affine(source, view, field)
    expected = undeform(geometry.apply(geometry.invert(view), dots), field)
    record = {"matrix": geometry.invert(view).tolist(), "nonrigid": nonrigid,
              "size": [size, size]}
    np.testing.assert_array_equal(exact_map(record, dots), expected)
    green = rendered[..., 1].astype(float)
    for x, y in expected:
        x0, y0 = int(round(x)) - 5, int(round(y)) - 5
        window = green[y0:y0 + 11, x0:x0 + 11]
        wy, wx = np.mgrid[y0:y0 + 11, x0:x0 + 11]
        found = np.array([(window * wx).sum(), (window * wy).sum()]) / window.sum()
        assert np.linalg.norm(found - (x, y)) < 0.25
    undeformed = geometry.apply(geometry.invert(view), dots)
    assert np.linalg.norm(expected - undeformed, axis=1).max() > 2.0  # the test has teeth


# Written by the generator before the sphere model (seed 5, size 256, S1 P1 A1).
BEFORE_POINTS_SHA256 = {
    "S01": "64531bea2d015aeab10c2f74afb8ad4ba2933f1efd76b8324f842b958b786f14",
    "P01": "04f13e34ad60407e18eacdb46f5e887b06e1e4b2dfae60e5eaaa7e8aa88c8f60",
    "A01": "a960e6e0c63aa4d4f0df62d973604a1c3ec1c656c411e46a1f481ea789188425",
}
BEFORE_MATRIX = {
    "S01": [[1.0293339134156323, -0.05484640316003971, -3.1534830087353374],
            [0.054846403160039706, 1.0293339134156325, -11.33235543675779]],
    "P01": [[0.9895941236332664, -0.09500963212713472, -9.88336291191792],
            [0.09500963212713473, 0.9895941236332662, -76.55806930867129]],
    "A01": [[0.9917421392260771, 0.045430049660926175, -13.211290951183432],
            [-0.045430049660926175, 0.9917421392260771, 1.3408992906413886]],
}
BEFORE_IMAGE_MEANS_BGR = {
    "S01_1": [39.077, 54.253, 142.232], "S01_2": [41.634, 57.853, 153.504],
    "P01_1": [40.251, 59.857, 135.395], "P01_2": [39.924, 56.865, 150.8],
    "A01_1": [41.493, 54.493, 147.891], "A01_2": [38.554, 47.817, 80.173],
}


def test_affine_geometry_reproduces_the_earlier_sets(tmp_path):
    summary = embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 1, "A": 1}, seed=5,
                                         size=256, progress=False, geometry="affine")
    assert summary["geometry"] == "affine"
    for record in summary["pairs"]:
        text = (tmp_path / "Ground Truth" / f"control_points_{record['id']}_1_2.txt").read_bytes()
        assert hashlib.sha256(text).hexdigest() == BEFORE_POINTS_SHA256[record["id"]]
        np.testing.assert_allclose(record["matrix"], BEFORE_MATRIX[record["id"]], atol=1e-12)
        for k in (1, 2):
            name = f"{record['id']}_{k}"
            means = cv2.imread(str(tmp_path / "Images" / f"{name}.jpg")).mean(axis=(0, 1))
            np.testing.assert_allclose(means, BEFORE_IMAGE_MEANS_BGR[name], atol=0.01)


def test_statistics(emb, tmp_path, monkeypatch):
    out, summary = emb
    assert set_statistics(out)["categories"] == summary["statistics"]["categories"]
    stats = summary["statistics"]["categories"]
    assert {c: v["pairs"] for c, v in stats.items()} == CATEGORIES
    # a pure shift: displacement only; a rotation about a point is affine
    rng = np.random.default_rng(0)
    fixed = rng.uniform(0, 2912, (10, 2))
    values = pair_statistics(fixed, fixed + [3.0, 4.0])
    np.testing.assert_allclose(values, [5.0, 0, 0, 0], atol=1e-6)
    bent = fixed + 1e-4 * fixed[:, ::-1] ** 2
    values = pair_statistics(fixed, bent)
    assert values[1] > 1.0 and values[3] < 1e-6
    # FIRE: a folder of control-point files, a missing folder, the documented fallback
    folder = tmp_path / "gt"
    folder.mkdir()
    np.savetxt(folder / "control_points_S01_1_2.txt", np.hstack([fixed, fixed + [3.0, 4.0]]))
    np.savetxt(folder / "control_points_P01_1_2.txt", np.hstack([fixed, bent]))
    fire = fire_statistics(folder)["categories"]
    assert fire["S"]["pairs"] == 1 and abs(fire["S"]["displacement"] - 5.0) < 1e-3
    assert fire["P"]["affine"] > 1.0 and "A" not in fire
    with pytest.raises(InputError, match="missing"):
        fire_statistics(tmp_path / "missing")
    monkeypatch.setenv(FIRE_GROUND_TRUTH_ENV, str(tmp_path / "absent"))
    documented = fire_statistics()
    assert "documented" in documented["label"]
    assert documented["categories"] == FIRE_DOCUMENTED
    table = format_statistics(summary["statistics"], documented)
    assert "this set" in table and "documented" in table and len(table.splitlines()) == 8


def test_fire_ground_truth_when_present():
    """With the real FIRE ground truth at hand, its statistics are the documented ones."""
    folder = statistics._default_ground_truth()
    stats = fire_statistics()
    if not folder.is_dir():
        assert "documented" in stats["label"]
        return
    for category, documented in FIRE_DOCUMENTED.items():
        values = stats["categories"][category]
        assert values["pairs"] == documented["pairs"]
        for key in STATISTIC_KEYS:
            assert abs(values[key] / documented[key] - 1) < 0.05, (category, key)


def test_cli_prints_the_statistics(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(FIRE_GROUND_TRUTH_ENV, str(tmp_path / "absent"))
    out = tmp_path / "set"
    assert main(["data", "embedded", "--out", str(out), "--size", "160",
                     "--per-image", "S1,P1"]) == 0
    printed = capsys.readouterr().out
    assert "sphere geometry" in printed and "FIRE (documented values)" in printed
    assert json.loads((out / "embedded.json").read_text())["geometry"] == "sphere"
    assert main(["data", "embedded", "--out", str(out), "--size", "160",
                     "--per-image", "S1,P1", "--geometry", "affine"]) == 2
    assert main(["data", "embedded", "--out", str(tmp_path / "x"),
                     "--geometry", "curved"]) == 2


def test_folder_of_images(tmp_path):
    retina = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR)
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.resize(retina, (400, 400), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(folder / "b.jpg"), cv2.resize(retina, (360, 380), interpolation=cv2.INTER_AREA))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    summary = embedded.make_embedded_set(out, images=folder, categories={"S": 2, "P": 1},
                                         progress=False)
    assert [(p["id"], p["source"], p["source_index"]) for p in summary["pairs"]] == [
        ("S01", "a.png", 0), ("S02", "a.png", 0), ("P01", "a.png", 0),
        ("S03", "b.jpg", 1), ("S04", "b.jpg", 1), ("P02", "b.jpg", 1)]
    assert cv2.imread(str(out / "Images" / "S03_1.jpg")).shape == (380, 360, 3)
    assert np.load(out / "Dense" / "S03_fixed_to_moving.npy").shape == (49, 46, 2)
    assert read_mask(out).shape == (400, 400)
    for record in summary["pairs"]:
        mask = cv2.imread(str(out / record["aperture"]["mask"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape[::-1] == tuple(record["size"])
        assert (mask > 127).sum() == record["aperture"]["area_px"]


def test_category_counts():
    assert embedded._category_counts(None, None, embedded.DEFAULT_SINGLE) == {
        "S": 6, "P": 4, "A": 2}
    assert embedded._category_counts(None, 5, embedded.DEFAULT_SINGLE) == {
        "S": 2, "P": 2, "A": 1}
    assert embedded._category_counts({"P": 3}, None, embedded.DEFAULT_FOLDER) == {
        "S": 0, "P": 3, "A": 0}
    with pytest.raises(InputError):
        embedded._category_counts({"X": 1}, None, embedded.DEFAULT_FOLDER)
    with pytest.raises(InputError):
        embedded._category_counts({"S": -1}, None, embedded.DEFAULT_FOLDER)


def test_bad_inputs(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(InputError, match="missing"):
        embedded.make_embedded_set(tmp_path / "out", images=missing, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="empty"):
        embedded.make_embedded_set(tmp_path / "out", images=empty, progress=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(InputError, match="broken.jpg"):
        embedded.make_embedded_set(tmp_path / "out", images=corrupt, progress=False)
    with pytest.raises(InputError, match="--geometry"):
        embedded.make_embedded_set(tmp_path / "out", geometry="curved", progress=False)
    assert not (tmp_path / "out").exists()


def test_refuses_to_mix_with_another_set(tmp_path):
    embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 0, "A": 0}, size=256, progress=False)
    embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 0, "A": 0}, size=256, progress=False)
    with pytest.raises(InputError, match="other settings"):
        embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 0, "A": 0}, size=256, seed=4,
                                   progress=False)


def test_refuses_to_mix_geometries(tmp_path):
    settings = {"categories": {"S": 1}, "size": 128, "progress": False}
    embedded.make_embedded_set(tmp_path / "a", geometry="affine", **settings)
    with pytest.raises(InputError, match="geometry 'affine'"):
        embedded.make_embedded_set(tmp_path / "a", **settings)
    embedded.make_embedded_set(tmp_path / "s", **settings)
    with pytest.raises(InputError, match="geometry 'sphere'"):
        embedded.make_embedded_set(tmp_path / "s", geometry="affine", **settings)
    # a set written before the sphere model has no "geometry": it is affine
    summary_path = tmp_path / "a" / "embedded.json"
    old = json.loads(summary_path.read_text())
    del old["geometry"]
    summary_path.write_text(json.dumps(old))
    embedded.make_embedded_set(tmp_path / "a", geometry="affine", **settings)
    with pytest.raises(InputError, match="geometry 'affine'"):
        embedded.make_embedded_set(tmp_path / "a", **settings)


def test_undeform_takes_the_nodes_of_a_fire_size_frame():
    """More points than a cv2.remap map side holds (32767; a 2912 px frame's nodes) once
    failed (`data embedded --size 2912`): each point is solved as if it were alone."""
    rng = np.random.default_rng(1)
    field, _ = displacement_field(rng, (2912, 2912), 30.0)
    points = rng.uniform(0, 2911, (40_000, 2))
    solved = undeform(points, field)
    alone = np.concatenate([undeform(part, field) for part in np.array_split(points, 40)])
    np.testing.assert_array_equal(solved, alone)
    assert np.abs(solved + field_at(field, solved) - points).max() < 0.01
    assert np.linalg.norm(solved - points, axis=1).max() > 10.0  # the field moves them
