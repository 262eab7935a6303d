"""fire-reg and retinalysis-registration side by side on a FIRE-layout folder.

    pip install -e ".[bench]"        # retinalysis-registration (AGPL-3.0): a benchmark extra only
    python benchmarks/run_retinalysis.py --fire FIRE_DIR --out OUT_DIR

Both methods go through :class:`fire_reg.evaluate.tester.Tester` (the path of ``fire-reg evaluate``):
every pair is decoded and registered by :func:`fire_reg.register.result.register_files` and scored with
the FIRE protocol (moving control points through ``moving_to_fixed``, mean distance in
FIRE-equivalent px, AUC over 0..25 px), next to the ground-truth ceilings. fire-reg is the
default :class:`fire_reg.register.registrar.Registrar` (shipped weights) and comes first, so the
overlays show it. retinalysis-registration is wrapped by ``benchmarks/retinalysis_method.py``.

Writes OUT_DIR/results.json, report.md and the plots (as ``fire-reg evaluate``) and prints the
report and a compact table (AUC S/P/A, mAUC, median / max error, s/pair, failed pairs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import retinalysis_method  # noqa: E402  (fire_reg and this folder's adapter)


def compact_table(results: dict) -> str:
    """Markdown: one row per method (ceilings included) of the all-pairs summary."""
    def cell(value, fmt):
        return "n/a" if value is None else fmt.format(value)

    lines = ["| method | pairs | AUC S | AUC P | AUC A | mAUC | median px | max px | s/pair "
             "| failed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, summary in results["summary"]["all"].items():
        failed = sum(p["methods"][name]["status"] == "failed" for p in results["pairs"].values())
        lines.append("| " + " | ".join([
            name, str(summary["count"]),
            *(cell(summary[f"auc_{c}"], "{:.3f}") for c in "SPA"),
            cell(summary["mAUC"], "{:.3f}"), cell(summary["median"], "{:.2f}"),
            cell(summary["max"], "{:.2f}"), cell(summary.get("seconds_per_pair"), "{:.2f}"),
            str(failed)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fire", type=Path, required=True, help="FIRE-layout folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overlays", type=int, default=2,
                        help="overlays of fire-reg's best and worst pairs (default 2)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the pair results of an interrupted run in --out")
    args = parser.parse_args(argv)
    if not retinalysis_method.available():
        print(f"{retinalysis_method.PACKAGE} is not installed: {retinalysis_method.INSTALL_HINT}",
              file=sys.stderr)
        return 2

    from fire_reg.data import fire
    from fire_reg.register.registrar import Registrar
    from fire_reg.evaluate.tester import Tester

    problems = fire.verify_layout(args.fire)
    if problems:
        print(f"{args.fire}: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                               if len(problems) > 1 else ""), file=sys.stderr)
        return 2
    methods = [Registrar(), retinalysis_method.RetinalysisMethod()]
    results = Tester(args.fire, args.out, methods, overlays=args.overlays,
                     resume=args.resume).run()
    print((args.out / "report.md").read_text())
    print(f"retinalysis-registration {retinalysis_method.version()}; errors in "
          f"FIRE-equivalent px; s/pair: registration only (decoding excluded)\n")
    print(compact_table(results))
    print(f"wrote {args.out}/results.json, report.md, success_curves.png, error_boxplot.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
