"""exp(x) by range reduction and repeated squaring, with the lower tail clipped.

    exp(x) = p(y)^(2^k),  y = max(x, -2^k) / 2^k in [-1, y_max],
    p(y) = 1 + y + y^2 / 2 + y^3 / 6

p(y) > 0 on [-1, 0] and the relative error of p(y)^(2^k) is about |x|^4 / (24 * 8^k); for
x <= 0 the absolute error is at most 4.7 / (24 * 8^k) (7.5e-7 at k = 6), small enough that
summing a softmax row does not pile up the approximation's one-sided bias.  Inputs below
-2^k are clipped there (exp(-64) = 1.6e-28), which keeps masked or very negative logits from
blowing up the polynomial.  y^2 and y^3 / 6 = (6^(-1/3) y)^3 come from two openings in one
round (a square and a powers gate), so the division by 6 costs no precision.  The squarings
run at `frac` fractional bits (24, more than the 16 of the inputs: each squaring doubles the
relative error it inherits), each folding its truncation into its own round.

Cost: 1 round (the clip, a ReLU) + 1 (the polynomial) + k squarings; 8 bytes per element
each way per opening (two openings in the polynomial's round).  The result is pending at
2 * frac bits, so that a following product folds in its truncation; it must stay below
2^(62 - 2 frac), which bounds max_input (9 at frac 24).
"""

from __future__ import annotations

import math

from ..rounds import run_round
from ..shared import SharedTensor
from .arithmetic import PowersGate, SquareGate, square
from .compare import relu

POLY_FRAC = 20


def exp_plan(max_input: float) -> tuple[int, int]:
    """(k, frac) for inputs up to max_input: k squarings, internal fractional bits."""
    k = 6
    if max_input > 0:
        # relative error max_input^4 / (24 * 8^k) <= 1e-4
        k = max(k, math.ceil(math.log(max_input ** 4 / 24e-4, 8)))
    frac = 24 if max_input <= 0 else min(24, math.floor((61 - max_input * math.log2(math.e)) / 2))
    if frac < 12:
        raise ValueError(f"exp of inputs up to {max_input} does not fit the ring's precision")
    return k, frac


def exp(x: SharedTensor, max_input: float = 8.0, min_input: float | None = None) -> SharedTensor:
    """exp(x) for x <= max_input (inputs below -2^k clipped); pending at 2 * frac bits.

    With inputs known to lie at or above min_input >= -2.25 * 2^k (-144 at k = 6), the clip
    is skipped (one round and one comparison per element fewer): p(y) increases, and on
    y in [-2.25, -1] it lies in [-0.62, 0.34], so p(y)^(2^k) < 5e-14 there, as exp is.
    Below that the result is meaningless (the caller must zero it, e.g. by a mask)."""
    k, frac = exp_plan(max_input)
    with x.server.labelled("exp"):
        bound = float(2 ** k)
        if min_input is not None and min_input >= -2.25 * bound:
            clipped = x
        else:
            clipped = relu(x + bound) - bound
        y = clipped.reinterpret(clipped.frac + k)            # y = clipped / 2^k, exactly
        z = y.mul_public(6.0 ** (-1.0 / 3.0), y.base_frac)
        y_sq, (_, z_cube) = run_round(SquareGate(y, POLY_FRAC), PowersGate(z, 3, POLY_FRAC))
        top = z_cube.frac
        p = (y.rescale(top) + y_sq.reinterpret(y_sq.frac + 1).rescale(top) + z_cube) + 1
        for _ in range(k):
            p = square(p, frac)
        return p
