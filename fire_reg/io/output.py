"""Atomic file output and output folders held by one run.

Outputs are written to a temporary name in the same folder and renamed when complete, so an
interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from fire_reg.io.errors import InputError

@contextlib.contextmanager
def atomic_path(final_path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it onto ``final_path`` on success.

    The temporary name keeps the final suffix (libraries such as OpenCV and numpy pick the
    format from it). On any exception the temporary file is removed and nothing is renamed.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = final_path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.stem}.", suffix=f".part{suffix}",
                               dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp_path, final_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


LOCK_NAME = ".fire-reg.lock"


@contextlib.contextmanager
def exclusive_output(out_dir) -> Iterator[Path]:
    """Hold ``out_dir`` for one run: create it, take an exclusive lock (InputError when another
    run holds it, or when the path is a file or not writable) and remove the hidden ``.part``
    files that runs killed before renaming them left behind."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / LOCK_NAME, "w")
    except (FileExistsError, NotADirectoryError):
        raise InputError(out_dir, "exists and is not a folder") from None
    except PermissionError:
        raise InputError(out_dir, "permission denied (cannot write here)") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out_dir, "another fire-reg run is writing to this folder; "
                                      "wait for it or choose another --out") from None
        for stale in out_dir.rglob(".*.part*"):
            stale.unlink(missing_ok=True)
        yield out_dir
