"""Tester: scores registration methods on a FIRE-layout set with the FIRE protocol.

Every method (the learned Registrar and the classic baselines alike: anything with the method
interface of :mod:`fire_reg.register.result`) registers every pair through
:func:`fire_reg.register.result.register_files`, the same path as ``fire-reg register``. For every
pair and method the transform (fixed px -> moving px, original resolution), its best affine,
the error (mean control-point distance in FIRE-equivalent px, moving points mapped by the
transform's ``moving_to_fixed``, see :mod:`fire_reg.evaluate.metrics`), the seconds, the status and
the estimated error are recorded. Reference rows show what each transform model can reach at
best: the affine, homography and quadratic fitted to the pair's own control points, and the
identity.

Output folder::

    results.json          {"pairs": {ID: {..first method's result.., "category", "methods": {...}}},
                           "summary": {"all": {method: summary}, ...}, "trust": {...}, ...}
    pairs/<ID>.json       each pair's entry, written as soon as the pair is done (``resume``)
    report.md             tables per method, trust calibration, plots
    success_curves.png    success rate vs threshold per category
    error_boxplot.png     error distribution per method
    trust.png             estimated vs true error per method that estimates its error
    overlays/<ID>.png     overlays of the first method's best and worst pairs
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fire_reg.evaluate.plots import save_error_boxplot, save_success_curves, save_trust_scatter
from fire_reg.imaging.overlays import save_overlay_panel
from fire_reg.evaluate import metrics
from fire_reg.geometry import transforms
from fire_reg.io.output import write_json, write_text
from fire_reg.io.fire import FIRE_WIDTH, FireDataset, PUBLISHED_EXCLUDE
from fire_reg.register.result import register_files

REFERENCE_PREFIX = "ground-truth "
REFERENCES = tuple(REFERENCE_PREFIX + model for model in transforms.MODELS)


class Tester:
    """Runs every method on every pair of a FIRE-layout folder and writes the report.

    ``methods``: objects with the method interface (``name``, ``decode_width``,
    ``register``), in report order; the first one is the method shown in the overlays.
    ``resume``: reuse the pair results a previous, interrupted run with the same methods
    left in ``out_dir/pairs``.
    """

    def __init__(self, fire_root, out_dir, methods, overlays: int = 2, progress: bool = True,
                 resume: bool = False):
        self.dataset = FireDataset(fire_root)
        self.out_dir = Path(out_dir)
        self.methods = list(methods)
        if not self.methods:
            raise ValueError("no methods to evaluate")
        names = [method.name for method in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must be unique, got {names}")
        self.overlays = overlays
        self.progress = progress
        self.resume = resume

    @property
    def names(self) -> list[str]:
        """Rows of the report: the methods, then the reference rows."""
        return [method.name for method in self.methods] + list(REFERENCES)

    def run(self) -> dict:
        """Score every pair, write results.json, report.md and the plots; return the results."""
        for pair in self.dataset:  # bad input fails before any work is done
            pair.control_points()
            pair.check()
        pairs = {}
        for pair in tqdm(list(self.dataset), desc="evaluate", unit="pair",
                         disable=not self.progress):
            pairs[pair.id] = self._previous(pair.id) or self._score_pair(pair)
            write_json(self.out_dir / "pairs" / f"{pair.id}.json", pairs[pair.id])
        results = self._results(pairs)
        self._plots(pairs)
        write_json(self.out_dir / "results.json", results)
        write_text(self.out_dir / "report.md", self._report(results))
        return results

    def _previous(self, pair_id: str) -> dict | None:
        """The pair's entry from an interrupted run when resuming and its methods match."""
        path = self.out_dir / "pairs" / f"{pair_id}.json"
        if not self.resume or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry if list(entry.get("methods", {})) == self.names else None

    def _score_pair(self, pair) -> dict:
        fixed_pts, moving_pts = pair.control_points()
        to_fire = pair.scale_to_fire()
        entries = {}
        for method in self.methods:
            result = register_files(method, pair.fixed_path, pair.moving_path)
            estimated = result.estimated_error_px
            entries[method.name] = {
                "transform": result.transform.to_dict(), "matrix": result.matrix.tolist(),
                "seconds": result.seconds, "status": result.status, "reason": result.reason,
                "estimated_error_px": None if estimated is None else estimated * to_fire,
                "overlap": result.overlap, "transform_model": result.transform.model,
                **self._errors(result.transform, fixed_pts, moving_pts, to_fire)}
        for model, name in zip(transforms.MODELS, REFERENCES):
            fitted = transforms.fit_transform(model, fixed_pts, moving_pts)
            entries[name] = {"transform": fitted.to_dict(),
                             "matrix": fitted.best_affine(fixed_pts).tolist(),
                             "seconds": 0.0, "status": "ok", "reason":
                                 f"{model} fitted to the control points (best possible {model})",
                             "transform_model": model,
                             **self._errors(fitted, fixed_pts, moving_pts, to_fire)}
        main = entries[self.names[0]]
        return {"category": pair.category, "method": self.names[0],
                **{key: main[key] for key in ("matrix", "transform", "error_px", "seconds",
                                              "status", "estimated_error_px")},
                "methods": entries}

    @staticmethod
    def _errors(transform, fixed_pts, moving_pts, to_fire) -> dict:
        errors = transforms.control_point_errors(transform, fixed_pts, moving_pts) * to_fire
        return {"error_px": float(errors.mean()), "point_errors_px": errors.tolist()}

    def _results(self, pairs: dict) -> dict:
        scopes = {"all": list(pairs)}
        if any(pid in pairs for pid in PUBLISHED_EXCLUDE) and self.dataset.width == FIRE_WIDTH:
            scopes["without_P37"] = [pid for pid in pairs if pid not in PUBLISHED_EXCLUDE]
        summary = {}
        for scope, ids in scopes.items():
            summary[scope] = {}
            for name in self.names:
                entries = {pid: pairs[pid]["methods"][name] for pid in ids}
                summary[scope][name] = metrics.summarize(
                    {pid: e["error_px"] for pid, e in entries.items()},
                    {pid: pairs[pid]["category"] for pid in ids},
                    {pid: np.asarray(e["point_errors_px"]) for pid, e in entries.items()},
                    seconds_by_pair={pid: e["seconds"] for pid, e in entries.items()})
        trust = {name: metrics.trust_summary([p["methods"][name] for p in pairs.values()])
                 for name in self.names[:len(self.methods)]
                 if any(p["methods"][name]["estimated_error_px"] is not None
                        for p in pairs.values())}
        return {"dataset": str(self.dataset.root), "maps": "fixed_xy_to_moving_xy",
                "matrix_units": "pixels of the original images",
                "units": f"FIRE-equivalent pixels (error x {FIRE_WIDTH} / width of the "
                         "pair's fixed image)", "methods": self.names,
                "pairs": pairs, "summary": summary, "trust": trust,
                "machine": {"python": platform.python_version(),
                            "processor": platform.machine()}}

    def _plots(self, pairs: dict) -> None:
        errors_by_method = {m: {pid: p["methods"][m]["error_px"] for pid, p in pairs.items()}
                            for m in self.names}
        categories = {pid: p["category"] for pid, p in pairs.items()}
        save_success_curves(self.out_dir / "success_curves.png", errors_by_method,
                                      categories)
        save_error_boxplot(self.out_dir / "error_boxplot.png", errors_by_method)
        estimates = {m.name: [(p["methods"][m.name]["estimated_error_px"],
                               p["methods"][m.name]["error_px"],
                               p["methods"][m.name]["status"]) for p in pairs.values()]
                     for m in self.methods}
        save_trust_scatter(self.out_dir / "trust.png", {
            name: rows for name, rows in estimates.items()
            if any(row[0] is not None for row in rows)})
        if self.overlays <= 0:
            return
        ranked = sorted(pairs, key=lambda pid: pairs[pid]["error_px"])
        chosen = dict.fromkeys(ranked[:self.overlays] + ranked[::-1][:self.overlays])
        for pid in chosen:
            pair = self.dataset[pid]
            fixed_pts, moving_pts = pair.control_points()
            save_overlay_panel(
                self.out_dir / "overlays" / f"{pid}.png", pair.image("fixed"), pair.image("moving"),
                transforms.transform_from_dict(pairs[pid]["transform"]), fixed_pts, moving_pts,
                title=f"{pid} ({pairs[pid]['category']}) {pairs[pid]['method']}: "
                      f"{pairs[pid]['error_px']:.1f} FIRE-equivalent px (panels: image px)")

    def _report(self, results: dict) -> str:
        lines = [f"# fire-reg evaluation: {results['dataset']}", "",
                 f"Pairs: {len(results['pairs'])} "
                 f"({', '.join(f'{c} {n}' for c, n in self.dataset.categories.items())}). "
                 f"Errors in {results['units']}; AUC = mean success rate over thresholds "
                 "0..25 px; mAUC = mean of the S, P and A AUCs. Rows starting with "
                 f"'{REFERENCE_PREFIX}' are the best transform of that model through each "
                 "pair's own control points: the ceiling of a method returning that model.", ""]
        for scope, summaries in results["summary"].items():
            title = "All pairs" if scope == "all" else "Without P37 (published convention, 133 pairs)"
            lines += [f"## {title}", "", metrics.markdown_table(summaries), ""]
        if results["trust"]:
            lines += ["## Trust: status and estimated error against the true error", "",
                      metrics.trust_table(results["trust"]), "", "![trust](trust.png)", ""]
        lines += ["![success curves](success_curves.png)", "",
                  "![errors](error_boxplot.png)", ""]
        return "\n".join(lines)

