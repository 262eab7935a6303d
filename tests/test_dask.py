"""A Dask cluster (the optional extra ``fire-reg[dask]``, part of the test extra):
``register --batch --dask ADDRESS`` on a LocalCluster of two worker processes gives the
transforms of one process, its results streamed back into the same output folder and
records, and ``--resume`` continues it."""
import json
import shutil

import numpy as np
import pytest
from distributed import LocalCluster

from fire_reg.cli import main
from fire_reg.register import pool
from fire_reg.register.result import Registration

PAIRS = ("S01", "P01", "A01")


@pytest.fixture
def three_pairs(small_fire, tmp_path):
    listed = tmp_path / "three.csv"
    listed.write_text("id,fixed,moving\n" + "".join(
        f"{pid},{small_fire}/Images/{pid}_1.jpg,{small_fire}/Images/{pid}_2.jpg\n"
        for pid in PAIRS))
    return listed


GRID = np.stack(np.meshgrid(np.linspace(0, 383, 9), np.linspace(0, 383, 9)), -1).reshape(-1, 2)


def results(out) -> dict:
    """{id: (status, a grid of fixed px mapped by the transform)} of a batch's result sets."""
    found = {}
    for pid in PAIRS:
        result = Registration.load(out / pid / "transform.json")
        found[pid] = (result.status, result.transform.fixed_to_moving(GRID))
    return found


def test_batch_on_a_local_cluster_equals_one_process(three_pairs, tiny_model_path, tmp_path,
                                                     capsys):
    common = ["register", "--batch", str(three_pairs), "--model", str(tiny_model_path),
              "--transform", "quadratic"]
    serial = tmp_path / "serial"
    assert main([*common, "--out", str(serial), "--workers", "1"]) in (0, 3)
    out = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        code = main([*common, "--out", str(out), "--dask", cluster.scheduler_address])
        batch = json.loads((out / "batch.json").read_text())
        assert code == batch["exit_status"] and batch["complete"]
        assert batch["workers"] == f"dask {cluster.scheduler_address}"
        expected = results(serial)
        for pid, (status, array) in results(out).items():
            assert status == expected[pid][0]
            np.testing.assert_allclose(array, expected[pid][1], rtol=0, atol=1e-9)
        assert sorted(p.name for p in (out / "P01").iterdir()) == sorted(
            p.name for p in (serial / "P01").iterdir())
        shutil.rmtree(out / "P01")  # as if the run had stopped before P01
        capsys.readouterr()
        assert main([*common, "--out", str(out), "--dask", cluster.scheduler_address,
                     "--resume"]) == code
        assert "resuming: 2 of 3 pairs finished earlier, 1 to run" in capsys.readouterr().out
        np.testing.assert_allclose(results(out)["P01"][1], expected["P01"][1], rtol=0,
                                   atol=1e-9)


def test_an_unreachable_scheduler_is_one_line_and_leaves_nothing(three_pairs, tmp_path,
                                                                 tiny_model_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setattr(pool, "CONNECT_SECONDS", 1)
    out = tmp_path / "out"
    code = main(["register", "--batch", str(three_pairs), "--model", str(tiny_model_path),
                 "--out", str(out), "--dask", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not out.exists()
    assert err[0].startswith("fire-reg: error: --dask: cannot reach a Dask scheduler at "
                             "'tcp://127.0.0.1:9'")
