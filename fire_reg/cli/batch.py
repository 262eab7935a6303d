"""``fire-reg register --batch``: many pairs from a CSV list or a FIRE-layout folder.

The batch contract (README, "Batches and output folders"):

* Every row's outcome is isolated: bad input (InputError) or any other exception inside one
  pair becomes that row's ``error`` with its reason; the other rows go on. Only an output
  folder that can take no more files (disk full, read-only: OutputError) stops the batch.
* ``OUT/<id>/`` holds a pair's result set, committed as one (``transform.json`` marks a
  complete set); a pair with status ``failed`` gets no ``warped.png``.
* ``OUT/batch.json`` (per row: id, fixed, moving, outcome, status or error, reason; the counts
  of ok / suspect / failed / error / not run; the settings and their fingerprint) and
  ``OUT/failures.csv`` (id, outcome, reason of every failed or error row) are written when
  the batch starts and when it ends, also after Ctrl-C or SIGTERM: the first signal lets the
  current pair finish, a second drops it. The last line printed gives the same counts.
* Exit status (:func:`exit_status`): 0 every pair ran and none failed, 2 some rows had an
  error, 3 some pairs have status ``failed`` (2 wins over 3); stopped by a signal: 128 + its
  number, after the records are written.
* ``--resume`` keeps every row whose folder holds a ``transform.json`` with this run's
  settings fingerprint and the same two image files, and runs the rest; it refuses
  (InputError) when ``batch.json`` records other settings or another model.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from fire_reg.cli.signals import Interrupted, deferred
from fire_reg.io.errors import InputError
from fire_reg.io.output import OutputError, write_json, write_text
from fire_reg.io.runs import check_continues, describe, fingerprint

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


def register_batch(args, make_registrar) -> int:
    """Register every usable row of ``args.batch`` into ``args.out`` under the batch contract
    (module notes); returns the exit status, or raises Interrupted after a signal (the
    records written) and OutputError when the output folder can take no more."""
    from tqdm.auto import tqdm

    pairs, problems = batch_pairs(args.batch)
    out = Path(args.out)
    rows = [{"id": pair_id, "fixed": str(fixed), "moving": str(moving),
             "folder": str(out / pair_id), "outcome": "not run"}
            for pair_id, fixed, moving in pairs]
    rows += [{"id": problem.path, "outcome": "error", "error": "input",
              "reason": problem.problem} for problem in problems]
    with deferred() as stop:
        registrar = make_registrar(args) if pairs else None
        settings = {"method": describe(registrar)} if registrar else None
        run = {"list": str(args.batch), "fingerprint": settings and fingerprint(settings),
               "settings": settings}
        if args.resume and settings:
            check_continues(out / "batch.json", "this batch", settings)
            for row in rows[:len(pairs)]:
                row.update(_finished(row, run["fingerprint"]) or {})
        todo = [row for row in rows if row["outcome"] == "not run"]
        if args.resume:
            print(f"resuming: {len(pairs) - len(todo)} of {len(pairs)} pairs finished earlier, "
                  f"{len(todo)} to run")
        _write_records(out, run, rows, seconds=0.0, ran=0, stopped_by=None, status=None)
        start, full = time.perf_counter(), None
        try:
            with tqdm(todo, desc="register", unit="pair") as progress:
                for row in progress:
                    if stop.signum is not None:
                        break
                    row.update(_run_row(registrar, row, run["fingerprint"]))
        except Interrupted:  # a second signal: the current pair is dropped
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
            print(f"fire-reg: error: {args.batch}: {counts['error']} row(s) could not be "
                  "registered (bad input or an error inside the pair; reasons in "
                  f"{out / 'failures.csv'})", file=sys.stderr)
        elif status == 3:
            print(f"fire-reg: {args.batch}: {counts['failed']} pair(s) have status failed (no "
                  f"trustworthy transform; listed in {out / 'failures.csv'})", file=sys.stderr)
        print(_summary(counts, seconds, sum(bool(row.get("resumed")) for row in rows),
                       stopped_by, out))
    if full is not None:
        raise full
    if stop.signum is not None:
        raise Interrupted(stop.signum)
    return status


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


def _run_row(registrar, row: dict, run_fingerprint: str) -> dict:
    """Register one row and write its folder; any exception but OutputError becomes the
    row's error."""
    from fire_reg.register.result import write_files

    try:
        result = registrar.register_files(row["fixed"], row["moving"])
        write_files(row["folder"], result, row["fixed"], row["moving"],
                    fingerprint=run_fingerprint)
    except OutputError:
        raise
    except InputError as error:
        return {"outcome": "error", "error": "input", "reason": str(error)}
    except Exception as error:  # isolated: an error inside one pair is that row's outcome
        return {"outcome": "error", "error": "internal",
                "reason": f"{type(error).__name__}: {error}"}
    return _registered(vars(result))


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
