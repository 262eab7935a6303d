"""Reproduces the README's figures on this machine and writes them into README.md.

    .venv/bin/python benchmarks/run_benchmarks.py --drive ../shared/data/drive/images \
        --p01 ../shared/data/fire_p01 --out out/bench --write-readme

Every number comes from the `fire-reg` commands it runs (echoed with their output):

1. Accuracy on four FIRE-layout sets made by `fire-reg data embedded` from photographs the
   model never saw: scikit-image's retina and held-out DRIVE retinas 01-08, each curved
   (`--geometry sphere`, calibrated to FIRE) and affine (`--geometry affine`, the sets of
   fire-reg 0.1); plus the real FIRE pair P01 when its folder is given. Rows: fire-reg with
   each `--transform` (`local` included), the classic baselines, identity, the best affine /
   homography / quadratic through each pair's own ten control points, and on the embedded
   sets the same models fitted to the exact dense ground truth (`dense-fit ...`: the
   ceilings of those models).
2. Trust: the status and estimated error of the default run against the true error, in two
   stress modes (network alone, one pass without refinement), and on wrong pairs (different
   eyes, mirrored and rotated retinas, everyday photographs, noise) registered as a batch.
3. Speed: one-pair `fire-reg register` wall time (start-up included), `register --batch`
   throughput, and training samples per second.

The tables go to OUT/benchmarks.md (and, with --write-readme, between the markers
``<!-- benchmarks:begin -->`` and ``<!-- benchmarks:end -->`` of README.md); all figures to
OUT/benchmarks.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIRE_REG = [sys.executable, "-m", "fire_reg.cli"]
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
HELD_OUT = ("--select", "0[1-8]_test.tif", "--per-image", "S2,P3,A1", "--seed", "2")
VARIANTS = {"quadratic": ["--transform", "quadratic"], "homography": ["--transform", "homography"],
            "affine": ["--transform", "affine"], "none": ["--transform", "none"]}
VARIANT_LABELS = {"quadratic": "fire-reg `--transform quadratic` (no local correction)",
                  "homography": "fire-reg `--transform homography`",
                  "affine": "fire-reg `--transform affine`",
                  "none": "fire-reg `--transform none` (network + ECC: fire-reg 0.1)"}
STRESS = {"network alone (`--refine none --transform none`)": ["--refine", "none",
                                                                "--transform", "none"],
          "one pass, no refinement (`--iterations 1 --refine none --transform none`)":
              ["--iterations", "1", "--refine", "none", "--transform", "none"]}


def fire_reg(*args, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run one fire-reg command, echo it (and its output unless quiet)."""
    print("$ fire-reg " + " ".join(map(str, args)), flush=True)
    done = subprocess.run([*FIRE_REG, *map(str, args)], capture_output=True, text=True)
    if check and done.returncode:
        sys.exit(f"command failed ({done.returncode}): {done.stderr.strip()}")
    if not quiet:
        print(done.stdout[-4000:], flush=True)
    return done


def register_batch(source: Path, out: Path) -> dict:
    """`fire-reg register --batch SOURCE --out OUT` (default workers); its batch.json. Exit
    status 3 (some pairs failed) is a result here, not an error."""
    done = fire_reg("register", "--batch", source, "--out", out, check=False, quiet=True)
    if done.returncode not in (0, 3):
        sys.exit(f"command failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads((out / "batch.json").read_text())


def evaluate(fire_dir: Path, out: Path, *options) -> dict:
    """`fire-reg evaluate`, one pair at a time (`--workers 1`: the s/pair columns are the time
    of one registration on an otherwise idle machine, not of pairs sharing the cores)."""
    fire_reg("evaluate", "--fire", fire_dir, "--out", out, "--workers", "1", *options,
             quiet=True)
    return json.loads((out / "results.json").read_text())


def accuracy(name: str, fire_dir: Path, out: Path, baselines: str) -> dict:
    """The default run with baselines, then each --transform variant alone; one table."""
    main = evaluate(fire_dir, out / f"eval_{name}", "--baselines", baselines)
    rows = dict(main["summary"]["all"])
    order = [main["methods"][0]]
    for variant, flags in VARIANTS.items():
        result = evaluate(fire_dir, out / f"eval_{name}_{variant}", "--baselines", "",
                          "--overlays", "0", *flags)
        rows[VARIANT_LABELS[variant]] = result["summary"]["all"]["fire-reg"]
        order.append(VARIANT_LABELS[variant])
    order += [m for m in main["methods"][1:]]
    return {"rows": {m: rows[m] for m in order}, "trust": main["trust"].get("fire-reg"),
            "pairs": len(main["pairs"])}


MODALITY_SETS = ("fa", "ir", "red-free")


def multimodal(drive: Path, out: Path, baselines: str) -> dict:
    """Held-out curved DRIVE pairs whose moving photograph is drawn as FA, IR or red-free
    (`data embedded --modality`): a table per modality, and every method summarised over the
    three sets together (the pairs keep their S / P / A categories)."""
    from fire_reg.evaluate import metrics

    per_modality, merged = {}, {}
    for name in MODALITY_SETS:
        folder = out / f"multimodal_{name}"
        fire_reg("data", "embedded", "--out", folder, "--images", drive, *HELD_OUT,
                 "--geometry", "sphere", "--modality", name)
        result = evaluate(folder, out / f"eval_multimodal_{name}", "--baselines", baselines,
                          "--overlays", "1")
        per_modality[name] = {"rows": result["summary"]["all"], "pairs": len(result["pairs"]),
                              "trust": result["trust"].get("fire-reg")}
        merged.update({f"{name}:{pid}": entry for pid, entry in result["pairs"].items()})
        methods = result["methods"]
    together = {}
    for method in methods:
        entries = {pid: entry["methods"][method] for pid, entry in merged.items()}
        together[method] = metrics.summarize(
            {pid: e["error_px"] for pid, e in entries.items()},
            {pid: entry["category"] for pid, entry in merged.items()},
            {pid: np.asarray(e["point_errors_px"]) for pid, e in entries.items()},
            seconds_by_pair={pid: e["seconds"] for pid, e in entries.items()})
    wrong_ok = sum(1 for entry in merged.values()
                   if entry["methods"]["fire-reg"]["status"] == "ok"
                   and entry["methods"]["fire-reg"]["error_px"] > 25)
    return {"modalities": per_modality, "together": {"rows": together, "pairs": len(merged)},
            "ok_over_25px": wrong_ok,
            "statuses": {status: sum(1 for e in merged.values()
                                     if e["methods"]["fire-reg"]["status"] == status)
                         for status in ("ok", "suspect", "failed")}}


def stress(fire_dir: Path, out: Path) -> dict:
    trust = {}
    for label, flags in STRESS.items():
        slug = "_".join(f.strip("-") for f in flags)
        result = evaluate(fire_dir, out / f"stress_{slug}", "--baselines", "", "--overlays", "0",
                          *flags)
        trust[label] = result["trust"]["fire-reg"]
    return trust


def wrong_pairs(out: Path, drive: Path | None) -> dict:
    """Pairs that are not two photographs of one eye, registered with `register --batch`;
    returns the count per status."""
    import cv2
    from skimage import data

    from fire_reg.io.images import read_image

    folder = out / "wrong_pairs"
    folder.mkdir(parents=True, exist_ok=True)
    retina = cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR)
    images = {"retina": retina}
    rows = []
    if drive:
        eyes = sorted(Path(drive).glob("*.tif"))[:12]
        for i, path in enumerate(eyes):
            image = read_image(path)
            images[f"eye{i}"] = image
            images[f"eye{i}_mirrored"] = np.ascontiguousarray(image[:, ::-1])
            images[f"eye{i}_rot90"] = np.ascontiguousarray(np.rot90(image))
            images[f"eye{i}_rot180"] = np.ascontiguousarray(image[::-1, ::-1])
            rows += [(f"eye{i}", f"eye{i}_mirrored"), (f"eye{i}", f"eye{i}_rot90"),
                     (f"eye{i}", f"eye{i}_rot180")]
            if i:
                rows.append((f"eye{i - 1}", f"eye{i}"))
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick"):
        image = getattr(data, name)()
        images[name] = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        rows += [("retina", name), (name, "retina")]
    images["noise"] = np.random.default_rng(0).integers(0, 255, retina.shape, dtype=np.uint8)
    rows += [("retina", "noise"), ("noise", "retina")]
    for name, image in images.items():
        cv2.imwrite(str(folder / f"{name}.png"), image)
    lines = ["id,fixed,moving"] + [f"{a}_vs_{b},{a}.png,{b}.png" for a, b in rows]
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    batch = register_batch(folder / "pairs.csv", out / "wrong_batch")
    return {status: batch["counts"][status] for status in ("ok", "suspect", "failed", "error")}


def single_register_seconds(fixed: Path, moving: Path, out: Path, repeats: int = 3) -> float:
    """Median wall time of a whole `fire-reg register` process (start-up included)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fire_reg("register", fixed, moving, "--out", out, quiet=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def registration_seconds(fixed: Path, moving: Path, repeats: int = 3) -> float:
    """Median seconds of ``Registrar.register_files`` in a warm process: decoding the two
    files and registering them (no start-up, no output files)."""
    from fire_reg import Registrar

    registrar = Registrar()
    registrar.register_files(fixed, moving)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        registrar.register_files(fixed, moving)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_throughput(shards: Path, batch_size: int = 32, steps: int = 20) -> float:
    """Samples per second of training steps (default network and losses, after warm-up)."""
    from fire_reg.learn.shards import ShardStream
    from fire_reg.learn.trainer import TrainConfig, Trainer, make_batches

    config = TrainConfig(batch_size=batch_size, steps_per_epoch=steps + 3, curriculum_epochs=0)
    trainer = Trainer(shards, out_dir=shards.parent / "train_speed", config=config)
    model = trainer.build()
    batches = make_batches(ShardStream(shards), np.arange(len(trainer.stream)), config, True)
    for step in range(3):
        model.train_on_batch(*batches[step])
    start = time.perf_counter()
    for step in range(3, steps + 3):
        model.train_on_batch(*batches[step])
    return steps * batch_size / (time.perf_counter() - start)


def markdown(figures: dict) -> str:
    """The README section: one accuracy table per set, the trust tables, the speed lines."""
    from fire_reg.evaluate import metrics

    lines = []
    for name, title in (("curved_drive", "Curved pairs from held-out DRIVE retinas"),
                        ("curved_embedded", "Curved pairs from scikit-image's retina"),
                        ("p01", "The real FIRE pair P01 (2912 px)"),
                        ("affine_drive", "Affine pairs from held-out DRIVE retinas (fire-reg 0.1's set)"),
                        ("affine_embedded", "Affine pairs from scikit-image's retina (fire-reg 0.1's set)")):
        if name in figures:
            table = metrics.markdown_table(figures[name]["rows"])
            count = figures[name]["pairs"]
            lines += [f"**{title}** ({count} pair{'s' * (count != 1)}):", "",
                      _short_table(table), ""]
    if "multimodal" in figures:
        lines += _multimodal_markdown(figures["multimodal"], metrics)
    trust = {"default (curved held-out DRIVE)": figures["curved_drive"]["trust"]}
    trust.update(figures.get("stress", {}))
    lines += ["**Trust** (curved held-out DRIVE pairs; true error <= 25 FIRE-equivalent px "
              "counts as correct):", "", metrics.trust_table(trust), ""]
    wrong = figures["wrong_pairs"]
    lines += [f"**Wrong pairs** (different eyes, mirrored / 90° / 180° rotated retinas, "
              f"everyday photographs, noise; {sum(wrong.values())} pairs): "
              + ", ".join(f"{status} {count}" for status, count in wrong.items()) + ".", ""]
    nan = float("nan")
    lines += ["**Speed** (this 2-core CPU): a single `fire-reg register` of a 1411 px pair "
              f"takes {figures['register_wall_seconds']:.2f} s wall, start-up (Python, Keras "
              "under its numpy backend, the model) and writing the four files included; of "
              f"the real 2912 px pair P01 {figures.get('register_p01_wall_seconds', nan):.2f} s "
              "(its full-size warped.png is most of the difference). In a running process "
              "(Python API, batches, evaluation) decoding and registering P01 takes "
              f"{figures.get('register_files_p01_seconds', nan):.2f} s; `register --batch` "
              f"runs {figures['register_batch_pairs_per_second']:.2f} pairs/s on the 1411 px "
              "set (default workers, Keras on JAX), decoding and writing included (from its "
              "first pair: the command's own start-up, 4-5 s, not counted; its "
              "workers' is); the s/pair columns above are registration alone. Training: "
              f"{figures['training_samples_per_second']:.0f} samples/s (batch 32, 128 px, "
              "TensorFlow).", ""]
    return "\n".join(lines)


def _multimodal_markdown(figures: dict, metrics) -> list[str]:
    """One table per modality and one over the three sets together."""
    lines = []
    labels = {"fa": "fluorescein angiogram (FA)", "ir": "infrared (IR)", "red-free": "red-free"}
    for name, entry in figures["modalities"].items():
        lines += [f"**Colour against {labels[name]}: held-out curved DRIVE pairs, the moving "
                  f"photograph drawn as {name}** ({entry['pairs']} pairs):", "",
                  _short_table(metrics.markdown_table(entry["rows"])), ""]
    together = figures["together"]
    statuses = ", ".join(f"{status} {count}" for status, count in figures["statuses"].items())
    lines += [f"**All three modality sets together** ({together['pairs']} pairs; fire-reg "
              f"statuses: {statuses}; pairs over 25 px reported ok: "
              f"{figures['ok_over_25px']}):", "",
              _short_table(metrics.markdown_table(together["rows"])), ""]
    return lines


def _short_table(table: str) -> str:
    """Keep the README table narrow: drop the std/min/p25/p75 columns."""
    rows = [line.split("|") for line in table.strip().splitlines()]
    header = [cell.strip() for cell in rows[0]]
    keep = [i for i, cell in enumerate(header)
            if cell not in ("std px", "min px", "p25 px", "p75 px", "inaccurate")]
    return "\n".join("|".join(row[i] for i in keep) for row in rows)


def write_readme(section: str) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{README} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", type=Path, help="DRIVE images folder (held-out retinas)")
    parser.add_argument("--p01", type=Path, help="folder of the real FIRE pair P01")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--baselines", default="sift,sift-homography,orb,ecc")
    parser.add_argument("--multimodal-baselines", default="sift,mi",
                        help="baselines of the multimodal sets (mi needs fire-reg[itk])")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    out = args.out
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    figures = {}
    sets = {"curved_embedded": ["--geometry", "sphere"],
            "affine_embedded": ["--geometry", "affine"]}
    if args.drive:
        sets["curved_drive"] = ["--images", args.drive, *HELD_OUT, "--geometry", "sphere"]
        sets["affine_drive"] = ["--images", args.drive, *HELD_OUT, "--geometry", "affine"]
    for name, flags in sets.items():
        fire_reg("data", "embedded", "--out", out / name, *flags)
        figures[name] = accuracy(name, out / name, out, args.baselines)
    if args.p01:
        figures["p01"] = accuracy("p01", args.p01, out, args.baselines)
    if args.drive:
        figures["multimodal"] = multimodal(args.drive, out, args.multimodal_baselines)
    trust_set = out / ("curved_drive" if args.drive else "curved_embedded")
    figures.setdefault("curved_drive", figures["curved_embedded"])
    figures["stress"] = stress(trust_set, out)
    figures["wrong_pairs"] = wrong_pairs(out, args.drive)

    images = out / "curved_embedded" / "Images"
    figures["register_wall_seconds"] = single_register_seconds(
        images / "S01_1.jpg", images / "S01_2.jpg", out / "single")
    if args.p01:
        figures["register_files_p01_seconds"] = registration_seconds(
            args.p01 / "Images" / "P01_1.jpg", args.p01 / "Images" / "P01_2.jpg")
        figures["register_p01_wall_seconds"] = single_register_seconds(
            args.p01 / "Images" / "P01_1.jpg", args.p01 / "Images" / "P01_2.jpg", out / "single_p01")
    start = time.perf_counter()
    batch = register_batch(out / "curved_embedded", out / "batch")
    figures["register_batch_pairs_per_second"] = len(batch["rows"]) / (time.perf_counter() - start)
    fire_reg("prepare", "--fire", out / "curved_embedded", "--out", out / "shards",
             "--per-pair", "32")
    figures["training_samples_per_second"] = training_throughput(out / "shards")

    section = markdown(figures)
    (out / "benchmarks.md").write_text(section + "\n")
    (out / "benchmarks.json").write_text(json.dumps(figures, indent=2))
    print(section)
    if args.write_readme:
        write_readme(section)
        print(f"wrote the tables into {README}")


if __name__ == "__main__":
    main()
