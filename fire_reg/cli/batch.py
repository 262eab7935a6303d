"""``fire-reg register --batch``: many pairs from a CSV list or a FIRE-layout folder, or one
reference against many images (``register FIXED MOVING1 MOVING2 ...``, one sub-folder per
moving image, named by its file stem).

``--workers N`` rows run at a time (default: every usable core that memory allows,
:func:`~fire_reg.register.pool.default_workers`), one in this process and one in
each of N - 1 worker processes, or on the Dask cluster at ``--dask``
(:mod:`fire_reg.register.pool`), each worker with the model loaded once. This process is
the only writer of the output folder: a worker returns a pair's files and this process
commits them as one, as each pair finishes. Rows that share a fixed image prepare it once
per process (:meth:`fire_reg.register.registrar.Registrar.prepare_file`). The results are
those of one process, pair for pair.

The batch contract (README, "Batches and output folders"):

* Every row's outcome is isolated: bad input (InputError) or any other exception inside one
  pair becomes that row's ``error`` with its reason; the other rows go on. Only an output
  folder that can take no more files (disk full, read-only: OutputError) stops the batch.
* ``OUT/<id>/`` holds a pair's result set, committed as one (``transform.json`` marks a
  complete set) with the pictures ``--pictures`` asks for (the settings include them); a pair
  with status ``failed`` gets no ``warped.png``.
* ``OUT/batch.json`` (per row: id, fixed, moving, outcome, status or error, reason; the counts
  of ok / suspect / failed / error / not run; the settings and their fingerprint; the
  workers) and ``OUT/failures.csv`` (id, outcome, reason of every failed or error row) are
  written when the batch starts and when it ends, also after Ctrl-C or SIGTERM: the first
  signal lets the pairs in progress finish (the workers themselves ignore both signals and
  start no waiting pair), a second drops them (the workers are killed). The last line
  printed gives the same counts.
* Exit status (:func:`exit_status`): 0 every pair ran and none failed, 2 some rows had an
  error, 3 some pairs have status ``failed`` (2 wins over 3); stopped by a signal: 128 + its
  number, after the records are written.
* ``--resume`` keeps every row whose folder holds a ``transform.json`` with this run's
  settings fingerprint and the same two image files, and runs the rest; it refuses
  (InputError) when ``batch.json`` records other settings or another model.
"""
from __future__ import annotations

import collections
import csv
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fire_reg.cli.signals import Interrupted, deferred
from fire_reg.io.errors import InputError
from fire_reg.io.output import OutputError, atomic_folder, write_json, write_text
from fire_reg.io.runs import check_continues, describe, fingerprint
from fire_reg.register.pool import PairPool, default_workers, in_worker

OUTCOMES = ("ok", "suspect", "failed", "error", "not run")
RECORDS = ("batch.json", "failures.csv")


def batch_pairs(source) -> tuple[list[tuple[str, Path, Path]], list[InputError]]:
    """(id, fixed, moving) rows and bad rows from a CSV list (header fixed,moving[,id]; paths
    relative to the CSV) or a FIRE-layout folder (control points not needed).

    InputError when the list itself is unusable (missing, not a CSV, no header); a bad row
    (missing column, duplicate or unsafe id) is returned as an InputError naming its line.
    An id must be a plain folder name that does not begin with a dot (hidden names are the
    temporaries' and the lock's) and is not one of the batch's records.
    """
    from fire_reg.data import fire

    source = Path(source)
    if source.is_dir():
        found, problems = fire.image_pairs(source)
        pairs = []
        for pair_id, fixed, moving in found:
            problem = _id_problem(pair_id)
            if problem:
                problems.append(InputError(fixed, problem))
            else:
                pairs.append((pair_id, fixed, moving))
        return pairs, problems
    if not source.is_file():
        raise InputError(source, "batch list not found")
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
            reader = csv.DictReader(handle)
            fields = set(reader.fieldnames or ())
            rows = list(reader)
    except PermissionError:
        raise InputError(source, "permission denied") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(source, f"not a text CSV file ({type(error).__name__})") from None
    if not {"fixed", "moving"} <= fields:
        raise InputError(source, "batch CSV needs a header line with columns fixed,moving[,id]")
    pairs, problems, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        pair_id = (row.get("id") or "").strip() or f"pair{line - 1:04d}"
        problem = _id_problem(pair_id) or (f"pair id {pair_id!r} appears twice"
                                           if pair_id in seen else None)
        if not row.get("fixed") or not row.get("moving"):
            problems.append(InputError(f"{source}:{line}", f"row {pair_id} needs both a fixed "
                                                           "and a moving image"))
        elif problem:
            problems.append(InputError(f"{source}:{line}", problem))
        else:
            pairs.append((pair_id, source.parent / row["fixed"], source.parent / row["moving"]))
        seen.add(pair_id)
    return pairs, problems


def _id_problem(pair_id: str) -> str | None:
    if Path(pair_id).name != pair_id or pair_id in (".", ".."):
        return f"pair id {pair_id!r} is not a plain folder name"
    if pair_id.startswith("."):
        return f"pair id {pair_id!r} begins with a dot (hidden names are fire-reg's own)"
    if pair_id in RECORDS:
        return f"pair id {pair_id!r} is the name of one of the batch's records"
    return None


def exit_status(counts: dict) -> int:
    """0: every pair ran and none failed; 2: some rows had an error (bad input, or an error
    inside that pair); 3: some pairs have status ``failed``. 2 wins over 3."""
    return 2 if counts["error"] else 3 if counts["failed"] else 0


def series_pairs(fixed, movings) -> tuple[list[tuple[str, Path, Path]], list[InputError]]:
    """(id, fixed, moving) rows of one reference image and many moving images (``register
    FIXED MOVING1 MOVING2 ...``): each row's id is its moving image's file stem; a stem that
    is no usable folder name (:func:`batch_pairs`) or comes twice is a bad row naming the
    image."""
    pairs, problems, seen = [], [], set()
    for moving in map(Path, movings):
        pair_id = moving.stem
        problem = _id_problem(pair_id) or (f"another moving image has the file stem {pair_id!r} "
                                           "(each one names its sub-folder)"
                                           if pair_id in seen else None)
        if problem:
            problems.append(InputError(moving, problem))
        else:
            pairs.append((pair_id, Path(fixed), moving))
        seen.add(pair_id)
    return pairs, problems


def register_batch(args, make_registrar) -> int:
    """Register every usable row of ``args.batch`` (or of the series ``args.fixed`` against
    each of ``args.moving``) into ``args.out`` under the batch contract (module notes), on
    ``args.workers`` processes or the Dask cluster at ``args.dask``; returns the exit status,
    or raises Interrupted after a signal (the records written) and OutputError when the
    output folder can take no more."""
    from tqdm.auto import tqdm

    if args.batch:
        pairs, problems = batch_pairs(args.batch)
        source, label = {"list": str(args.batch)}, str(args.batch)
    else:
        pairs, problems = series_pairs(args.fixed, args.moving)
        source, label = {"fixed": str(args.fixed)}, str(args.fixed)
    out = Path(args.out)
    rows = [{"id": pair_id, "fixed": str(fixed), "moving": str(moving),
             "folder": str(out / pair_id), "outcome": "not run"}
            for pair_id, fixed, moving in pairs]
    rows += [{"id": problem.path, "outcome": "error", "error": "input",
              "reason": problem.problem} for problem in problems]
    with deferred() as stop:
        pool = _starting_pool(args, len(pairs))  # its workers start while the model loads
        try:
            registrar = make_registrar(args) if pairs else None
            settings = ({"method": describe(registrar), "pictures": args.pictures}
                        if registrar else None)
            run = {**source, "fingerprint": settings and fingerprint(settings),
                   "settings": settings}
            if args.resume and settings:
                check_continues(out / "batch.json", "this batch", settings)
                for row in rows[:len(pairs)]:
                    row.update(_finished(row, run["fingerprint"]) or {})
            todo = [row for row in rows if row["outcome"] == "not run"]
            if args.resume:
                print(f"resuming: {len(pairs) - len(todo)} of {len(pairs)} pairs finished "
                      f"earlier, {len(todo)} to run")
            # a Dask scheduler is reached before any file is written
            state = Registering(registrar, run["fingerprint"], args.pictures)
            pool = _pool(args, pool, state, run, todo)
            _write_records(out, run, rows, seconds=0.0, ran=0, stopped_by=None, status=None)
        except BaseException:
            pool.close(drop=True)
            raise
        start, full = time.perf_counter(), None
        sharing = collections.Counter(row["fixed"] for row in todo)
        jobs = [(index, row["fixed"], row["moving"], row["folder"], sharing[row["fixed"]] > 1)
                for index, row in enumerate(todo)]
        try:
            with pool, tqdm(total=len(jobs), desc="register", unit="pair") as progress:
                for job, fields in pool.map(register_row, jobs, lost=_lost,
                                            stop=lambda: stop.signum is not None):
                    files = fields.pop("files", None)
                    if files is not None:
                        _commit(job[3], files)
                    todo[job[0]].update(fields)
                    progress.update()
        except Interrupted:  # a second signal: the pairs in progress are dropped
            pass
        except OutputError as error:  # the output folder can take no more files
            full = error
        stop.dropping = False  # from here on a signal is only noted: the records get written
        seconds = time.perf_counter() - start
        ran = sum(row["outcome"] != "not run" for row in todo)
        counts = _counts(rows)
        stopped_by = None if stop.signum is None else Interrupted(stop.signum).args[0]
        status = (2 if full is not None else exit_status(counts) if stop.signum is None
                  else 128 + stop.signum)
        _write_records(out, run, rows, seconds, ran, stopped_by, status)
        if status == 2 and full is None:
            print(f"fire-reg: error: {label}: {counts['error']} row(s) could not be "
                  "registered (bad input or an error inside the pair; reasons in "
                  f"{out / 'failures.csv'})", file=sys.stderr)
        elif status == 3:
            print(f"fire-reg: {label}: {counts['failed']} pair(s) have status failed (no "
                  f"trustworthy transform; listed in {out / 'failures.csv'})", file=sys.stderr)
        print(_summary(counts, seconds, sum(bool(row.get("resumed")) for row in rows),
                       stopped_by, out))
    if full is not None:
        raise full
    if stop.signum is not None:
        raise Interrupted(stop.signum)
    return status


REGISTRAR_MODULES = ("fire_reg.register.registrar", "fire_reg.learn.network")
"""What a worker process imports while this process loads the model (Keras and its backend)."""
PRELOAD_MODEL = "fire_reg.register.registrar:Registrar.preload"
"""What a worker process calls with the model's path meanwhile (:meth:`Registrar.preload`)."""


def registering_pool(workers: int, model) -> PairPool:
    """:meth:`PairPool.starting` for ``workers`` that will register with the model file
    ``model`` (None: the shipped one): they import Keras and load that model while this
    process loads its own."""
    return PairPool.starting(workers, preload=REGISTRAR_MODULES, warm=(PRELOAD_MODEL, model))


def _starting_pool(args, rows: int) -> PairPool:
    """``--workers`` at a time (default: :func:`default_workers`; no more than ``rows``; 1:
    this process alone), the worker processes started now (:meth:`PairPool.starting`); a
    pool of one for ``--dask`` (the cluster's pool is made with its state, :func:`_pool`)."""
    if getattr(args, "dask", None):
        return PairPool.starting(1)
    workers = min(getattr(args, "workers", None) or default_workers(), max(1, rows))
    return registering_pool(workers, getattr(args, "model", None))


def _pool(args, starting: PairPool, state: Registering, run: dict, todo: list) -> PairPool:
    """The pool the rows run on, given its ``state``: the cluster at ``--dask``, else the
    ``starting`` pool (a smaller one for fewer rows to run, :meth:`PairPool.begin`); records
    it in ``run``."""
    dask = getattr(args, "dask", None) if todo else None
    if dask:
        starting.close()
        run["workers"] = f"dask {dask}"
        return PairPool(state, dask=dask)
    pool = starting.begin(state, len(todo))
    run["workers"] = pool.workers
    return pool


PREPARED_KEPT = 4
"""Prepared fixed images a process keeps (rows sharing one usually come together)."""


@dataclass
class Registering:
    """What registers a row, in this process or in a worker: the method, the run's settings
    fingerprint, the pictures of each result set (a name of
    :data:`~fire_reg.register.result.PICTURES`), and the fixed images prepared so far (in
    each process; a fixed image that several rows share is decoded, detected and mapped once
    there)."""

    method: object
    fingerprint: str | None
    pictures: str = "all"
    prepared: collections.OrderedDict = field(default_factory=collections.OrderedDict,
                                              repr=False)

    def fixed_image(self, path: str, shared: bool):
        """The fixed image as the method takes it: prepared once when rows share it and the
        method can prepare (a Registrar), else its path. The last PREPARED_KEPT are kept."""
        prepare = getattr(self.method, "prepare_file", None)
        if not shared or prepare is None:
            return path
        if path not in self.prepared:
            self.prepared[path] = prepare(path)
            while len(self.prepared) > PREPARED_KEPT:
                self.prepared.popitem(last=False)
        self.prepared.move_to_end(path)
        return self.prepared[path]


def register_row(job: Registering, item: tuple) -> dict:
    """Register one row, ``item`` = (index, fixed, moving, folder, fixed shared), and write
    its folder (in the command's own process) or return its files under ``"files"`` (in a
    worker, which may be on another machine: the command commits them); any exception but
    an OutputError of the output folder becomes the row's error."""
    from fire_reg.register.result import write_files

    _, fixed, moving, folder, shared = item
    writes = not in_worker()
    try:
        fixed = job.fixed_image(fixed, shared)  # a shared reference: prepared, decoded once
        result = job.method.register_files(fixed, moving)
        if writes:
            write_files(folder, result, fixed, moving, job.fingerprint, job.pictures)
            files = None
        else:
            files = _rendered(result, fixed, moving, job)
    except InputError as error:
        if isinstance(error, OutputError):
            if writes:
                raise
            return {"outcome": "error", "error": "internal",
                    "reason": f"a worker could not write its files: {error}"}
        return {"outcome": "error", "error": "input", "reason": str(error)}
    except Exception as error:  # isolated: an error inside one pair is that row's outcome
        return {"outcome": "error", "error": "internal",
                "reason": f"{type(error).__name__}: {error}"}
    return {**_registered(vars(result)), **({} if files is None else {"files": files})}


def _rendered(result, fixed, moving, job: Registering) -> dict[str, bytes]:
    """A result set's files ({name: bytes}) as :func:`write_files` makes them for ``job``,
    made in a temporary folder of the worker."""
    from fire_reg.register.result import write_files

    with tempfile.TemporaryDirectory(prefix="fire-reg-pair-") as scratch:
        folder = Path(scratch) / "pair"
        write_files(folder, result, fixed, moving, job.fingerprint, job.pictures)
        return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _commit(folder: str, files: dict[str, bytes]) -> None:
    """Write a worker's result set into ``folder``, committed as one (transform.json last)."""
    from fire_reg.register.result import OUTPUTS

    with atomic_folder(folder, owned=OUTPUTS, last="transform.json") as hidden:
        for name, data in files.items():
            (hidden / name).write_bytes(data)


def _lost(item: tuple, error: Exception) -> dict:
    """The row whose worker died: an internal error (``--resume`` runs it again)."""
    return {"outcome": "error", "error": "internal", "reason": f"WorkerLost: {error}"}


def _finished(row: dict, run_fingerprint: str) -> dict | None:
    """The outcome of a row an earlier run finished with these settings and images, read
    from its transform.json; None when it has to run."""
    try:
        record = json.loads((Path(row["folder"]) / "transform.json").read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("fingerprint") != run_fingerprint
            or not all(_same_file(record.get(side), row[side]) for side in ("fixed", "moving"))):
        return None
    return {**_registered(record), "resumed": True}


def _same_file(recorded, path: str) -> bool:
    """Whether the image a transform.json records is the row's (the same file, however the
    path is written)."""
    try:
        return os.path.samefile(recorded, path)
    except (OSError, TypeError, ValueError):
        return False


def _registered(record: dict) -> dict:
    """A registered row's fields from a transform.json record or Registration attributes."""
    return {"outcome": record["status"], "status": record["status"],
            "reason": record.get("reason"), "seconds": record.get("seconds"),
            "estimated_error_px": record.get("estimated_error_px")}


def _counts(rows: list[dict]) -> dict:
    return {outcome: sum(row["outcome"] == outcome for row in rows) for outcome in OUTCOMES}


def _write_records(out: Path, run: dict, rows: list[dict], seconds: float, ran: int,
                   stopped_by: str | None, status: int | None) -> None:
    """Write batch.json and failures.csv. ``status``: the exit status, None while the batch
    runs (so a batch killed outright has none)."""
    counts = _counts(rows)
    write_json(out / "batch.json", {
        **run, "complete": counts["not run"] == 0, "stopped_by": stopped_by,
        "counts": counts, "exit_status": status, "seconds": seconds,
        "pairs_per_second": ran / seconds if ran and seconds > 0 else 0.0, "rows": rows})
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(("id", "outcome", "reason"))
    writer.writerows((row["id"], row["outcome"], row["reason"]) for row in rows
                     if row["outcome"] in ("failed", "error"))
    write_text(out / "failures.csv", table.getvalue())


def _summary(counts: dict, seconds: float, resumed: int, stopped_by: str | None,
             out: Path) -> str:
    total = sum(counts.values())
    earlier = f", {resumed} of them finished earlier" if resumed else ""
    line = (f"batch: {total - counts['not run']} of {total} rows done in {seconds:.1f} s"
            f"{earlier}: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES[:4]))
    if counts["not run"]:
        why = f"stopped by {stopped_by}" if stopped_by else "stopped"
        line += f", {counts['not run']} not run ({why}; continue with --resume)"
    return line + f"; wrote {out / 'batch.json'} and {out / 'failures.csv'}"
