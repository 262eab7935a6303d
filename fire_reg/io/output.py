"""Atomic file output, and output folders held by one run.

Every output is written under a temporary name beside it and renamed when complete, so an
interrupted run never leaves a half-written file under a final name; a result set of several
files (a registered pair's folder) is committed as one (:func:`atomic_folder`).

**A run removes only what it made; nothing is ever deleted by pattern.** Temporary names are
unique to the run and say whose they are: ``.<name>.fire-reg-<run>-<random>.part<suffix>``, with
``<run>`` = ``<pid>-<8 hex digits>``, fresh for every :func:`exclusive_output`. The code that
makes a temporary removes it (also on an exception, Ctrl-C or SIGTERM, which the command line
turns into an exception), and the run removes any it still has on record when it ends. A
run killed outright (SIGKILL, power cut) cannot clean up: its run id stays in the folder's
lock file, and the next run that takes the lock, which proves the killed run is gone,
removes the files and folders under ``--out`` whose names carry exactly that run id. No other
file is ever removed, however it is named (``notes/.draft.partial`` and ``.thesis.part2.tex``
are safe).

Disk full, a read-only folder and permission denied become :class:`OutputError`, an
InputError naming the folder (the command line: one line, exit status 2).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from fire_reg.io.errors import InputError

FOLDER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EFBIG})
"""Errors that say the output folder cannot take the files (full, read-only, no permission,
over the file-size limit), not that fire-reg is wrong."""

LOCK_NAME = ".fire-reg.lock"
_RUN_ID = re.compile(r"[0-9]+-[0-9a-f]{8}")


class OutputError(InputError):
    """An output folder that cannot take the run's files: disk full, read-only, no permission."""


def _new_run_id() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_run = {"id": _new_run_id()}  # replaced by each exclusive_output for its duration
_temporaries: set[Path] = set()  # made by this process and not yet removed or renamed
_guard = threading.Lock()


@contextlib.contextmanager
def _writing(folder) -> Iterator[None]:
    """Turn an OSError that says ``folder`` cannot take files into an OutputError naming it."""
    try:
        yield
    except OSError as error:
        if error.errno not in FOLDER_ERRNOS:
            raise
        raise OutputError(folder, "cannot write here: "
                                  f"{error.strerror or os.strerror(error.errno)}") from None


def _temporary(folder: Path, name: str, suffix: str, directory: bool) -> Path:
    """Make a file or folder with this run's temporary name in ``folder`` and record it."""
    prefix = f".{name}.fire-reg-{_run['id']}-"
    if directory:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder))
    else:
        fd, made = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
        path = Path(made)
    with _guard:
        _temporaries.add(path)
    return path


def _remove(path: Path) -> None:
    """Remove a temporary this run made (gone already, e.g. renamed: nothing to do)."""
    with _guard:
        _temporaries.discard(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final_path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it onto ``final_path`` on success.

    The temporary name keeps the final suffix (libraries such as OpenCV and numpy pick the
    format from it). On any exception the temporary file is removed and nothing is renamed;
    disk full or a read-only folder raise :class:`OutputError`.
    """
    final_path = Path(final_path)
    suffix = final_path.suffix if suffix is None else suffix
    with _writing(final_path.parent):
        final_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(final_path.parent, final_path.stem, f".part{suffix}", directory=False)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual mode
            os.replace(tmp, final_path)
        finally:
            _remove(tmp)


@contextlib.contextmanager
def atomic_folder(final_dir, owned: Iterable[str] = (), last: str | None = None) -> Iterator[Path]:
    """Yield a new hidden folder to write a result set into; commit it to ``final_dir`` when
    the block ends without an exception.

    A ``final_dir`` that does not exist yet appears with one rename, complete. Into an
    existing folder the files are moved one by one: ``last`` (the file that marks a complete
    set, e.g. ``transform.json``) is removed first and moved in last, so the folder holds it
    only beside a complete set; the names in ``owned`` (every file a set can have) that the
    new set lacks are removed, so no file of an older set stays beside a newer one. Other
    files in the folder are never touched. On any exception the hidden folder and everything
    in it are removed and ``final_dir`` is left as it was.
    """
    final_dir = Path(final_dir)
    fresh = not final_dir.exists()
    if not fresh and not final_dir.is_dir():
        raise InputError(final_dir, "exists and is not a folder")
    home = final_dir.parent if fresh else final_dir
    with _writing(home):
        home.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(home, final_dir.name, ".part", directory=True)
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
            if fresh:
                os.rename(tmp, final_dir)
            else:
                _merge(tmp, final_dir, owned, last)
        except OutputError as error:  # named by the folder the user knows, not the hidden one
            raise OutputError(final_dir, error.problem) from None
        finally:
            _remove(tmp)


def _merge(tmp: Path, final_dir: Path, owned: Iterable[str], last: str | None) -> None:
    names = {entry.name for entry in tmp.iterdir()}
    if last is not None:
        (final_dir / last).unlink(missing_ok=True)  # incomplete from here until the end
    for name in set(owned) - names:
        (final_dir / name).unlink(missing_ok=True)
    for name in sorted(names - {last}):
        os.replace(tmp / name, final_dir / name)
    if last in names:
        os.replace(tmp / last, final_dir / last)


def write_json(path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def exclusive_output(out_dir) -> Iterator[Path]:
    """Hold ``out_dir`` for one run.

    Creates the folder (and missing parents), takes an exclusive lock on ``.fire-reg.lock``
    (opened without following a symbolic link) and writes the run's id into it; removes the
    temporaries of a killed earlier run (see the module notes). When the run ends, however it
    ends: removes the temporaries it still has on record, then the lock, then the folders it
    created if they are empty (a refused command leaves nothing behind).

    InputError when ``out_dir`` is empty, a file, or held by another run, or when the lock is a
    link or special file; OutputError when the folder cannot be written.
    """
    if not str(out_dir).strip():
        raise InputError("--out", "is empty: give the output folder")  # Path("") is the cwd
    out_dir = Path(out_dir)
    created = _make_folders(out_dir)
    try:
        fd = _take_lock(out_dir)
    except BaseException:
        _remove_empty(created)
        raise
    outer_run = _run["id"]
    try:
        previous = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        _run["id"] = _new_run_id()
        with _writing(out_dir):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _run["id"].encode(), 0)
        if _RUN_ID.fullmatch(previous):
            _remove_left_by(out_dir, previous)
        yield out_dir
    finally:
        with _guard:
            left = [path for path in _temporaries if f".fire-reg-{_run['id']}-" in path.name]
        for path in left:
            _remove(path)
        _run["id"] = outer_run
        _release_lock(out_dir / LOCK_NAME, fd)
        _remove_empty(created)


def _make_folders(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` and its missing parents; the ones created, deepest first."""
    missing, folder = [], out_dir
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        with _writing(folder):
            out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(out_dir, "exists and is not a folder") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _take_lock(out_dir: Path) -> int:
    """Open and lock ``out_dir/.fire-reg.lock``; its file descriptor."""
    path = out_dir / LOCK_NAME
    busy = InputError(out_dir, "another fire-reg run is writing to this folder; wait for it or "
                               "choose another --out")
    for _ in range(3):
        try:
            with _writing(out_dir):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise InputError(path, "is a symbolic link; fire-reg does not follow it "
                                       "(remove the link)") from None
            if error.errno == errno.ENOTDIR:
                raise InputError(out_dir, "exists and is not a folder") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise InputError(path, "is not fire-reg's lock (a special file or a hard "
                                       "link); remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            if _same_file(path, info):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the run before removed its lock as we took it: take the new one
    raise busy


def _same_file(path: Path, info: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)


def _release_lock(path: Path, fd: int) -> None:
    """Remove the lock file (when it is still the one held) and release it."""
    try:
        if _same_file(path, os.fstat(fd)):
            path.unlink()
    finally:
        os.close(fd)


def _remove_left_by(out_dir: Path, run_id: str) -> None:
    """Remove the temporaries (files and folders) the killed run ``run_id`` left under
    ``out_dir``: only names of exactly this module's scheme carrying that run id."""
    ours = re.compile(rf"\..*\.fire-reg-{re.escape(run_id)}-[a-z0-9_]{{8}}\.part.*", re.S)
    for folder, subfolders, files in os.walk(out_dir):
        for name in [*subfolders, *files]:
            path = Path(folder) / name
            if ours.fullmatch(name) and not path.is_symlink():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        subfolders[:] = [name for name in subfolders if not ours.fullmatch(name)]
