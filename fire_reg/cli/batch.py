"""``fire-reg register --batch``: many pairs from a CSV list or a FIRE-layout folder."""
from __future__ import annotations

import csv
import time
from pathlib import Path

from fire_reg.io.errors import InputError
from fire_reg.io.output import write_json, write_text

def batch_pairs(source) -> tuple[list[tuple[str, Path, Path]], list[InputError]]:
    """(id, fixed, moving) rows and bad rows from a CSV list (header fixed,moving[,id]; paths
    relative to the CSV) or a FIRE-layout folder (control points not needed).

    InputError when the list itself is unusable (missing, not a CSV, no header); a bad row
    (missing column, duplicate or unsafe id) is returned as an InputError naming its line.
    """
    from fire_reg.io import fire

    source = Path(source)
    if source.is_dir():
        return fire.image_pairs(source)
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
        if not row.get("fixed") or not row.get("moving"):
            problems.append(InputError(f"{source}:{line}", f"row {pair_id} needs both a fixed "
                                                           "and a moving image"))
        elif Path(pair_id).name != pair_id or pair_id in (".", "..") or pair_id in seen:
            problems.append(InputError(f"{source}:{line}", f"pair id {pair_id!r} is not a plain "
                                                           "folder name or appears twice"))
        else:
            pairs.append((pair_id, source.parent / row["fixed"], source.parent / row["moving"]))
        seen.add(pair_id)
    return pairs, problems


def register_batch(args, make_registrar) -> int:
    """Register every usable row; bad rows are reported in batch.json and failures.csv and
    make the exit status 2, but never stop the other rows."""
    from tqdm.auto import tqdm

    from fire_reg.register.result import write_files

    pairs, problems = batch_pairs(args.batch)
    failures = {str(p.path): p.problem for p in problems}
    summary = {}
    registrar = make_registrar(args) if pairs else None
    start = time.perf_counter()
    for pair_id, fixed, moving in tqdm(pairs, desc="register", unit="pair"):
        out = Path(args.out) / pair_id
        try:
            result = registrar.register_files(fixed, moving)
            write_files(out, result, fixed, moving)
        except InputError as error:
            failures[pair_id] = str(error)
            continue
        summary[pair_id] = {"status": result.status, "reason": result.reason,
                            "seconds": result.seconds,
                            "estimated_error_px": result.estimated_error_px,
                            "folder": str(out)}
    elapsed = time.perf_counter() - start
    write_json(Path(args.out) / "batch.json", {
        "pairs": summary, "failures": failures, "seconds": elapsed,
        "pairs_per_second": len(summary) / elapsed if summary else 0.0})
    write_text(Path(args.out) / "failures.csv", "id,problem\n" + "".join(
        f"{_csv_cell(pair_id)},{_csv_cell(problem)}\n" for pair_id, problem in failures.items()))
    print(f"registered {len(summary)} pairs in {elapsed:.1f} s; {len(failures)} failed "
          f"(listed in {args.out}/failures.csv); wrote {args.out}/batch.json")
    if failures:
        raise InputError(args.batch, f"{len(failures)} row(s) could not be registered "
                                     f"(see {Path(args.out) / 'failures.csv'})")
    return 0


def _csv_cell(text: str) -> str:
    return '"' + str(text).replace('"', '""') + '"'
