"""Reciprocal and inverse square root of positive shared values.

Method: bracket, normalise, polynomial, rescale.
1. Bracket: compare x with the octave thresholds 2^j from 2^lo to 2^hi (both ends included),
   all in one round, and form the one-hot indicator d_j of the interval [2^j, 2^(j+1))
   holding x, and the indicators of "below the range" and "above it".
2. Normalise: with the interval's midpoint t_j, s = x / t_j lies in [2^-1/2, 2^1/2].  Write
   1 / t_j = K_j 2^E_j with K_j in [1/2, 1): x 2^E_j is x's share read at other fractional
   bits (free and exact), so s = sum_j (d_j K_j) (x 2^E_j) is a sum of fused products, one
   per interval, in one round.  Each term carries its own truncation, so the precision of s
   does not depend on the magnitude of x.  A value below the range is read as 2^lo (s =
   2^-1/2 in the first interval), one above it as 2^hi (s = 2^1/2 in the last): public
   constants times the indicators, local.  So the protocol computes the function at x
   clamped into [2^lo, 2^hi], for every x (zero and negative values included), which is what
   the plaintext path computes too (`clamped_range`): a value outside the range changes the
   result, as it would in plaintext, but never makes it diverge.
3. Polynomial: p(u) ~ (1 + u)^(-1/q), u = s - 1, a degree-6 Chebyshev interpolant (relative
   error 8.8e-6 for 1/x, 2.1e-6 for 1/sqrt(x)); u^2 in one round, u^3 and u^4 in the next,
   u^5 and u^6 in the third.
4. Rescale: x^(-1/q) = t_j^(-1/q) p(u), again a sum over intervals of fused products with an
   exact power of two per interval, in one round.

Whole octaves with a degree-6 polynomial, rather than half octaves with a degree-4 one (this
protocol's first form), halve the comparisons and the bracketing's openings for one more
round: the comparisons' key material is most of the dealer's traffic in a forward pass.

A wide range is bracketed in two stages (`coarse_octaves` chooses where and how): x against
coarse edges every w octaves, y = x / 2^(c_i) in [1, 2^w] by the same exact rescaling as
step 2, then y against 2^1 .. 2^(w - 1).  The fine comparisons read only y's w + 14 bits, not
x's J + 24, and the coarse ones are J / w + 1, not J + 1: over the uncalibrated LayerNorm
range (30 octaves, w = 6) the dealer keys 3.9x fewer DCF levels, and deals 3.5x fewer bytes
in all.  The rescale's selector is then the product of the coarse and fine indicators (n w
columns), formed in the round that normalises y, so two stages cost 8 rounds instead of 6.

Cost (one stage): 6 rounds.  Rounds 2 and 6 open one value per interval and element (2 J
openings of 8 bytes each way, J = hi - lo intervals), so these are for row statistics (softmax sums,
LayerNorm variances), not for large tensors; the comparisons are J + 1 per element, exact
for |x| < 2^(hi + 1 + COMPARE_SLACK) (beyond, the fixed-point values downstream would
overflow anyway; a caller whose input cannot exceed the range passes slack 0), and read x at
2^-THRESHOLD_BITS of the lowest threshold (coarse comparisons, protocols.compare): on a
pending LayerNorm variance at 32 fractional bits that drops 32 + lo - 12 of the DCF's levels.
The result is pending at 40 fractional bits, relative error about 1e-5 plus the input's own
quantisation, for x in [2^lo, 2^hi] (lo, hi rounded out to octaves).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.polynomial import Chebyshev, Polynomial

from ..rounds import run_gate, run_round
from ..shared import SharedTensor, cat, stack
from .arithmetic import MulGate, SquareGate, square
from .compare import coarse_drop, drelu

POLY_FRAC = 20          # u and its powers
SCALE_FRAC = 16         # the mantissas K_j
RESULT_FRAC = 40        # the result (pending)
_COEF_BITS = 18         # the folded constants' bits, relative to their magnitude
_DEGREE = 6
#: s = x / t_j lies in [1 / _HALF, _HALF]: an interval is one octave
_HALF = 2.0 ** 0.5
#: extra comparison bits: the bracket's comparisons stay exact for inputs up to 2^COMPARE_SLACK
#: times the top of the range, so that a LayerNorm variance or normaliser far outside its
#: calibrated range is clamped, not misread.  Beyond 1024x (a LayerNorm input 32x its usual
#: scale) the layers downstream leave their own ranges (GeLU's |x| <= 34) anyway.  Each bit
#: costs the dealer 1/45 more key material for these comparisons, and no online byte.
COMPARE_SLACK = 10
#: the bracket's comparisons read x at 2^-THRESHOLD_BITS of the lowest threshold (coarse
#: comparisons, protocols.compare): a value within that of a threshold from below may be read
#: as above it, so that s = x / t_j comes out down to 2^-1/2 (1 - 2^-12), where the polynomial
#: still holds its error (the next interval's, with the same relative error)
THRESHOLD_BITS = 12


def clamped_range(lo: float, hi: float) -> tuple[float, float]:
    """The range [2^lo', 2^hi'] the secure reciprocal and inverse square root clamp their input
    into: lo and hi rounded out to octaves."""
    return float(math.floor(lo)), float(math.ceil(hi))


def _coefficients(power: float) -> list[float]:
    """Power-basis coefficients in u of the degree-_DEGREE interpolant of (1 + u)^power."""
    cheb = Chebyshev.interpolate(lambda u: (1 + u) ** power, _DEGREE,
                                 domain=[1 / _HALF - 1, _HALF - 1])
    return [float(c) for c in cheb.convert(kind=Polynomial, domain=[-1, 1], window=[-1, 1]).coef]


_COEFFS = {1: _coefficients(-1.0), 2: _coefficients(-0.5)}


def _stacked(server, share: torch.Tensor, bits: list[int], frac: int):
    """Column j of `share` holds a value at bits[j] fractional bits: shift the columns below
    `frac` up (exactly) and return the tensor, read at `frac`, with the per-column shifts
    that truncate the others down to it."""
    up = torch.tensor([max(frac - b, 0) for b in bits], dtype=torch.int64, device=share.device)
    shifts = tuple(max(b - frac, 0) for b in bits)
    return SharedTensor(share << up, frac, server), shifts


def _normalise_gate(d: SharedTensor, x: SharedTensor, factors: np.ndarray) -> MulGate:
    """The fused product whose columns, summed, are s = sum_j d_j factors_j x.  With
    factors_j = K_j 2^E_j (K_j in [1/2, 1)), x 2^E_j is x's share read at x.frac - E_j bits
    (exact), K_j rides on the selector d_j, and each column is truncated to POLY_FRAC bits
    inside the product: s has the same relative precision whatever the magnitude of x."""
    server = x.server
    mantissas, exponents = zip(*(math.frexp(float(f)) for f in factors))
    selector = d.mul_public(torch.tensor(mantissas, dtype=torch.float64), SCALE_FRAC)
    columns = x.share.unsqueeze(-1).expand(*x.shape, len(factors))
    operand, shifts = _stacked(server, columns, [x.frac - e for e in exponents], POLY_FRAC)
    return MulGate(selector, operand, SCALE_FRAC, POLY_FRAC, y_shift=shifts)


def _normalise(d: SharedTensor, x: SharedTensor, factors: np.ndarray) -> SharedTensor:
    """s = sum_j d_j factors_j x in one round (`_normalise_gate`)."""
    return run_gate(_normalise_gate(d, x, factors)).sum(-1)


def _rescale_poly(d: SharedTensor, powers: list[SharedTensor], coeffs: list[float],
                  factors: np.ndarray) -> SharedTensor:
    """sum_j d_j factors_j p(u), p(u) = sum_i coeffs_i u^i, in one round.  The constants
    factors_j coeffs_i are folded into column j of the operand at _COEF_BITS - E_j bits, so
    that its ring value stays near 2^58 whatever the interval, and the fused product then
    truncates each column to RESULT_FRAC: the result keeps its relative precision."""
    server = d.server
    top = powers[-1].frac
    bits = [_COEF_BITS - math.frexp(float(f))[1] for f in factors]
    table = torch.tensor([[round(c * float(f) * 2.0 ** b) for c in coeffs] for f, b in zip(factors, bits)],
                         dtype=torch.int64, device=server.device)               # (J, degree + 1)
    share = sum(u.rescale(top).share.unsqueeze(-1) * table[:, i + 1] for i, u in enumerate(powers))
    if server.index == 0:
        share = share + (table[:, 0] << top)
    operand, shifts = _stacked(server, share, [top + b for b in bits], RESULT_FRAC)
    gate = MulGate(d, operand, 0, RESULT_FRAC, y_shift=shifts)
    return run_gate(gate).sum(-1)


def _selector(inner: SharedTensor) -> SharedTensor:
    """From b_i = [x >= t_i] for the inner thresholds t_1 < .. < t_(J-1): the one-hot selector
    of the J intervals they cut, the first holding everything below t_1, the last everything
    from t_(J-1) up."""
    return cat([1 - inner[..., :1], inner[..., :-1] - inner[..., 1:], inner[..., -1:]], dim=-1)


def _indicators(b: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
    """From b_i = [x >= t_i] for thresholds t_0 < .. < t_J: (the J intervals' selector, the
    first also holding values below t_0 and the last values from t_J up; the indicators of
    [t_j, t_(j+1)) alone)."""
    return _selector(b[..., 1:-1]), b[..., :-1] - b[..., 1:]


def coarse_octaves(octaves: int, slack: int = COMPARE_SLACK) -> int | None:
    """The width (in octaves) of the coarse intervals of a two-stage bracket of a range of
    `octaves` octaves, or None where one stage is the cheaper.  The width minimises the DCF
    tree levels the dealer keys (its bytes and its work are proportional to them): a range's
    comparisons read J + 14 + slack levels (its octaves, THRESHOLD_BITS below it, 2 and the
    slack above), so one stage keys J + 1 of them; two stages key J / w + 1 of them and then
    w - 1 comparisons of w + 14 levels (the normalised value, in [1, 2^w]).  Two stages only
    where that halves the levels (from 10 octaves at the default slack), for their two more
    rounds: taken from 6 octaves on (a third fewer levels), MiniLM's softmax generation at 6 x
    8 x 24, its LayerNorm ranges 7-15 octaves, dealt 2.8% fewer bytes in 1.03x the time."""
    full = octaves + 2 + THRESHOLD_BITS + slack

    def levels(w):
        return (-(-octaves // w) + 1) * full + (w - 1) * (w + 2 + THRESHOLD_BITS)

    widths = range(2, octaves // 2 + 1)
    if not widths:
        return None
    best = min(widths, key=levels)
    return best if 2 * levels(best) <= (octaves + 1) * full else None


def _bracket(x: SharedTensor, exponents: np.ndarray, slack: int) -> SharedTensor:
    """b_i = [x >= 2^exponents_i] for all thresholds at once (one round): exact for |x - t_i|
    below 2^(top + 1 + slack), read at 2^-THRESHOLD_BITS of the lowest threshold."""
    top, bottom = int(exponents[-1]), int(exponents[0])
    bits = min(x.frac + max(top, 0) + 2 + slack, 63)
    drop = coarse_drop(x.frac, bottom - THRESHOLD_BITS, bits)
    return drelu(stack([x - float(2.0 ** e) for e in exponents], dim=-1), bits=bits, drop=drop)


def _powers(u: SharedTensor) -> list[SharedTensor]:
    """u, u^2, .., u^6 in three rounds."""
    u2 = square(u, POLY_FRAC)
    u3, u4 = run_round(MulGate(u, u2, POLY_FRAC, POLY_FRAC), SquareGate(u2, POLY_FRAC))
    u5, u6 = run_round(MulGate(u2, u3, POLY_FRAC, POLY_FRAC), SquareGate(u3, POLY_FRAC))
    return [u, u2, u3, u4, u5, u6]


def _inverse_root(x: SharedTensor, q: int, lo: float, hi: float, scale: float,
                  slack: int = COMPARE_SLACK) -> SharedTensor:
    """scale * x^(-1/q) for q in {1, 2}; the comparisons exact up to 2^slack times the range's top."""
    j0, j1 = math.floor(lo), math.ceil(hi)
    if j1 - j0 < 2:
        raise ValueError("the input range must span at least two octaves")
    if x.frac + j1 + 2 > 62:
        # the top threshold would not fit the ring at x's pending precision (a range
        # calibrated far up, at a long length): compare at the base precision instead
        x = x.truncate()
        if x.frac + j1 + 2 > 62:
            raise ValueError(f"an inverse root's range reaches 2^{j1}, beyond the fixed-point range at "
                             f"{x.frac} fractional bits")
    width = coarse_octaves(j1 - j0, slack)
    if width is not None:
        return _two_stage(x, q, j0, j1, width, scale, slack)
    # round 1: b_i = [x >= 2^i], j0 <= i <= j1
    b = _bracket(x, np.arange(j0, j1 + 1), slack)
    d, inside = _indicators(b)
    mids = 2.0 ** (np.arange(j0, j1, dtype=np.float64) + 0.5)
    # round 2: s = x / t_j in [2^-1/2, 2^1/2]; below the range s = t_0 / mid_0 = 2^-1/2 and
    # above it t_J / mid_(J-1) = 2^1/2 (x clamped: public constants on the indicators, local)
    ends = (1 - b[..., 0]).mul_public(1 / _HALF, POLY_FRAC) + b[..., -1].mul_public(_HALF, POLY_FRAC)
    u = _normalise(inside, x, 1.0 / mids) + ends - 1
    # rounds 3 to 5: powers of u; round 6: scale * t_j^(-1/q) * p(u)
    return _rescale_poly(d, _powers(u), _COEFFS[q], scale * mids ** (-1.0 / q))


def _two_stage(x: SharedTensor, q: int, j0: int, j1: int, width: int, scale: float,
               slack: int) -> SharedTensor:
    """The bracket in two stages: x against the coarse edges c_0 = j0 < c_1 < .. < c_n = j1
    (every `width` octaves), y = x / 2^(c_i) in [1, 2^width] for x's coarse interval, then
    y against 2^1 .. 2^(width - 1), whose comparisons read far fewer bits.  The rescale's
    selector is the product of the coarse and fine indicators, formed in the fine
    normalisation's round: 8 rounds in all."""
    edges = np.array(list(range(j0, j1, width)) + [j1])
    # round 1: the coarse bracket
    b = _bracket(x, edges, slack)
    coarse, inside = _indicators(b)
    # round 2: y = x / 2^(c_i); below the range x is read as 2^j0 (y = 1), above it as 2^j1
    # (y = 2^(j1 - c_(n-1)) in the last interval)
    ends = (1 - b[..., 0]).mul_public(1.0, POLY_FRAC) + b[..., -1].mul_public(2.0 ** (j1 - edges[-2]), POLY_FRAC)
    y = _normalise(inside, x, 2.0 ** -edges[:-1].astype(np.float64)) + ends
    # round 3: the fine bracket, f_m = [y >= 2^m] for 1 <= m < width (y in [1 - 2^-12, 2^width])
    bits = y.frac + width + 2
    f = drelu(stack([y - float(2 ** m) for m in range(1, width)], dim=-1), bits=bits,
              drop=coarse_drop(y.frac, -THRESHOLD_BITS, bits))
    fine = _selector(f)
    # round 4: s = y / 2^(m + 1/2) in [2^-1/2, 2^1/2], and the joint selector e_(i,m)
    mids = 2.0 ** (np.arange(width, dtype=np.float64) + 0.5)
    s_gate = _normalise_gate(fine, y, 1.0 / mids)
    e_gate = MulGate(coarse.unsqueeze(-1), fine.unsqueeze(-2), 0, 0)
    s_columns, joint = run_round(s_gate, e_gate)
    u = s_columns.sum(-1) - 1
    # rounds 5 to 7: powers of u; round 8: scale * (2^(c_i) mid_m)^(-1/q) * p(u)
    factors = scale * (2.0 ** edges[:-1, None].astype(np.float64) * mids[None, :]) ** (-1.0 / q)
    return _rescale_poly(joint.flatten(-2), _powers(u), _COEFFS[q], factors.reshape(-1))


def reciprocal(x: SharedTensor, lo: float = -10, hi: float = 18, slack: int = COMPARE_SLACK) -> SharedTensor:
    """1 / x for 2^lo <= x <= 2^hi (x clamped into the range outside it), in 6 rounds; pending
    at 40 fractional bits.  `slack`: the clamp stays exact for inputs up to 2^slack times
    2^hi (0 where the input cannot exceed the range, as a softmax's normaliser)."""
    with x.server.labelled("reciprocal"):
        return _inverse_root(x, 1, lo, hi, 1.0, slack)


def rsqrt(x: SharedTensor, lo: float = -10, hi: float = 18, scale: float = 1.0) -> SharedTensor:
    """scale / sqrt(x) for 2^lo <= x <= 2^hi (x clamped into the range outside it), in 6
    rounds; pending at 40 fractional bits."""
    with x.server.labelled("rsqrt"):
        return _inverse_root(x, 2, lo, hi, scale)
