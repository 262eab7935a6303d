"""The C library's memory allocator tuned for fire-reg's per-pair arrays (Linux, glibc).

Every pair allocates and frees arrays of one to a few tens of MB (vessel maps, dense maps and
warps at the working width, decoded images at full size). glibc serves a block above its mmap
threshold with fresh pages and trims freed memory at the top of its heap back to the system,
so a process registering pair after pair page-faults the same memory in again and again.
:func:`keep_freed_memory` fixes the mmap threshold at 32 MB (glibc's largest on 64-bit) and
the trim threshold at 256 MB (``mallopt``): freed blocks are kept and reused. Measured on the
benchmark machine: 12 % less time per pair, 30 MB more resident memory, flat over a run
(README, "Speed"). The ``fire-reg`` command and its worker processes call it; a Python
program may. Elsewhere (macOS, Windows, another C library) it does nothing.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory (module docstring) for this process;
    True when it did, False where there is no glibc ``mallopt``. Calling it again is
    harmless."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
