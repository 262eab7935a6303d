"""FIRE evaluation protocol (matrix conventions: :mod:`fire_reg.geometry`).

* Transforms map **fixed px -> moving px** (:mod:`fire_reg.geometry.transforms`; a 2x3 matrix is an
  affine). A pair's control points are (N, 2) arrays of (x, y): ``fixed_pts`` in the fixed
  image (FIRE ``_1``), ``moving_pts`` in the moving one (``_2``). The moving points are
  brought into the fixed frame with the transform's ``moving_to_fixed`` (``M^-1`` for an
  affine) and compared there.
* Errors are in pixels of the images the points belong to; ``fire_error(..., scale=2912 / W)``
  reports a set at width W in FIRE-equivalent pixels.
* Success rate at t: share of pairs with error <= t; a non-finite error is a failure.
* AUC: the mean success rate over the grid :data:`THRESHOLDS` = 0.0, 0.1, ..., 25.0 px (251
  thresholds, both ends included), i.e. the area under the success curve on [0, 25] divided by
  25 (Hernandez-Matas et al. 2017). SuperRetina's script (``common/eval_util.py``) uses the
  coarser grid t = 1, 2, ..., 25 and counts ``error < t``; ``auc(errors, np.arange(1, 26))``
  gives their number unless an error equals an integer exactly.
* mAUC: the mean of the AUCs of the categories present among S, P and A (all three on FIRE;
  ``summary["mAUC_categories"]`` says which).
* Failure rate: share of pairs with error > 25 px (or non-finite). Inaccurate (as in the
  SuperRetina paper): maximum point error > 50 px or median point error > 20 px.
"""
from __future__ import annotations

import numpy as np

from fire_reg.geometry import transforms
from fire_reg.data.fire import CATEGORIES

THRESHOLDS = np.arange(251) / 10.0  # 0.0, 0.1, ..., 25.0 px
FAILURE_PX = 25.0
INACCURATE_MAX_PX = 50.0
INACCURATE_MEDIAN_PX = 20.0


def fire_error(transform, fixed_pts, moving_pts, scale: float = 1.0) -> float:
    """Mean control-point error of a pair (px) times ``scale`` (2912 / W for FIRE-equivalent)."""
    return float(transforms.control_point_errors(transform, fixed_pts, moving_pts).mean() * scale)


def success_curve(errors, thresholds=THRESHOLDS) -> np.ndarray:
    """Share of pairs with error <= t for each threshold t (non-finite errors never succeed)."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        return np.full(len(thresholds), np.nan)
    errors = np.where(np.isfinite(errors), errors, np.inf)
    return (errors[None, :] <= np.asarray(thresholds, dtype=np.float64)[:, None]).mean(axis=1)


def auc(errors, thresholds=THRESHOLDS) -> float:
    """Mean success rate over ``thresholds`` (default 0, 0.1, ..., 25 px); NaN for no pairs."""
    return float(success_curve(errors, thresholds).mean())


def summarize(errors_by_pair: dict, categories: dict, point_errors: dict | None = None,
              seconds_by_pair: dict | None = None) -> dict:
    """FIRE summary of one method.

    ``errors_by_pair``: pair id -> error (px); ``categories``: id -> "S" | "P" | "A";
    ``point_errors``: id -> per-point errors (px) for the inaccurate share (else None);
    ``seconds_by_pair``: id -> run time for ``seconds_per_pair`` (else omitted).
    Keys: ``count``, ``count_S/P/A``, ``auc_S/P/A`` (None for an absent category), ``mAUC``,
    ``mAUC_categories``, ``auc_all``, ``success_at_25``, ``failure_rate``, ``inaccurate``
    (None without point errors), ``nonfinite``, ``median``, ``mean``, ``std``, ``min``,
    ``p25``, ``p75`` (``median`` is the 50th percentile), ``max``[, ``seconds_per_pair``];
    ``std`` is the population standard deviation. Rates are fractions in [0, 1]. Error
    statistics (min ... max) use the finite errors; ``nonfinite`` counts the others, which
    count as failures everywhere else. ValueError for no pairs.
    """
    if not errors_by_pair:
        raise ValueError("no pairs to summarise")
    ids = list(errors_by_pair)
    errors = np.array([errors_by_pair[i] for i in ids], dtype=np.float64)
    finite = errors[np.isfinite(errors)]
    summary: dict = {"count": len(ids), "nonfinite": int(errors.size - finite.size)}
    for category in CATEGORIES:
        chosen = errors[np.array([categories.get(i) == category for i in ids])]
        summary[f"count_{category}"] = int(chosen.size)
        summary[f"auc_{category}"] = auc(chosen) if chosen.size else None
    present = [c for c in CATEGORIES if summary[f"count_{c}"]]
    summary["mAUC"] = float(np.mean([summary[f"auc_{c}"] for c in present])) if present else None
    summary["mAUC_categories"] = "".join(present)
    summary["auc_all"] = auc(errors)
    summary["success_at_25"] = float(success_curve(errors, [FAILURE_PX])[0])
    summary["failure_rate"] = 1.0 - summary["success_at_25"]
    summary["inaccurate"] = (None if point_errors is None
                             else inaccurate_share([point_errors[i] for i in ids]))
    quantiles = np.percentile(finite, [0, 25, 50, 75, 100]) if finite.size else [None] * 5
    for key, value in zip(("min", "p25", "median", "p75", "max"), quantiles):
        summary[key] = None if value is None else float(value)
    summary["mean"] = float(finite.mean()) if finite.size else None
    summary["std"] = float(finite.std()) if finite.size else None
    if seconds_by_pair is not None:
        summary["seconds_per_pair"] = float(np.mean([seconds_by_pair[i] for i in ids]))
    return summary


def inaccurate_share(point_errors) -> float:
    """Share of pairs whose max point error > 50 px or median point error > 20 px.

    ``point_errors``: one array of per-point errors (px) per pair; non-finite is inaccurate.
    """
    flags = []
    for errors in point_errors:
        errors = np.asarray(errors, dtype=np.float64)
        flags.append(not np.isfinite(errors).all() or errors.max() > INACCURATE_MAX_PX
                     or np.median(errors) > INACCURATE_MEDIAN_PX)
    return float(np.mean(flags)) if flags else float("nan")


_COLUMNS = (("method", None, ""), ("AUC S", "auc_S", "{:.3f}"), ("AUC P", "auc_P", "{:.3f}"),
            ("AUC A", "auc_A", "{:.3f}"), ("mAUC", "mAUC", "{:.3f}"),
            ("success@25", "success_at_25", "{:.1%}"), ("failure", "failure_rate", "{:.1%}"),
            ("inaccurate", "inaccurate", "{:.1%}"), ("median px", "median", "{:.2f}"),
            ("mean px", "mean", "{:.2f}"), ("std px", "std", "{:.2f}"),
            ("min px", "min", "{:.2f}"), ("p25 px", "p25", "{:.2f}"), ("p75 px", "p75", "{:.2f}"),
            ("max px", "max", "{:.2f}"), ("s/pair", "seconds_per_pair", "{:.3f}"))


def markdown_table(summaries: dict) -> str:
    """Markdown table, one row per method, from ``{method: summarize(...)}``.

    Errors in px, rates in %; "n/a" where a value is missing; the s/pair column only when a
    summary has ``seconds_per_pair``.
    """
    columns = [c for c in _COLUMNS
               if c[1] != "seconds_per_pair"
               or any("seconds_per_pair" in s for s in summaries.values())]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |",
             "|" + "|".join("---" if c[1] is None else "---:" for c in columns) + "|"]
    for method, summary in summaries.items():
        cells = [str(method)]
        for _, key, fmt in columns[1:]:
            value = summary.get(key)
            cells.append("n/a" if value is None or not np.isfinite(value) else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TRUST_FACTOR, TRUST_SLACK_PX = 2.0, 2.0


def estimate_close(estimated: float | None, true: float) -> bool:
    """Whether an estimated error is within a factor of 2 of the true error, or within 2 px
    (whichever is looser); a missing estimate never is."""
    if estimated is None or not np.isfinite(true):
        return False
    return (abs(estimated - true) <= TRUST_SLACK_PX
            or true / TRUST_FACTOR <= estimated <= true * TRUST_FACTOR)


def trust_summary(entries) -> dict:
    """How far a method's status and estimated error can be trusted over its pair entries
    (each with ``status``, ``error_px`` and ``estimated_error_px``, FIRE-equivalent px).

    ``confusion``: {status: {"within_25": n, "over_25": n}}; ``ok_agrees``: share of pairs
    where "ok" coincides with a true error <= 25 px; ``estimate_close``: share whose estimate
    is within a factor of 2 (or 2 px) of the true error; ``ok_over_25``: "ok" pairs that are
    in fact over 25 px.
    """
    confusion: dict = {}
    agree, close, wrong_ok = [], [], 0
    for entry in entries:
        good = np.isfinite(entry["error_px"]) and entry["error_px"] <= FAILURE_PX
        cell = confusion.setdefault(entry["status"], {"within_25": 0, "over_25": 0})
        cell["within_25" if good else "over_25"] += 1
        agree.append((entry["status"] == "ok") == good)
        close.append(estimate_close(entry["estimated_error_px"], entry["error_px"]))
        wrong_ok += entry["status"] == "ok" and not good
    return {"count": len(agree), "confusion": confusion,
            "ok_agrees": float(np.mean(agree)) if agree else None,
            "estimate_close": float(np.mean(close)) if close else None,
            "ok_over_25": wrong_ok}


def trust_table(trust: dict) -> str:
    """Markdown table of :func:`trust_summary` results, one row per method."""
    lines = ["| method | ok (<=25 / >25 px) | suspect (<=25 / >25) | failed (<=25 / >25) | "
             "ok agrees with <=25 px | estimate within x2 or 2 px |", "|---|---:|---:|---:|---:|---:|"]
    for method, summary in trust.items():
        cells = []
        for status in ("ok", "suspect", "failed"):
            cell = summary["confusion"].get(status, {"within_25": 0, "over_25": 0})
            cells.append(f"{cell['within_25']} / {cell['over_25']}")
        lines.append(f"| {method} | " + " | ".join(cells)
                     + f" | {summary['ok_agrees']:.1%} | {summary['estimate_close']:.1%} |")
    return "\n".join(lines) + "\n"
