"""Montages: the multi-field generator's exact ground truth, the placement solver, and the
whole ``Mosaic`` / ``fire-reg mosaic`` path with foreign images mixed in."""
import json

import cv2
import numpy as np
import pytest

from fire_reg.cli.commands import main
from fire_reg.data.fields import field_map, make_field_set
from fire_reg.geometry.transforms import Affine, transform_from_dict
from fire_reg.io.errors import InputError
from fire_reg.montage import solve

WIDTH = 400


@pytest.fixture(scope="module")
def field_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fields")
    summary = make_field_set(folder, fields=5, seed=11, size=WIDTH)[0]
    return folder, summary


def test_field_set_has_exact_correspondences(field_set):
    folder, summary = field_set
    assert sorted(p.name for p in (folder / "Images").iterdir()) == [
        f"field_{k}.jpg" for k in range(1, 6)]
    assert json.loads((folder / "fields.json").read_text())["pairs"] == summary["pairs"]
    centre_pairs = [p for p in summary["pairs"] if p["fields"][0] == 1]
    assert len(centre_pairs) == 4  # the centre field overlaps every ring field
    for pair in summary["pairs"]:
        points = np.asarray(pair["points"])
        assert len(points) >= 12
        mapped = field_map(summary, points[:, :2], *pair["fields"])
        assert np.abs(mapped - points[:, 2:]).max() < 1e-3
        back = field_map(summary, points[:, 2:], pair["fields"][1], pair["fields"][0])
        assert np.abs(back - points[:, :2]).max() < 1e-3
        assert ((points >= 0) & (points < WIDTH)).all()


def test_field_set_refuses_bad_counts(tmp_path):
    with pytest.raises(InputError, match="--fields"):
        make_field_set(tmp_path / "x", fields=3)
    assert not (tmp_path / "x").exists()


def _edge(a, b, to_b, noise, rng):
    points = rng.uniform(100, 300, (60, 2))
    moved = points @ to_b[:, :2].T + to_b[:, 2] + rng.normal(0, noise, (60, 2))
    return solve.Edge(a, b, Affine(to_b), points, moved, 1.0)


def test_joint_solution_closes_loops_better_than_the_tree():
    """Three fields in a loop with noisy pairs: the joint fit spreads the loop's error, the
    tree leaves it all on the one pair outside the tree."""
    rng = np.random.default_rng(0)
    shifts = {0: np.zeros(2), 1: np.array([150.0, 10.0]), 2: np.array([60.0, 140.0])}

    def pair(a, b, bias):  # field a px -> field b px (fields are shifted copies)
        return np.hstack([np.eye(2), (shifts[a] - shifts[b] + bias)[:, None]])

    edges = [_edge(0, 1, pair(0, 1, np.array([2.0, 0.0])), 0.2, rng),
             _edge(1, 2, pair(1, 2, np.array([0.0, 2.0])), 0.2, rng),
             _edge(0, 2, pair(0, 2, np.zeros(2)), 0.2, rng)]
    edges[2].cost = 5.0  # the tree takes 0-1 and 1-2
    domains = [rng.uniform(0, 400, (200, 2)) for _ in range(3)]
    tree = solve.tree_solution(3, edges, 0, domains)
    joint = solve.joint_solution(edges, 0, tree, 400.0)
    worst = {name: max(np.median(solve.edge_residuals(e, s)) for e in edges)
             for name, s in (("tree", tree), ("joint", joint))}
    assert worst["tree"] > 2.5  # the loop's 2.8 px misclosure sits on one pair
    assert worst["joint"] < 0.75 * worst["tree"]
    truth = np.array([[0.0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    truth[:, 0] = shifts[1]  # field 1 px -> field 0 px adds the shift
    assert np.abs(solve.apply(joint[1], domains[1]) - solve.apply(truth, domains[1])).max() < 4


def test_canvas_transforms_reproduce_the_placement():
    """The inverse of a field's quadratic placement is no quadratic: the stored canvas ->
    field transform must still map every canvas point back onto its field point."""
    rng = np.random.default_rng(1)
    domain = rng.uniform(0, 400, (500, 2))
    curved = np.array([[30.0, 0.95, 0.08, 1e-4, -7e-5, 5e-5],  # a ring field's curvature
                       [-20.0, -0.07, 1.02, -5e-5, 7e-5, 1e-4]])
    offset = np.array([-50.0, -40.0])
    transforms = solve.canvas_transforms({0: solve.IDENTITY.copy(), 1: curved}, [domain, domain],
                                         offset, 0.5)
    for k, coefficients in ((0, solve.IDENTITY), (1, curved)):
        canvas = 0.5 * (solve.apply(coefficients, domain) - offset)
        assert np.abs(transforms[k].fixed_to_moving(canvas) - domain).max() < 0.02
        assert np.abs(transforms[k].moving_to_fixed(domain) - canvas).max() < 0.02
        assert transforms[k].inverse_error(canvas) < 1e-4  # the two directions agree
    canvas = 0.5 * (solve.apply(curved, domain) - offset)
    quadratic = solve.fit_quadratic(canvas, domain)
    assert np.abs(solve.apply(quadratic, canvas) - domain).max() > 0.15  # a quadratic would leave


@pytest.fixture(scope="module")
def montage(field_set, tmp_path_factory):
    from fire_reg.montage.mosaic import Mosaic
    from fire_reg.register.registrar import Registrar
    from skimage import data

    folder, summary = field_set
    extra = tmp_path_factory.mktemp("foreign")
    astronaut = cv2.cvtColor(cv2.resize(data.astronaut(), (WIDTH, WIDTH)), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(extra / "astronaut.png"), astronaut)
    other_eye = cv2.flip(cv2.imread(str(folder / "Images" / "field_3.jpg")), 1)
    cv2.imwrite(str(extra / "other_eye.png"), other_eye)
    paths = ([extra / "astronaut.png"] + [folder / f["image"] for f in summary["fields"]]
             + [extra / "other_eye.png"])
    registrar = Registrar()
    prepared, prepare = [], registrar.prepare

    def counting_prepare(image, *args, **kwargs):
        prepared.append(image.shape)
        return prepare(image, *args, **kwargs)

    registrar.prepare = counting_prepare
    result = Mosaic(registrar).build(paths)
    assert len(prepared) == len(paths)  # each field prepared once for all its pairs
    return paths, summary, result


def test_montage_places_every_field_and_leaves_foreign_ones_out(montage, tmp_path):
    paths, summary, result = montage
    statuses = [p.status for p in result.placements]
    assert statuses == ["left out"] + ["placed"] * 5 + ["left out"]
    assert "no trusted registration" in result.placements[0].reason
    assert "no trusted registration" in result.placements[-1].reason
    assert result.placements[result.reference].status == "placed"
    transforms = result.transforms  # canvas px -> field px, indices of ``paths``
    errors = []
    for pair in summary["pairs"]:
        a, b = pair["fields"]  # fields k are paths[k] (the astronaut is paths[0])
        points = np.asarray(pair["points"])
        back = transforms[a].fixed_to_moving(transforms[b].moving_to_fixed(points[:, 2:]))
        errors.append(np.linalg.norm(back - points[:, :2], axis=1).mean() * 2912 / WIDTH)
    assert np.median(errors) <= 1.0 and max(errors) <= 5.0, errors
    assert result.picture.shape[:2] == result.canvas_size[::-1]
    assert result.picture.ndim == 3 and result.picture[..., 2].mean() > result.picture[..., 0].mean()

    result.write(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "mosaic.json").read_text())
    assert record["canvas"] == list(result.canvas_size)
    assert [image["status"] for image in record["images"]] == statuses
    placed = record["images"][1]
    assert placed["transform"]["model"] == "local"  # the inverse of a quadratic placement
    probe = np.array([[100.0, 120.0], [200.0, 180.0]])
    assert np.allclose(transform_from_dict(placed["transform"]).moving_to_fixed(probe),
                       transforms[1].moving_to_fixed(probe), atol=1e-3)
    assert record["images"][0]["transform"] is None and record["images"][0]["reason"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["mosaic.png", "coverage.png", "pairs.json", "report.md", "mosaic.json"])
    assert len(json.loads((tmp_path / "out" / "pairs.json").read_text())) == len(
        result.registrations) < len(paths) * (len(paths) - 1) // 2


def test_cli_refuses_bad_input_leaving_nothing(field_set, tmp_path, capsys):
    folder, _ = field_set
    out = tmp_path / "out"
    assert main(["mosaic", str(folder / "Images" / "field_1.jpg"), "--out", str(out)]) == 2
    assert main(["mosaic", str(folder / "Images"), str(tmp_path / "missing.jpg"),
                 "--out", str(out)]) == 2
    assert main(["mosaic", str(folder / "Images"), "--reference", str(tmp_path / "x.jpg"),
                 "--max-width", "10", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("fire-reg: error:") for line in lines)
    assert not out.exists()
