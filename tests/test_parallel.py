"""All cores: the pair pool (worker processes, stop, drop, a lost worker, a killed parent),
``register --batch`` and ``evaluate`` on worker processes with the results of one process,
images prepared once (``Registrar.prepare``), and ``register FIXED MOVING1 MOVING2 ...``."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest

from fire_reg.cli import main
from fire_reg.data.fire import FireDataset
from fire_reg.evaluate import baselines
from fire_reg.evaluate import tester
from fire_reg.io.errors import InputError
from fire_reg.io.runs import describe, fingerprint
from fire_reg.register.pool import (GPU_MEMORY_ON_DEMAND, PairPool, WorkerLost, WorkerStartError,
                                    in_worker)
from fire_reg.register.registrar import Registrar
from fire_reg.register.result import Registration

IDS = ["S01", "S02", "P01", "A01"]  # small_fire's pairs


# --------------------------------------------------------------------------- per-item functions
# (module level: the worker processes import them from this module). With workers=N the
# pool's own process runs items too, beside N - 1 worker processes; the first items are
# always sent to the workers.

def scaled(state, item):
    """state x item, after ``item`` x 10 ms."""
    time.sleep(0.01 * item)
    return state * item


def raising(state, item):
    if item == 2:
        raise InputError(f"image{item}.png", "truncated")
    return item


def dying(state, item):
    """Kill the worker on item 3 (as the kernel's OOM killer would)."""
    if item == 3 and in_worker():
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def slow_in_a_worker(state, item):
    if in_worker():
        time.sleep(60)
    return os.getpid()


def pid_then_sleep(folder, item):
    """In a worker: record its pid in ``folder``, then sleep."""
    if in_worker():
        (Path(folder) / f"{os.getpid()}.pid").write_text(str(os.getpid()))
        time.sleep(60)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder for this test alone: the pool's scratch folder is made there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# --------------------------------------------------------------------------- the pool

def test_pool_gives_every_result_once_and_removes_its_scratch(private_tmp):
    items = list(range(8))
    with PairPool(3, workers=2) as pool:
        results = dict(pool.map(scaled, items))
        assert len(list(private_tmp.iterdir())) == 1  # the workers' scratch folder
    assert results == {item: 3 * item for item in items}
    assert not list(private_tmp.iterdir())
    with PairPool(3, workers=1) as pool:  # in this process: the same
        assert dict(pool.map(scaled, items)) == results


def test_pool_raises_a_worker_s_exception_here_whole():
    with PairPool(None, workers=2) as pool, pytest.raises(InputError) as raised:
        list(pool.map(raising, [2, 0, 1, 3]))
    assert raised.value.path == "image2.png" and raised.value.problem == "truncated"


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_lets_the_items_in_flight_finish_and_starts_no_more(workers):
    seen = []
    with PairPool(1, workers=workers) as pool:
        for item, result in pool.map(scaled, range(20), stop=lambda: bool(seen)):
            seen.append(item)
            assert result == item
    assert 1 <= len(seen) <= workers  # those running: one here, one per worker process


class InstantWorkers:
    """A stand-in for the worker processes whose items are finished as soon as they are sent,
    as they are when the workers are quicker than this process's own item."""

    def __init__(self, slots: int):
        self.sent = []
        self._slots = slots

    def slots(self):
        return self._slots

    def submit(self, function, item):
        future = futures.Future()
        future.set_result(item)  # (what ``function`` would give for these items)
        self.sent.append(future)
        return future

    def finished(self, pending, wait=True):
        return list(pending)  # in the order sent (a set's order would vary from run to run)

    def result(self, future):
        self.sent.remove(future)
        return future.result()

    def stop(self):
        pass

    def close(self, drop):
        pass


def test_the_workers_slots_are_filled_again_before_each_item_of_this_process():
    """Results that came in while this process ran its own item free their slots at once:
    the workers never wait a whole item of this process for their next one."""
    workers = InstantWorkers(slots=2)
    in_flight_here = []

    def item_here(state, item):
        in_flight_here.append(len(workers.sent))
        return item

    pool = PairPool(None, workers=3)
    pool._backend = workers
    with pool:
        results = dict(pool.map(item_here, range(12)))
    assert results == {item: item for item in range(12)}
    assert in_flight_here[:3] == [2, 2, 2]  # while items were left for the workers


def test_a_stop_asked_while_results_come_in_starts_nothing_here():
    ran_here, seen = [], []
    pool = PairPool(None, workers=2)
    pool._backend = InstantWorkers(slots=2)
    with pool:
        for item, _ in pool.map(lambda state, item: ran_here.append(item) or item, range(12),
                                stop=lambda: bool(seen)):
            seen.append(item)  # a signal while the first result is handled
    assert seen == [0, 1] and ran_here == []  # the two sent ahead, and nothing started after


def test_a_worker_killed_mid_item_is_that_item_s_loss_and_the_pool_goes_on():
    lost = []
    with PairPool(None, workers=2) as pool:
        results = dict(pool.map(dying, [3, 0, 1, 2, 4, 5, 6, 7],
                                lost=lambda item, error: lost.append(item) or "lost"))
    assert sorted(results) == list(range(8))  # every item once
    assert 3 in lost and len(lost) <= 2  # the killer, and at most the one beside it
    assert all(results[item] == item for item in results if item not in lost)
    with PairPool(None, workers=2) as pool, pytest.raises(WorkerLost):
        list(pool.map(dying, [3, 0, 1, 2]))  # without ``lost``: raised


def test_an_exception_here_drops_the_items_in_flight_at_once(private_tmp):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="stop here"):
        with PairPool(None, workers=2) as pool:
            for _ in pool.map(slow_in_a_worker, range(4)):
                raise RuntimeError("stop here")  # items 0 and 1 are in the workers
    assert time.monotonic() - start < 40  # killed, not waited for (60 s)
    assert not list(private_tmp.iterdir())


def imported(state, item):
    """(state, whether the preloaded module is already imported in this process, and whether
    the warm-up call was made here)."""
    return state, "tabnanny" in sys.modules, os.environ.get("FIRE_REG_WARMED")


def threads_here(state, item):
    import cv2

    time.sleep(0.2)  # the other process takes an item meanwhile
    return (in_worker(), cv2.getNumThreads(), os.environ.get("TF_NUM_INTRAOP_THREADS"),
            blas_threads())


def blas_threads() -> int:
    """The threads of numpy's BLAS in this process now."""
    from threadpoolctl import threadpool_info

    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def test_a_started_pool_s_workers_import_first_and_load_the_state_given_later(private_tmp):
    assert "tabnanny" not in sys.modules  # so the checks below can fail
    assert "FIRE_REG_WARMED" not in os.environ
    with PairPool.starting(2, preload=("tabnanny",),
                           warm=("os:environ.setdefault", "FIRE_REG_WARMED", "yes")) as pool:
        with pytest.raises(RuntimeError, match="no state yet"):
            list(pool.map(scaled, [1]))
        time.sleep(0.5)  # the worker is up, waiting for the state
        pool.begin(7)
        with pytest.raises(RuntimeError, match="state already"):
            pool.begin(8)
        results = list(pool.map(imported, range(6)))
    assert {state for _, (state, _, _) in results} == {7}
    assert any(preloaded for _, (_, preloaded, _) in results)  # from the worker process
    assert any(warmed == "yes" for _, (_, _, warmed) in results)
    assert not list(private_tmp.iterdir())


def test_a_worker_s_warm_up_call_that_fails_is_ignored():
    """The warm-up is a head start only: a model file that cannot load raises nothing there
    (the state's own loading, or this process's, reports it)."""
    from fire_reg.register import pool

    pool._warm("fire_reg.register.registrar:Registrar.preload", "/no/such/model.keras")
    with pytest.raises(AttributeError):
        pool._warm("os:no_such_function")  # only what the call raises is ignored


def test_a_started_pool_closed_without_a_state_ends_its_workers_at_once(private_tmp):
    start = time.monotonic()
    with PairPool.starting(3, preload=("tabnanny",)):
        time.sleep(0.5)
    assert time.monotonic() - start < 20  # killed, not waited for (they would wait forever)
    assert not list(private_tmp.iterdir())
    started = PairPool.starting(3, preload=("tabnanny",))
    with started.begin(5, items=1) as pool:  # one item: here, not sent to a starting worker
        assert pool is not started and pool.in_process
        assert dict(pool.map(scaled, [2])) == {2: 10}
    assert not list(private_tmp.iterdir())  # the started one's workers ended
    with PairPool.starting(2, preload=("no_such_module_here",)) as pool:
        pool.begin(1)
        with pytest.raises(WorkerStartError, match="no_such_module_here"):
            list(pool.map(imported, range(4)))


def test_each_process_shares_the_cores_while_the_pool_runs(monkeypatch):
    import cv2

    from fire_reg.register import pool as pools

    monkeypatch.setattr(pools, "usable_cores", lambda: 4)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    before = cv2.getNumThreads()
    with PairPool(None, workers=2) as pool:
        seen = {here: rest for _, (here, *rest) in pool.map(threads_here, range(6))}
    assert seen[False][0] == 2 and seen[True] == [2, "1", 1]  # 4 cores, 2 processes; 1 BLAS
    assert cv2.getNumThreads() == before  # this process's own count back


def test_the_default_workers_are_the_usable_cores_that_memory_can_hold(monkeypatch,
                                                                      tmp_path):
    """A container's CPU quota and memory limit count, not only the machine's: 64 processes
    of 0.6-0.9 GB on a 64-core node where a pod may use 4 cores and 8 GB would be killed."""
    from fire_reg.register import pool as pools

    gib = 2**30
    meminfo, limit = tmp_path / "meminfo", tmp_path / "memory.max"
    meminfo.write_text(f"MemTotal: {64 * gib // 1024} kB\nMemAvailable: {40 * gib // 1024} kB\n")
    limit.write_text("max\n")
    monkeypatch.setattr(pools, "MEMINFO", str(meminfo))
    monkeypatch.setattr(pools, "CGROUP_MEMORY_LIMITS", (str(limit), str(tmp_path / "v1")))
    monkeypatch.setattr(pools, "usable_cores", lambda: 64)
    assert pools.available_memory() == 40 * gib
    assert pools.default_workers() == 40  # the machine's memory: no container limit
    limit.write_text(f"{8 * gib + gib // 2}\n")  # a pod of 8.5 GB
    assert pools.available_memory() == 8 * gib + gib // 2
    assert pools.default_workers() == 8
    limit.write_text(f"{gib // 2}\n")
    assert pools.default_workers() == 1  # at least one
    version_1 = tmp_path / "memory.limit_in_bytes"
    version_1.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    monkeypatch.setattr(pools, "CGROUP_MEMORY_LIMITS", (str(tmp_path / "v2"), str(version_1)))
    assert pools.default_workers() == 40
    version_1.write_text(f"{3 * gib}\n")
    assert pools.default_workers() == 3
    monkeypatch.setattr(pools, "MEMINFO", str(tmp_path / "none"))
    monkeypatch.setattr(pools, "CGROUP_MEMORY_LIMITS", ())
    assert pools.available_memory() is None and pools.default_workers() == 64  # not Linux
    monkeypatch.undo()
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")  # joblib's cap, like a CPU quota
    assert pools.usable_cores() == 1 and pools.default_workers() == 1


def test_numpy_s_blas_has_one_thread_while_a_pair_registers(small_fire, tiny_model_path,
                                                             monkeypatch, tmp_path):
    """Its second thread would spin on the core the registration needs (README, Results,
    "What changed the speed")."""
    from threadpoolctl import threadpool_limits

    registrar = Registrar(tiny_model_path)
    seen = []
    steps = registrar._registered
    monkeypatch.setattr(registrar, "_registered",
                        lambda *args: seen.append(blas_threads()) or steps(*args))
    pair = FireDataset(small_fire)["S01"]
    with threadpool_limits(2, user_api="blas"):
        registrar.register_files(pair.fixed_path, pair.moving_path)
        assert seen == [1] and blas_threads() == 2  # the count before, back after the pair
        assert main(["register", "missing_fixed.png", "missing_moving.png", "--out",
                     str(tmp_path / "out")]) == 2
        assert blas_threads() == 1  # a command that registers: for good


def test_a_command_that_registers_takes_gpu_memory_as_it_needs_it(monkeypatch, tmp_path):
    """Each process would otherwise take most of a GPU as it starts: with JAX's CUDA build a
    batch of 4 workers on one GPU stopped at its first pair (README, "Cohorts"). The
    environment is set before the backend starts (workers inherit it); the user's wins."""
    for name in GPU_MEMORY_ON_DEMAND:
        monkeypatch.setenv(name, "restored after the test")
        monkeypatch.delenv(name)
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "false")  # the user's own choice
    assert main(["data", "verify", "--fire", str(tmp_path / "none")]) == 2
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ  # not a registering command
    assert main(["register", "missing_fixed.png", "missing_moving.png", "--out",
                 str(tmp_path / "out")]) == 2
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """A batch killed outright (SIGKILL) leaves no worker process and no temporary folder
    behind."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from fire_reg.register.pool import PairPool\n"
              "import test_parallel\n"
              f"with PairPool({str(tmp_path)!r}, workers=3) as pool:\n"  # 2 processes
              "    list(pool.map(test_parallel.pid_then_sleep, range(4)))\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", script],
                              env={**os.environ, "TMPDIR": str(temp)})
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = [int(path.stem) for path in tmp_path.glob("*.pid")]
    assert all(alive(pid) for pid in workers)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
    assert not list(temp.iterdir())  # the workers' scratch folder


# --------------------------------------------------------------------------- prepared images

def test_a_prepared_image_gives_the_same_result(small_fire, tiny_model_path):
    pair = FireDataset(small_fire)["S02"]
    fixed, moving = pair.image("fixed"), pair.image("moving")
    for registrar, given in ((Registrar(tiny_model_path), (None, None)),
                             (Registrar(tiny_model_path), ("fa", None)),
                             (Registrar(tiny_model_path, modality="fixed=fa"), (None, None))):
        plain = registrar.register(fixed, moving, modalities_given=given)
        prepared = registrar.prepare(fixed, modality=given[0])
        assert prepared.modality == (given[0] or "colour")  # detected: colour
        assert prepared.map.shape[1] == registrar.work_width and prepared.fov.dtype == bool
        for sides in ((prepared, moving), (prepared, registrar.prepare(moving))):
            result = registrar.register(*sides)
            np.testing.assert_array_equal(result.matrix, plain.matrix)
            assert result.transform.to_dict() == plain.transform.to_dict()
            assert (result.status, result.reason, result.modalities) == (
                plain.status, plain.reason, plain.modalities)
    with pytest.raises(ValueError, match="its own mask"):
        registrar.register(prepared, moving, fixed_mask=np.ones(fixed.shape[:2], bool))


def test_a_prepared_file_and_a_pickled_registrar_give_the_same_result(small_fire,
                                                                      tiny_model_path):
    pair = FireDataset(small_fire)["P01"]
    registrar = Registrar(tiny_model_path)
    plain = registrar.register_files(pair.fixed_path, pair.moving_path)
    prepared = registrar.prepare_file(pair.fixed_path)
    assert prepared.path == str(pair.fixed_path) and prepared.size == pair.size("fixed")
    copy = pickle.loads(pickle.dumps(registrar))  # what a worker process gets
    assert fingerprint(describe(copy)) == fingerprint(describe(registrar))
    for result in (registrar.register_files(prepared, pair.moving_path),
                   copy.register_files(pair.fixed_path, pair.moving_path)):
        np.testing.assert_array_equal(result.matrix, plain.matrix)
        assert (result.status, result.fixed_size) == (plain.status, plain.fixed_size)


def test_a_model_file_that_changes_while_it_loads_is_refused(monkeypatch, tmp_path,
                                                             tiny_model_path):
    """The bytes a worker is sent are those the model was loaded from: a file replaced while
    it loads (a checkpoint written there) is an InputError naming it, not a mix of two."""
    from fire_reg.learn import bundle

    path = tmp_path / "best.keras"
    shutil.copyfile(tiny_model_path, path)
    model, settings, archive = bundle.load_archive(path)
    assert archive == path.read_bytes() and settings.input_size == 32
    load = bundle.load_model

    def replaced_meanwhile(where):
        loaded = load(where)
        shutil.copyfile(tiny_model_path, tmp_path / "next.keras")
        os.replace(tmp_path / "next.keras", path)  # as a checkpoint is written
        return loaded

    monkeypatch.setattr(bundle, "load_model", replaced_meanwhile)
    with pytest.raises(InputError, match="changed while it was loaded") as raised:
        Registrar(path)
    assert str(path) in str(raised.value)


def test_a_preloaded_model_is_what_a_registrar_of_the_same_file_unpickles_to(
        monkeypatch, tmp_path, tiny_model_path):
    """A worker loads the model file while the command loads its own (Registrar.preload):
    the registrar it is sent then takes that model, network and compiled prediction, with
    the configuration sent; a registrar of another file loads its own."""
    from fire_reg.learn import network
    from fire_reg.register import registrar as module

    monkeypatch.setattr(module, "_PRELOADED", {})
    Registrar.preload(tiny_model_path)
    (ready,) = module._PRELOADED.values()
    copy = pickle.loads(pickle.dumps(Registrar(tiny_model_path, transform="affine")))
    assert copy.model is ready.model and copy._network is ready._network
    assert (copy.config.transform, ready.config.transform) == ("affine", "local")
    other = tmp_path / "other.keras"
    network.build_model({"input_size": 32, "encoder_channels": [4, 8, 8, 8],
                         "trunk_units": 8}).save(other)
    assert pickle.loads(pickle.dumps(Registrar(other))).model is not ready.model


def test_a_registrar_travels_as_the_bytes_of_its_model_file(small_fire, tiny_model_path):
    """A registrar loaded from a file is pickled as that file's bytes (Keras' own pickling
    imports TensorFlow under every backend: seconds for each batch's workers); one made from
    a model in memory is pickled by Keras. Both give the same result once unpickled."""
    pair = FireDataset(small_fire)["S01"]
    registrar = Registrar(tiny_model_path)
    in_memory = Registrar((registrar.model, registrar.settings))
    assert registrar.__getstate__()["archive"] == tiny_model_path.read_bytes()
    assert "archive" not in in_memory.__getstate__()
    plain = registrar.register_files(pair.fixed_path, pair.moving_path)
    for copy in (pickle.loads(pickle.dumps(made)) for made in (registrar, in_memory)):
        result = copy.register_files(pair.fixed_path, pair.moving_path)
        np.testing.assert_array_equal(result.matrix, plain.matrix)
        assert result.status == plain.status


# --------------------------------------------------------------------------- the commands

GRID = np.stack(np.meshgrid(np.linspace(0, 383, 9), np.linspace(0, 383, 9)), -1).reshape(-1, 2)


def mapped(transform) -> np.ndarray:
    """Where a transform (any model) sends a grid of fixed points (px)."""
    return transform.fixed_to_moving(GRID)


def transforms_of(out: Path) -> dict:
    """{id: (status, grid mapped by the transform)} of a batch's result sets."""
    return {path.parent.name: (result.status, mapped(result.transform))
            for path in sorted(out.glob("[!.]*/transform.json"))
            for result in [Registration.load(path)]}


def test_batch_on_two_workers_equals_one_process(small_fire, tiny_model_path, tmp_path,
                                                 capsys):
    """The same counts, files and transforms; with ``--pictures none`` the workers send the
    same sets without their pictures."""
    runs = {}
    for workers, pictures in (("1", "all"), ("2", "all"), ("2", "none")):
        out = tmp_path / f"workers{workers}_{pictures}"
        code = main(["register", "--batch", str(small_fire), "--model", str(tiny_model_path),
                     "--transform", "quadratic", "--out", str(out), "--workers", workers,
                     "--pictures", pictures])
        batch = json.loads((out / "batch.json").read_text())
        assert code == batch["exit_status"] and batch["complete"]
        assert batch["workers"] == int(workers)
        runs[workers, pictures] = (batch["counts"], transforms_of(out),
                                   sorted(path.name for path in out.rglob("*")))
    (counts1, found1, files1), (counts2, found2, files2), (counts3, found3, files3) = (
        runs.values())
    assert counts1 == counts2 == counts3 and files1 == files2 and sorted(found1) == sorted(IDS)
    assert "warped.png" in files1 and "overlay.png" in files1
    assert files3 == [name for name in files1 if not name.endswith(".png")]
    for pair_id, (status, array) in found1.items():
        for found in (found2, found3):
            assert found[pair_id][0] == status
            np.testing.assert_allclose(found[pair_id][1], array, rtol=0, atol=1e-9)
    assert "batch: 4 of 4 rows done" in capsys.readouterr().out


def test_evaluate_on_two_workers_equals_one_process(small_fire, tmp_path):
    methods = [baselines.baseline("orb"), baselines.baseline("identity")]
    results = [tester.Tester(small_fire, tmp_path / f"w{workers}", methods, overlays=0,
                             progress=False, workers=workers).run() for workers in (1, 2)]
    assert list(results[0]["pairs"]) == list(results[1]["pairs"])  # the data set's order
    for pair_id, entry in results[0]["pairs"].items():
        for name, method in entry["methods"].items():
            other = results[1]["pairs"][pair_id]["methods"][name]
            assert other["error_px"] == pytest.approx(method["error_px"], abs=1e-9)
            assert other["status"] == method["status"]
    assert results[0]["summary"]["all"]["orb"]["mAUC"] == pytest.approx(
        results[1]["summary"]["all"]["orb"]["mAUC"], abs=1e-12)


def test_one_reference_many_images(small_fire, tiny_model_path, tmp_path, capsys):
    """``register FIXED M1 M2 M3``: one sub-folder per moving image, named by its stem, the
    batch records, and the transforms of independent pairs; a stem that comes twice is that
    row's error (exit status 2); ``--resume`` redoes nothing."""
    data = FireDataset(small_fire)
    fixed = data["S01"].fixed_path
    movings = [data[pid].moving_path for pid in ("S01", "S02", "P01")]
    twin = tmp_path / "other" / movings[1].name
    twin.parent.mkdir()
    shutil.copy(movings[1], twin)
    out = tmp_path / "series"
    argv = ["register", str(fixed), *map(str, movings), str(twin), "--model",
            str(tiny_model_path), "--transform", "quadratic", "--out", str(out),
            "--workers", "1"]
    code = main(argv)
    batch = json.loads((out / "batch.json").read_text())
    rows = {row["id"]: row for row in batch["rows"]}
    assert code == 2 and batch["fixed"] == str(fixed) and batch["counts"]["error"] == 1
    assert rows[str(twin)]["outcome"] == "error" and "file stem" in rows[str(twin)]["reason"]
    found = transforms_of(out)
    assert sorted(found) == sorted(path.stem for path in movings)
    registrar = Registrar(tiny_model_path, transform="quadratic")
    for moving in movings:
        alone = registrar.register_files(fixed, moving)
        assert found[moving.stem][0] == alone.status == rows[moving.stem]["status"]
        np.testing.assert_allclose(found[moving.stem][1], mapped(alone.transform), rtol=0,
                                   atol=1e-9)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "resuming: 3 of 3 pairs finished earlier, 0 to run" in capsys.readouterr().out


@pytest.mark.parametrize("flags, problem", [
    (["--workers", "0"], "--workers: must be at least 1"),
    (["--workers", "2", "--dask", "tcp://127.0.0.1:8786"], "--workers: not with --dask"),
])
def test_bad_pool_flags_are_one_line_and_leave_nothing(small_fire, tmp_path, capsys, flags,
                                                       problem):
    out = tmp_path / "out"
    assert main(["register", "--batch", str(small_fire), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0] and not out.exists()


def test_dask_missing_is_one_line_naming_the_extra(small_fire, tmp_path, capsys,
                                                   monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "distributed" else real(name, *args))
    out = tmp_path / "out"
    assert main(["register", "--batch", str(small_fire), "--out", str(out),
                 "--dask", "tcp://127.0.0.1:8786"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fire-reg: error: --dask: needs Dask's distributed package: "
                   "pip install 'fire-reg[dask]'"] and not out.exists()


@pytest.mark.parametrize("argv, backend", [
    (["register", "f.jpg", "m.jpg", "--out", "o"], "numpy"),
    (["register", "f.jpg", "m1.jpg", "m2.jpg", "--out", "o"], "jax"),
    (["register", "--batch", "pairs.csv", "--out", "o"], "jax"),
    (["evaluate", "--fire", "fire", "--out", "o"], "jax"),
    (["evaluate", "--fire", "fire", "--out", "o", "--no-model"], None),
    (["train", "--data", "shards", "--out", "o"], None)])
@pytest.mark.parametrize("chosen", [None, "tensorflow", "torch", "jax"])
def test_commands_that_register_choose_a_quick_starting_backend(monkeypatch, tmp_path, argv,
                                                                backend, chosen):
    """A single pair starts on Keras' light numpy backend; a series, a batch and evaluation
    run on JAX with its compiled functions kept on disk; training, and evaluation without a
    model, keep Keras' default. A backend the user chose wins (KERAS_BACKEND, or keras.json
    naming another than the TensorFlow Keras writes there itself); JAX chosen so keeps its
    compiled functions too."""
    from fire_reg.cli import commands

    environment = {key: value for key, value in os.environ.items()
                   if key != "KERAS_BACKEND" and not key.startswith("JAX_")}
    environment.update(XDG_CACHE_HOME=str(tmp_path), KERAS_HOME=str(tmp_path / "keras"))
    (tmp_path / "keras").mkdir()
    if chosen is not None:  # in keras.json, or in the environment
        (tmp_path / "keras" / "keras.json").write_text(json.dumps({"backend": chosen}))
    monkeypatch.setattr(os, "environ", environment)
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    commands._choose_backend(commands._parser().parse_args(argv))
    registers = argv[0] != "train" and "--no-model" not in argv
    if chosen in ("torch", "jax"):
        backend = None  # the user's keras.json is left to Keras
    assert environment.get("KERAS_BACKEND") == backend
    cache = tmp_path / "fire-reg" / "jax"
    on_jax = backend == "jax" or (chosen == "jax" and registers)
    assert (environment.get("JAX_COMPILATION_CACHE_DIR") == str(cache)) == on_jax
    assert cache.is_dir() == on_jax
    environment["KERAS_BACKEND"] = "jax"  # chosen by the user: kept, with the cache
    commands._choose_backend(commands._parser().parse_args(argv))
    assert environment["KERAS_BACKEND"] == "jax" and cache.is_dir() == registers


def test_a_compile_cache_is_kept_only_where_it_can_be_made(monkeypatch, tmp_path):
    """The cache folder is made under XDG_CACHE_HOME; where it cannot be (a file in the
    way) none is named and JAX compiles as usual; a folder the user named is kept."""
    from fire_reg.cli import commands

    (tmp_path / "file").write_text("not a folder")
    for home, named, expected in [(tmp_path / "file", None, None),
                                  (tmp_path, "/elsewhere/jax", "/elsewhere/jax")]:
        environment = {"XDG_CACHE_HOME": str(home)}
        if named:
            environment["JAX_COMPILATION_CACHE_DIR"] = named
        monkeypatch.setattr(os, "environ", environment)
        commands.keep_compiled()
        assert environment.get("JAX_COMPILATION_CACHE_DIR") == expected
    assert not (tmp_path / "fire-reg").exists()
