"""Pi_cosine: sine and cosine of shared values in one round, and sine/cosine series.

Protocol.  Scale x so that one period of sine and cosine is the whole ring: x' = c x with the
public integer c = round(omega 2^(64 - frac) / (2 pi)), so that the angle omega x equals
2 pi x' / 2^64 (mod 2 pi), exactly up to the rounding of c (relative 2^-40 or better for
frac <= 24).  The dealer deals t uniform over the ring and shares of w_k cos(k theta_t) and
w_k sin(k theta_t), theta_t = 2 pi t / 2^64, for each harmonic k.  The servers open
delta = x' + t (mod 2^64): uniform, so it hides x perfectly, and since the ring's wraparound
is a whole number of periods, theta_delta = 2 pi delta / 2^64 is the angle mod 2 pi.  Each
harmonic's angle is k theta_delta in float64 (off by at most k 2^-52 pi, below 1e-13 for the
k < 300 of any series here; cos and sin are then taken once per harmonic).  Then

    cos(k theta_x) = cos(k theta_delta) cos(k theta_t) + sin(k theta_delta) sin(k theta_t)
    sin(k theta_x) = sin(k theta_delta) cos(k theta_t) - cos(k theta_delta) sin(k theta_t)

with the public cos/sin of k theta_delta multiplied into the dealt shares locally.  One
opening serves every harmonic; a sine series (GeLU's) forms only the sine sum.

An angle needs only delta's top bits: each server sends the top ANGLE_BITS = 32 bits of its
share of delta (4 bytes), and the servers take delta as their sum times 2^32 plus 2^32.  The
low halves' sum (0 .. 2^33 - 2, with its carry into the top) is dropped, so the angle is off
by at most 2 pi 2^-32 (1.5e-9 rad; k times that for harmonic k, 8e-8 at the k < 55 of GeLU's
series): far below the fixed-point rounding below.  Each half a server sends is the top of
its share of a uniform value, uniform too: it hides as much as the whole word did.

Cost: 1 round, 4 bytes per element each way (one ring element per value in all); the dealer
sends server 1 2K ring elements per value for K harmonics.  A sine series whose dealt material
(2K ring elements per value) exceeds SERIES_ELEMENTS_PER_ROUND is summed in parts, one round
each, the same bytes in all.  The results are at
public_frac + dealt_frac fractional bits (pending truncation), so that the next product or
matrix product folds the truncation in; `cos(x)` and `sin(x)` return them so.
Error: the fixed-point rounding of the dealt and public factors: at most 4 * 2^-(f + 1) for
one harmonic (3.05e-5 at 16 bits), and about K times that, scaled by max |w_k|, for K; and the
angle's 2 pi 2^-32 k above.
"""

from __future__ import annotations

import math

import torch

from ..dealer import correlation
from ..native import enabled as native_enabled, kernels
from ..rounds import Gate, run_gate, run_round
from ..shared import SharedTensor, cat

_TWO_PI_OVER_RING = 2 * math.pi / 2.0 ** 64
#: the top bits of its share of delta each server sends (int32 on the wire)
ANGLE_BITS = 32
_DROPPED = 64 - ANGLE_BITS
#: the most dealt ring elements (two per element and harmonic) one series round takes: a larger
#: input is summed in parts, a round each, so that the dealer's and the servers' memory stays
#: bounded (2 GB a copy; an all-mpnet-base-v2 generation of 48 sequences of 24 tokens needs
#: 8 GB a copy in its widest layer, and was killed for memory on a 24 GB machine in one round)
SERIES_ELEMENTS_PER_ROUND = 1 << 28


def _angle(t: torch.Tensor) -> torch.Tensor:
    """2 pi t / 2^64 for int64 t (read as signed: the same angle mod 2 pi)."""
    return t.to(torch.float64) * _TWO_PI_OVER_RING


def ring_constant(value: float) -> int:
    """round(value) reduced into int64 (ring) range."""
    v = round(value) % (1 << 64)
    return v - (1 << 64) if v >= 1 << 63 else v


def _native_here(t: torch.Tensor, scales) -> bool:
    """The native kernels take CPU tensors, and round exactly for |value| < 2^51."""
    return native_enabled() and t.device.type == "cpu" and max(map(abs, scales), default=0.0) < 2.0 ** 50


def _dealer_harmonics(t: torch.Tensor, harmonics, scales) -> tuple[list, list]:
    """round(cos(k theta_t) scale_k) and round(sin(k theta_t) scale_k) for every harmonic k."""
    if _native_here(t, scales):
        t = t.contiguous()
        cos_out = [torch.empty_like(t) for _ in harmonics]
        sin_out = [torch.empty_like(t) for _ in harmonics]
        kernels.dealer_harmonics(t.numpy(), list(harmonics), list(scales), [c.numpy() for c in cos_out],
                                 [s.numpy() for s in sin_out])
        return cos_out, sin_out
    theta = _angle(t)
    return ([torch.round(torch.cos(theta * k) * s).long() for k, s in zip(harmonics, scales)],
            [torch.round(torch.sin(theta * k) * s).long() for k, s in zip(harmonics, scales)])


@correlation("trig")
def trig_correlation(src, shape, harmonics, weights, frac):
    t = src.ring(shape)
    parts = {"t": t}
    scales = [float(w) * 2.0 ** frac for w in weights]
    table = {}                # the dealer's values, computed once for every harmonic

    def value(kind, i):
        if not table:
            table["cos"], table["sin"] = _dealer_harmonics(t.value, harmonics, scales)
        out, table[kind][i] = table[kind][i], None      # dealt once: let it go after
        return out

    for i in range(len(harmonics)):
        parts[f"cos{i}"] = src.dealt(shape, lambda i=i: value("cos", i))
        parts[f"sin{i}"] = src.dealt(shape, lambda i=i: value("sin", i))
    return parts


class TrigGate(Gate):
    """S = sum_k w_k sin(k omega x) and C = sum_k w_k cos(k omega x) from one opening (C
    None when `need_cos` is false: a sine series)."""

    def __init__(self, x: SharedTensor, omega: float = 1.0, harmonics=(1,), weights=None,
                 public_frac: int | None = None, dealt_frac: int | None = None, need_cos: bool = True):
        if x.frac > 40:
            raise ValueError("Pi_cosine needs x at <= 40 fractional bits (truncate first)")
        self.server, self.x, self.need_cos = x.server, x, need_cos
        self.harmonics = tuple(int(k) for k in harmonics)
        self.weights = tuple(float(w) for w in (weights or [1.0] * len(self.harmonics)))
        base = x.base_frac
        self.public_frac = base if public_frac is None else public_frac
        self.dealt_frac = base if dealt_frac is None else dealt_frac
        self.scale = ring_constant(omega * 2.0 ** (64 - x.frac) / (2 * math.pi))
        self.p = x.server.dealer.deal("trig", shape=tuple(x.shape), harmonics=self.harmonics,
                                      weights=self.weights, frac=self.dealt_frac)

    def masked(self):
        share = self.x.share * self.scale + self.p["t"].to(self.server.device)
        return [(share >> _DROPPED).to(torch.int32)]          # its top ANGLE_BITS bits

    def finish(self, opened):
        (top,) = opened                                       # the tops' sum mod 2^32
        # delta less the low halves' sum, which lies in [0, 2^33): add its midpoint
        delta = (top.to(torch.int64) << _DROPPED) + (1 << _DROPPED)
        dev = self.server.device
        scale = 2.0 ** self.public_frac
        frac = self.public_frac + self.dealt_frac
        if _native_here(delta, [scale]):
            return self._finish_native(delta.contiguous(), scale, frac)
        theta = _angle(delta)
        sin_sum = torch.zeros_like(delta)
        cos_sum = torch.zeros_like(delta) if self.need_cos else None
        for i, k in enumerate(self.harmonics):
            a = theta * k
            # |cos|, |sin| <= 1: encode by rounding, no range check needed
            cos_d = torch.round(torch.cos(a) * scale).long()
            sin_d = torch.round(torch.sin(a) * scale).long()
            cos_t, sin_t = self.p[f"cos{i}"].to(dev), self.p[f"sin{i}"].to(dev)
            sin_sum += sin_d * cos_t
            sin_sum -= cos_d * sin_t
            if cos_sum is not None:
                cos_sum += cos_d * cos_t
                cos_sum += sin_d * sin_t
        return self._sums(sin_sum, cos_sum, frac)

    def _sums(self, sin_sum, cos_sum, frac):
        return (SharedTensor(sin_sum, frac, self.server),
                None if cos_sum is None else SharedTensor(cos_sum, frac, self.server))

    def _finish_native(self, delta, scale, frac):
        n = len(self.harmonics)
        cos_t = [self.p[f"cos{i}"].contiguous().numpy() for i in range(n)]
        sin_t = [self.p[f"sin{i}"].contiguous().numpy() for i in range(n)]
        sin_sum = torch.empty_like(delta)
        cos_sum = torch.empty_like(delta) if self.need_cos else None
        kernels.server_series(delta.numpy(), list(self.harmonics), scale, cos_t, sin_t, sin_sum.numpy(),
                              None if cos_sum is None else cos_sum.numpy())
        return self._sums(sin_sum, cos_sum, frac)


def sincos(x: SharedTensor, omega: float = 1.0, public_frac: int | None = None,
           dealt_frac: int | None = None) -> tuple[SharedTensor, SharedTensor]:
    """(sin(omega x), cos(omega x)) in one round (Pi_cosine), at pending precision."""
    with x.server.labelled("cosine"):
        return run_gate(TrigGate(x, omega, (1,), None, public_frac, dealt_frac))


def cos(x: SharedTensor, omega: float = 1.0) -> SharedTensor:
    return sincos(x, omega)[1]


def sin(x: SharedTensor, omega: float = 1.0) -> SharedTensor:
    return sincos(x, omega)[0]


def sine_series(x: SharedTensor, omega: float, harmonics, weights, public_frac: int | None = None,
                dealt_frac: int | None = None) -> SharedTensor:
    """sum_k w_k sin(k omega x) in one round (in ceil(2 K x.numel() / SERIES_ELEMENTS_PER_ROUND)
    rounds, one per part, for an input whose dealt material would exceed that)."""
    with x.server.labelled("sine_series"):
        parts = math.ceil(2 * len(harmonics) * x.numel() / SERIES_ELEMENTS_PER_ROUND)
        if parts <= 1:
            return run_gate(TrigGate(x, omega, harmonics, weights, public_frac, dealt_frac, need_cos=False))[0]
        flat = x.reshape(-1)
        sums = [run_gate(TrigGate(part, omega, harmonics, weights, public_frac, dealt_frac, need_cos=False))[0]
                for part in flat.split(math.ceil(flat.numel() / parts))]
        return cat(sums).reshape(x.shape)


def sine_series_by_columns(x: SharedTensor, series, public_frac: int, dealt_frac: int) -> SharedTensor:
    """Each group of x's last-dimension columns its own sine series, in one round: `series`
    is a list of (columns, omega, harmonics, weights), the columns (a public long tensor)
    covering x's last dimension once.  The groups' gates open their columns in one round
    (each element once: the online bytes of one series), and the dealer deals each group's
    harmonics only: 2 K_g ring elements per element of group g.  Past
    SERIES_ELEMENTS_PER_ROUND dealt elements in one round, the groups' rows are split into
    parts and packed into as few rounds as fit, as `sine_series` does."""
    with x.server.labelled("sine_series"):
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        pieces = []                   # (dealt elements, group, row slice)
        for g, (columns, _, harmonics, _) in enumerate(series):
            per_row = 2 * len(harmonics) * len(columns)
            step = max(1, min(rows, SERIES_ELEMENTS_PER_ROUND // max(per_row, 1)))
            pieces += [(per_row * (min(rows, r + step) - r), g, slice(r, min(rows, r + step)))
                       for r in range(0, rows, step)]
        share = torch.empty_like(flat.share)
        while pieces:
            batch, load = [], 0
            for piece in list(pieces):
                if not batch or load + piece[0] <= SERIES_ELEMENTS_PER_ROUND:
                    batch.append(piece)
                    load += piece[0]
                    pieces.remove(piece)
            gates = []
            for _, g, rows_at in batch:
                columns, omega, harmonics, weights = series[g]
                gates.append(TrigGate(flat[rows_at][:, columns], omega, harmonics, weights, public_frac, dealt_frac,
                                      need_cos=False))
            for (_, g, rows_at), (sums, _) in zip(batch, run_round(*gates)):
                share[rows_at, series[g][0]] = sums.share
        return SharedTensor(share, public_frac + dealt_frac, x.server).reshape(x.shape)
