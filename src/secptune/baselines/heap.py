"""Returning freed weight-sized buffers to the system (glibc's malloc).

glibc serves an allocation from its heap unless it is larger than a threshold that starts at
128 KiB and rises, as large blocks are freed, up to 32 MiB; what a heap holds stays with the
process after it is freed, in one arena per thread.  Full fine-tuning under MPC frees and
allocates weight-sized shares, masks and gradients (1 to 32 MiB each: a 768 x 3,072 matrix
is 18.9 MB) on four party threads every step, so the process kept about twice what it used:
three steps of all-mpnet-base-v2's first layer peaked at 6.7 GB, 3.5 GB with blocks of 1 MiB
and more mapped and unmapped one by one, for about 1.05x the time.  The secure forward, whose
tensors are mostly smaller, gains little (8% less memory) and runs 1.2x slower so: this is
for full fine-tuning alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager

#: mallopt's parameter number of the mmap threshold (malloc.h)
M_MMAP_THRESHOLD = -3
#: glibc's ceiling of the dynamic threshold on 64-bit systems, restored on exit (the
#: dynamic adjustment, once a threshold is set, stays off)
DYNAMIC_CEILING = 32 << 20


def _mallopt():
    """glibc's mallopt, or None (another C library, or none found)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None


@contextmanager
def large_frees_returned(threshold: int = 1 << 20):
    """Within the block, allocations of `threshold` bytes or more that the heap's free space
    cannot already serve are mapped and unmapped one by one (their memory goes back to the
    system when freed) instead of growing the heap; a no-op without glibc."""
    mallopt = _mallopt()
    applied = bool(mallopt and mallopt(M_MMAP_THRESHOLD, threshold))
    try:
        yield applied
    finally:
        if applied:
            mallopt(M_MMAP_THRESHOLD, DYNAMIC_CEILING)
