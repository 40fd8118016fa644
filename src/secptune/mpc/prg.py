"""A cryptographic pseudo-random generator: AES-128 in counter mode, and fixed-key AES.

Every stream is named by a 16-byte seed and a 64-bit stream index, so two parties holding
the same seed derive the same randomness for the same request without talking, and the
dealer can re-derive a party's randomness from its seed alone.

AES runs through `cryptography` (OpenSSL, AES-NI where the CPU has it); output is written
into preallocated numpy buffers (`update_into`), which is several times faster than letting
the binding allocate a bytes object per call.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16
_BLOCK = 16


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def derive_seed(seed: bytes, label: str) -> bytes:
    """A sub-seed for an independent purpose (domain separation by label)."""
    index = int.from_bytes(label.encode()[:8].ljust(8, b"\0"), "big") | (1 << 63)
    return PRGStream(seed, index).bytes(SEED_BYTES)


def _run(encryptor, data: np.ndarray) -> np.ndarray:
    """Encrypt a contiguous array's bytes; returns a fresh uint8 array of the same length."""
    n = data.nbytes
    out = np.empty(n + _BLOCK, dtype=np.uint8)
    encryptor.update_into(memoryview(np.ascontiguousarray(data)).cast("B"), memoryview(out))
    return out[:n]


def aes_ecb(key: bytes, blocks: np.ndarray) -> np.ndarray:
    """AES_key applied to each 16-byte block of a uint64 array whose last axis is 2."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return _run(enc, blocks).view(np.uint64).reshape(blocks.shape)


class PRGStream:
    """Sequential randomness from AES-CTR(seed) starting at block (index, 0)."""

    _zeros = np.zeros(0, dtype=np.uint8)

    def __init__(self, seed: bytes, index: int):
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a seed is {SEED_BYTES} bytes, got {len(seed)}")
        nonce = (index & ((1 << 64) - 1)).to_bytes(8, "big") + bytes(8)
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()

    def _stream(self, n: int) -> np.ndarray:
        if PRGStream._zeros.size < n:
            PRGStream._zeros = np.zeros(max(n, 1 << 20), dtype=np.uint8)
        return _run(self._enc, PRGStream._zeros[:n])

    def bytes(self, n: int) -> bytes:
        return self._stream(n).tobytes()

    def uint64(self, shape) -> np.ndarray:
        shape = tuple(shape)
        n = int(np.prod(shape)) if shape else 1
        return self._stream(8 * n).view(np.uint64).reshape(shape)

    def ring(self, shape, device=None) -> torch.Tensor:
        """Uniform elements of Z_2^64 as an int64 tensor."""
        out = torch.from_numpy(self.uint64(shape).view(np.int64))
        return out if device is None else out.to(device)
