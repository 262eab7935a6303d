"""FIRE protocol on hand-computed cases."""
import numpy as np
import pytest

from fire_reg.evaluate import metrics
from fire_reg.geometry import transforms

FIXED_PTS = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 5.0]])


def test_pair_error_known_translation():
    matrix = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0]])  # fixed p -> moving p + (3, 4)
    moving = FIXED_PTS + [3.0, 4.0]
    np.testing.assert_allclose(transforms.control_point_errors(matrix, FIXED_PTS, moving), 0.0, atol=1e-12)
    identity = np.eye(2, 3)
    np.testing.assert_allclose(transforms.control_point_errors(identity, FIXED_PTS, moving), 5.0)
    assert metrics.fire_error(identity, FIXED_PTS, moving) == pytest.approx(5.0)
    assert metrics.fire_error(identity, FIXED_PTS, moving, scale=2912 / 1456) == pytest.approx(10.0)


def test_pair_error_needs_the_inverse_map():
    """M = 2x scale: the moving point of fixed p is 2p. M^-1 brings it back (error 0); mapping
    the moving points forward with M (the wrong direction) or the identity would not."""
    matrix = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    moving = 2.0 * FIXED_PTS
    np.testing.assert_allclose(transforms.control_point_errors(matrix, FIXED_PTS, moving), 0.0, atol=1e-12)
    # identity: distance from 2p to p is |p|
    np.testing.assert_allclose(transforms.control_point_errors(np.eye(2, 3), FIXED_PTS, moving),
                               np.linalg.norm(FIXED_PTS, axis=1))
    assert metrics.fire_error(np.eye(2, 3), FIXED_PTS, moving) == pytest.approx(
        (np.sqrt(500) + 50 + np.sqrt(2525)) / 3)


def test_success_curve_and_auc_by_hand():
    errors = [0.0, 10.0, 30.0]
    curve = metrics.success_curve(errors)
    assert len(curve) == len(metrics.THRESHOLDS) == 251
    assert metrics.THRESHOLDS[0] == 0.0 and metrics.THRESHOLDS[-1] == 25.0
    assert curve[0] == pytest.approx(1 / 3)         # error 0 <= 0
    assert curve[99] == pytest.approx(1 / 3)        # t = 9.9
    assert curve[100] == pytest.approx(2 / 3)       # t = 10.0: error 10 <= 10
    assert curve[-1] == pytest.approx(2 / 3)        # 30 px never succeeds
    # 100 thresholds (0.0 .. 9.9) at 1/3, 151 (10.0 .. 25.0) at 2/3
    assert metrics.auc(errors) == pytest.approx((100 / 3 + 151 * 2 / 3) / 251)
    # integer grid t = 1..25 (error <= t): 9 thresholds at 1/3, 16 at 2/3
    assert metrics.auc(errors, np.arange(1, 26)) == pytest.approx((9 / 3 + 16 * 2 / 3) / 25)
    assert metrics.auc([0.0, 0.0]) == 1.0 and metrics.auc([26.0, np.inf]) == 0.0


def test_non_finite_errors_are_failures():
    np.testing.assert_allclose(metrics.success_curve([np.nan, np.inf, 1.0], [0.5, 25.0]),
                               [0.0, 1 / 3])


def test_summary_by_category():
    errors = {"S01": 0.0, "S02": 10.0, "S03": 30.0, "P01": 5.0, "P02": np.inf}
    categories = {"S01": "S", "S02": "S", "S03": "S", "P01": "P", "P02": "P"}
    points = {"S01": [0, 0, 0], "S02": [5, 10, 60], "S03": [25, 30, 35], "P01": [5, 5, 5],
              "P02": [np.inf] * 3}
    seconds = dict.fromkeys(errors, 0.5)
    summary = metrics.summarize(errors, categories, points, seconds)
    auc_s = (100 / 3 + 151 * 2 / 3) / 251
    auc_p = 201 / 251 * 0.5    # 5 px succeeds from t = 5.0 (201 thresholds), inf never
    assert summary["auc_S"] == pytest.approx(auc_s)
    assert summary["auc_P"] == pytest.approx(auc_p)
    assert summary["auc_A"] is None and summary["count_A"] == 0
    assert summary["mAUC"] == pytest.approx((auc_s + auc_p) / 2)
    assert summary["mAUC_categories"] == "SP"
    assert summary["count"] == 5 and summary["nonfinite"] == 1
    assert summary["success_at_25"] == pytest.approx(3 / 5)
    assert summary["failure_rate"] == pytest.approx(2 / 5)
    # S02: max 60 > 50; S03: median 30 > 20; P02: non-finite -> 3 of 5
    assert summary["inaccurate"] == pytest.approx(3 / 5)
    finite = [0.0, 10.0, 30.0, 5.0]
    assert summary["median"] == pytest.approx(7.5)
    assert summary["mean"] == pytest.approx(np.mean(finite))
    assert summary["std"] == pytest.approx(np.std(finite))
    assert (summary["min"], summary["max"]) == (0.0, 30.0)
    assert summary["p25"] == pytest.approx(np.percentile(finite, 25))
    assert summary["p75"] == pytest.approx(np.percentile(finite, 75))
    assert summary["seconds_per_pair"] == pytest.approx(0.5)
    assert metrics.summarize(errors, categories)["inaccurate"] is None
    with pytest.raises(ValueError):
        metrics.summarize({}, {})


def test_inaccurate_share_thresholds():
    assert metrics.inaccurate_share([[50.0, 1.0, 1.0], [20.0, 20.0, 20.0]]) == 0.0
    assert metrics.inaccurate_share([[50.1, 1.0, 1.0], [20.1, 20.1, 0.0]]) == 1.0


def test_markdown_table_lists_every_method():
    categories = {"S01": "S", "P01": "P", "A01": "A"}
    summaries = {
        "sift": metrics.summarize({"S01": 1.0, "P01": 3.0, "A01": 40.0}, categories,
                                  seconds_by_pair=dict.fromkeys(categories, 0.7)),
        "identity": metrics.summarize({"S01": 30.0, "P01": np.nan, "A01": 80.0}, categories),
    }
    table = metrics.markdown_table(summaries)
    lines = table.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| method | AUC S | AUC P | AUC A | mAUC |") and "s/pair" in lines[0]
    assert "| sift |" in table and "| identity |" in table
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "n/a" in lines[3]  # identity: no inaccurate share, no seconds


def test_quadratic_error_uses_its_exact_inverse():
    from fire_reg.geometry import transforms

    forward = [[2.0, 1.0, 0.0, 1e-4, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0, 0.0, 1e-4]]
    quadratic = transforms.Quadratic.from_forward(forward, FIXED_PTS)
    moving = quadratic.fixed_to_moving(FIXED_PTS)
    np.testing.assert_allclose(transforms.control_point_errors(quadratic, FIXED_PTS, moving), 0.0, atol=1e-6)


def test_trust_summary_counts_agreement_and_close_estimates():
    entries = [{"status": "ok", "error_px": 1.0, "estimated_error_px": 1.5},      # right, close
               {"status": "ok", "error_px": 40.0, "estimated_error_px": 3.0},     # wrong ok
               {"status": "suspect", "error_px": 60.0, "estimated_error_px": 50.0},
               {"status": "failed", "error_px": 2.0, "estimated_error_px": None}]
    summary = metrics.trust_summary(entries)
    assert summary["ok_agrees"] == 0.5 and summary["ok_over_25"] == 1
    assert summary["estimate_close"] == 0.5
    assert summary["confusion"]["ok"] == {"within_25": 1, "over_25": 1}
    table = metrics.trust_table({"fire-reg": summary})
    assert "| fire-reg | 1 / 1 | 0 / 1 | 1 / 0 | 50.0% | 50.0% |" in table
    assert metrics.estimate_close(3.9, 2.0) and not metrics.estimate_close(9.0, 2.0)
    assert metrics.estimate_close(70.0, 40.0) and not metrics.estimate_close(90.0, 40.0)
