"""Keep a long-lived process's heap from growing without bound.

glibc raises its mmap threshold each time a large block served by mmap is freed (the "dynamic
threshold", up to 32 MiB), after which blocks of that size come from the brk heap instead. A
process that keeps allocating and freeing messages of a few hundred KB, as the controller does with
trajectory groups, then fragments its heap and never gives the memory back: measured in the soak
(bench/soak.py), the controller grew from 50 MiB to 260 MiB in 8 minutes while its live Python
objects stayed flat (tracemalloc). Fixing the thresholds keeps it flat (48 MiB over the same
work). Environment variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ still win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("slurm_rl")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def fix_malloc_thresholds(mmap_threshold: int = 128 * 1024, trim_threshold: int = 128 * 1024) -> bool:
    """Turn off glibc's dynamic mmap threshold; True when it was set (glibc only, else a no-op)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False                      # not glibc (musl, macOS): nothing to tune
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not ok:
        log.debug("mallopt refused the thresholds")
    return ok
