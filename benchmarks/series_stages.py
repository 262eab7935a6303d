"""The README's series timed stage by stage ("Cohorts", after the Figures): one reference
against 20 moving images in one process, from the paths and with the reference prepared
once, alternating, twice each, and then each pair's files written:

    KERAS_BACKEND=jax .venv/bin/python benchmarks/series_stages.py out/cohort/set1411

The set is the 1411 px embedded set of ``benchmarks/run_cohort.py`` (S01_1.jpg against the
first 20 ``*_2.jpg``), ``--transform quadratic``, numpy's BLAS on one thread as in the
commands. Prints milliseconds a pair, of the whole registration (``register_files``) and of
its stages (time in the stage's own call on the main thread; work its thread pool does
meanwhile is inside the stage that waits for it); then seconds a pair of ``write_files`` and
of its PNG encodes (``cv2.imencode``).
"""
from __future__ import annotations

import collections
import functools
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from fire_reg.register import registrar, result
from fire_reg.register.pool import one_blas_thread

SERIES = 20
STAGES = [(registrar.Registrar, "_pair_maps", "maps"),
          (registrar.Registrar, "_network_estimate", "network"),
          (registrar.Registrar, "_ecc_steps", "ECC"),
          (registrar, "fine_stage", "fine stage"),
          (registrar.trust, "judge", "trust"),
          (result, "side_by_side", "decode")]  # register_files' decodes, side by side
"""(owner, attribute, label) of each stage timed."""


def timed(owner, name: str, label: str, totals: collections.Counter) -> None:
    """Replace ``owner.name`` by a wrapper adding its main-thread seconds to totals[label]."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return function(*args, **kwargs)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    images = Path(sys.argv[1]) / "Images"
    fixed, movings = images / "S01_1.jpg", sorted(images.glob("*_2.jpg"))[:SERIES]
    one_blas_thread()
    totals = collections.Counter()
    for owner, name, label in STAGES:
        timed(owner, name, label, totals)
    method = registrar.Registrar(transform="quadratic")
    method.register_files(fixed, movings[0])  # first calls out of the figures
    for way in ("paths", "prepared", "paths", "prepared"):
        totals.clear()
        start = time.perf_counter()
        reference = method.prepare_file(fixed) if way == "prepared" else fixed
        for moving in movings:
            method.register_files(reference, moving)
        ms = 1000 / len(movings)
        print(f"{way}: {(time.perf_counter() - start) * ms:.1f} ms a pair (preparing included); "
              + ", ".join(f"{label} {seconds * ms:.1f}" for label, seconds in totals.items()))
    results = [(method.register_files(reference, moving), moving) for moving in movings]
    timed(cv2, "imencode", "PNG encodes", totals)
    with tempfile.TemporaryDirectory() as folder:
        first, moving = results[0]
        result.write_files(Path(folder) / "first", first, reference, moving)  # first calls
        totals.clear()
        start = time.perf_counter()
        for index, (registration, moving) in enumerate(results):
            result.write_files(Path(folder) / str(index), registration, reference, moving)
    print(f"write_files: {(time.perf_counter() - start) / len(results):.3f} s a pair, PNG "
          f"encodes {totals['PNG encodes'] / len(results):.3f} s")


if __name__ == "__main__":
    main()
