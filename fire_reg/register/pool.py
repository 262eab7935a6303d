"""Pairs on every core, or on a Dask cluster: one per-pair function mapped over workers.

:class:`PairPool` runs ``function(state, item)`` for each of a stream of items and yields
``(item, result)`` as each finishes (in finishing order), in one of three ways:

* ``workers=1`` (and no ``dask``): in this process, one item after the other, ``state`` as
  given; an exception of ``function`` is raised here, as a plain loop would.
* ``workers=N``: N items at a time, one in this process (with ``state`` as given: it holds
  the model already) and one in each of N - 1 worker processes
  (:class:`concurrent.futures.ProcessPoolExecutor`, started with ``spawn``: TensorFlow and JAX
  do not survive ``fork``). ``state`` (a registration method with its model, a Tester) is
  pickled once here, into the pool's temporary folder, and unpickled once by each worker as
  it starts (the process initializer), so every worker loads the model once. Each process,
  this one included while the pool runs, uses ``max(1, cores // N)`` threads in OpenCV, and
  each worker as many in the numerical libraries (unless the environment says otherwise) but
  numpy's BLAS, one thread (:func:`one_blas_thread`);
  a worker ignores SIGINT and SIGTERM (this process decides what a signal stops), makes its
  temporary files in a folder this process removes when the pool closes, and exits when this
  process is gone. :meth:`PairPool.starting` starts the workers before the state exists:
  they import what it needs (``preload``: Keras and its backend, seconds) while this process
  builds it, and load it once :meth:`PairPool.begin` gives it.
* ``dask="tcp://host:8786"``: the workers of a Dask ``distributed`` cluster (the optional
  extra ``fire-reg[dask]``). ``state`` is sent to every worker once
  (``Client.scatter(..., broadcast=True)``) and unpickled once per worker process; the items
  are ``Client.submit`` tasks whose results stream back here. Start the workers with one
  thread each (``dask worker ADDRESS --nthreads 1``): a worker's pairs then run one at a time,
  as in a worker process here.

A worker process takes seconds to start (it imports Keras and its backend and loads the
model, meanwhile when :meth:`PairPool.starting` is given a ``warm`` call); this process
works from the first second. Two items per worker process are sent ahead (one
running, one waiting), one per thread of a Dask cluster; the slots of the items that came
back are filled again before this process takes an item of its own, so a worker never waits
for this process to finish its item. ``stop()`` is asked before each
new item starts: once it is true, no item starts (a worker skips those waiting), and those
running are waited for and yielded. An exception that ends the iteration early (a second
Ctrl-C: ``Interrupted``) drops the items in flight: :meth:`PairPool.close` kills the worker
processes (Dask: cancels the tasks). A worker that dies while it holds an item (killed,
out of memory) raises :class:`WorkerLost` for the items sent to the pool then (the pool
stops with it), or gives ``lost(item, error)`` when ``lost`` is given; the pool starts
new workers for the rest.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import importlib
import multiprocessing
import operator
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from fire_reg.io.errors import InputError
from fire_reg.io.memory import keep_freed_memory

DASK_EXTRA = "pip install 'fire-reg[dask]'"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Thread counts a worker sets (when unset) before the numerical libraries start."""
NETWORK_THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
"""TensorFlow's thread pools, one thread each in a process that registers
(:func:`one_network_thread`)."""
GPU_MEMORY_ON_DEMAND = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                        "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
"""JAX's and TensorFlow's settings for taking GPU memory as it is needed, instead of most of
the card as they start (JAX 75 %, TensorFlow all of it) (:func:`gpu_memory_on_demand`)."""
POLL_SECONDS = 0.5
"""Longest wait between two looks at ``stop()`` while items are in flight."""
STATE_POLL_SECONDS = 0.05
"""How often a started worker looks for the state the parent is still building."""
CONNECT_SECONDS = 10
"""How long a Dask scheduler is tried before ``--dask`` gives up."""


PROCESS_BYTES = 2**30
"""Memory a registering process is counted at when the default number of workers is chosen
(bytes): measured 0.55-0.57 GB on JAX and 0.90-0.92 GB on TensorFlow (README, "Cohorts")."""
UNLIMITED_BYTES = 2**60
"""Above this, a cgroup memory limit means none (cgroup v1 writes about 2**63 for none)."""
MEMINFO = "/proc/meminfo"
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes")
"""A container's memory limit: cgroup version 2, then version 1."""


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, a container's CPU quota (cgroups)
    and ``LOKY_MAX_CPU_COUNT``, the least of them (``joblib.cpu_count``)."""
    import joblib

    return max(1, joblib.cpu_count())


def available_memory() -> int | None:
    """Bytes the processes of a batch may take: the kernel's estimate of available memory
    (``MemAvailable`` of /proc/meminfo), or its container's memory limit where that is less
    (the whole limit: what a container holds is mostly file cache, which the kernel gives
    back); None where neither can be read (not Linux)."""
    figures = []
    try:
        with open(MEMINFO) as file:
            figures += [int(line.split()[1]) * 1024 for line in file
                        if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for path in CGROUP_MEMORY_LIMITS:
        try:
            with open(path) as file:
                limit = file.read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < UNLIMITED_BYTES:  # "max": none
            figures.append(int(limit))
        break
    return min(figures) if figures else None


def default_workers() -> int:
    """Processes a batch runs when ``--workers`` is not given: one per usable core
    (:func:`usable_cores`), no more than the available memory holds at
    :data:`PROCESS_BYTES` each (:func:`available_memory`), at least one."""
    memory = available_memory()
    cores = usable_cores()
    return max(1, cores if memory is None else min(cores, memory // PROCESS_BYTES))


def one_network_thread() -> None:
    """Give TensorFlow one thread per pool (unless the environment says otherwise), before
    it starts: the network is small, and on the benchmark machine its threads cost 7-10 %
    more CPU per pair for the same seconds, CPU that a second worker needs (README,
    "Cohorts"). The ``register``, ``evaluate``, ``mosaic`` and ``demo`` commands and every
    worker process call it; no effect once TensorFlow has started."""
    for name in NETWORK_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def gpu_memory_on_demand() -> None:
    """Let JAX and TensorFlow take GPU memory as the network needs it (unless the environment
    says otherwise, :data:`GPU_MEMORY_ON_DEMAND`), before they start, so that a command's
    processes share one GPU: each would otherwise take most of the card as it starts, and
    with JAX's CUDA build on one GPU a batch of 4 workers stopped at its first pair
    (CUDA_ERROR_OUT_OF_MEMORY; README, "Cohorts"). The network needs little memory. The
    commands that register call it (worker processes inherit the environment)."""
    for name, value in GPU_MEMORY_ON_DEMAND.items():
        os.environ.setdefault(name, value)


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """Give the BLAS libraries loaded by the first call (numpy's OpenBLAS, OpenCV's own) one
    thread (threadpoolctl), from now on, or within a ``with`` block (the count before is
    restored after it). A registration's linear algebra is small (fits through hundreds of
    point pairs), and a second BLAS thread keeps spinning on a core after each call, the core
    that the registration's own threads need (README, Results, "What changed the speed": on
    the benchmark machine 9 % more seconds a pair, 18 % with other numerical work between the
    pairs, as in ``evaluate``). ``Registrar.register`` runs in such a block; the commands that
    register, and their worker processes, call it once. Call it after numpy is imported."""
    return _blas_controller().limit(limits=1, user_api="blas")


def check_dask(address: str | None) -> None:
    """InputError (``--dask``, one line naming the extra to install) when ``address`` is
    given but Dask's ``distributed`` is not installed; milliseconds, nothing imported."""
    import importlib.util

    if address is not None and importlib.util.find_spec("distributed") is None:
        raise InputError("--dask", f"needs Dask's distributed package: {DASK_EXTRA}")


class WorkerLost(RuntimeError):
    """A worker died while it held an item (killed, out of memory, crashed)."""


class WorkerStartError(RuntimeError):
    """A worker process could not unpickle the pool's state (raised for each of its items)."""


class PairPool:
    """Maps a per-item function over ``workers`` processes or a Dask cluster (module notes).

    Use it as a context manager; the workers start with the first item (with
    :meth:`starting`, at once). ``dask``: the scheduler's address (``workers`` is then the
    cluster's business). InputError when the ``distributed`` package is missing or the
    scheduler cannot be reached.
    """

    def __init__(self, state, workers: int = 1, dask: str | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.state, self.workers, self.dask = state, workers, dask
        self._backend = _Cluster(state, dask) if dask is not None else None
        self._closed = False

    @classmethod
    def starting(cls, workers: int, preload: tuple[str, ...] = (),
                 warm: tuple = ()) -> "PairPool":
        """A pool of ``workers`` on this machine whose worker processes start now, before its
        state exists, import the ``preload`` modules meanwhile and make ``warm``'s call,
        ``("module:function", *args)`` (Keras and its backend, the model the state will
        hold: the seconds a worker takes to start overlap this process building the state;
        an exception there is ignored, the state tells what is wrong); :meth:`begin` gives
        the state. Closed without one, its workers are killed."""
        pool = cls(_NO_STATE, workers)
        if not pool.in_process:
            pool._backend = _Processes(workers - 1, preload, warm)
        return pool

    def begin(self, state, items: int | None = None) -> "PairPool":
        """Give a pool made by :meth:`starting` its state (the workers load it now) and
        return it; with ``items`` (the number to come) fewer than its workers, this pool is
        closed and a pool of that many (at least 1) returned instead, as :meth:`map` sends
        the first items to the workers, which would still be starting."""
        if self.state is not _NO_STATE:
            raise RuntimeError("this PairPool has its state already")
        if items is not None and items < self.workers:
            self.close()
            return PairPool(state, max(1, items))
        self.state = state
        if self._backend is not None:
            self._backend.give(state)
        return self

    @property
    def in_process(self) -> bool:
        return self.dask is None and self.workers == 1

    def __enter__(self) -> "PairPool":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(drop=kind is not None)

    def close(self, drop: bool = False) -> None:
        """Stop the workers; ``drop``: kill them (cancel the tasks) at once, for an exception
        left items in flight. The workers' temporary folder is removed."""
        if self._backend is not None:
            self._backend.close(drop)
        self._backend, self._closed = None, True

    def map(self, function: Callable, items: Iterable, stop: Callable[[], bool] = lambda: False,
            lost: Callable | None = None) -> Iterator[tuple]:
        """``(item, function(state, item))`` for each item, as each finishes. ``function``
        must be importable by the workers (a module-level function of an installed module)."""
        if self.state is _NO_STATE:
            raise RuntimeError("this PairPool has no state yet: give it with begin()")
        if self.in_process:
            for item in items:
                if stop():
                    return
                yield item, function(self.state, item)
            return
        if self._closed:
            raise RuntimeError("this PairPool is closed")
        if self._backend is None:
            self._backend = _Processes(self.workers - 1)
            self._backend.give(self.state)
        backend, queue, pending, exhausted = self._backend, iter(items), {}, False

        def send_ahead() -> None:
            nonlocal exhausted
            while not exhausted and not stop() and len(pending) < backend.slots():
                item = next(queue, _END)
                exhausted = item is _END
                if not exhausted:
                    pending[backend.submit(function, item)] = item

        send_ahead()
        while True:
            if stop():
                backend.stop()
            here = self.dask is None and not exhausted and not stop()  # an item for us
            if not pending and not here:
                return
            for future in backend.finished(list(pending), wait=not here) if pending else ():
                item = pending.pop(future)
                try:
                    result = backend.result(future)
                except WorkerLost as error:
                    if lost is None:
                        raise
                    result = lost(item, error)
                if result is not _Skipped:
                    yield item, result
            send_ahead()  # the slots just freed, before this process takes an item of its own
            if here and not stop():  # (a stop asked while the results above were handled)
                item = next(queue, _END)
                exhausted = item is _END
                if not exhausted:
                    yield item, function(self.state, item)


_END = object()
_NO_STATE = object()  # a pool made by PairPool.starting, until begin()


class _Skipped:
    """What a worker returns for an item it did not start: the pool was stopped."""


# --------------------------------------------------------------------------- worker processes

_worker: dict = {}  # in a worker: its state (and, on a Dask worker, the digest it came from)
_worker_lock = threading.Lock()


def _start_worker(state_path: str, threads: int, scratch: str, parent: int, stopped,
                  preload: tuple[str, ...] = (), warm: tuple = ()) -> None:
    """Process initializer: signals left to the parent, thread counts, the allocator
    (:func:`~fire_reg.io.memory.keep_freed_memory`), temporary folder, a watch on the parent,
    the pool's stop event, the ``preload`` modules imported and ``warm``'s call made
    (:meth:`PairPool.starting`), then the state, unpickled once from ``state_path`` (the
    model loads here, unless ``warm`` loaded it) as soon as the parent has written it."""
    _worker["stopped"] = stopped
    keep_freed_memory()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    one_network_thread()
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    threading.Thread(target=_watch_parent, args=(parent, scratch), daemon=True,
                     name="fire-reg-parent-watch").start()
    import cv2

    cv2.setNumThreads(threads)
    one_blas_thread()
    try:
        for module in preload:
            importlib.import_module(module)
        if warm:
            _warm(*warm)
        while not os.path.exists(state_path):  # the parent is still building the state
            time.sleep(STATE_POLL_SECONDS)
        with open(state_path, "rb") as file:
            _worker["state"] = pickle.load(file)
    except Exception as error:  # every item then says why, instead of workers started forever
        _worker["error"] = WorkerStartError(f"a worker could not load its state: "
                                            f"{type(error).__name__}: {error}")
    # registered last, so run first at exit: every result has been sent by then (the pool's
    # result queue writes through), and the backend's teardown would take a second or more
    atexit.register(os._exit, 0)


def _warm(name: str, *args) -> None:
    """Call ``name`` ("module:function", or "module:Class.method") with ``args``; what the
    call raises is ignored (a worker's head start only: the state's own loading reports it),
    a name that does not resolve is not."""
    module, function = name.split(":")
    call = operator.attrgetter(function)(importlib.import_module(module))
    try:
        call(*args)
    except Exception:
        pass


def _watch_parent(parent: int, scratch: str) -> None:
    """End this worker once its parent is gone (killed outright: nobody will ask for more,
    nor remove the workers' temporary folder: the first worker to notice does)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    shutil.rmtree(scratch, ignore_errors=True)
    os._exit(1)


def in_worker() -> bool:
    """Whether this runs in a worker of a :class:`PairPool` (a process here, or a Dask
    worker), not in the process that owns the pool."""
    return bool(_worker)


def _call(function: Callable, item):
    if _worker["stopped"].is_set():
        return _Skipped
    if "error" in _worker:
        raise _worker["error"]
    return function(_worker["state"], item)


def _ready() -> None:
    """A worker's first task: none (submitted to start the process)."""


class _Processes:
    """Worker processes of this machine (module notes), started at once; they load the
    state once :meth:`give` has written it."""

    def __init__(self, processes: int, preload: tuple[str, ...] = (), warm: tuple = ()):
        import cv2

        self.processes, self.preload, self.given = processes, tuple(preload), False
        self.warm = tuple(warm)
        self.threads = max(1, usable_cores() // (processes + 1))
        self.own_threads = cv2.getNumThreads()
        cv2.setNumThreads(self.threads)  # this process shares the cores too
        self.scratch = tempfile.mkdtemp(prefix="fire-reg-workers-")
        self.state_path = os.path.join(self.scratch, "state.pickle")
        self.others = {child.pid for child in multiprocessing.active_children()}
        self.context = multiprocessing.get_context("spawn")
        self.stopped = self.context.Event()
        self.executor = self._start()
        for _ in range(processes):  # each submit starts one process (spawned on demand)
            self.executor.submit(_ready)

    def _start(self) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(
            self.processes, mp_context=self.context, initializer=_start_worker,
            initargs=(self.state_path, self.threads, self.scratch, os.getpid(), self.stopped,
                      self.preload, self.warm))

    def give(self, state) -> None:
        """Write ``state`` (pickled) where the workers wait for it; renamed into place
        complete."""
        partial = self.state_path + ".partial"
        with open(partial, "wb") as file:
            pickle.dump(state, file)
        os.replace(partial, self.state_path)
        self.given = True

    def slots(self) -> int:
        return 2 * self.processes

    def stop(self) -> None:
        """Workers skip the items they have not started."""
        self.stopped.set()

    def submit(self, function: Callable, item) -> futures.Future:
        try:
            return self.executor.submit(_call, function, item)
        except BrokenProcessPool:  # a worker died: the others were stopped too; start anew
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = self._start()
            return self.executor.submit(_call, function, item)

    def finished(self, pending: list, wait: bool = True) -> set:
        done, _ = futures.wait(pending, timeout=POLL_SECONDS if wait else 0,
                               return_when=futures.FIRST_COMPLETED)
        return done

    def result(self, future: futures.Future):
        try:
            return future.result()
        except BrokenProcessPool as error:
            raise WorkerLost(f"a worker process died while registering this pair ({error})"
                             ) from None

    def close(self, drop: bool) -> None:
        """Stop the workers (``drop``, or no state given: they wait for none, killed)."""
        import cv2

        if drop or not self.given:
            workers = [child for child in multiprocessing.active_children()
                       if child.pid not in self.others]
            for child in workers:
                child.kill()
            for child in workers:
                child.join()
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        cv2.setNumThreads(self.own_threads)


# --------------------------------------------------------------------------- Dask

def _dask_call(payload: bytes, digest: str, function: Callable, item):
    """A Dask task: the state unpickled once per worker process (per digest, the allocator
    tuned then: :func:`~fire_reg.io.memory.keep_freed_memory`), then one item."""
    with _worker_lock:
        if _worker.get("digest") != digest:
            keep_freed_memory()
            _worker.update(state=pickle.loads(payload), digest=digest)
        state = _worker["state"]
    return function(state, item)


class _Cluster:
    """The workers of a Dask ``distributed`` cluster (module notes)."""

    def __init__(self, state, address: str):
        check_dask(address)
        import distributed

        try:
            self.client = distributed.Client(address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError) as error:
            raise InputError("--dask", f"cannot reach a Dask scheduler at {address!r} "
                                       f"({type(error).__name__}: {error})") from None
        try:
            payload = pickle.dumps(state)
            self.digest = hashlib.sha256(payload).hexdigest()
            self.payload = self.client.scatter(payload, broadcast=True, hash=False)
        except BaseException:
            self.client.close()
            raise
        self.pending: list = []

    def slots(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def stop(self) -> None:
        """Nothing waits on a Dask worker: one item per thread is sent."""

    def submit(self, function: Callable, item):
        future = self.client.submit(_dask_call, self.payload, self.digest, function, item,
                                    pure=False)
        self.pending.append(future)
        return future

    def finished(self, pending: list, wait: bool = True) -> list:
        import distributed

        try:
            done, _ = distributed.wait(pending, timeout=POLL_SECONDS if wait else 0,
                                       return_when="FIRST_COMPLETED")
        except TimeoutError:
            return []
        return list(done)

    def result(self, future):
        from distributed.scheduler import KilledWorker

        self.pending.remove(future)
        try:
            return future.result()
        except KilledWorker as error:
            raise WorkerLost(f"the Dask workers running this pair died ({error})") from None

    def close(self, drop: bool) -> None:
        if drop and self.pending:
            self.client.cancel(self.pending)
        self.client.close()
