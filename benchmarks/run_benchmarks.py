"""Reproduces the README's figures: accuracy tables and throughput, on this machine.

    .venv/bin/python benchmarks/run_benchmarks.py --drive ../shared/data/drive/images --out out/bench

1. Embedded set (scikit-image's retina, never used in training): `fire-reg evaluate` with the
   shipped model next to SIFT, ORB, ECC, identity and the ground-truth affine; then the model
   alone with the finer ECC polish (`--refine-width 1024`).
2. Held-out DRIVE retinas 01-08_test (never used in training): new pairs (seed 2), same table.
3. Backends: S01 registered under TensorFlow, JAX and PyTorch (largest corner difference).
4. Throughput: `fire-reg register --batch` pairs per second on the embedded set, and training
   samples per second of the default network (batch 32) from `fire-reg train`'s log.
Every number is printed by the commands it runs; the summary goes to OUT/benchmarks.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIRE_REG = [sys.executable, "-m", "fire_reg.cli"]


def fire_reg(*args, backend: str | None = None) -> str:
    """Run one fire-reg command, echo it and its output; return stdout."""
    env = {**os.environ, "KERAS_BACKEND": backend} if backend else None
    print(("" if backend is None else f"KERAS_BACKEND={backend} ") + "$ fire-reg "
          + " ".join(map(str, args)), flush=True)
    done = subprocess.run([*FIRE_REG, *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"command failed ({done.returncode}): {done.stderr.strip()}")
    print(done.stdout, flush=True)
    return done.stdout


def training_throughput(shards: Path, batch_size: int = 32, steps: int = 20) -> float:
    """Samples per second of training steps (default network and losses, after warm-up)."""
    from fire_reg import network
    from fire_reg.trainer import ShardStream, TrainConfig, Trainer, make_batches

    config = TrainConfig(batch_size=batch_size, steps_per_epoch=steps + 3, curriculum_epochs=0)
    trainer = Trainer(shards, out_dir=shards.parent / "train_speed", config=config)
    model = trainer.build()
    batches = make_batches(ShardStream(shards), np.arange(len(trainer.stream)), config, True)
    for step in range(3):
        model.train_on_batch(*batches[step])
    start = time.perf_counter()
    for step in range(3, steps + 3):
        model.train_on_batch(*batches[step])
    rate = steps * batch_size / (time.perf_counter() - start)
    print(f"training: {rate:.1f} samples/s (batch {batch_size}, {steps} steps, "
          f"{network.NetworkConfig().input_size} px)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", help="DRIVE images folder (skip the DRIVE table without it)")
    parser.add_argument("--out", default="out/bench")
    parser.add_argument("--baselines", default="sift,orb,ecc")
    args = parser.parse_args()
    out = Path(args.out)
    figures = {}

    fire_reg("data", "embedded", "--out", out / "embedded")
    fire_reg("evaluate", "--fire", out / "embedded", "--baselines", args.baselines,
             "--out", out / "eval_embedded")
    figures["embedded"] = json.loads((out / "eval_embedded" / "results.json").read_text())["summary"]
    fire_reg("evaluate", "--fire", out / "embedded", "--baselines", "", "--refine-width", "1024",
             "--out", out / "eval_embedded_fine")
    figures["embedded_fine"] = json.loads(
        (out / "eval_embedded_fine" / "results.json").read_text())["summary"]

    if args.drive:
        fire_reg("data", "embedded", "--images", args.drive, "--select", "0[1-8]_test.tif",
                 "--per-image", "S2,P3,A1", "--seed", "2", "--out", out / "drive_heldout")
        fire_reg("evaluate", "--fire", out / "drive_heldout", "--baselines", args.baselines,
                 "--out", out / "eval_drive_heldout")
        fire_reg("evaluate", "--fire", out / "drive_heldout", "--baselines", "", "--refine",
                 "none", "--out", out / "eval_drive_heldout_network_only")
        figures["drive_heldout"] = json.loads(
            (out / "eval_drive_heldout" / "results.json").read_text())["summary"]

    corners = {}
    for backend in ("tensorflow", "jax", "torch"):
        folder = out / f"backend_{backend}"
        fire_reg("register", out / "embedded" / "Images" / "S01_1.jpg",
                 out / "embedded" / "Images" / "S01_2.jpg", "--out", folder, backend=backend)
        record = json.loads((folder / "transform.json").read_text())
        width, height = record["fixed_size"]
        box = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1],
                        [width - 1, height - 1, 1]], float).T
        corners[backend] = np.array(record["matrix"]) @ box
    figures["backend_max_corner_difference_px"] = max(
        float(np.abs(c - corners["tensorflow"]).max()) for c in corners.values())
    print(f"backends: image corners agree within {figures['backend_max_corner_difference_px']:.2g} px")

    start = time.perf_counter()
    fire_reg("register", "--batch", out / "embedded", "--out", out / "batch")
    batch = json.loads((out / "batch" / "batch.json").read_text())
    figures["register_batch_pairs_per_second"] = batch["pairs_per_second"]
    figures["register_batch_wall_seconds"] = time.perf_counter() - start

    fire_reg("prepare", "--fire", out / "embedded", "--out", out / "shards", "--per-pair", "32")
    figures["training_samples_per_second"] = training_throughput(out / "shards")
    (out / "benchmarks.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
