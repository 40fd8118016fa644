"""LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.

With d = x - mean and S = sum(d^2) over the D features, 1 / sqrt(var + eps) equals
sqrt(D) / sqrt(S + D eps): the division by D folds into the inverse square root's constants,
and S is passed to it at pending precision (its comparisons take the extra bits).

Cost: 1 round for d^2; d's opening is then reused: d * weight is local for a prepared or
public weight (a shared one costs a round opening only the weight); 6 rounds for the
inverse square root (on row values: cheap); 1 for the product with it, which opens only
the row values when there is no weight, and d * weight otherwise; and the truncation its
consumer folds in.  Online bytes: 16 per element without a weight, 32 with one, plus rows.
Valid for a per-row variance in [2^var_lo, 2^var_hi] (by default 1.5e-5 .. 16384, standard
deviations 0.004 .. 128).
"""

from __future__ import annotations

import math

from ..rounds import run_gate
from ..shared import SharedTensor, public_bits
from .arithmetic import MulFixedGate, MulGate, PreparedOperand, SquareGate
from .inverse import rsqrt


def layer_norm(x: SharedTensor, weight=None, bias=None, eps: float = 1e-5,
               var_lo: float = -16, var_hi: float = 14) -> SharedTensor:
    server = x.server
    D = x.shape[-1]
    base = x.base_frac
    with server.labelled("layernorm"):
        mean = x.sum(-1, keepdim=True).mul_public(1.0 / D, public_bits(1.0 / D, base))
        d = x - mean                                          # pending at frac + base
        squares = SquareGate(d, base)
        total = run_gate(squares).sum(-1, keepdim=True) + D * eps
        log_d = math.log2(D)
        inv = rsqrt(total, var_lo + log_d, var_hi + log_d, scale=math.sqrt(D))   # pending at 40
        # d was opened for its square; its weighted value comes from that opening: locally
        # for a prepared or public weight, by opening only the weight for a shared one
        opened = squares.opened
        if isinstance(weight, PreparedOperand):
            scaled = run_gate(MulFixedGate(opened, weight))
        elif isinstance(weight, SharedTensor):
            scaled = run_gate(MulGate(opened, weight, None, base))
        elif weight is not None:
            scaled = opened.value() * weight                  # a public weight
        else:
            scaled = opened                                    # reused: only the rows open
        scaled_frac = None if weight is None else base      # an Opened keeps its own
        out = run_gate(MulGate(scaled, inv, scaled_frac, 24))
        if bias is not None:
            out = out + bias
        return out
