"""Tester: scores fire-reg and classic baselines on a FIRE-layout set with the FIRE protocol.

For every pair and method the matrix (fixed px -> moving px, original resolution), the error
(mean control-point distance in FIRE-equivalent px, moving points mapped with M^-1, see
``fire_reg.metrics``), the seconds and the status are recorded. Methods: ``fire-reg`` (the
learned Registrar), the requested baselines (sift, orb, ecc), ``identity`` and
``ground-truth`` (the affine fitted to the control points: the best any affine can do).

Output folder::

    results.json          {"pairs": {ID: {...fire-reg result..., "category", "methods": {...}}},
                           "summary": {"all": {method: summary}, ...}, ...}
    report.md             tables per method (AUC S/P/A, mAUC, failure rate, error table, s/pair)
    success_curves.png    success rate vs threshold per category
    error_boxplot.png     error distribution per method
    overlays/<ID>.png     overlays of the model's best and worst pairs
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fire_reg import baselines, geometry, imaging, metrics, visualize
from fire_reg.errors import InputError, write_json, write_text
from fire_reg.fire import FIRE_WIDTH, PUBLISHED_EXCLUDE, FireDataset

MODEL_METHOD = "fire-reg"
DECODE_WIDTH = 1024  # images are decoded at no less than this width (SIFT/ORB work at 1024 px)


class Tester:
    """Runs every method on every pair of a FIRE-layout folder and writes the report."""

    def __init__(self, fire_root, out_dir, registrar=None, baseline_names=("sift", "orb", "ecc"),
                 overlays: int = 2, progress: bool = True):
        self.dataset = FireDataset(fire_root)
        self.out_dir = Path(out_dir)
        self.registrar = registrar
        unknown = [name for name in baseline_names if name not in baselines.METHODS]
        if unknown:
            raise InputError("--baselines", f"unknown baseline(s) {unknown}; choose from "
                             f"{', '.join(sorted(baselines.METHODS))}")
        self.baseline_names = [name for name in baseline_names if name != "identity"]
        self.overlays = overlays
        self.progress = progress

    @property
    def methods(self) -> list[str]:
        """Methods in report order."""
        model = [MODEL_METHOD] if self.registrar is not None else []
        return model + self.baseline_names + ["identity", "ground-truth"]

    def run(self) -> dict:
        """Score every pair, write results.json, report.md and the plots; return the results."""
        for pair in self.dataset:  # bad input fails before any work is done
            pair.control_points()
            pair.check()
        pairs = {}
        for pair in tqdm(list(self.dataset), desc="evaluate", unit="pair",
                         disable=not self.progress):
            pairs[pair.id] = self._score_pair(pair)
        results = self._results(pairs)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._plots(pairs)
        write_json(self.out_dir / "results.json", results)
        write_text(self.out_dir / "report.md", self._report(results))
        return results

    def _score_pair(self, pair) -> dict:
        fixed_pts, moving_pts = pair.control_points()
        fixed, fixed_scale = imaging.read_for_width(pair.fixed_path, DECODE_WIDTH)
        moving, moving_scale = imaging.read_for_width(pair.moving_path, DECODE_WIDTH)
        to_fire = pair.scale_to_fire()
        entries = {}
        for method in self.methods:
            if method == "ground-truth":
                matrix, _ = pair.ground_truth()
                entry = {"matrix": matrix, "seconds": 0.0, "status": "ok",
                         "reason": "affine fitted to the control points"}
            else:
                if method == MODEL_METHOD:
                    result = self.registrar.register(fixed, moving)
                else:
                    result = baselines.run(method, fixed, moving)
                entry = {"matrix": geometry.rescale(result.matrix, 1 / np.asarray(fixed_scale),
                                                    1 / np.asarray(moving_scale)),
                         "seconds": result.seconds, "status": result.status,
                         "reason": result.reason}
            errors = metrics.pair_error(entry["matrix"], fixed_pts, moving_pts) * to_fire
            entry.update(matrix=entry["matrix"].tolist(), error_px=float(errors.mean()),
                         point_errors_px=errors.tolist())
            entries[method] = entry
        main = entries[self.methods[0]]
        return {"category": pair.category, "matrix": main["matrix"], "error_px": main["error_px"],
                "seconds": main["seconds"], "status": main["status"], "method": self.methods[0],
                "methods": entries}

    def _results(self, pairs: dict) -> dict:
        scopes = {"all": list(pairs)}
        if any(pid in pairs for pid in PUBLISHED_EXCLUDE) and self.dataset.width == FIRE_WIDTH:
            scopes["without_P37"] = [pid for pid in pairs if pid not in PUBLISHED_EXCLUDE]
        summary = {}
        for scope, ids in scopes.items():
            summary[scope] = {}
            for method in self.methods:
                entries = {pid: pairs[pid]["methods"][method] for pid in ids}
                stats = metrics.summarize(
                    {pid: e["error_px"] for pid, e in entries.items()},
                    {pid: pairs[pid]["category"] for pid in ids},
                    {pid: np.asarray(e["point_errors_px"]) for pid, e in entries.items()},
                    seconds_by_pair={pid: e["seconds"] for pid, e in entries.items()})
                summary[scope][method] = stats
        import keras

        return {"dataset": str(self.dataset.root), "maps": "fixed_xy_to_moving_xy",
                "matrix_units": "pixels of the original images",
                "units": f"FIRE-equivalent pixels (error x {FIRE_WIDTH} / width of the "
                         "pair's fixed image)", "methods": self.methods,
                "pairs": pairs, "summary": summary,
                "machine": {"python": platform.python_version(), "keras": keras.__version__,
                            "backend": keras.backend.backend(), "processor": platform.machine()}}

    def _plots(self, pairs: dict) -> None:
        errors_by_method = {m: {pid: p["methods"][m]["error_px"] for pid, p in pairs.items()}
                            for m in self.methods}
        categories = {pid: p["category"] for pid, p in pairs.items()}
        visualize.save_success_curves(self.out_dir / "success_curves.png", errors_by_method,
                                      categories)
        visualize.save_error_boxplot(self.out_dir / "error_boxplot.png", errors_by_method)
        if self.overlays <= 0:
            return
        ranked = sorted(pairs, key=lambda pid: pairs[pid]["error_px"])
        chosen = dict.fromkeys(ranked[:self.overlays] + ranked[::-1][:self.overlays])
        for pid in chosen:
            pair = self.dataset[pid]
            fixed_pts, moving_pts = pair.control_points()
            visualize.save_overlay_panel(
                self.out_dir / "overlays" / f"{pid}.png", pair.image("fixed"), pair.image("moving"),
                np.asarray(pairs[pid]["matrix"]), fixed_pts, moving_pts,
                title=f"{pid} ({pairs[pid]['category']}) {pairs[pid]['method']}: "
                      f"{pairs[pid]['error_px']:.1f} FIRE-equivalent px (panels: image px)")

    def _report(self, results: dict) -> str:
        lines = [f"# fire-reg evaluation: {results['dataset']}", "",
                 f"Pairs: {len(results['pairs'])} "
                 f"({', '.join(f'{c} {n}' for c, n in self.dataset.categories.items())}). "
                 f"Errors in {results['units']}; AUC = mean success rate over thresholds "
                 "0..25 px; mAUC = mean of the S, P and A AUCs.", ""]
        for scope, summaries in results["summary"].items():
            title = "All pairs" if scope == "all" else "Without P37 (published convention, 133 pairs)"
            lines += [f"## {title}", "", metrics.markdown_table(summaries), ""]
        lines += ["![success curves](success_curves.png)", "",
                  "![errors](error_boxplot.png)", ""]
        return "\n".join(lines)
