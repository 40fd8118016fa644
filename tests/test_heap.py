"""Freed weight-sized buffers go back to the system during full fine-tuning under MPC."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: run in a fresh process: in this one, earlier tests left free heap space, which malloc
#: reuses before it maps anything, whatever the threshold
CHECK = textwrap.dedent("""
    import ctypes, ctypes.util, sys
    import torch
    from secptune.baselines.heap import large_frees_returned

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = Mallinfo2
    except (OSError, AttributeError, TypeError):
        sys.exit(3)                     # not glibc 2.33 or later (mallinfo2)

    def mapped():
        return libc.mallinfo2().hblkhd

    two_mib = 1 << 18                   # float64 elements
    warm = torch.ones(8 * two_mib, dtype=torch.float64)
    del warm                            # freeing a 16 MiB block raises the dynamic threshold past 2 MiB
    before = mapped()
    heap = torch.ones(two_mib, dtype=torch.float64)
    assert mapped() == before, "without the setting, 2 MiB comes from the heap"
    del heap
    with large_frees_returned() as applied:
        assert applied
        before = mapped()
        inside = torch.ones(two_mib, dtype=torch.float64)
        assert mapped() - before >= 2 << 20, "inside, its own mapping"
        del inside
        assert mapped() == before, "unmapped when freed"
    # outside, the threshold is back at glibc's dynamic ceiling (32 MiB)
    before = mapped()
    outside = torch.ones(two_mib, dtype=torch.float64)
    assert mapped() == before, "outside, from the heap again"
""")


def test_buffers_of_a_mebibyte_and_more_are_mapped_one_by_one_inside_the_block():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    if done.returncode == 3:
        pytest.skip("not glibc 2.33 or later (mallinfo2)")
    assert done.returncode == 0, done.stderr
