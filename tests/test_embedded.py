"""Embedded FIRE-layout sets: layout, determinism, exact ground truth, aperture, categories."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg import embedded, geometry, imaging
from fire_reg.errors import InputError

SIZE = 448
CATEGORIES = {"S": 2, "P": 2, "A": 2}


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    out = tmp_path_factory.mktemp("emb")
    summary = embedded.make_embedded_set(out, categories=CATEGORIES, seed=3, size=SIZE,
                                         progress=False)
    return out, summary


def load_pair(out: Path, record: dict):
    fixed = cv2.imread(str(out / "Images" / f"{record['id']}_1.jpg"))
    moving = cv2.imread(str(out / "Images" / f"{record['id']}_2.jpg"))
    points = np.loadtxt(out / "Ground Truth" / f"control_points_{record['id']}_1_2.txt")
    return fixed, moving, points, np.array(record["matrix"])


def read_mask(out: Path) -> np.ndarray:
    return cv2.imread(str(out / "Masks" / "mask.png"), cv2.IMREAD_GRAYSCALE) > 127


def overlap(mask, matrix) -> float:
    """Share of the fixed aperture whose M image lands inside the moving aperture."""
    ys, xs = np.nonzero(mask)
    mapped = np.rint(geometry.apply(matrix, np.stack([xs, ys], 1))).astype(int)
    ok = ((mapped >= 0) & (mapped < [mask.shape[1], mask.shape[0]])).all(1)
    inside = np.zeros(len(xs), bool)
    inside[ok] = mask[mapped[ok, 1], mapped[ok, 0]]
    return inside.mean()


def vessel_ncc(fixed, other, common) -> float:
    """Normalised cross-correlation of the vessel maps inside a common mask."""
    a, small, _ = imaging.vessel_map(fixed, common)
    b, _, _ = imaging.vessel_map(other, common)
    inner = cv2.erode(small.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return float(np.corrcoef(a[inner], b[inner])[0, 1])


def test_layout(emb):
    out, summary = emb
    ids = ["S01", "S02", "P01", "P02", "A01", "A02"]
    assert [p["id"] for p in summary["pairs"]] == ids
    assert json.loads((out / "embedded.json").read_text()) == summary
    assert sorted(p.name for p in (out / "Images").iterdir()) == sorted(
        f"{i}_{k}.jpg" for i in ids for k in (1, 2))
    assert sorted(p.name for p in (out / "Ground Truth").iterdir()) == sorted(
        f"control_points_{i}_1_2.txt" for i in ids)
    mask = cv2.imread(str(out / "Masks" / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
    for record in summary["pairs"]:
        fixed, moving, points, matrix = load_pair(out, record)
        assert fixed.shape == moving.shape == (SIZE, SIZE, 3)
        assert points.shape == (10, 4)
        assert record["source"] == "skimage.data.retina" and record["source_index"] == 0
        views = {k: np.array(v) for k, v in record["views"].items()}
        np.testing.assert_allclose(
            geometry.compose(geometry.invert(views["moving"]), views["fixed"]), matrix,
            atol=1e-9)
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


def test_matrix_aligns_vessels(emb):
    out, summary = emb
    mask = read_mask(out)
    for record in summary["pairs"]:
        if record["category"] == "A":
            continue
        fixed, moving, _, matrix = load_pair(out, record)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warped = cv2.warpAffine(moving, matrix, (SIZE, SIZE), flags=flags)
        warped_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (SIZE, SIZE),
                                     flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
        aligned = vessel_ncc(fixed, warped, mask & warped_mask)
        unaligned = vessel_ncc(fixed, moving, mask)
        assert aligned > 0.5 and aligned > 2 * unaligned, (record["id"], aligned, unaligned)


def test_control_points_give_the_matrix(emb):
    out, summary = emb
    grid = geometry.grid_points((SIZE, SIZE))
    for record in summary["pairs"]:
        _, _, points, matrix = load_pair(out, record)
        fitted, residuals = geometry.fit_affine(points[:, :2], points[:, 2:])
        if record["category"] == "A":  # non-rigid: no affine is exact, but it is close
            assert 0.02 < residuals.max() < 5.0, (record["id"], residuals)
            assert geometry.mean_point_distance(fitted, matrix, grid) < 5.0
        else:
            assert residuals.max() < 0.02
            assert geometry.mean_point_distance(fitted, matrix, grid) < 0.05, record["id"]


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
            found = imaging.fov_mask(image)
            assert (found & mask).sum() / (found | mask).sum() > 0.97, record["id"]


def test_overlap_by_category(emb):
    out, summary = emb
    mask = read_mask(out)
    for record in summary["pairs"]:
        share = overlap(mask, np.array(record["matrix"]))
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
    source = embedded._Source("dots", 0, image, ones.astype(bool), ones, (1.0, 1.0), "")
    view = geometry.about_center(0.95 * np.eye(2), (size / 2, size / 2))
    field, _ = embedded._displacement_field(rng, (size, size), 6.0)
    rendered, _ = embedded._render(source, view, field)
    expected = embedded._undeform(geometry.apply(geometry.invert(view), dots), field)
    green = rendered[..., 1].astype(float)
    for x, y in expected:
        x0, y0 = int(round(x)) - 5, int(round(y)) - 5
        window = green[y0:y0 + 11, x0:x0 + 11]
        wy, wx = np.mgrid[y0:y0 + 11, x0:x0 + 11]
        found = np.array([(window * wx).sum(), (window * wy).sum()]) / window.sum()
        assert np.linalg.norm(found - (x, y)) < 0.25
    undeformed = geometry.apply(geometry.invert(view), dots)
    assert np.linalg.norm(expected - undeformed, axis=1).max() > 2.0  # the test has teeth


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
    assert not (tmp_path / "out").exists()


def test_refuses_to_mix_with_another_set(tmp_path):
    embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 0, "A": 0}, size=256, progress=False)
    embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 0, "A": 0}, size=256, progress=False)
    with pytest.raises(InputError, match="other settings"):
        embedded.make_embedded_set(tmp_path, categories={"S": 1, "P": 0, "A": 0}, size=256, seed=4,
                          progress=False)
