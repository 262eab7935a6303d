"""FIRE reader: parsing, ground truth, ordering, lazy loading, bad input, verify, manifest."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.data import fire
from fire_reg.io.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SIZE = (160, 128)  # (W, H) of the small test images (at least imaging.MIN_IMAGE_SIDE)
KNOWN = np.array([[0.98, -0.05, 2.5], [0.04, 1.02, -1.75]])  # fixed px -> moving px


def write_pair(root: Path, pair_id: str, size=SIZE, moving_size=None, suffix=".jpg",
               count=10, seed=0) -> np.ndarray:
    """Write one pair (noise images, control points from KNOWN); returns the fixed points."""
    rng = np.random.default_rng(seed)
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "Ground Truth").mkdir(parents=True, exist_ok=True)
    for side, (width, height) in (("1", size), ("2", moving_size or size)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / "Images" / f"{pair_id}_{side}{suffix}"), image)
    fixed = rng.uniform(0, np.array(size) - 1, (count, 2))
    moving = geometry.apply(KNOWN, fixed)
    lines = [" ".join(f"{v:.6f}" for v in row) for row in np.hstack([fixed, moving])]
    points_path(root, pair_id).write_text("\n".join(lines) + "\n")
    return fixed


def points_path(root: Path, pair_id: str) -> Path:
    return root / "Ground Truth" / f"control_points_{pair_id}_1_2.txt"


def make_set(root: Path, ids=("A01", "S10", "P01", "S02", "S01")) -> Path:
    for seed, pair_id in enumerate(ids):
        write_pair(root, pair_id, seed=seed)
    return root


def raises_naming(name: str, match: str = ""):
    """Context manager: an InputError whose message names ``name`` (and matches ``match``)."""
    return pytest.raises(InputError, match=rf"{name}.*{match}")


def test_parsing_and_ground_truth_exact(tmp_path):
    fixed_true = write_pair(tmp_path, "S01")
    pair = fire.FireDataset(tmp_path)["S01"]
    fixed, moving = pair.control_points()
    assert fixed.shape == moving.shape == (10, 2) and fixed.dtype == np.float64
    np.testing.assert_allclose(fixed, fixed_true, atol=1e-6)
    matrix, residuals = pair.ground_truth()
    np.testing.assert_allclose(matrix, KNOWN, atol=1e-5)
    assert residuals.shape == (10,) and residuals.max() < 1e-4
    assert pair.ground_truth() is pair.ground_truth()  # cached


def test_blank_lines_and_tabs_are_accepted(tmp_path):
    path = tmp_path / "points.txt"
    path.write_text("1\t2\t3\t4\n\n5 6 7 8\r\n9 10 11 12  \n")
    fixed, moving = fire.read_control_points(path)
    np.testing.assert_array_equal(fixed, [[1, 2], [5, 6], [9, 10]])
    np.testing.assert_array_equal(moving, [[3, 4], [7, 8], [11, 12]])


def test_order_categories_and_exclude(tmp_path):
    data = fire.FireDataset(make_set(tmp_path))
    assert data.ids == ["S01", "S02", "S10", "P01", "A01"]
    assert [pair.id for pair in data] == data.ids and len(data) == 5
    assert data.categories == {"S": 3, "P": 1, "A": 1}
    assert [pair.id for pair in data.by_category("S")] == ["S01", "S02", "S10"]
    assert data["P01"].category == "P"
    with pytest.raises(KeyError):
        data["P37"]
    fewer = fire.FireDataset(tmp_path, exclude=("P01", "P37"))
    assert fewer.ids == ["S01", "S02", "S10", "A01"] and fewer.categories["P"] == 0
    with raises_naming(str(tmp_path), "every pair is excluded"):
        fire.FireDataset(tmp_path, exclude=data.ids)


def test_images_sizes_mask_and_scale(tmp_path):
    make_set(tmp_path, ids=("S01",))
    data = fire.FireDataset(tmp_path)
    pair = data["S01"]
    image = pair.image("moving")
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    assert pair.green("fixed").shape == (SIZE[1], SIZE[0])
    assert pair.image("fixed", reduce=2).shape == (SIZE[1] // 2, SIZE[0] // 2, 3)
    assert pair.size("fixed") == SIZE and data.width == SIZE[0]
    assert pair.scale_to_fire() == pytest.approx(2912 / SIZE[0])
    pair.check()
    assert data.mask() is None
    mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    mask[5:20, 5:30] = 255
    (tmp_path / "Masks").mkdir()
    cv2.imwrite(str(tmp_path / "Masks" / "mask.png"), mask)
    np.testing.assert_array_equal(data.mask(), mask > 0)
    with pytest.raises(ValueError):
        pair.image("left")


def test_png_and_tif_images_are_accepted(tmp_path):
    write_pair(tmp_path, "S01", suffix=".png")
    write_pair(tmp_path, "A01", suffix=".tif")
    data = fire.FireDataset(tmp_path)
    assert data["S01"].fixed_path.name == "S01_1.png"
    assert data["A01"].image("moving").shape == (SIZE[1], SIZE[0], 3)
    assert fire.verify_layout(tmp_path) == []


def test_loading_is_lazy_and_corrupt_jpeg_fails_on_load(tmp_path):
    make_set(tmp_path, ids=("S01",))
    corrupt = tmp_path / "Images" / "S01_2.jpg"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    pair = fire.FireDataset(tmp_path)["S01"]  # constructs: nothing decoded yet
    with raises_naming("S01_2.jpg", "corrupt"):
        pair.image("moving")
    with raises_naming("S01_2.jpg", "corrupt"):
        pair.size("moving")
    with raises_naming("S01_2.jpg"):
        pair.check()


def test_missing_image(tmp_path):
    make_set(tmp_path, ids=("S01", "P01"))
    (tmp_path / "Images" / "P01_2.jpg").unlink()
    with raises_naming("P01_2", "missing"):
        fire.FireDataset(tmp_path)


def test_missing_control_points_and_orphan_control_points(tmp_path):
    make_set(tmp_path, ids=("S01",))
    points_path(tmp_path, "S01").unlink()
    with raises_naming("control_points_S01_1_2.txt", "missing"):
        fire.FireDataset(tmp_path)
    write_pair(tmp_path, "S01")
    points_path(tmp_path, "A03").write_text("1 2 3 4\n")
    with raises_naming("control_points_A03_1_2.txt", "no image"):
        fire.FireDataset(tmp_path)


def test_two_images_for_one_side(tmp_path):
    write_pair(tmp_path, "S01")
    cv2.imwrite(str(tmp_path / "Images" / "S01_1.png"), np.zeros((4, 4, 3), np.uint8))
    with raises_naming("S01_1", "more than one image"):
        fire.FireDataset(tmp_path)


@pytest.mark.parametrize("text, problem", [
    ("1 2 3 4\n5 6 7\n9 10 11 12\n", "line 2: expected 4 columns"),
    ("1 2 3 4\n5 6 7 8\n9 ten 11 12\n", "line 3: not a number"),
    ("1 2 3 4\nnan 6 7 8\n9 10 11 12\n", "line 2: non-finite"),
    ("1 2 3 4\n5 6 7 8\n", "2 control points; at least 3"),
    ("", "0 control points"),
])
def test_malformed_control_points(tmp_path, text, problem):
    make_set(tmp_path, ids=("S01",))
    points_path(tmp_path, "S01").write_text(text)
    pair = fire.FireDataset(tmp_path)["S01"]  # constructs: the file is parsed on demand
    with raises_naming("control_points_S01_1_2.txt", problem):
        pair.control_points()
    with raises_naming("control_points_S01_1_2.txt", problem):
        pair.ground_truth()


def test_collinear_control_points(tmp_path):
    make_set(tmp_path, ids=("S01",))
    points_path(tmp_path, "S01").write_text("1 1 2 2\n2 2 3 3\n3 3 4 4\n")
    with raises_naming("control_points_S01_1_2.txt", "one line"):
        fire.FireDataset(tmp_path)["S01"].ground_truth()


def test_binary_control_points_file(tmp_path):
    make_set(tmp_path, ids=("S01",))
    points_path(tmp_path, "S01").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with raises_naming("control_points_S01_1_2.txt", "not a readable text file"):
        fire.FireDataset(tmp_path)["S01"].control_points()


def test_images_of_different_size_within_a_pair(tmp_path):
    write_pair(tmp_path, "S01", moving_size=(176, 128))
    pair = fire.FireDataset(tmp_path)["S01"]
    with raises_naming("S01_2.jpg", "size 176x128 differs"):
        pair.check()


def test_control_point_far_outside_the_image(tmp_path):
    make_set(tmp_path, ids=("S01",))
    points_path(tmp_path, "S01").write_text("1 2 3 4\n5 6 7 8\n9 10 300 12\n")
    with raises_naming("control_points_S01_1_2.txt", r"point 3 \(x_2 y_2\) lies far outside"):
        fire.FireDataset(tmp_path)["S01"].check()


def test_empty_or_missing_folder(tmp_path):
    with raises_naming(str(tmp_path), "no FIRE pairs found: expected Images/<ID>_1.jpg"):
        fire.FireDataset(tmp_path)
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "notes.txt").write_text("not an image")
    with raises_naming(str(tmp_path), "no FIRE pairs found"):
        fire.FireDataset(tmp_path)
    with raises_naming("absent", "folder not found"):
        fire.FireDataset(tmp_path / "absent")


def tiny_manifest(ids) -> dict:
    return {"image_size": list(SIZE), "points_per_pair": 10, "pairs": [
        {"id": pair_id, "category": pair_id[0], "fixed": f"Images/{pair_id}_1.jpg",
         "moving": f"Images/{pair_id}_2.jpg",
         "control_points": f"Ground Truth/control_points_{pair_id}_1_2.txt"}
        for pair_id in ids]}


def test_verify_against_manifest(tmp_path):
    ids = ("S01", "S02", "P01", "A01")
    manifest = tiny_manifest(ids)
    make_set(tmp_path, ids=ids)
    assert fire.verify(tmp_path, manifest) == []

    (tmp_path / "Images" / "S01_2.jpg").unlink()
    write_pair(tmp_path, "S02", moving_size=(176, 128))
    points_path(tmp_path, "P01").write_text("1 2 3 4\n5 6 7\n")
    write_pair(tmp_path, "A01", count=9)
    write_pair(tmp_path, "S05")
    (tmp_path / "Images" / "S05_1.jpg").write_bytes(b"garbage" * 20)
    problems = fire.verify(tmp_path, manifest)
    expected = ["S01_2.jpg: file not found", "S02_2.jpg: size 176x128, expected 160x128",
                "control_points_P01_1_2.txt: line 2: expected 4 columns",
                "control_points_A01_1_2.txt: 9 control points; expected 10",
                "unexpected pair S05"]
    assert len(problems) == len(expected)
    for problem, words in zip(problems, expected):
        assert words in problem
    (tmp_path / "Images" / "S02_1.jpg").write_bytes(b"garbage" * 20)
    problems = fire.verify(tmp_path, manifest)
    assert any("S02_1.jpg: not a readable image" in line for line in problems)
    assert "folder not found" in fire.verify(tmp_path / "absent", manifest)[0]


def test_verify_layout(tmp_path):
    make_set(tmp_path)
    assert fire.verify_layout(tmp_path) == []
    write_pair(tmp_path, "S02", moving_size=(176, 128))
    points_path(tmp_path, "P01").write_text("x y\n")
    (tmp_path / "Images" / "A01_1.jpg").unlink()
    problems = fire.verify_layout(tmp_path)
    assert len(problems) == 3
    assert any("A01_1.jpg: image missing" in line for line in problems)
    assert any("S02_2.jpg: size 176x128 differs" in line for line in problems)
    assert any("control_points_P01_1_2.txt: line 1" in line for line in problems)
    assert "no FIRE pairs found" in fire.verify_layout(tmp_path / "Images")[0]


def test_shipped_manifest():
    text = (REPO / "data_manifest" / "fire.json").read_text()
    assert (REPO / "fire_reg" / "data" / "fire.json").read_text() == text
    manifest = json.loads(text)
    assert fire.load_fire_manifest() == manifest
    pairs = manifest["pairs"]
    ids = [pair["id"] for pair in pairs]
    assert len(pairs) == 134 and len(set(ids)) == 134
    counts = {c: sum(pair["category"] == c for pair in pairs) for c in fire.CATEGORIES}
    assert counts == manifest["categories"] == {"S": 71, "P": 49, "A": 14}
    assert ids == sorted(ids, key=fire._sort_key)
    assert {"S01", "S71", "P01", "P49", "A01", "A14"} <= set(ids)
    for pair in pairs:
        assert pair["category"] == pair["id"][0]
        assert pair["fixed"] == f"Images/{pair['id']}_1.jpg"
        assert pair["moving"] == f"Images/{pair['id']}_2.jpg"
        assert pair["control_points"] == f"Ground Truth/control_points_{pair['id']}_1_2.txt"
    assert manifest["image_size"] == [2912, 2912] and manifest["points_per_pair"] == 10
    assert tuple(manifest["excluded_in_published_evaluations"]) == fire.PUBLISHED_EXCLUDE
    assert "P37" in ids
