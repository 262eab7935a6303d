"""Reference rows from exact dense ground truth (``Dense/<ID>_fixed_to_moving.npy``): each
global model fitted to the dense map over the common field of view, next to the rows fitted
to the ten control points; none where a set has no dense maps."""
import json

import cv2
import numpy as np
import pytest

from fire_reg.data.ground_truth import dense_nodes
from fire_reg.evaluate.baselines import baseline
from fire_reg.evaluate import tester
from fire_reg.evaluate.tester import DENSE_PREFIX, REFERENCE_PREFIX, dense_fit, dense_references
from fire_reg.data.fire import FireDataset
from fire_reg.geometry import transforms
from fire_reg.io.errors import InputError

SIZE = 160
CURVED = np.array([[3.0, 1.01, 0.02, 2e-4, -1e-4, 1e-4], [-2.0, -0.01, 0.99, 1e-4, 2e-4, -1e-4]])


def _bump(points):
    """A local displacement (px) no global model follows: a Gaussian bump at (60, 40)."""
    weight = np.exp(-np.sum((points - (60.0, 40.0)) ** 2, axis=1) / (2 * 10.0 ** 2))
    return 2.0 * weight[:, None] * np.array([1.0, -0.5])


def _exact(points, bumped):
    quadratic = transforms.quadratic_terms(points) @ CURVED.T
    return quadratic + (_bump(points) if bumped else 0.0)


def _make_set(root, dense=True):
    """Two pairs in the FIRE layout, 160 px: S01 (a quadratic) and A01 (a quadratic plus a
    bump), with ten control points, a round aperture and (``dense``) their dense maps."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    aperture = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(aperture, (SIZE // 2, SIZE // 2), 70, 255, -1)
    for folder in ("Images", "Ground Truth", "Masks", "Dense"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "Masks" / "mask.png"), aperture)
    for pair_id, bumped in (("S01", False), ("A01", True)):
        cv2.imwrite(str(root / "Images" / f"{pair_id}_1.png"), image)
        cv2.imwrite(str(root / "Images" / f"{pair_id}_2.png"), image)
        fixed = rng.uniform(30, 130, (10, 2))
        moving = _exact(fixed, bumped)
        lines = [f"{a:.6f} {b:.6f} {c:.6f} {d:.6f}" for (a, b), (c, d) in zip(fixed, moving)]
        (root / "Ground Truth" / f"control_points_{pair_id}_1_2.txt").write_text(
            "\n".join(lines) + "\n")
        if dense:
            nodes = dense_nodes(SIZE, SIZE)
            exact = _exact(nodes.reshape(-1, 2), bumped).reshape(nodes.shape)
            np.save(root / "Dense" / f"{pair_id}_fixed_to_moving.npy", exact.astype(np.float32))
    return root


def test_dense_fit_recovers_the_model_over_the_common_field_of_view(tmp_path):
    root = _make_set(tmp_path / "set")
    aperture = cv2.imread(str(root / "Masks" / "mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    fitted = dense_fit(root, "S01", "quadratic", aperture)
    points = np.random.default_rng(1).uniform(20, 140, (200, 2))
    np.testing.assert_allclose(fitted(points), _exact(points, False), atol=1e-3)  # float32 file
    assert isinstance(dense_fit(root, "S01", "homography"), transforms.Homography)
    # the bump lies inside the aperture: fitting only there tilts the quadratic more than
    # fitting over the whole image, whose corners see no bump
    inside = dense_fit(root, "A01", "quadratic", aperture)
    everywhere = dense_fit(root, "A01", "quadratic")
    assert not np.allclose(inside(points), everywhere(points), atol=1e-3)
    (root / "Dense" / "S01_fixed_to_moving.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match="S01_fixed_to_moving.npy"):
        dense_fit(root, "S01", "quadratic")


def test_tester_writes_dense_rows_beside_the_control_point_rows(tmp_path, monkeypatch):
    root = _make_set(tmp_path / "set")
    monkeypatch.setattr(tester.Tester, "_plots", lambda self, pairs: None)  # matplotlib: slow
    results = tester.Tester(root, tmp_path / "ev", [baseline("identity")], overlays=0,
                     progress=False).run()
    globals_ = ("affine", "homography", "quadratic")
    assert results["methods"] == (["identity"] + [REFERENCE_PREFIX + m for m in globals_]
                                  + [DENSE_PREFIX + m for m in globals_])
    s01, a01 = results["pairs"]["S01"]["methods"], results["pairs"]["A01"]["methods"]
    assert s01["dense-fit quadratic"]["error_px"] < 0.01  # FIRE-equivalent px (x 2912 / 160)
    assert "dense map" in s01["dense-fit quadratic"]["reason"]
    # ten points overfit: the control-point quadratic scores better than the dense fit,
    # which is what a method returning a quadratic can really reach
    assert (a01["ground-truth quadratic"]["error_px"] < a01["dense-fit quadratic"]["error_px"])
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| dense-fit quadratic |" in report and "exact dense ground truth" in report
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert "dense-fit quadratic" in run["settings"]["references"]


def test_no_dense_rows_without_dense_maps(tmp_path):
    root = _make_set(tmp_path / "set", dense=False)
    assert dense_references(FireDataset(root)) == {}
    np.save(root / "Dense" / "S01_fixed_to_moving.npy", np.zeros((13, 13, 2), np.float32))
    assert dense_references(FireDataset(root)) == {}  # A01 still has none
