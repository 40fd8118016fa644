"""Comparison with zero in one round: DReLU [x >= 0], ReLU, and max by a tournament of ReLUs.

Protocol (function secret sharing, Boyle et al. 2021).  For |x| < 2^(n-1) in ring units the
sign of x is bit n-1 of x mod 2^n.  The dealer deals a mask r uniform over the ring, shares of
m = bit n-1 of r, and DCF keys on the low n-1 bits for c = [xh_low < r_low] (the borrow when
x = xh - r is computed mod 2^n).  The servers open xh = x + r (mod 2^64), so with a = bit n-1
of xh,

    msb(x) = a xor m xor c = a + (1 - 2a) (m + (1 - 2m) c),

linear in the shares of m and of (1 - 2m) c; the DCF's payload is (1 - 2m), so it outputs
shares of (1 - 2m) c directly.  DReLU = 1 - msb.  For ReLU the payload also carries
(1 - 2m) r, which gives shares of b r and then b x = b xh - b r with xh public.

Cost: 1 round, 8 bytes per element each way.  The dealer sends each server DCF correction
words of (n - 1) * (16 + 8 P) + 8 P bytes (+ control bits) per element, P = 1 for DReLU and 2
for ReLU, and server 1 one or two ring elements more; each server evaluates n - 1 AES levels.
n is Config.compare_bits (plus any pending fractional bits of x).

Coarse comparison (`drop` = s > 0): the DCF reads bits s .. n - 1 of xh only, against the same
bits of r, so its key and evaluation shrink to n - 1 - s levels.  Shifting xh = x + r right by
s bits gives floor(x / 2^s) + floor(r / 2^s) + c with an unknown carry c in {0, 1}, and the
protocol above then computes the sign of floor(x / 2^s) + c: exact for x >= 0 and for
x < -2^s, and possibly read as ">= 0" for -2^s <= x < 0.  ReLU then returns x itself there, a
value within 2^s ring units of 0.  A maximum built on it is low by at most 2^s units per
level, which a softmax absorbs (it is invariant to the shift it subtracts).  The servers open
the same xh: their view does not change.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..dealer import correlation
from ..fss import DCFKeys, dcf_eval, dcf_keygen
from ..rounds import Gate, run_gate
from ..shared import SharedTensor, cat


def _u64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().view(np.uint64).reshape(-1)


def _i64(a: np.ndarray, shape, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64)).reshape(shape).to(device)


@correlation("sign")
def sign_correlation(src, shape, bits, relu, drop=0):
    count = int(np.prod(shape)) if shape else 1
    r = src.ring(shape)
    m = src.dealt(shape, lambda: (r.value >> (bits - 1)) & 1)
    parts = {"r": r, "m": m}
    if relu:
        parts["mr"] = src.dealt(shape, lambda: m.value * r.value)
    roots = src.own((count, 2))

    def keys():
        alpha = (_u64(r.value) >> np.uint64(drop)) & np.uint64((1 << (bits - 1 - drop)) - 1)
        flip = np.uint64(1) - np.uint64(2) * _u64(m.value)          # 1 - 2m mod 2^64
        beta = [flip] + ([flip * _u64(r.value)] if relu else [])
        key0, _ = dcf_keygen(alpha, np.stack(beta, axis=1), bits - 1 - drop, roots.of0, roots.of1)
        return key0.common()

    parts["dcf"] = src.common(keys)
    parts["root"] = roots
    return parts


class SignGate(Gate):
    """DReLU (and optionally ReLU) of x in one round; with `drop` > 0, coarse (see the module)."""

    def __init__(self, x: SharedTensor, relu: bool, bits: int | None = None, drop: int = 0):
        self.server, self.x, self.relu = x.server, x, relu
        config = x.server.config
        self.bits = bits or min(config.compare_bits + max(x.frac - x.base_frac, 0), 63)
        if not 0 <= drop <= self.bits - MIN_KEPT_BITS:
            raise ValueError(f"a comparison of {self.bits} bits cannot drop {drop} of them")
        self.drop = drop
        # drop = 0 keeps the request (and so the dealt material) exactly as before coarse
        # comparisons existed
        extra = {"drop": drop} if drop else {}
        self.p = x.server.dealer.deal("sign", shape=tuple(x.shape), bits=self.bits, relu=relu, **extra)
        x.server.channel.meter.add(comparisons=x.numel())

    def masked(self):
        return [self.x.share + self.p["r"].to(self.server.device)]

    def finish(self, opened):
        (xh,) = opened
        server, dev, n = self.server, self.server.device, self.bits
        shape = tuple(self.x.shape)
        keys = DCFKeys.from_common(server.index, n - 1 - self.drop, self.p["root"], self.p["dcf"])
        low = (_u64(xh) >> np.uint64(self.drop)) & np.uint64((1 << (n - 1 - self.drop)) - 1)
        out = dcf_eval(keys, low)
        flip_c = _i64(out[:, 0], shape, dev)                       # (1 - 2m) c
        a = (xh >> (n - 1)) & 1
        m = self.p["m"].to(dev)
        m_xor_c = m + flip_c
        own = 1 - a if server.index == 0 else 0
        bit = own - (1 - 2 * a) * m_xor_c                          # 1 - msb
        if not self.relu:
            return SharedTensor(bit, 0, server)
        r, mr = self.p["r"].to(dev), self.p["mr"].to(dev)
        flip_cr = _i64(out[:, 1], shape, dev)                      # (1 - 2m) c r
        bit_r = (1 - a) * r - (1 - 2 * a) * (mr + flip_cr)         # b r
        return SharedTensor(xh * bit - bit_r, self.x.frac, server)


#: a coarse comparison reads at least this many of its bits (the sign bit among them)
MIN_KEPT_BITS = 3


def coarse_drop(frac: int, resolution_log2: int, bits: int) -> int:
    """The low bits a comparison of `bits` bits can drop (`drop`) to read values held at
    `frac` fractional bits at a resolution of 2^resolution_log2: none where that is finer
    than the ring unit, and never so many that fewer than MIN_KEPT_BITS remain."""
    return max(0, min(frac + resolution_log2, bits - MIN_KEPT_BITS))


def drelu(x: SharedTensor, bits: int | None = None, drop: int = 0) -> SharedTensor:
    """[x >= 0] as a shared 0/1 integer (frac 0); exact for |x| < 2^(bits-1) ring units (with
    `drop`, possibly 1 for -2^drop <= x < 0)."""
    with x.server.labelled("compare"):
        return run_gate(SignGate(x, relu=False, bits=bits, drop=drop))


def relu(x: SharedTensor, bits: int | None = None, drop: int = 0) -> SharedTensor:
    """max(x, 0) at x's precision, in one round; exact for |x| < 2^(bits-1) ring units (with
    `drop`, x itself may come back for -2^drop <= x < 0)."""
    with x.server.labelled("relu"):
        return run_gate(SignGate(x, relu=True, bits=bits, drop=drop))


def maximum(x: SharedTensor, dim: int = -1, keepdim: bool = False, bound: float | None = None,
            resolution: float | None = None) -> SharedTensor:
    """Maximum along a dimension: ceil(log2 n) rounds of max(a, b) = b + relu(a - b).

    Exact by default (differences below 2^(compare_bits - 1) ring units).  Given `bound` (a
    public bound on |a - b| for any two entries) and `resolution`, the comparisons cover only
    that range, read at that resolution: the result is one of the entries, at most
    ceil(log2 n) * resolution below the true maximum, for key material and evaluation
    proportional to log2(bound / resolution) bits instead of compare_bits."""
    bits, drop = None, 0
    if bound is not None:
        bits = min(max(math.ceil(math.log2(bound)), 0) + x.frac + 2, 63)
        if resolution is not None:
            drop = coarse_drop(x.frac, math.floor(math.log2(resolution)), bits)
    with x.server.labelled("max"):
        y = x.movedim(dim, -1)
        while y.shape[-1] > 1:
            half = y.shape[-1] // 2
            a, b = y[..., :half], y[..., half:2 * half]
            best = b + relu(a - b, bits, drop)
            y = cat([best, y[..., 2 * half:]], -1) if y.shape[-1] % 2 else best
        y = y.squeeze(-1)
        if keepdim:
            y = y.unsqueeze(dim if dim >= 0 else x.dim() + dim)
        return y
