"""Truncation: drop s fractional bits of a shared value in one round, off by at most one unit.

Protocol (dealer-assisted, exact up to the last bit).  The dealer deals r uniform over the
whole ring, with shares of rho = r >> s (logical) and of m = msb(r).  For |x| < 2^62 the
servers open xh = x + 2^62 + r (mod 2^64): uniform, so it hides x perfectly.  With
x' = x + 2^62 in [0, 2^63), the addition wrapped iff w = m * (1 - msb(xh)) (if r < 2^63 it
cannot wrap; if r >= 2^63, a wrap leaves xh < x' < 2^63 and no wrap leaves xh >= 2^63), so

    (xh >> s) - rho + w * 2^(64 - s) - 2^(62 - s) = floor(x / 2^s) + c,

where c = [xh mod 2^s < r mod 2^s] is the borrow from the low s bits.  Since r is uniform,
c is 1 with probability frac(x / 2^s): the result is x / 2^s with an error in (-1, 1) units
and mean exactly zero for every x (probabilistic rounding).  w is linear in the shares of m
because msb(xh) is public.

Cost: 1 round, 8 bytes per element each way (16 online bytes per element in all); the dealer
sends server 1 rho (a ring element) and the s low bits of m's share per element (an int8,
int16 or int32 for s <= 8, 16, 32: m is only used as k m, a multiple of 2^(64 - s), so its
higher bits vanish); server 0 derives its own.
"""

from __future__ import annotations

import torch

from ..dealer import correlation
from ..ring import logical_shift_right, msb
from ..rounds import Gate, run_gate, run_round

OFFSET = 1 << 62


def has_shift(shift) -> bool:
    """Whether a shift (an int, or a tuple of per-column ints) drops any bit."""
    return any(v > 0 for v in shift) if isinstance(shift, tuple) else shift > 0


def top_shift(shift) -> int:
    """The largest shift of an int or of per-column ints: the bits of the mask's top bit m (and
    of any dealt product with m) that its uses k m, k = 2^(64 - s), keep (`Source.dealt`'s
    `bits`: the dealer sends those bits only)."""
    return max(shift) if isinstance(shift, tuple) else shift


def shift_right(x: torch.Tensor, shift) -> torch.Tensor:
    """Logical right shift by an int, or by per-column amounts along the last dimension."""
    if not isinstance(shift, tuple):
        return logical_shift_right(x, shift)
    s = torch.tensor(shift, dtype=torch.int64, device=x.device)
    keep = (torch.ones_like(s) << (64 - s.clamp(min=1))) - 1
    return torch.where(s == 0, x, (x >> s) & keep)


def _power_of_two(exponent, like: torch.Tensor) -> torch.Tensor:
    """2^exponent (mod 2^64) for an int or per-column exponents (0 where exponent >= 64)."""
    e = torch.as_tensor(exponent, dtype=torch.int64, device=like.device)
    return torch.where(e < 64, torch.ones_like(e) << e.clamp(max=63), torch.zeros_like(e))


def mask_with_truncation(src, shape, shift):
    """A mask r and, when the shift drops bits, shares of rho = r >> s and m = msb(r):
    (r, rho, m), with rho = r and m = None for a plain (Beaver) mask."""
    r = src.ring(shape)
    if not has_shift(shift):
        return r, r, None
    rho = src.dealt(shape, lambda: shift_right(r.value, shift))
    m = src.dealt(shape, lambda: msb(r.value), bits=top_shift(shift))
    return r, rho, m


@correlation("trunc")
def trunc_correlation(src, shape, shift):
    r, rho, m = mask_with_truncation(src, shape, shift)
    return {"r": r, "rho": rho, "m": m}


class TruncatedMask:
    """The algebra of a value opened for truncation: trunc(x) = A - R, A public, R shared,
    R = rho - k * m with public k = (1 - msb(xh)) * 2^(64 - s).  With s = 0 it is a plain
    Beaver opening: A = xh, R = r.  The shift may differ per column of the last dimension
    (a tuple): columns with s = 0 then get k = 0 and A = xh - 2^62, the same algebra."""

    def __init__(self, server, shape, shift):
        self.server = server
        self.shift = shift
        if has_shift(shift):
            self.parts = server.dealer.deal("trunc", shape=tuple(shape), shift=shift)
        else:
            self.parts = server.dealer.deal("mask", shape=tuple(shape))
        self.r = self.parts["r"].to(server.device)

    def masked(self, x_share: torch.Tensor) -> torch.Tensor:
        out = x_share + self.r
        if has_shift(self.shift) and self.server.index == 0:
            out = out + OFFSET
        return out

    def open(self, opened: torch.Tensor) -> None:
        """Compute the public part A and the public coefficient k from the opened value."""
        s = self.shift
        if not has_shift(s):
            self.A, self.k = opened, None
            self.rho, self.m = self.r, None
            return
        self.A = shift_right(opened, s) - _power_of_two(_minus(62, s), opened)
        self.k = (1 - msb(opened)) * _power_of_two(_minus(64, s), opened)
        self.rho = self.parts["rho"].to(self.server.device)
        self.m = self.parts["m"].to(self.server.device)

    def R(self) -> torch.Tensor:
        """This server's share of R."""
        return self.rho if self.k is None else self.rho - self.k * self.m

    def value(self) -> torch.Tensor:
        """This server's share of A - R (the truncated value)."""
        own_a = self.A if self.server.index == 0 else 0
        return own_a - self.R()


def _minus(total: int, shift):
    return tuple(total - v for v in shift) if isinstance(shift, tuple) else total - shift


@correlation("mask")
def mask_correlation(src, shape):
    return {"r": src.ring(shape)}


class TruncGate(Gate):
    def __init__(self, x, shift: int):
        if shift <= 0:
            raise ValueError("a truncation drops at least one bit")
        self.server = x.server
        self.x = x
        self.mask = TruncatedMask(x.server, x.shape, shift)

    def masked(self):
        return [self.mask.masked(self.x.share)]

    def finish(self, opened):
        self.mask.open(opened[0])
        return self.x._new(self.mask.value(), self.x.frac - self.mask.shift)


def truncate_together(*xs) -> tuple:
    """Each shared tensor at its base precision, every pending truncation in one round
    (tensors already there pass through; no round when none is pending)."""
    pending = [x for x in xs if x.frac > x.base_frac]
    done = dict(zip(map(id, pending), run_round(*(TruncGate(x, x.frac - x.base_frac) for x in pending))))
    return tuple(done.get(id(x), x) for x in xs)


def truncate(x, frac: int):
    """x at `frac` fractional bits: one round if it has more, a local shift if fewer."""
    if x.frac <= frac:
        return x.rescale(frac)
    with x.server.labelled("truncate"):
        return run_gate(TruncGate(x, x.frac - frac))
