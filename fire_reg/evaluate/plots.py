"""Plots of an evaluation, drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``, no
pyplot state, no display needed, imported only when a plot is drawn); saved atomically.
"""
from __future__ import annotations

import numpy as np

from fire_reg.evaluate import metrics
from fire_reg.io.output import atomic_path

def _figure(**kwargs):
    """A matplotlib Figure on the Agg canvas (imported here: the overlay path needs none)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


def save_success_curves(path, errors_by_method: dict, categories: dict) -> None:
    """Success rate vs threshold (0..25 px), one panel per category present (S, P, A) plus
    all pairs, one line per method with its AUC in the legend.

    ``errors_by_method``: method -> {pair id -> error px}; ``categories``: id -> category.
    """
    groups = [c for c in metrics.CATEGORIES if c in set(categories.values())] + ["all"]
    figure = _figure(figsize=(4 * len(groups), 3.6))
    for ax, group in zip(figure.subplots(1, len(groups), squeeze=False).ravel(), groups):
        for method, errors in errors_by_method.items():
            chosen = [e for i, e in errors.items() if group == "all" or categories.get(i) == group]
            if chosen:
                ax.plot(metrics.THRESHOLDS, metrics.success_curve(chosen),
                        label=f"{method} (AUC {metrics.auc(chosen):.3f})")
        ax.set(title=f"{group}", xlabel="threshold (px)", ylabel="success rate",
               xlim=(0, metrics.THRESHOLDS[-1]), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    _save(figure, path)


def save_error_boxplot(path, errors_by_method: dict) -> None:
    """Box plot of the finite pair errors (px, symlog axis) per method; dashed line at 25 px.

    ``errors_by_method``: method -> {pair id -> error px}.
    """
    names = list(errors_by_method)
    values = [[e for e in errors_by_method[n].values() if np.isfinite(e)] for n in names]
    figure = _figure(figsize=(max(4.0, 1.2 * len(names) + 2), 4))
    ax = figure.subplots()
    ax.boxplot(values)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.axhline(metrics.FAILURE_PX, color="red", linestyle="--", linewidth=1)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set(ylabel="registration error (px)")
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    _save(figure, path)


def save_trust_scatter(path, rows_by_method: dict) -> None:
    """Estimated against true error (FIRE-equivalent px, log axes), one panel per method,
    points coloured by status; the band where the estimate is within a factor of 2 (or 2 px)
    of the truth is shaded and the 25 px lines are dashed.

    ``rows_by_method``: method -> [(estimated or None, true, status)]; missing estimates are
    drawn at the bottom edge.
    """
    names = list(rows_by_method) or ["(no estimates)"]
    figure = _figure(figsize=(4.2 * len(names), 4))
    colours = {"ok": "tab:green", "suspect": "tab:orange", "failed": "tab:red"}
    for ax, name in zip(figure.subplots(1, len(names), squeeze=False).ravel(), names):
        rows = rows_by_method.get(name, [])
        truth = np.array([max(row[1], 0.05) for row in rows])
        estimate = np.array([0.05 if row[0] is None else max(row[0], 0.05) for row in rows])
        grid = np.geomspace(0.05, 2000, 200)
        ax.fill_between(grid, np.maximum(grid / 2, grid - 2).clip(0.05), np.maximum(grid * 2, grid + 2),
                        color="0.9", label="within x2 or 2 px")
        for status, colour in colours.items():
            chosen = [i for i, row in enumerate(rows) if row[2] == status]
            if chosen:
                ax.scatter(truth[chosen], estimate[chosen], s=14, color=colour, label=status)
        ax.axvline(metrics.FAILURE_PX, color="red", linestyle="--", linewidth=1)
        ax.axhline(metrics.FAILURE_PX, color="red", linestyle="--", linewidth=1)
        ax.set(xscale="log", yscale="log", xlim=(0.05, 2000), ylim=(0.05, 2000),
               xlabel="true error (FIRE-equivalent px)", ylabel="estimated error (FIRE-eq. px)",
               title=name)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
