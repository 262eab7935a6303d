"""The training curves of a run (matplotlib's Agg canvas, imported only when drawn), saved atomically."""
from __future__ import annotations

import numpy as np

from fire_reg.io.output import atomic_path

def save_training_curves(path, history: dict) -> None:
    """Every ``*loss`` series of a Keras-style ``history`` (name -> per-epoch values, e.g.
    loss and val_loss) against the epoch (1-based), log y-axis."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    for name, values in history.items():
        if name.endswith("loss"):
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=name)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
