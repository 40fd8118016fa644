"""LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.

With d = x - mean and S = sum(d^2) over the D features, 1 / sqrt(var + eps) equals
sqrt(D) / sqrt(S + D eps): the division by D folds into the inverse square root's constants,
and S is passed to it at pending precision (its comparisons take the extra bits).

Cost: 1 round for d^2 (with d * weight in the same round when the weight is shared or
prepared), 5 for the inverse square root (one row value each: cheap), 1 for the product,
and the truncation its consumer folds in.  Valid for a per-row variance in
[2^var_lo, 2^var_hi] (by default 1.5e-5 .. 16384, standard deviations 0.004 .. 128).
"""

from __future__ import annotations

import math

from ..rounds import run_round
from ..shared import SharedTensor, public_bits
from .arithmetic import MulFixedGate, MulGate, PreparedOperand, SquareGate, mul
from .inverse import rsqrt


def layer_norm(x: SharedTensor, weight=None, bias=None, eps: float = 1e-5,
               var_lo: float = -16, var_hi: float = 14) -> SharedTensor:
    server = x.server
    D = x.shape[-1]
    base = x.base_frac
    with server.labelled("layernorm"):
        mean = x.sum(-1, keepdim=True).mul_public(1.0 / D, public_bits(1.0 / D, base))
        d = x - mean                                          # pending at frac + base
        gates = [SquareGate(d, base)]
        if isinstance(weight, SharedTensor):
            gates.append(MulGate(d, weight, base, base))
        elif isinstance(weight, PreparedOperand):
            gates.append(MulFixedGate(d, weight, base))
        results = run_round(*gates)
        total = results[0].sum(-1, keepdim=True) + D * eps
        scaled = results[1] if len(results) > 1 else d
        log_d = math.log2(D)
        inv = rsqrt(total, var_lo + log_d, var_hi + log_d, scale=math.sqrt(D))   # pending at 40
        out = mul(scaled, inv, base, 24)
        if weight is not None and len(results) == 1:
            out = out.truncate() * weight                     # a public weight
        if bias is not None:
            out = out + bias
        return out
