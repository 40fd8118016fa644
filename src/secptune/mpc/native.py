"""The engine's native kernels (`_native`, a C extension built by the package's install step):
DCF key generation and evaluation on AES-NI (`fss`), and the harmonic series of Pi_cosine
(`protocols.trig`).  Each has a numpy/torch twin used where the extension was not built, where
the CPU lacks what it needs, for tensors on a GPU, or everywhere with SECPTUNE_NATIVE=0."""

from __future__ import annotations

import os

try:
    from . import _native as kernels
except ImportError:             # not built (no C compiler at install): the twins only
    kernels = None


def enabled() -> bool:
    """Whether the native kernels are built and not switched off by SECPTUNE_NATIVE=0."""
    return kernels is not None and os.environ.get("SECPTUNE_NATIVE", "1") != "0"


def aes_enabled() -> bool:
    """Whether the native DCF runs here: the kernels enabled, on an x86-64 CPU with AES-NI."""
    return enabled() and kernels.available()
