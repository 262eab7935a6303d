"""The state of a training run folder between epochs: backups to resume from, the log, and
the callbacks that write them (used by :mod:`fire_reg.learn.trainer`).

Folder layout: ``backup/epoch_NNNN.weights.h5`` (model and optimizer state after N completed
epochs, one file at a time), ``log.csv`` (CSVLogger: one row per completed epoch) and the
checkpoints ``model.keras`` / ``last.keras`` (:func:`checkpoint`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fire_reg.io.output import atomic_path, write_text

BACKUP = "backup"
"""Run-folder subfolder with the state after the last completed epoch (for ``resume``)."""
BACKUP_PREFIX, BACKUP_SUFFIX = "epoch_", ".weights.h5"


def backup_path(folder: Path, epochs: int) -> Path:
    """Model and optimizer state after ``epochs`` completed epochs."""
    return folder / f"{BACKUP_PREFIX}{epochs:04d}{BACKUP_SUFFIX}"


def backed_up_epochs(folder: Path) -> int:
    """Completed epochs of the newest state in ``folder`` (0 when there is none)."""
    numbers = [path.name[len(BACKUP_PREFIX):-len(BACKUP_SUFFIX)]
               for path in folder.glob(f"{BACKUP_PREFIX}*{BACKUP_SUFFIX}")]
    return max((int(number) for number in numbers if number.isdigit()), default=0)


def backup_callback(folder: Path):
    """Saves the model and optimizer state (atomically) after every epoch whose loss is finite,
    then removes the previous epoch's, so ``folder`` always holds one whole state."""
    import keras

    class Backup(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not np.isfinite((logs or {}).get("loss", np.nan)):
                return  # a diverged epoch (TerminateOnNaN) is not a state to resume from
            path = backup_path(folder, epoch + 1)
            with atomic_path(path, suffix=BACKUP_SUFFIX) as tmp:
                self.model.save_weights(tmp)
            for old in folder.glob(f"{BACKUP_PREFIX}*{BACKUP_SUFFIX}"):
                if old != path:
                    old.unlink()

    return Backup()


def checkpoint(path: Path, network, **kwargs):
    """keras.callbacks.ModelCheckpoint (``kwargs``: its options) that saves ``network``, the
    fire-reg model, also when the model being fitted wraps it for training
    (:func:`fire_reg.learn.network.training_model`)."""
    import keras

    class NetworkCheckpoint(keras.callbacks.ModelCheckpoint):
        def set_model(self, model):
            super().set_model(network)

    return NetworkCheckpoint(str(path), **kwargs)


def early_stopping(logged: list[dict], **kwargs):
    """keras.callbacks.EarlyStopping that first replays the epochs already ``logged`` (one
    ``{monitor: value}`` per completed epoch), so that its patience count survives a resume;
    ``stopped_epoch`` is non-zero when the logged epochs had already stopped the run."""
    import keras

    class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            for epoch, values in enumerate(logged):
                self.on_epoch_end(epoch, values)

    return ResumedEarlyStopping(**kwargs)


def truncate_log(path: Path, epochs: int) -> list[dict]:
    """Keep the header and the first ``epochs`` rows of a CSVLogger file (one row per
    completed epoch: the row of an epoch that was not backed up goes); returns those rows."""
    if epochs == 0 or not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > epochs + 1:
        write_text(path, "".join(lines[:epochs + 1]))
    return read_log(path)


def clear(folder: Path) -> None:
    if folder.exists():
        import shutil

        shutil.rmtree(folder)


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    import csv

    with open(path, newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> float:
    """A CSVLogger value; its "NA" (a metric missing that epoch) becomes NaN."""
    try:
        return float(text)
    except ValueError:
        return float("nan")
