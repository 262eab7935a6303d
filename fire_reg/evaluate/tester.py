"""Tester: scores registration methods on a FIRE-layout set with the FIRE protocol.

Every method (the learned Registrar and the classic baselines alike: anything with the method
interface of :mod:`fire_reg.register.result`) registers every pair through
:func:`fire_reg.register.result.register_files`, the same path as ``fire-reg register``. For every
pair and method the transform (fixed px -> moving px, original resolution), its best affine,
the error (mean control-point distance in FIRE-equivalent px, moving points mapped by the
transform's ``moving_to_fixed``, see :mod:`fire_reg.evaluate.metrics`), the seconds, the status and
the estimated error are recorded. Reference rows show what each transform model can reach at
best: the affine, homography and quadratic fitted to the pair's own control points
("ground-truth ..."), and, on an embedded set with exact dense ground truth (``Dense/``), the
same models fitted to the dense map over the common field of view ("dense-fit ...": ten
points overfit twelve parameters, the dense fit does not).

Output folder::

    results.json          {"pairs": {ID: {..first method's result.., "category", "methods": {...}}},
                           "summary": {"all": {method: summary}, ...}, "trust": {...}, ...}
    run.json              {"fingerprint", "settings"}: what decides the results (methods with
                          their settings and model weights, reference rows, data set), written
                          before the first pair (:mod:`fire_reg.io.runs`)
    pairs/<ID>.json       each pair's entry and the run's fingerprint, written as soon as the
                          pair is done; ``resume`` reuses only entries with its own fingerprint
                          and refuses to continue a run whose run.json records another
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
from fire_reg.io.runs import check_continues, describe, fingerprint
from fire_reg.data.fire import FIRE_WIDTH, FireDataset, PUBLISHED_EXCLUDE
from fire_reg.data.ground_truth import DENSE_STEP
from fire_reg.data.sources import lookup
from fire_reg.io.errors import InputError
from fire_reg.io.images import read_image
from fire_reg.register.pool import PairPool
from fire_reg.register.result import register_files

REFERENCE_PREFIX = "ground-truth "
DENSE_PREFIX = "dense-fit "
RUN_RECORD = "run.json"


def references() -> dict[str, str]:
    """Reference rows, ``{row name: model}``: one per registered global transform model
    (simplest first), the best transform of that model through each pair's control points.
    A local model (:mod:`fire_reg.geometry.local`) has none: it passes through any ten points."""
    return {REFERENCE_PREFIX + model: model for model in transforms.model_names()
            if not transforms.model_class(model).local}


def dense_references(dataset: FireDataset) -> dict[str, str]:
    """Dense reference rows, ``{row name: model}`` (the models of :func:`references`), when
    every pair of ``dataset`` has its exact dense ground truth (``Dense/<ID>_fixed_to_moving
    .npy``, an embedded set); {} otherwise."""
    if not all(_dense_path(dataset.root, pair.id).is_file() for pair in dataset):
        return {}
    return {DENSE_PREFIX + model: model for model in references().values()}


def _dense_path(root: Path, pair_id: str) -> Path:
    return Path(root) / "Dense" / f"{pair_id}_fixed_to_moving.npy"


def _embedded_records(root: Path) -> dict:
    """{pair id: record} of an embedded set's embedded.json ({} when it has none)."""
    try:
        return {record["id"]: record
                for record in json.loads((root / "embedded.json").read_text())["pairs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def dense_fit(root, pair_id: str, model: str, aperture=None) -> transforms.Transform:
    """The least-squares ``model`` through the exact dense map of a pair of an embedded set
    (fixed px -> moving px, nodes every :data:`~fire_reg.data.ground_truth.DENSE_STEP` px)
    over the common field of view: the nodes inside ``aperture`` (bool (H, W) mask of the
    camera aperture, the same in both images of an embedded pair; None: the image) whose exact
    image lies inside it too. The best that model can do, measured on the whole retina rather
    than fitted to ten control points. InputError for an unreadable dense file."""
    path = _dense_path(root, pair_id)
    try:
        exact = np.load(path).astype(np.float64)
    except (OSError, ValueError) as error:
        raise InputError(path, f"not a readable dense ground truth ({error})") from None
    nodes = np.stack(np.meshgrid(np.arange(exact.shape[1]) * DENSE_STEP,
                                 np.arange(exact.shape[0]) * DENSE_STEP), axis=-1)
    nodes, exact = nodes.reshape(-1, 2).astype(np.float64), exact.reshape(-1, 2)
    if aperture is not None:
        common = lookup(aperture, nodes) & lookup(aperture, exact)
        nodes, exact = nodes[common], exact[common]
    return transforms.fit_transform(model, nodes, exact, domain=nodes)


def _score(tester: "Tester", pair_id: str) -> dict:
    """One pair's entry, in this process or a worker (:class:`PairPool`)."""
    return tester._score_pair(tester.dataset[pair_id])


class Tester:
    """Runs every method on every pair of a FIRE-layout folder and writes the report.

    ``methods``: objects with the method interface (``name``, ``decode_width``,
    ``register``), in report order; the first one is the method shown in the overlays.
    ``resume``: reuse the pair results an interrupted run with the same settings (the same
    fingerprint: methods, their settings and model weights, data set) left in
    ``out_dir/pairs``; InputError when ``out_dir/run.json`` records other settings.
    ``workers``: pairs scored at a time, in this process and ``workers - 1`` worker
    processes, each with the methods (the model) loaded once (1: one after the other in this
    process); ``dask``: on the Dask cluster whose scheduler is at this address instead
    (:class:`fire_reg.register.pool.PairPool`). The results are the same either way.
    """

    def __init__(self, fire_root, out_dir, methods, overlays: int = 2, progress: bool = True,
                 resume: bool = False, workers: int = 1, dask: str | None = None):
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
        self.workers, self.dask = workers, dask
        self.dense = dense_references(self.dataset)
        self._records = _embedded_records(self.dataset.root) if self.dense else {}

    @property
    def names(self) -> list[str]:
        """Rows of the report: the methods, then the reference rows (control points, then
        dense ground truth where the set has it)."""
        return [method.name for method in self.methods] + list(references()) + list(self.dense)

    def _aperture(self, pair_id: str):
        """The camera aperture of a pair of an embedded set (the mask its record in
        embedded.json names, else Masks/mask.png), bool (H, W), or None."""
        mask = (self._records.get(pair_id, {}).get("aperture") or {}).get("mask")
        if mask and (self.dataset.root / mask).is_file():
            return read_image(self.dataset.root / mask).any(axis=2)
        return self.dataset.mask()

    def run(self, started: PairPool | None = None) -> dict:
        """Score every pair, write results.json, report.md and the plots; return the results.
        ``started``: a pool made by :meth:`PairPool.starting` (its workers started while the
        methods loaded), used when pairs run on this machine, else closed."""
        for pair in self.dataset:  # bad input fails before any work is done
            pair.control_points()
            pair.check()
        settings = self.settings()
        run = {"fingerprint": fingerprint(settings), "settings": settings}
        if self.resume:
            check_continues(self.out_dir / RUN_RECORD, "this evaluation", settings)
        done = {pair.id: self._previous(pair.id, run["fingerprint"]) for pair in self.dataset}
        todo = [pair_id for pair_id, entry in done.items() if entry is None]
        with self._pool(started, todo) as pool:
            write_json(self.out_dir / RUN_RECORD, run)
            with tqdm(total=len(done), initial=len(done) - len(todo), desc="evaluate",
                      unit="pair", disable=not self.progress) as progress:
                for pair_id, entry in pool.map(_score, todo):  # as each pair finishes
                    done[pair_id] = entry
                    write_json(self.out_dir / "pairs" / f"{pair_id}.json",
                               {**entry, "fingerprint": run["fingerprint"]})
                    progress.update()
        pairs = done  # in the data set's order, however the pairs finished
        results = {**self._results(pairs), "fingerprint": run["fingerprint"]}
        self._plots(pairs)
        write_json(self.out_dir / "results.json", results)
        write_text(self.out_dir / "report.md", self._report(results))
        return results

    def _pool(self, started: PairPool | None, todo: list) -> PairPool:
        """The pool the ``todo`` pairs run on: ``started``, given this Tester
        (:meth:`PairPool.begin`), when they run on this machine; else (closing ``started``)
        one of ``workers`` (no more than the pairs) or the Dask cluster's."""
        if started is not None and self.dask is None:
            return started.begin(self, len(todo))
        if started is not None:
            started.close()
        workers = max(1, min(self.workers, len(todo)))
        return PairPool(self, workers, self.dask if todo else None)

    def settings(self) -> dict:
        """The settings record of this evaluation (:mod:`fire_reg.io.runs`): every method
        with its settings (a model by its weights), the reference rows and the data set."""
        return {"methods": [describe(method) for method in self.methods],
                "references": list(references()) + list(self.dense),
                "dataset": str(self.dataset.root.resolve())}

    def _previous(self, pair_id: str, run_fingerprint: str) -> dict | None:
        """The pair's entry from an interrupted run with this fingerprint, when resuming."""
        path = self.out_dir / "pairs" / f"{pair_id}.json"
        if not self.resume or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.pop("fingerprint", None) != run_fingerprint:
            return None
        return entry

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
        for name, model in references().items():
            fitted = transforms.fit_transform(model, fixed_pts, moving_pts)
            entries[name] = {"transform": fitted.to_dict(),
                             "matrix": fitted.best_affine(fixed_pts).tolist(),
                             "seconds": 0.0, "status": "ok", "reason":
                                 f"{model} fitted to the control points (best possible {model})",
                             "transform_model": model,
                             **self._errors(fitted, fixed_pts, moving_pts, to_fire)}
        aperture = self._aperture(pair.id) if self.dense else None
        for name, model in self.dense.items():
            fitted = dense_fit(self.dataset.root, pair.id, model, aperture)
            entries[name] = {"transform": fitted.to_dict(),
                             "matrix": fitted.best_affine(fixed_pts).tolist(),
                             "seconds": 0.0, "status": "ok", "reason":
                                 f"{model} fitted to the exact dense map over the common field "
                                 f"of view (best possible {model})",
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
                 "pair's own ten control points (fitted to the points it is scored on: "
                 "optimistic)." + (f" Rows starting with '{DENSE_PREFIX}' are that model "
                                   "fitted to the exact dense ground truth (Dense/) over the "
                                   "common field of view: the ceiling of a method returning "
                                   "that model." if self.dense else ""), ""]
        for scope, summaries in results["summary"].items():
            title = "All pairs" if scope == "all" else "Without P37 (published convention, 133 pairs)"
            lines += [f"## {title}", "", metrics.markdown_table(summaries), ""]
        if results["trust"]:
            lines += ["## Trust: status and estimated error against the true error", "",
                      metrics.trust_table(results["trust"]), "", "![trust](trust.png)", ""]
        lines += ["![success curves](success_curves.png)", "",
                  "![errors](error_boxplot.png)", ""]
        return "\n".join(lines)

