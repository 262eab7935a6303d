"""Runs killed with SIGKILL mid-way, then resumed: no work lost, nothing redone, same result.

Each test starts the real command line in a child process, kills it as soon as its first unit
of work (one evaluated pair, one training epoch) is on disk, checks that it really was cut
short, resumes it and compares with an uninterrupted run.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np

from fire_reg.cli import main

CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fire_reg.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV)


def kill_when(child: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``child`` as soon as ``ready()`` is true (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert child.poll() is None, f"finished before it could be killed: {child.stderr.read()}"
        assert time.monotonic() < deadline, "nothing written in time"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def finished_pairs(out) -> dict:
    """{file name: bytes} of the pair results under their final names (not hidden .part files)."""
    return {path.name: path.read_bytes() for path in out.glob("pairs/[!.]*.json")}


def test_evaluate_killed_then_resumed(small_fire, tmp_path):
    evaluate = ["evaluate", "--fire", small_fire, "--no-model", "--baselines", "sift,orb,ecc",
                "--overlays", "0"]
    out = tmp_path / "cut"
    child = start(*evaluate, "--out", out)
    kill_when(child, lambda: len(finished_pairs(out)) >= 1)
    finished = finished_pairs(out)
    assert not (out / "results.json").exists() and len(finished) < 4  # really cut short
    assert main([str(a) for a in (*evaluate, "--out", out, "--resume")]) == 0
    resumed_files = finished_pairs(out)
    assert {name: resumed_files[name] for name in finished} == finished  # not redone
    assert not list(out.rglob(".*.part*"))
    assert main([str(a) for a in (*evaluate, "--out", tmp_path / "whole")]) == 0
    resumed = json.loads((out / "results.json").read_text())
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert sorted(resumed["pairs"]) == sorted(whole["pairs"]) == ["A01", "P01", "S01", "S02"]
    for pair_id, entry in whole["pairs"].items():
        for name, method in entry["methods"].items():
            assert resumed["pairs"][pair_id]["methods"][name]["error_px"] == method["error_px"]


def epochs_logged(run) -> list[int]:
    path = run / "log.csv"
    return [int(row["epoch"]) for row in csv.DictReader(open(path))] if path.exists() else []


def test_train_killed_then_resumed(shard_dir, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": {"encoder_channels": [4, 8, 8, 8, 8],
                                              "trunk_units": 16},
                                  "epochs": 4, "steps_per_epoch": 20, "batch_size": 4}))
    train = ["train", "--data", shard_dir, "--config", config]
    cut = tmp_path / "cut"
    child = start(*train, "--out", cut)
    kill_when(child, lambda: len(epochs_logged(cut)) >= 1)
    assert len(epochs_logged(cut)) < 4  # really cut short
    assert main([str(a) for a in (*train, "--out", cut, "--resume")]) == 0
    assert epochs_logged(cut) == [0, 1, 2, 3]  # one row per epoch, none repeated
    assert main([str(a) for a in (*train, "--out", tmp_path / "whole")]) == 0
    assert (cut / "log.csv").read_text() == (tmp_path / "whole" / "log.csv").read_text()
    for name in ("last.keras", "model.keras"):
        resumed = keras.saving.load_model(cut / name, compile=False).get_weights()
        whole = keras.saving.load_model(tmp_path / "whole" / name, compile=False).get_weights()
        for a, b in zip(resumed, whole, strict=True):
            np.testing.assert_array_equal(a, b)
