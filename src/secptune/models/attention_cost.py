"""`--attention auto`: softmax or random-feature attention, whichever costs less under MPC for
the sequence length at hand.

Everything in a layer but the attention's scores is the same for both: the projections, the
feed-forward block, LayerNorm.  Per head, softmax works on the n x n scores (n the tokens of a
sequence: a product, a maximum by a tournament of comparisons, an exponential and a
reciprocal per row), so its cost grows with n^2; RFA works on n x M random features of the
queries and keys (one cosine round, their norms, a normaliser), so its cost grows with n M.
Softmax is therefore the cheaper below a crossover length proportional to M, and RFA above.

The crossover was measured for MiniLM and its shipped conversion (M = 128) by
`benchmarks/attention_crossover.py` (docs/protocols.md, "Attention chosen by length"): whole
secure passes of 384 tokens, both attentions, each at the ranges the developer calibrates for
that length.  Measured again on 2026-12-05 (GeLU bounds per channel, coarse comparisons), RFA
took 1.27, 1.21, 1.22 and 1.09 times softmax's time per sequence at 24, 32, 40 and 48 tokens,
0.99 at 64 and 0.93 at 96; interpolated, they cost the same at 62 (34 when measured on
2026-12-04, before those changes sped up softmax more than RFA).  For another M it is scaled
in proportion (RFA's part grows with n M); only M = 128 was measured.
"""

from __future__ import annotations

#: the feature count of the measured conversion, and the sequence length (tokens, prompt
#: included) from which its RFA pass was measured to be faster than softmax's
MEASURED_FEATURES = 128
MEASURED_CROSSOVER_TOKENS = 62


def crossover_tokens(features: int) -> int:
    """The sequence length from which RFA with `features` random features is the cheaper."""
    return round(MEASURED_CROSSOVER_TOKENS * features / MEASURED_FEATURES)


def cheaper_attention(tokens: int, features: int) -> str:
    """"softmax" or "rfa" for sequences of `tokens` tokens (prompt included)."""
    return "rfa" if tokens >= crossover_tokens(features) else "softmax"
