"""Cohort-scale figures of the README ("Cohorts: all cores, a cluster, one reference"),
measured side by side in one run on this machine:

    .venv/bin/python benchmarks/run_cohort.py --out out/cohort [--pairs 40] [--rows 500] \
        [--transform quadratic] [--workers 1,2] [--repeats 2] [--fire-size-pairs 16] \
        [--parts throughput,one_reference,memory,pictures]

Every registration uses ``--transform`` (default quadratic: the figures are about the batch
around the registration, not about the fine stage's richest model).

1. Throughput: the same ``register --batch`` of ``--pairs`` pairs (the embedded set's 20
   pairs at 1411 px, listed again under other ids and through other file names, so that no
   two rows share an image) with each of ``--workers`` (default 1 and 2: the command's
   process alone, then it and one worker process), one after the other, ``--repeats`` times
   (1, 2, 1, 2); on a machine of many cores, ``--workers 1,2,4,8,16``. Pairs per second
   of the batch (``batch.json``: from its first row to its last, so a worker's start-up
   counts where it outlasts the command's own) and at steady state (from the finishing
   times of the pairs' folders, over the second half of the batch), the whole command's
   wall seconds, the CPU seconds per pair of the command with its workers, and the cores
   they kept busy on average (CPU seconds / wall seconds of the whole command, start-up
   included).
2. One reference, many images: the same fixed photograph against 20 moving ones, as the
   series ``register FIXED M1 ... M20`` (the reference prepared once) and as 20 independent
   pairs (a batch whose rows name the reference through 20 different file names), both with
   ``--workers 1``, twice each, alternating; and the registration alone through the Python
   API (``Registrar.register_files`` on the paths against ``prepare_file`` once), on Keras'
   default backend (the commands choose their own: README, "Start-up").
3. Memory: a ``--rows`` row batch (the 50 pairs of a 512 px embedded set, each listed
   ``rows / 50`` times under distinct ids) on the default workers, with the resident memory
   (RSS) of the command and of each worker process sampled every 0.5 s (the largest in each
   third of the run, once 20 pairs are done).
4. Pictures at FIRE's size: a batch of ``--fire-size-pairs`` pairs of a 2912 px embedded set
   (8 pairs, listed again as in part 1) with each ``--pictures`` choice, ``--workers 1``,
   ``--repeats`` times, alternating: pairs per second, the whole command's seconds and the
   megabytes a pair's folder holds.

The load average of the machine is printed before and after each measurement (other work
on a shared machine slows every figure). Prints a JSON record and a Markdown summary.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

FIRE_REG = [sys.executable, "-m", "fire_reg.cli"]
SETTINGS: list[str] = []  # --transform, for every registration
PARTS = ("throughput", "one_reference", "memory", "pictures")  # measurements, in their order


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def cpu_seconds() -> float:
    """CPU seconds (user + system) of the finished children of this script (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(*args) -> tuple[float, subprocess.CompletedProcess]:
    """Run one fire-reg command (``register``: with SETTINGS); (wall seconds, the finished
    process with ``cpu_s``: the CPU seconds of the command and its workers)."""
    args = (*args, *SETTINGS) if args[0] == "register" else args
    print("$ fire-reg " + " ".join(map(str, args)), f"  [load {load()}]", flush=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run([*FIRE_REG, *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    done.cpu_s = cpu_seconds() - cpu
    if done.returncode not in (0, 3):
        sys.exit(f"command failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    print("  " + done.stdout.strip().splitlines()[-1], flush=True)
    return wall, done


def embedded(out: Path, *options) -> Path:
    if not (out / "embedded.json").is_file():
        run("data", "embedded", "--out", out, *options)
    return out


def listing(path: Path, rows) -> Path:
    path.write_text("id,fixed,moving\n" + "".join(f"{i},{f},{m}\n" for i, f, m in rows))
    return path


def alias(link: Path, target: Path) -> Path:
    """``link``, a symbolic link to ``target``: another file name for the same image."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(target.resolve())
    return link


def steady_rate(out: Path) -> float:
    """Pairs per second over the second half of a batch: from the moment its middle pair's
    folder was committed to the moment its last one was (the workers long started)."""
    times = sorted(path.stat().st_mtime for path in out.glob("[!.]*/transform.json"))
    middle = len(times) // 2
    return (len(times) - 1 - middle) / (times[-1] - times[middle])


def distinct_pairs(path: Path, source: Path, pairs: int) -> Path:
    """The batch list ``path`` of ``pairs`` rows: the pairs of the embedded set ``source``
    listed again and again under other ids and through other file names (links in
    ``path``'s folder, ``names/``), so that no two rows share an image."""
    images = sorted((source / "Images").glob("*_1.jpg"))
    rows = []
    for index in range(pairs):
        fixed = images[index % len(images)]
        moving = fixed.with_name(fixed.name.replace("_1.", "_2."))
        rows.append((f"r{index:03d}", alias(path.parent / "names" / f"{index}_f.jpg", fixed),
                     alias(path.parent / "names" / f"{index}_m.jpg", moving)))
    return listing(path, rows)


def throughput(work: Path, source: Path, pairs: int, counts: list[int], repeats: int) -> dict:
    """Part 1 (module doc): each of ``counts`` (worker counts, the first the reference of
    the speed-ups) ``repeats`` times, alternating."""
    csv = distinct_pairs(work / "throughput.csv", source, pairs)
    figures = {workers: [] for workers in counts}
    for repeat in range(repeats):
        for workers in counts:
            out = work / f"throughput_w{workers}_{repeat}"
            wall, done = run("register", "--batch", csv, "--out", out, "--workers", workers)
            batch = json.loads((out / "batch.json").read_text())
            figures[workers].append({"wall_s": wall, "pairs_per_s": batch["pairs_per_second"],
                                     "steady_pairs_per_s": steady_rate(out),
                                     "cpu_s_per_pair": done.cpu_s / pairs,
                                     "cores_busy": done.cpu_s / wall, "load_after": load()})
    summary = {w: {key: statistics.mean(f[key] for f in runs)
                   for key in ("pairs_per_s", "steady_pairs_per_s", "wall_s", "cpu_s_per_pair",
                               "cores_busy")}
               for w, runs in figures.items()}
    first = summary[counts[0]]
    return {"pairs": pairs, "runs": figures, "mean": summary,
            "speed-up": {w: summary[w]["pairs_per_s"] / first["pairs_per_s"] for w in counts},
            "steady speed-up": {w: summary[w]["steady_pairs_per_s"] / first["steady_pairs_per_s"]
                                for w in counts}}


API_TIMING = """
import json, sys, time
from fire_reg.register.registrar import Registrar
transform, fixed, movings = sys.argv[1], sys.argv[2], sys.argv[3:]
registrar = Registrar(transform=transform)
registrar.register_files(fixed, movings[0])  # warm
laps = {"paths": [], "prepared once": []}
for _ in range(2):
    start = time.perf_counter()
    for moving in movings:
        registrar.register_files(fixed, moving)
    laps["paths"].append(time.perf_counter() - start)
    start = time.perf_counter()
    prepared = registrar.prepare_file(fixed)
    for moving in movings:
        registrar.register_files(prepared, moving)
    laps["prepared once"].append(time.perf_counter() - start)
print(json.dumps(laps))
"""


def one_reference(work: Path, source: Path) -> dict:
    fixed = source / "Images" / "S01_1.jpg"
    movings = sorted((source / "Images").glob("*_2.jpg"))[:20]
    independent = listing(work / "independent.csv", [
        (moving.stem, alias(work / "references" / f"{i}.jpg", fixed), moving)
        for i, moving in enumerate(movings)])
    laps = {"series": [], "independent": []}
    for repeat in range(2):
        wall, _ = run("register", fixed, *movings, "--out", work / f"series_{repeat}",
                      "--workers", 1)
        laps["series"].append(wall)
        wall, _ = run("register", "--batch", independent, "--out",
                      work / f"independent_{repeat}", "--workers", 1)
        laps["independent"].append(wall)
    print(f"$ python -c <Registrar timing>   [load {load()}]", flush=True)
    api = json.loads(subprocess.run([sys.executable, "-c", API_TIMING, SETTINGS[1],
                                     str(fixed), *map(str, movings)], capture_output=True,
                                    text=True, check=True).stdout.strip().splitlines()[-1])
    command = {name: min(values) for name, values in laps.items()}
    registration = {name: min(values) for name, values in api.items()}
    return {"moving": len(movings), "command_s": laps, "registration_s": api,
            "command speed-up": command["independent"] / command["series"],
            "registration speed-up": registration["paths"] / registration["prepared once"],
            "load_after": load()}


def memory(work: Path, source: Path, rows: int) -> dict:
    pairs = sorted(path.name[:3] for path in (source / "Images").glob("*_1.jpg"))
    repeats = rows // len(pairs)
    csv = listing(work / "memory.csv", [
        (f"{pid}_{r:02d}", source / "Images" / f"{pid}_1.jpg", source / "Images" / f"{pid}_2.jpg")
        for r in range(repeats) for pid in pairs])
    out = work / "memory"
    argv = [*FIRE_REG, "register", "--batch", str(csv), "--out", str(out), *SETTINGS]
    print("$ fire-reg " + " ".join(argv[3:]), f"  [load {load()}]", flush=True)
    samples, start = [], time.perf_counter()
    command = psutil.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def sample():
        while command.poll() is None:
            try:
                parent = command.memory_info().rss
                workers = [child.memory_info().rss for child in command.children()
                           if "spawn_main" in " ".join(child.cmdline())]
            except psutil.Error:
                break
            done = len(list(out.glob("[!.]*/transform.json")))
            samples.append((time.perf_counter() - start, done, parent, workers))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, _ = command.communicate()
    sampler.join()
    print("  " + stdout.strip().splitlines()[-1], flush=True)
    mb = 1 / 2**20
    steady = [s for s in samples if s[3] and s[1] >= 20]  # all workers up, 20 pairs done
    thirds = [steady[i * len(steady) // 3:(i + 1) * len(steady) // 3] for i in range(3)]
    return {"rows": repeats * len(pairs), "seconds": time.perf_counter() - start,
            "samples": len(samples),
            "parent_mb": [max(s[2] for s in part) * mb for part in thirds],
            "worker_mb": [max(max(s[3]) for s in part) * mb for part in thirds],
            "workers": max(len(s[3]) for s in samples),
            "total_mb_max": max((s[2] + sum(s[3])) * mb for s in samples),
            "load_after": load()}


def pictures(work: Path, source: Path, pairs: int, repeats: int) -> dict:
    """Part 4 (module doc)."""
    from fire_reg.register.result import PICTURES

    csv = distinct_pairs(work / "pictures.csv", source, pairs)
    figures = {choice: [] for choice in PICTURES}
    for repeat in range(repeats):
        for choice in PICTURES:
            out = work / f"pictures_{choice}_{repeat}"
            wall, _ = run("register", "--batch", csv, "--out", out, "--workers", 1,
                          "--pictures", choice)
            batch = json.loads((out / "batch.json").read_text())
            written = sum(path.stat().st_size for path in out.glob("[!.]*/*"))
            figures[choice].append({"wall_s": wall, "pairs_per_s": batch["pairs_per_second"],
                                    "mb_per_pair": written / pairs / 1e6, "load_after": load()})
    summary = {choice: {key: statistics.mean(f[key] for f in runs)
                        for key in ("pairs_per_s", "wall_s", "mb_per_pair")}
               for choice, runs in figures.items()}
    return {"pairs": pairs, "runs": figures, "mean": summary}


def markdown(figures: dict) -> str:
    """The summary table of the parts that ran."""
    lines = [
        f"Measured with `{' '.join(figures['argv'])}` on {figures['cores']} cores, `--transform "
        f"{figures['transform']}` (load average before: {figures['load_before']}).", "",
        "| measurement | figure |", "|---|---|"]
    if "throughput" in figures:
        t = figures["throughput"]
        reference = next(iter(t["mean"]))
        for workers, mean in t["mean"].items():
            name = (f"`register --batch`, {t['pairs']} pairs (1411 px), `--workers {workers}`"
                    if workers == reference else f"same, `--workers {workers}`")
            speed_up = ("" if workers == reference else
                        f"; {t['speed-up'][workers]:.2f}x ({t['steady speed-up'][workers]:.2f}x"
                        f" steady) the pairs/s of `--workers {reference}`")
            lines.append(f"| {name} | {mean['pairs_per_s']:.2f} pairs/s "
                         f"({mean['steady_pairs_per_s']:.2f} steady; whole command "
                         f"{mean['wall_s']:.1f} s; {mean['cpu_s_per_pair']:.2f} CPU s per pair;"
                         f" {mean['cores_busy']:.2f} cores busy{speed_up}) |")
    if "one_reference" in figures:
        o = figures["one_reference"]
        lines += [
            f"| 1-to-{o['moving']} series `register FIXED M1 ... M{o['moving']}` against "
            f"{o['moving']} independent pairs (`--workers 1`) | "
            f"{min(o['command_s']['series']):.1f} s against "
            f"{min(o['command_s']['independent']):.1f} s: {o['command speed-up']:.2f}x |",
            f"| same, registration alone (`prepare_file` once) | "
            f"{min(o['registration_s']['prepared once']):.2f} s against "
            f"{min(o['registration_s']['paths']):.2f} s: {o['registration speed-up']:.2f}x |"]
    if "memory" in figures:
        m = figures["memory"]
        lines += [
            f"| {m['rows']}-row batch (512 px, default `--workers`: the command and "
            f"{m['workers']} worker process(es), {m['seconds']:.0f} s): RSS of the command, "
            "first / middle / last third | "
            + " / ".join(f"{v:.0f}" for v in m["parent_mb"]) + " MB |",
            "| same, RSS of the largest worker | "
            + " / ".join(f"{v:.0f}" for v in m["worker_mb"]) + " MB |"]
    if "pictures" in figures:
        p = figures["pictures"]
        every = p["mean"]["all"]["pairs_per_s"]
        for choice, mean in p["mean"].items():
            lines.append(
                f"| `register --batch`, {p['pairs']} pairs (2912 px), `--workers 1 --pictures "
                f"{choice}` | {mean['pairs_per_s']:.2f} pairs/s "
                f"({mean['pairs_per_s'] / every:.2f}x `all`; whole command {mean['wall_s']:.1f} s;"
                f" {mean['mb_per_pair']:.2f} MB a pair) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/cohort", help="work folder")
    parser.add_argument("--pairs", type=int, default=40, help="pairs of the throughput batch")
    parser.add_argument("--rows", type=int, default=500, help="rows of the memory batch")
    parser.add_argument("--transform", default="quadratic", help="--transform of every run")
    parser.add_argument("--workers", default="1,2",
                        help="worker counts of the throughput part, comma-separated; the "
                             "speed-ups are against the first")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each worker count and of each --pictures choice")
    parser.add_argument("--fire-size-pairs", type=int, default=16,
                        help="pairs of the batch at FIRE's size (pictures)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"what to measure, comma-separated, of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts: one or more of {', '.join(PARTS)}")
    SETTINGS[:] = ["--transform", args.transform]
    work = Path(args.out).resolve()  # absolute paths in the CSVs it writes
    work.mkdir(parents=True, exist_ok=True)
    figures = {"argv": ["python", *sys.argv], "cores": os.cpu_count(), "load_before": load(),
               "transform": args.transform}
    if "throughput" in parts or "one_reference" in parts:
        large = embedded(work / "set1411", "--per-image", "S10,P5,A5", "--seed", "1")
    if "throughput" in parts:
        figures["throughput"] = throughput(work / "throughput", large, args.pairs,
                                           [int(n) for n in args.workers.split(",")],
                                           args.repeats)
    if "one_reference" in parts:
        figures["one_reference"] = one_reference(work / "series", large)
    if "memory" in parts:
        small = embedded(work / "set512", "--per-image", "S25,P15,A10", "--seed", "2",
                         "--size", "512")
        figures["memory"] = memory(work, small, args.rows)
    if "pictures" in parts:
        fire_size = embedded(work / "set2912", "--per-image", "S4,P2,A2", "--seed", "3",
                             "--size", "2912")
        figures["pictures"] = pictures(work / "pictures", fire_size, args.fire_size_pairs,
                                       args.repeats)
    (work / "cohort.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    print(markdown(figures))


if __name__ == "__main__":
    main()
