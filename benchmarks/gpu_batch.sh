#!/bin/bash
# The GPU comparison of the README ("Cohorts", "A GPU"), on a machine whose JAX sees a GPU:
# the same batch of PAIRS rows (the 1411 px set of benchmarks/run_cohort.py, its 20 pairs
# listed again under other ids and file names: run_cohort.distinct_pairs) with each of
# WORKERS, on the GPU and then on the CPU (JAX_PLATFORMS=cpu), the largest GPU memory in use
# sampled every 0.5 s (nvidia-smi), then every result's status and matrix compared with the
# CPU's first.
#
#   benchmarks/gpu_batch.sh SET OUT [PAIRS=96] [WORKERS="1 16"]
#
# SET: a folder made by `fire-reg data embedded --out SET --per-image S10,P5,A5 --seed 1`.
set -u
SET=$(realpath "$1"); OUT=$(realpath -m "$2"); PAIRS=${3:-96}; WORKERS=${4:-"1 16"}
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 2
"$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path
from run_cohort import distinct_pairs
distinct_pairs(Path(sys.argv[2]) / 'pairs.csv', Path(sys.argv[3]), int(sys.argv[4]))" \
    "$(dirname "$0")" "$OUT" "$SET" "$PAIRS" || exit 2
platform() { if [ "$1" = cpu ]; then export JAX_PLATFORMS=cpu; else unset JAX_PLATFORMS; fi; }
for p in cpu gpu; do  # each platform's compile cache filled first
  platform $p
  "$PY" -m fire_reg.cli register "$SET/Images/S01_1.jpg" "$SET/Images/S01_2.jpg" \
      "$SET/Images/S02_2.jpg" --out "$OUT/warm_$p" --transform quadratic > /dev/null 2>&1
done
for w in $WORKERS; do for p in gpu cpu; do
  platform $p
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.5
   done) > "$OUT/memory_${p}_$w.txt" 2>/dev/null &
  sampler=$!
  start=$("$PY" -c "import time; print(time.time())")
  "$PY" -m fire_reg.cli register --batch "$OUT/pairs.csv" --out "$OUT/${p}_w$w" --workers "$w" \
      --transform quadratic > "$OUT/${p}_w$w.log" 2>&1
  status=$?
  kill $sampler
  "$PY" - "$OUT/${p}_w$w" "$p" "$w" "$status" "$start" "$OUT/memory_${p}_$w.txt" <<'ROW'
import json, sys, time
folder, platform, workers, status, start, memory = sys.argv[1:]
used = [int(line) for line in open(memory) if line.strip().isdigit()]
line = (f"{platform} --workers {workers}: exit {status}, whole command "
        f"{time.time() - float(start):.1f} s, GPU memory at most {max(used, default=0)} MiB")
try:
    batch = json.load(open(f"{folder}/batch.json"))
    line += f", {batch['pairs_per_second']:.2f} pairs/s, {batch['counts']}"
except OSError:
    line += ", no batch.json"
print(line)
ROW
done; done
"$PY" - "$OUT" "$WORKERS" <<'COMPARE'
import json, sys
from pathlib import Path
import numpy as np
out, workers = Path(sys.argv[1]), sys.argv[2].split()
def results(folder):
    return {path.parent.name: json.loads(path.read_text())
            for path in folder.glob("*/transform.json")}
reference = results(out / f"cpu_w{workers[0]}")
for name in [f"{p}_w{w}" for p in ("cpu", "gpu") for w in workers]:
    other = results(out / name)
    common = sorted(set(reference) & set(other))
    same = sum(reference[k]["status"] == other[k]["status"] for k in common)
    largest = max((np.abs(np.subtract(reference[k]["matrix"], other[k]["matrix"])).max()
                   for k in common), default=float("nan"))
    print(f"{name}: {len(common)} pairs, {same} with the same status, matrices within "
          f"{largest:.1e} of cpu_w{workers[0]}")
COMPARE
