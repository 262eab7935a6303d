"""Montage benchmark: multi-field sets with exact ground truth (fire_reg.data.fields), placed
by the spanning tree alone and by the joint refinement, side by side.

Pair consistency: for every ground-truth correspondence (p_a, p_b) of two placed fields,
|T_a(T_b^-1(p_b)) - p_a| in FIRE-equivalent px (x 2912 / field width), with T_k the
field's mosaic.json transform (canvas px -> field px); a pair's figure is its mean.

Time: the joint montage's wall-clock seconds (``MosaicResult.seconds``, per stage with
``--stages``) and the CPU seconds of this process over it (all threads): the machine's 2 cores
are shared, so the wall clock depends on the load (printed at the start and the end).

    .venv/bin/python benchmarks/run_mosaic.py [--out out/bench_mosaic] [--width 768] [--stages]
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np

from fire_reg.data.fields import make_field_set
from fire_reg.montage.mosaic import Mosaic
from fire_reg.register.registrar import Registrar

SETS = [(5, 101), (5, 102), (5, 103), (5, 104), (7, 105), (7, 106)]  # (fields, seed): held out


def consistency(result, summary) -> list[float]:
    transforms, width = result.transforms, summary["image_size"][0]
    errors = []
    for pair in summary["pairs"]:
        a, b = (k - 1 for k in pair["fields"])
        if a in transforms and b in transforms:
            points = np.asarray(pair["points"])
            back = transforms[a].fixed_to_moving(transforms[b].moving_to_fixed(points[:, 2:]))
            errors.append(float(np.linalg.norm(back - points[:, :2], axis=1).mean()
                                * 2912 / width))
    return errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out/bench_mosaic")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--stages", action="store_true", help="print the seconds per stage")
    args = parser.parse_args()
    registrar = Registrar()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"fields {args.width} px wide")
    print("set     fields placed pairs reg  | tree: median worst | joint: median worst | "
          "s (joint) | cpu s")
    rows = []
    for fields, seed in SETS:
        folder = Path(args.out) / f"set_{fields}_{seed}"
        summary = make_field_set(folder, fields=fields, seed=seed, size=args.width)[0]
        paths = [folder / f["image"] for f in summary["fields"]]
        figures = {}
        for placement in ("tree", "joint"):
            cpu = time.process_time()
            result = Mosaic(registrar, placement=placement).build(paths)
            cpu = time.process_time() - cpu
            errors = consistency(result, summary)
            figures[placement] = (np.median(errors), max(errors), result)
        result = figures["joint"][2]
        placed = sum(p.status == "placed" for p in result.placements)
        rows.append((fields, placed, figures["tree"][:2], figures["joint"][:2],
                     result.seconds["total"], cpu))
        print(f"{seed:<7} {fields:>6} {placed:>6} {len(result.registrations):>3}/"
              f"{fields * (fields - 1) // 2:<4}  | {figures['tree'][0]:12.2f} "
              f"{figures['tree'][1]:5.2f} | {figures['joint'][0]:13.2f} {figures['joint'][1]:5.2f}"
              f" | {result.seconds['total']:9.2f} | {cpu:5.2f}")
        if args.stages:
            print("        " + ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items()))
        if seed == SETS[0][1]:
            result.write(Path(args.out) / "example")
    for name, index in (("tree", 2), ("joint", 3)):
        medians = [row[index][0] for row in rows]
        worsts = [row[index][1] for row in rows]
        print(f"{name}: median of set medians {np.median(medians):.2f} FIRE px, worst pair "
              f"{max(worsts):.2f} FIRE px")
    five = [row[4] for row in rows if row[0] == 5]
    five_cpu = [row[5] for row in rows if row[0] == 5]
    print(f"every field placed: {all(row[0] == row[1] for row in rows)}; 5-field montage "
          f"{np.median(five):.2f} s median ({max(five):.2f} s max), CPU {np.median(five_cpu):.2f}"
          f" s median; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - start:.0f} s")
