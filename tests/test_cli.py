"""The fire-reg command line: outputs, schemas, and bad input -> one line, exit status 2."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fire_reg.cli import main
from fire_reg.data.fire import FireDataset


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_register_writes_three_files(small_fire, tiny_model_path, tmp_path, capsys):
    pair = FireDataset(small_fire)["S01"]
    code, out, _ = run(capsys, "register", pair.fixed_path, pair.moving_path, "--model",
                       tiny_model_path, "--out", tmp_path / "reg")
    assert code == 0, out
    record = json.loads((tmp_path / "reg" / "transform.json").read_text())
    assert record["maps"] == "fixed_xy_to_moving_xy" and record["units"] == "pixels"
    matrix, inverse = np.array(record["matrix"]), np.array(record["inverse"])
    np.testing.assert_allclose(np.vstack([matrix, [0, 0, 1]]) @ np.vstack([inverse, [0, 0, 1]]),
                               np.eye(3), atol=1e-9)
    assert record["fixed_size"] == list(pair.size("fixed"))
    # an untrained (identity) network, then ECC and the fine stage: S01 moves little
    assert record["status"] == "ok" and record["transform"]["model"] in ("local", "quadratic")
    assert 0 <= record["estimated_error_px"] < 2 and 0.5 < record["overlap"] <= 1
    assert 0 < record["seconds"] < 60
    warped = cv2.imread(str(tmp_path / "reg" / "warped.png"))
    assert warped.shape[:2] == pair.image("fixed").shape[:2] and warped.ndim == 3
    assert cv2.imread(str(tmp_path / "reg" / "overlay.png")) is not None
    assert not list((tmp_path / "reg").glob(".*part*"))
    # not an affine: no ITK .tfm (it cannot hold one), a displacement field instead
    assert not (tmp_path / "reg" / "transform.tfm").exists()
    assert "displacement.mha" in record["exports"]["written"]
    assert (tmp_path / "reg" / "displacement.mha").is_file()
    code, out, _ = run(capsys, "register", pair.fixed_path, pair.moving_path, "--model",
                       tiny_model_path, "--out", tmp_path / "reg", "--pictures", "overlay")
    assert code == 0 and out.endswith("wrote " + str(tmp_path / "reg") + "/transform.json, "
                                      "displacement.mha, overlay.png\n"), out
    assert not (tmp_path / "reg" / "warped.png").exists()  # the older set's went with it


def test_register_batch_from_fire_folder(small_fire, tiny_model_path, tmp_path, capsys):
    """The counts in batch.json and in the last line match the pairs' statuses; the exit
    status is 3 exactly when some pair failed; failed pairs are listed in failures.csv and get
    no warped.png."""
    code, out, _ = run(capsys, "register", "--batch", small_fire, "--model", tiny_model_path,
                       "--refine", "none", "--out", tmp_path / "batch")
    summary = json.loads((tmp_path / "batch" / "batch.json").read_text())
    rows = {row["id"]: row for row in summary["rows"]}
    assert set(rows) == {"S01", "S02", "P01", "A01"} and summary["complete"]
    statuses = [json.loads((tmp_path / "batch" / pid / "transform.json").read_text())["status"]
                for pid in rows]
    assert [row["status"] for row in rows.values()] == statuses
    counts = {status: statuses.count(status) for status in ("ok", "suspect", "failed")}
    assert summary["counts"] == {**counts, "error": 0, "not run": 0}
    assert code == summary["exit_status"] == (3 if counts["failed"] else 0)
    assert out.strip().splitlines()[-1].startswith(
        f"batch: 4 of 4 rows done in ") and (f"{counts['ok']} ok, {counts['suspect']} suspect, "
                                             f"{counts['failed']} failed, 0 error") in out
    failures = (tmp_path / "batch" / "failures.csv").read_text().splitlines()
    assert failures[0] == "id,outcome,reason"
    assert sorted(line.split(",")[0] for line in failures[1:]) == sorted(
        pid for pid, row in rows.items() if row["status"] == "failed")
    for pid, row in rows.items():
        assert (tmp_path / "batch" / pid / "warped.png").exists() == (row["status"] != "failed")


def test_batch_keeps_going_past_bad_rows(small_fire, tiny_model_path, tmp_path, capsys):
    """A missing file, a truncated image and an incomplete pair are reported with their ids;
    the good pairs are still registered, and the exit status is 2."""
    import shutil

    root = tmp_path / "set"
    shutil.copytree(small_fire, root)
    (root / "Images" / "S02_2.jpg").unlink()  # incomplete pair
    data = (root / "Images" / "P01_1.jpg").read_bytes()
    (root / "Images" / "P01_1.jpg").write_bytes(data[:len(data) // 2])  # truncated JPEG
    code, out, err = run(capsys, "register", "--batch", root, "--model", tiny_model_path,
                         "--transform", "none", "--out", tmp_path / "batch")
    assert code == 2 and "failures.csv" in err
    summary = json.loads((tmp_path / "batch" / "batch.json").read_text())
    assert {row["id"] for row in summary["rows"] if "status" in row} == {"S01", "A01"}
    assert summary["counts"]["error"] == 2
    failures = (tmp_path / "batch" / "failures.csv").read_text()
    assert "S02_2.jpg" in failures and "P01_1.jpg" in failures
    assert (tmp_path / "batch" / "A01" / "transform.json").is_file()


def test_evaluate_writes_report_and_plots(small_fire, tiny_model_path, tmp_path, capsys):
    code, out, _ = run(capsys, "evaluate", "--fire", small_fire, "--model", tiny_model_path,
                       "--baselines", "sift", "--out", tmp_path / "ev", "--overlays", "1")
    assert code == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["methods"] == ["fire-reg", "sift", "identity", "ground-truth affine",
                                  "ground-truth homography", "ground-truth quadratic",
                                  "dense-fit affine", "dense-fit homography",
                                  "dense-fit quadratic"]
    assert set(results["pairs"]) == {"S01", "S02", "P01", "A01"}
    entry = results["pairs"]["P01"]
    assert {"matrix", "error_px", "category", "seconds"} <= set(entry)
    summary = results["summary"]["all"]
    # the ground-truth affine is (near) exact on S/P pairs; SIFT recovers them too
    assert results["pairs"]["S01"]["methods"]["ground-truth quadratic"]["error_px"] < 1.0
    assert results["pairs"]["S01"]["methods"]["sift"]["error_px"] < 10.0
    assert summary["ground-truth affine"]["auc_S"] > summary["identity"]["auc_S"]
    assert entry["transform"]["model"] in ("local", "quadratic") or "no quadratic" in \
        entry["methods"]["fire-reg"]["reason"]
    assert set(results["trust"]) == {"fire-reg"}
    assert (tmp_path / "ev" / "pairs" / "P01.json").is_file()  # written as each pair finished
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| sift" in report and "ground-truth" in report and "mAUC" in report
    assert "Trust" in report
    for name in ("success_curves.png", "error_boxplot.png", "trust.png"):
        assert cv2.imread(str(tmp_path / "ev" / name)) is not None
    assert len(list((tmp_path / "ev" / "overlays").glob("*.png"))) == 2


def test_prepare_and_data_commands(small_fire, tmp_path, capsys):
    code, out, _ = run(capsys, "prepare", "--fire", small_fire, "--out", tmp_path / "shards",
                       "--patch-size", "32", "--per-pair", "2")
    assert code == 0 and "8 samples" in out
    code, out, _ = run(capsys, "data", "verify", "--fire", small_fire, "--layout-only")
    assert code == 0 and "well-formed" in out
    code, out, err = run(capsys, "data", "verify", "--fire", small_fire)
    assert code == 2 and "problem" in err  # not the real FIRE: 134 pairs missing
    code, out, _ = run(capsys, "data", "embedded", "--out", tmp_path / "emb", "--size", "256",
                       "--per-image", "S1,P1,A0")
    assert code == 0 and len(FireDataset(tmp_path / "emb")) == 2


def corrupt_copy(small_fire, tmp_path, mutate):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(small_fire, root)
    mutate(root)
    return root


@pytest.mark.parametrize("mutate,expected", [
    (lambda r: (r / "Images" / "S01_2.jpg").unlink(), "S01"),
    (lambda r: (r / "Images" / "S02_1.jpg").write_bytes(b"\xff\xd8garbage"), "S02_1.jpg"),
    (lambda r: (r / "Ground Truth" / "control_points_P01_1_2.txt").write_text("1 2 3\n"),
     "control_points_P01_1_2.txt"),
    (lambda r: (r / "Ground Truth" / "control_points_A01_1_2.txt").write_text("a b c d\n" * 10),
     "control_points_A01_1_2.txt"),
])
def test_bad_fire_folder_exits_2(small_fire, tiny_model_path, tmp_path, capsys, mutate, expected):
    root = corrupt_copy(small_fire, tmp_path, mutate)
    code, out, err = run(capsys, "evaluate", "--fire", root, "--model", tiny_model_path,
                         "--baselines", "", "--out", tmp_path / "ev")
    assert code == 2
    messages = [line for line in err.splitlines() if line.startswith("fire-reg:")]
    assert len(messages) == 1 and expected in messages[0] and "Traceback" not in err
    assert not (tmp_path / "ev" / "results.json").exists()


def test_bad_register_inputs_exit_2(small_fire, tiny_model_path, tmp_path, capsys):
    pair = FireDataset(small_fire)["S01"]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    not_model = tmp_path / "model.keras"
    not_model.write_text("nope")
    cases = [
        ([tmp_path / "missing.jpg", pair.moving_path], "missing.jpg"),
        ([corrupt, pair.moving_path], "corrupt.jpg"),
        ([pair.fixed_path, pair.moving_path, "--model", not_model], "model.keras"),
        ([pair.fixed_path, pair.moving_path, "--model", tmp_path / "none.keras"], "none.keras"),
    ]
    for argv, expected in cases:
        if "--model" not in argv:
            argv = [*argv, "--model", tiny_model_path]
        code, out, err = run(capsys, "register", *argv, "--out", tmp_path / "out")
        assert code == 2, (argv, err)
        assert expected in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out" / "transform.json").exists()


def test_console_script_exit_status_and_one_line(tmp_path):
    """The installed entry point itself: no traceback, status 2."""
    done = subprocess.run([sys.executable, "-m", "fire_reg.cli", "evaluate", "--fire",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--no-model",
                           "--baselines", ""],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "nowhere" in done.stderr and "Traceback" not in done.stderr


def test_batch_from_csv_and_its_errors(small_fire, tiny_model_path, tmp_path, capsys):
    pair = FireDataset(small_fire)["S01"]
    good = tmp_path / "pairs.csv"
    good.write_text(f"\ufeffid,fixed,moving\nfirst,{pair.fixed_path},{pair.moving_path}\n")
    code, out, _ = run(capsys, "register", "--batch", good, "--model", tiny_model_path,
                       "--refine", "none", "--out", tmp_path / "b")
    assert code == 0 and (tmp_path / "b" / "first" / "transform.json").is_file()
    row = f"{pair.fixed_path},{pair.moving_path}"
    bad_rows = {"missing cell": f"fixed,moving\n{pair.fixed_path},\n{row}\n",
                "escaping id": f"id,fixed,moving\n../x,{row}\nok,{row}\n",
                "duplicate id": f"id,fixed,moving\na,{row}\na,{row}\n",
                "missing file": f"id,fixed,moving\nm,{tmp_path / 'nope.jpg'},{pair.moving_path}\n"}
    for name, text in bad_rows.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        out_dir = tmp_path / name.replace(" ", "_")
        code, out, err = run(capsys, "register", "--batch", bad, "--model", tiny_model_path,
                             "--transform", "none", "--out", out_dir)
        assert code == 2 and "bad.csv" in err, name
        summary = json.loads((out_dir / "batch.json").read_text())
        errors = [row for row in summary["rows"] if row["outcome"] == "error"]
        assert len(errors) == 1 and len(summary["rows"]) == 2 - (name == "missing file"), name
    unusable = {"no header": f"{row}\n", "binary": "\x00\xff\x00garbage"}
    for name, text in unusable.items():
        bad = tmp_path / "unusable.csv"
        bad.write_bytes(text.encode("latin-1"))
        code, out, err = run(capsys, "register", "--batch", bad, "--model", tiny_model_path,
                             "--out", tmp_path / "unusable_out")
        assert code == 2 and "unusable.csv" in err and len(err.strip().splitlines()) == 1, name


def test_output_folder_problems_exit_2(small_fire, tiny_model_path, tmp_path, capsys):
    pair = FireDataset(small_fire)["S01"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, _, err = run(capsys, "register", pair.fixed_path, pair.moving_path, "--model",
                       tiny_model_path, "--out", a_file)
    assert code == 2 and "not a folder" in err
    stale = tmp_path / "out" / ".transform.abc.part.json"
    stale.parent.mkdir()
    stale.write_text("{")
    import fcntl

    with open(tmp_path / "out" / ".fire-reg.lock", "w") as held:  # another run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run(capsys, "register", pair.fixed_path, pair.moving_path, "--model",
                           tiny_model_path, "--out", tmp_path / "out")
        assert code == 2 and "another fire-reg run" in err
    code, _, _ = run(capsys, "register", pair.fixed_path, pair.moving_path, "--model",
                     tiny_model_path, "--transform", "none", "--out", tmp_path / "out")
    assert code == 0 and stale.read_text() == "{"  # not a temporary of fire-reg's: kept
    for flags, word in ((["--iterations", "0"], "--iterations"),
                        (["--refine-width", "-5"], "--refine-width")):
        code, _, err = run(capsys, "register", pair.fixed_path, pair.moving_path, "--model",
                           tiny_model_path, *flags, "--out", tmp_path / "o2")
        assert code == 2 and word in err, flags


def test_evaluate_resume_keeps_finished_pairs(small_fire, tmp_path, capsys):
    out = tmp_path / "ev"
    code, _, _ = run(capsys, "evaluate", "--fire", small_fire, "--no-model", "--baselines",
                     "", "--out", out, "--overlays", "0")
    assert code == 0
    marker = json.loads((out / "pairs" / "S01.json").read_text())
    marker["methods"]["identity"]["seconds"] = 123.0  # a finished pair is not redone
    (out / "pairs" / "S01.json").write_text(json.dumps(marker))
    (out / "results.json").unlink()
    code, _, _ = run(capsys, "evaluate", "--fire", small_fire, "--no-model", "--baselines",
                     "", "--out", out, "--overlays", "0", "--resume")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"]["S01"]["methods"]["identity"]["seconds"] == 123.0
    assert results["pairs"]["S02"]["methods"]["identity"]["seconds"] < 123.0


def test_options_that_make_no_sense_exit_2(small_fire, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "--fire", small_fire, "--no-model", "--baselines",
                       "sfit", "--out", tmp_path / "e")
    assert code == 2 and "sfit" in err
    code, _, err = run(capsys, "prepare", "--fire", small_fire, "--out", tmp_path / "p",
                       "--patch-size", "100")
    assert code == 2 and "--patch-size" in err
    code, _, err = run(capsys, "data", "embedded", "--out", tmp_path / "d", "--size", "10")
    assert code == 2 and "--size" in err
