"""Ctrl-C (SIGINT) and SIGTERM: a command that is stopped cleans up after itself.

* Within :func:`interruptible` (every command), both signals raise :class:`Interrupted`, a
  KeyboardInterrupt, in the main thread, so every ``finally`` runs: temporaries are removed,
  the output folder's lock is released and removed. The command line then exits with
  128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells do.
* Within :func:`deferred` (a batch), the first signal only sets ``stop.signum``: the batch
  finishes the pair it is on, writes its records and stops. A second signal raises at once;
  the pair it interrupts is dropped (its hidden folder removed).
* Once a command is stopping, further signals are ignored: its clean-up is never cut short.

Signal handlers can only be set from the main thread; elsewhere both are no-ops.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOPPING = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


_received: dict[str, int | None] = {"signum": None}  # the first stop signal of this command


class Stop:
    """Signal handler of :func:`deferred`: the first signal is noted (``signum``); a second one
    raises once while ``dropping`` is true (set it false while the records are written); any
    other is only noted."""

    def __init__(self):
        self.dropping = True

    @property
    def signum(self) -> int | None:
        return _received["signum"]

    def __call__(self, signum, frame) -> None:
        if _received["signum"] is None:
            _received["signum"] = signum
        elif self.dropping:
            self.dropping = False
            raise Interrupted(signum)


def _raise(signum, frame) -> None:
    """The first signal raises :class:`Interrupted`; later ones are only noted, so that the
    clean-up of the command they stop (temporaries, the lock) is not cut short."""
    if _received["signum"] is None:
        _received["signum"] = signum
        raise Interrupted(signum)


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def interruptible():
    """Within: the first SIGINT or SIGTERM raises :class:`Interrupted`; later ones (the
    command is already unwinding) are ignored."""
    _received["signum"] = None
    return _handling(_raise)


@contextlib.contextmanager
def deferred() -> Iterator[Stop]:
    """Within: the first SIGINT or SIGTERM sets the yielded ``Stop``'s ``signum``; a second
    one raises :class:`Interrupted` (once). Within :func:`interruptible`, a signal after the
    block is only noted too."""
    _received["signum"] = None
    stop = Stop()
    with _handling(stop):
        yield stop
