"""The README's cost of a pair's files by ``--pictures`` choice ("Cohorts", Pictures): one pair
registered once (the default settings), then its result set written with each choice of
:data:`fire_reg.register.result.PICTURES`, alternating, ``--repeats`` times each:

    KERAS_BACKEND=jax .venv/bin/python benchmarks/pair_files.py \
        ../shared/data/fire_p01/Images/P01_1.jpg ../shared/data/fire_p01/Images/P01_2.jpg

(FIRE's P01, 2912 px, where ../shared holds it; any two images will do). Prints the
registration's seconds and model, then seconds of ``write_files`` per choice (median, least,
most) and the bytes written, as JSON and as a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fire_reg.register.registrar import Registrar
from fire_reg.register.result import PICTURES, write_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed")
    parser.add_argument("moving")
    parser.add_argument("--repeats", type=int, default=5, help="writes of each choice")
    args = parser.parse_args()
    result = Registrar().register_files(args.fixed, args.moving)
    laps = {choice: [] for choice in PICTURES}
    written = {}
    with tempfile.TemporaryDirectory(prefix="fire-reg-files-") as scratch:
        for repeat in range(args.repeats):
            for choice in PICTURES:
                folder = Path(scratch) / f"{choice}_{repeat}"
                start = time.perf_counter()
                write_files(folder, result, args.fixed, args.moving, pictures=choice)
                laps[choice].append(time.perf_counter() - start)
                written[choice] = sum(path.stat().st_size for path in folder.iterdir())
    figures = {"fixed": args.fixed, "moving": args.moving, "fixed_size": result.fixed_size,
               "registration_s": result.seconds, "model": result.transform.model,
               "write_files_s": laps, "bytes": written}
    print(json.dumps(figures, indent=2))
    print(f"\nRegistration {result.seconds:.3f} s ({result.transform.model}, "
          f"{result.fixed_size[0]} px); `write_files`, {args.repeats} times each:\n")
    print("| `--pictures` | seconds a pair (median; least-most) | written |\n|---|---|---|")
    for choice, seconds in laps.items():
        print(f"| {choice} | {statistics.median(seconds):.3f} ({min(seconds):.3f}-"
              f"{max(seconds):.3f}) | {written[choice] / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
