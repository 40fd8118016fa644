"""Softmax along a dimension, the baseline attention: max, exp, sum, reciprocal, product.

    softmax(x)_i = e_i / sum_j e_j,  e_i = exp(x_i - max_j x_j)

The shift by the maximum keeps exp's inputs in [-2^k, 0] (exp clips lower values) and the
sum in [1, n], which bounds the reciprocal's range to [1, n]: the sum cannot exceed its top,
so the reciprocal's comparisons need no slack above it.

Cost for n entries per row: ceil(log2 n) rounds for the max (one ReLU each), 2 + 6 for exp,
1 to truncate the row sums, 6 for the reciprocal (on row values only; 8 from n = 2^11 on,
where its range of log2 n + 1/2 octaves is bracketed in two stages), 1 for the product and 1
for the final truncation: 24 rounds for n = 128.  Max abs error about 1e-4 at 16
fractional bits (exp at 24 bits internally).
"""

from __future__ import annotations

import math

from ..shared import SharedTensor
from .arithmetic import mul
from .compare import maximum as max_
from .exp import exp
from .inverse import reciprocal


def softmax(x: SharedTensor, dim: int = -1) -> SharedTensor:
    with x.server.labelled("softmax"):
        x = x.movedim(dim, -1) if dim not in (-1, x.dim() - 1) else x
        x = x.truncate() if x.frac > x.base_frac else x
        n = x.shape[-1]
        top = max_(x, -1, keepdim=True)
        e = exp(x - top, max_input=0.0)
        total = e.sum(-1, keepdim=True).truncate()
        inv = reciprocal(total, lo=0, hi=max(math.log2(n), 1) + 0.5, slack=0)
        out = mul(e, inv).truncate()
        return out.movedim(-1, dim) if dim not in (-1, x.dim() - 1) else out
