"""The batch contract of ``register --batch`` (README, "Batches and output folders"): every
row's outcome isolated, batch.json and failures.csv always written (also after SIGINT and
SIGTERM), counts that match the statuses, exit status 0 / 2 / 3, ``--resume`` that redoes
nothing and refuses other settings or another model, and a full or read-only output folder
reported in one line."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fire_reg import geometry
from fire_reg.cli import commands, main
from fire_reg.cli.batch import exit_status
from fire_reg.data.fire import FireDataset
from fire_reg.geometry import transforms
from fire_reg.io.errors import InputError
from fire_reg.io.images import image_size
from fire_reg.io.output import LOCK_NAME
from fire_reg.register.registrar import RegistrarConfig
from fire_reg.register.result import Registration

IDS = ["S01", "S02", "P01", "A01"]  # the order of small_fire's pairs


class Scripted:
    """A registration method whose outcome per moving image is scripted: a status, or an
    exception to raise. ``setting`` stands for any setting of a real method."""

    name = "scripted"
    decode_width = 64

    def __init__(self, script: dict, calls: list, setting: int = 1):
        self._script = script  # private: not settings (the fingerprint skips them)
        self._calls = calls
        self.setting = setting

    def register_files(self, fixed, moving) -> Registration:
        pair_id = Path(moving).name.split("_")[0]
        self._calls.append(pair_id)
        outcome = self._script.get(pair_id, "ok")
        if isinstance(outcome, Exception):
            raise outcome
        return Registration(transforms.Affine(geometry.identity()), outcome,
                            f"scripted {outcome}", image_size(fixed), image_size(moving))


def run_batch(capsys, monkeypatch, source, out, script=None, setting=1, *flags):
    """``register --batch`` with a Scripted method, in this process (``--workers 1``: the
    calls are seen here); (exit status, stdout, stderr, calls)."""
    calls = []
    monkeypatch.setattr(commands, "_registrar",
                        lambda args: Scripted(script or {}, calls, setting))
    code = main(["register", "--batch", str(source), "--out", str(out), "--workers", "1",
                 *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, calls


def records(out: Path) -> tuple[dict, dict, list[str]]:
    """batch.json, its rows by id, and the lines of failures.csv."""
    batch = json.loads((out / "batch.json").read_text())
    return batch, {row["id"]: row for row in batch["rows"]}, \
        (out / "failures.csv").read_text().splitlines()


def errors_in(err: str) -> list[str]:
    """fire-reg's own lines on stderr (not the progress bars)."""
    return [line for line in err.splitlines() if line.startswith("fire-reg:")]


def leftovers(out: Path) -> list[Path]:
    """Temporaries of fire-reg and the lock: none may be left when a run has ended."""
    return [path for path in out.rglob("*") if ".fire-reg-" in path.name
            or path.name == LOCK_NAME]


@pytest.mark.parametrize("script, expected", [
    ({"S02": "suspect", "P01": "failed", "A01": ValueError("negative dimensions")}, 2),
    ({"P01": "failed", "S02": "suspect"}, 3),
    ({"S02": "suspect"}, 0),
    ({"S01": InputError("S01_2.jpg", "truncated"), "A01": "failed"}, 2),
])
def test_rows_isolated_counts_and_exit_status(small_fire, tmp_path, capsys, monkeypatch,
                                              script, expected):
    out = tmp_path / "out"
    code, stdout, err, calls = run_batch(capsys, monkeypatch, small_fire, out, script)
    assert calls == IDS  # every row ran, whatever the others did
    batch, rows, failures = records(out)
    outcomes = {pid: script.get(pid, "ok") for pid in IDS}
    outcomes = {pid: "error" if isinstance(o, Exception) else o for pid, o in outcomes.items()}
    assert {pid: row["outcome"] for pid, row in rows.items()} == outcomes
    counts = {o: list(outcomes.values()).count(o) for o in ("ok", "suspect", "failed", "error")}
    assert batch["counts"] == {**counts, "not run": 0} and batch["complete"]
    assert code == batch["exit_status"] == exit_status(batch["counts"]) == expected
    assert stdout.strip().splitlines()[-1].startswith("batch: 4 of 4 rows done in ")
    assert ": {ok} ok, {suspect} suspect, {failed} failed, {error} error;".format(**counts) \
        in stdout.strip().splitlines()[-1]
    assert failures[0] == "id,outcome,reason" and sorted(failures[1:]) == sorted(
        f"{pid},{o},{rows[pid]['reason']}" for pid, o in outcomes.items()
        if o in ("failed", "error"))
    for pid, outcome in outcomes.items():
        folder = out / pid
        if outcome == "error":
            assert not folder.exists()
            raised = script[pid]
            assert rows[pid]["error"] == ("input" if isinstance(raised, InputError)
                                          else "internal")
            assert str(raised) in rows[pid]["reason"]
        else:
            record = json.loads((folder / "transform.json").read_text())
            assert record["status"] == rows[pid]["status"] == outcome
            assert (folder / "warped.png").exists() == (outcome != "failed")
    assert len(errors_in(err)) == (expected != 0) and not leftovers(out)


def test_real_registrar_raising_inside_one_pair(small_fire, tiny_model_path, tmp_path,
                                                capsys, monkeypatch):
    """The real pipeline, made to raise inside one pair (as a 4000x128 px image once did):
    that row's error, with its reason; the other pairs are registered."""
    import numpy as np

    from fire_reg.register.registrar import Registrar

    real = Registrar.register

    def register(self, fixed, moving, *args, **kwargs):
        if np.array_equal(getattr(fixed, "image", fixed), moving):  # the row "same" only
            # (rows sharing a fixed image get it prepared: its pixels are .image)
            raise ValueError("negative dimensions are not allowed")
        return real(self, fixed, moving, *args, **kwargs)

    monkeypatch.setattr(Registrar, "register", register)
    data = FireDataset(small_fire)
    listed = tmp_path / "list.csv"
    listed.write_text("id,fixed,moving\n" + "".join(
        f"{pid},{data[pid].fixed_path},{data[pid].moving_path}\n" for pid in ("S01", "P01"))
        + f"same,{data['S01'].fixed_path},{data['S01'].fixed_path}\n")
    out = tmp_path / "out"
    code = main(["register", "--batch", str(listed), "--model", str(tiny_model_path),
                 "--transform", "none", "--out", str(out), "--workers", "1"])  # patched here
    batch, rows, failures = records(out)
    assert code == 2 and batch["counts"]["error"] == 1 and batch["complete"]
    assert rows["same"] == {**rows["same"], "outcome": "error", "error": "internal",
                            "reason": "ValueError: negative dimensions are not allowed"}
    assert not (out / "same").exists() and "same,error," in "\n".join(failures)
    for pid in ("S01", "P01"):
        record = json.loads((out / pid / "transform.json").read_text())
        assert rows[pid]["outcome"] == rows[pid]["status"] == record["status"]
    assert "batch: 3 of 3 rows done" in capsys.readouterr().out


def test_hidden_and_reserved_ids_are_refused(small_fire, tmp_path, capsys, monkeypatch):
    pair = FireDataset(small_fire)["S01"]
    listed = tmp_path / "list.csv"
    listed.write_text("id,fixed,moving\n" + "".join(
        f"{pid},{pair.fixed_path},{pair.moving_path}\n"
        for pid in (".x.part1", "batch.json", "good")))
    out = tmp_path / "out"
    for _ in range(2):  # and the folder is still usable by the next run
        code, _, err, calls = run_batch(capsys, monkeypatch, listed, out)
        batch, rows, _ = records(out)
        assert code == 2 and calls == ["S01"] and batch["counts"]["error"] == 2
        assert "begins with a dot" in rows[f"{listed}:2"]["reason"]
        assert "batch's records" in rows[f"{listed}:3"]["reason"]
        assert sorted(path.name for path in out.iterdir()) == ["batch.json", "failures.csv",
                                                               "good"]


def test_resume_redoes_nothing_and_refuses_other_settings(small_fire, tmp_path, capsys,
                                                          monkeypatch):
    out = tmp_path / "out"
    script = {"S02": "failed", "A01": ValueError("boom")}
    code, *_ = run_batch(capsys, monkeypatch, small_fire, out, script)
    assert code == 2
    shutil.rmtree(out / "P01")  # as if the run had stopped before P01
    kept = {pid: (out / pid / "transform.json").stat().st_mtime_ns for pid in ("S01", "S02")}
    code, stdout, _, calls = run_batch(capsys, monkeypatch, small_fire, out, {}, 1, "--resume")
    assert calls == ["P01", "A01"]  # the missing pair and the error row; nothing redone
    assert "resuming: 2 of 4 pairs finished earlier, 2 to run" in stdout
    batch, rows, _ = records(out)
    assert {pid: row["outcome"] for pid, row in rows.items()} == {
        "S01": "ok", "S02": "failed", "P01": "ok", "A01": "ok"}
    assert [pid for pid, row in rows.items() if row.get("resumed")] == ["S01", "S02"]
    assert code == 3 and batch["complete"]
    assert {pid: (out / pid / "transform.json").stat().st_mtime_ns for pid in kept} == kept
    before = (out / "batch.json").read_bytes()
    code, _, err, calls = run_batch(capsys, monkeypatch, small_fire, out, {}, 2, "--resume")
    assert code == 2 and calls == [] and errors_in(err) == err.strip().splitlines()
    assert len(errors_in(err)) == 1 and "--resume refused" in err and "setting: 1 -> 2" in err
    assert (out / "batch.json").read_bytes() == before and not leftovers(out)
    code, _, _, calls = run_batch(capsys, monkeypatch, small_fire, out, {}, 2)  # afresh
    assert code == 0 and calls == IDS


def test_pictures_of_a_batch_are_its_settings(small_fire, tmp_path, capsys, monkeypatch):
    """``--pictures none``: every pair's folder holds its transform files only, and batch.json
    records the choice; a resume that asks for other pictures is refused in one line (its
    folders would mix both), one with the same goes on."""
    out = tmp_path / "out"
    code, *_ = run_batch(capsys, monkeypatch, small_fire, out, {"P01": "failed"}, 1,
                         "--pictures", "none")
    assert code == 3
    batch, rows, _ = records(out)
    assert batch["settings"]["pictures"] == "none"
    for pair_id in IDS:
        assert sorted(path.name for path in (out / pair_id).iterdir()) == [
            "transform.json", "transform.tfm"], pair_id
    shutil.rmtree(out / "A01")
    before = (out / "batch.json").read_bytes()
    code, _, err, calls = run_batch(capsys, monkeypatch, small_fire, out, {}, 1, "--resume")
    assert code == 2 and calls == [] and len(errors_in(err)) == 1
    assert "--resume refused" in err and "pictures: 'none' -> 'all'" in err, err
    assert (out / "batch.json").read_bytes() == before and not leftovers(out)
    code, _, _, calls = run_batch(capsys, monkeypatch, small_fire, out, {}, 1, "--resume",
                                  "--pictures", "none")
    assert calls == ["A01"] and code == 3  # P01 still failed from the first run
    assert sorted(path.name for path in (out / "A01").iterdir()) == [
        "transform.json", "transform.tfm"]


@pytest.fixture(scope="module")
def one_pair(small_fire, tmp_path_factory):
    """small_fire's S01 alone, in the FIRE layout."""
    root = tmp_path_factory.mktemp("one_pair")
    pair = FireDataset(small_fire)["S01"]
    for folder, name in (("Images", pair.fixed_path.name), ("Images", pair.moving_path.name),
                         ("Ground Truth", "control_points_S01_1_2.txt")):
        (root / folder).mkdir(exist_ok=True)
        shutil.copy(small_fire / folder / name, root / folder / name)
    return root


@pytest.mark.parametrize("command", ["register", "evaluate"])
def test_resume_refuses_other_flags_or_model(command, one_pair, tiny_model_path, tmp_path,
                                             capsys):
    """The reported case: a run under --transform none --iterations 1, resumed with the
    defaults (or another model), must not reuse its pairs: one line, exit status 2. Resumed
    with its own settings, it goes on."""
    from fire_reg.learn import network

    other_model = tmp_path / "other.keras"
    network.build_model({"input_size": 32, "encoder_channels": [4, 8, 8, 8],
                         "trunk_units": 16}).save(other_model)  # other random weights
    quick = ["--transform", "none", "--iterations", "1"]
    model = ["--model", str(tiny_model_path)]
    command = {"register": ["register", "--batch", str(one_pair)],
               "evaluate": ["evaluate", "--fire", str(one_pair), "--baselines", "",
                            "--overlays", "0"]}[command]
    out = str(tmp_path / "out")
    assert main([*command, *model, *quick, "--out", out]) in (0, 3)
    capsys.readouterr()
    default = RegistrarConfig().transform
    for flags, named in ((model, f"transform: 'none' -> {default!r}"),
                         (["--model", str(other_model), *quick], "weights_sha256")):
        code = main([*command, *flags, "--out", out, "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and len(errors_in(err)) == 1, (flags, err)
        assert "--resume refused" in err and named in err, err
    assert main([*command, *model, *quick, "--out", out, "--resume"]) in (0, 3)


@pytest.mark.parametrize("injected", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_output_stops_the_batch_in_one_line(small_fire, tmp_path, capsys,
                                                               monkeypatch, injected):
    """The output folder refuses P01's files (disk full while writing, or read-only when
    its folder is made): one line naming the folder, exit status 2, the pairs before it
    complete, no partial folder, no temporary, and the records written."""
    real_write, real_mkdtemp = Path.write_bytes, tempfile.mkdtemp

    def write_bytes(self, data):
        if injected == errno.ENOSPC and ".P01." in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, data)

    def mkdtemp(*args, prefix=None, **kwargs):
        if injected == errno.EROFS and prefix and prefix.startswith(".P01."):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkdtemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    out = tmp_path / "out"
    code, stdout, err, calls = run_batch(capsys, monkeypatch, small_fire, out)
    assert code == 2 and calls == ["S01", "S02", "P01"]
    assert errors_in(err) == [f"fire-reg: error: {out / 'P01' if injected == errno.ENOSPC else out}"
                              f": cannot write here: {os.strerror(injected)}"]
    batch, rows, _ = records(out)
    assert {pid: row["outcome"] for pid, row in rows.items()} == {
        "S01": "ok", "S02": "ok", "P01": "not run", "A01": "not run"}
    assert not batch["complete"] and not (out / "P01").exists() and not leftovers(out)
    assert batch["exit_status"] == 2
    assert "2 not run" in stdout.strip().splitlines()[-1]


SIX_PAIRS = {"S": 3, "P": 2, "A": 1}


@pytest.fixture(scope="module")
def six_pairs(tmp_path_factory):
    from fire_reg.data.embedded import make_embedded_set

    root = tmp_path_factory.mktemp("six_pairs")
    make_embedded_set(root, categories=SIX_PAIRS, size=320, seed=5, progress=False)
    return root


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM],
                                     [signal.SIGTERM, signal.SIGTERM]],
                         ids=["SIGINT", "SIGTERM", "SIGTERM twice"])
def test_signal_mid_batch_then_resume(six_pairs, tiny_model_path, tmp_path, capsys, signals):
    """The real command line in a child process, signalled as soon as its first pair is on
    disk: it writes its records and exits 128 + the signal; nothing lost (every finished pair
    recorded, every recorded pair complete), nothing redone by --resume, nothing left over.
    A second signal drops the pair in progress: no partial folder either."""
    out = tmp_path / "out"
    argv = ["register", "--batch", str(six_pairs), "--model", str(tiny_model_path),
            "--out", str(out)]
    child = subprocess.Popen([sys.executable, "-m", "fire_reg.cli", *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 120
    while not list(out.glob("[!.]*/transform.json")):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no pair written in time"
        time.sleep(0.005)
    for signum in signals:
        os.kill(child.pid, signum)
        time.sleep(0.02)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signals[0], stderr
    batch, rows, _ = records(out)
    done = {pid for pid, row in rows.items() if row["outcome"] != "not run"}
    assert not batch["complete"] and batch["stopped_by"] == signals[0].name
    assert batch["exit_status"] == 128 + signals[0]
    assert 1 <= len(done) < len(rows) == sum(SIX_PAIRS.values())  # really cut short
    assert done == {path.name for path in out.iterdir() if path.is_dir()}
    assert all((out / pid / "transform.json").is_file() for pid in done)
    assert not leftovers(out)
    assert stdout.strip().splitlines()[-1].endswith(
        f"not run (stopped by {signals[0].name}; continue with --resume); wrote "
        f"{out / 'batch.json'} and {out / 'failures.csv'}")
    assert errors_in(stderr) == [f"fire-reg: interrupted by {signals[0].name}"]
    finished = {pid: (out / pid / "transform.json").read_bytes() for pid in done}
    code = main([*argv, "--resume"])
    batch, rows, _ = records(out)
    assert batch["complete"] and batch["counts"]["not run"] == 0
    assert code == exit_status(batch["counts"])
    assert {pid for pid, row in rows.items() if row.get("resumed")} == done
    assert {pid: (out / pid / "transform.json").read_bytes() for pid in done} == finished
    assert not leftovers(out)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        f"batch: 6 of 6 rows done in ")
