"""Attention on plaintext or shared tensors: softmax (the baseline) and Random Feature
Attention (RFA) with trigonometric features, whose only non-linearity under MPC is Pi_cosine.

Shapes: queries, keys and values are (N, heads, L, head_dim); `key_mask` is (N or 1, 1, L, 1)
with 1 for tokens and 0 for padding, shared at 0 fractional bits (an integer sharing, so that
multiplying by it adds no pending bits and adding a multiple of it is exact).  The model
folds 1 / head_dim^(1/4) into both the query and the key weights, so q.k is already the
softmax's scaled score.

Softmax: softmax(q k^T + 2048 (m - 1)) v.  Padded keys get a score MASKED_SCORE = 2048
lower, so none exceeds a real key's, and their weight is multiplied by m = 0 exactly.

RFA estimates the kernel exp(q.k) by random features and attends in linear time:

    out_i = sum_j k(q_i, k_j) m_j v_j / sum_j k(q_i, k_j) m_j,
    k(x, y) ~ psi(x).psi(y),  psi(x) = [sin(W x), cos(W x)]   (W: M random frequencies),

because E_w[cos(w.(x - y))] = exp(-|x - y|^2 / 2) for Gaussian w.  Two feature maps:
- "paper" (the SecP-Tuning paper's form): exp(q.k) = exp(|q|^2/2) exp(|k|^2/2) exp(-|q - k|^2/2).  The query's
  factor exp(|q|^2/2) multiplies numerator and normaliser alike and cancels, so it is never
  computed.  The keys' factor is computed as exp(|k|^2/2 - c_h), with a per-head constant
  c_h (also cancelling) chosen by the developer from calibration text as the largest
  |k|^2/2 seen plus a margin: the factor then lies in (0, e^margin] and stays inside the
  fixed-point range, and keys whose factor is below e^-64 of the largest are dropped by
  the secure exp's clip (their weight was negligible anyway).
- "normalized" (what `secptune convert` trains for): queries and keys are l2-normalised and
  scaled by a learned per-head temperature tau_h, so the norm factors are the constant
  exp(tau_h^2 / 2) and cancel: k(q, k) = exp(tau_h^2 (q^.k^ - 1)).  Under MPC this costs an
  inverse square root of a per-token norm (row values: cheap) instead of an exp.
The random frequencies W (orthogonal Gaussian blocks, from a seed) and the temperatures are
the developer's settings, public to the servers: multiplying shares by them is local.
The 1/M of the estimator cancels too and is never applied.

A relative position bias (MPNet's: b[h, i, j] = table[bucket(j - i), h], shared like every
weight) multiplies the kernel by exp(b[h, i, j]), which no product of query and key features
factors.  RFA then attends in its quadratic form (`PositionFactor`):

    out_i = sum_j (psi(q_i).psi(k_j)) P_ij m_j v_j / sum_j (psi(q_i).psi(k_j)) P_ij m_j,
    P_ij = 2^s exp(b[h, i, j] - c_h),

an (L, L) kernel matrix per head like softmax's scores, but with no row maximum and no exp
over it: the exp is taken once per model on the (buckets, heads) table (a fixed weight),
gathered at the public buckets, and multiplies the kernel in one elementwise product.  c_h (the head's largest bias)
and 2^s (a power of two that lifts the smallest row's normaliser above the fixed-point
resolution) are public and cancel between numerator and normaliser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..mpc.protocols.arithmetic import MulGate, SquareGate
from ..mpc.protocols.trig import TrigGate
from ..mpc.protocols.truncation import TruncGate
from ..mpc.rounds import run_gate, run_round
from . import functional as F

#: raw scores of one row (real and padded keys) lie within this of each other (measured: at
#: most 119.3 on MiniLM, 25.5 on MPNet, benchmarks/prompt_ranges.py)
SCORE_SPREAD = 2048.0
#: what a padded key's score is lowered by: SCORE_SPREAD is enough for it never to exceed a
#: real key's (its exp, meaningless under MPC, is then multiplied by m_j = 0), and the secure
#: row maximum compares differences up to MASKED_SCORE + SCORE_SPREAD = 2^12 only
MASKED_SCORE = SCORE_SPREAD
#: the secure row maximum reads differences at this resolution: it may come out up to
#: ceil(log2 n) * MAX_RESOLUTION below the maximum, a shift the softmax is invariant to (exp
#: then sees inputs up to that much above 0, and the normaliser reaches n e^that)
MAX_RESOLUTION = 2.0 ** -5
#: scores within this distance of their row's maximum are exact; farther ones (real scores
#: are far closer in practice, within about 40 on MiniLM) would be meaningless under MPC
MIN_SCORE_GAP = -144.0
FEATURE_MAPS = ("paper", "normalized")


def softmax_attention(q, k, v, key_mask, bias=None):
    """softmax(q k^T + bias) v over the unmasked keys, as sum_j e_ij m_j v_j / sum_j e_ij m_j
    with e_ij = exp(s_ij - max_j s_ij): the masked keys drop out of both sums by the mask, so
    the normalisation costs a reciprocal per row (not per score) and one product per output.
    `bias` (broadcast to the scores, e.g. MPNet's (1, heads, L, L) relative position bias) is
    added to the scores: a local addition under MPC."""
    q, k = F.settle(q, k)
    scores = F.matmul(q, k.mT)
    if bias is not None:
        scores = scores + bias
    # padded keys MASKED_SCORE lower: never above a real key, and multiplied by m_j = 0 below
    scores = scores + (key_mask.mT - 1) * MASKED_SCORE
    n = k.shape[-2]
    top = F.row_max(F.settle(scores), MASKED_SCORE + SCORE_SPREAD, MAX_RESOLUTION)
    # top is a real key's score, up to `shortfall` below the row's maximum (exactly it in plaintext)
    shortfall = math.ceil(math.log2(n)) * MAX_RESOLUTION if n > 1 else 0.0
    e = F.exp(scores - top, max_input=shortfall, min_input=MIN_SCORE_GAP)
    weighted = _masked_values(v, key_mask)
    # the normaliser sum_j e_ij m_j lies in [1, n e^shortfall] (the key at top has e >= 1; a
    # masked key's e, meaningless under MPC, is multiplied by m_j = 0 exactly): a computed
    # value a few units below 1 is clamped to 1, and none can exceed the range's top
    top_octave = math.log2(n) + shortfall * math.log2(math.e) + 0.5
    return _normalised(e, weighted, v.shape[-1], (0.0, top_octave), bounded=True)


def _masked_values(v, key_mask):
    """[v * m, m]: (N, h, L, d + 1) for key weights m (the 0/1 mask, or in plaintext any
    per-key weight).  Shared: one round, folding v's pending truncation."""
    if F.is_shared(v):
        v_m = run_gate(MulGate(v, key_mask, v.base_frac, 0))
        m = key_mask.expand(*v.shape[:-1], 1).rescale(v_m.frac)
        return F.cat([v_m, m], -1)
    m = key_mask.to(v.dtype).expand(*v.shape[:-1], 1)
    return torch.cat([v * m, m], -1)


#: the fractional bits of 1 / normaliser kept in its product with the numerator
RECIPROCAL_FRAC = 32


def _normalised(weights, weighted, d: int, normaliser_range, bounded: bool = False):
    """(weights @ [v m, m]) split into numerator and normaliser, divided (`bounded`: the
    normaliser cannot exceed the range's top, F.reciprocal)."""
    both = F.matmul(F.settle(weights), weighted)
    lo, hi = normaliser_range
    inv = F.reciprocal(both[..., d:], lo, hi, bounded)
    if F.is_shared(inv):
        # 1 / normaliser is as small as 2^-hi: at the base 16 bits it would keep only 16 - hi
        # of them (an RFA normaliser reaches 2^19 with MPNet's position factor); the product
        # is the attention output, |out| <= max |v|, so 32 bits of it still fit the ring
        return run_gate(MulGate(both[..., :d], inv, inv.base_frac, min(inv.frac, RECIPROCAL_FRAC)))
    return both[..., :d] * inv


def orthogonal_gaussian(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, dim) Gaussian frequencies drawn in orthogonal blocks (rows of a block are
    orthogonal, with chi-distributed norms as for i.i.d. Gaussian rows): an unbiased
    estimator of the same kernel with lower variance (Performer's ORF)."""
    blocks = []
    for start in range(0, rows, dim):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(g)
        norms = torch.randn(dim, dim, generator=generator, dtype=torch.float64).norm(dim=1)
        blocks.append((qmat * norms[:, None])[: rows - start])
    return torch.cat(blocks)


@dataclass
class RandomFeatures:
    """The developer's RFA settings for one layer.

    frequencies: (heads, head_dim, M), W_h^T per head (temperatures folded in for the
        normalized map).
    key_shift: (heads,) the constants c_h of the paper's map (ignored by the normalized one).
    norm_range: log2 bounds of |q|^2, |k|^2 for the secure inverse square root (normalized).
    normaliser_range: log2 bounds of the normaliser sum_j psi(q).psi(k_j) m_j (secure
        reciprocal).
    """

    feature_map: str
    frequencies: torch.Tensor
    key_shift: torch.Tensor
    norm_range: tuple[float, float] = (-8.0, 14.0)
    normaliser_range: tuple[float, float] = (-6.0, 20.0)

    @classmethod
    def draw(cls, feature_map: str, heads: int, head_dim: int, num_features: int, seed: int,
             temperature: torch.Tensor | None = None, key_shift: torch.Tensor | None = None,
             seq_len: int = 512, position: "PositionFactor | None" = None) -> "RandomFeatures":
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {feature_map!r}; choose from {FEATURE_MAPS}")
        gen = torch.Generator().manual_seed(seed)
        w = torch.stack([orthogonal_gaussian(num_features, head_dim, gen) for _ in range(heads)])
        if feature_map == "normalized":
            tau = torch.ones(heads, dtype=torch.float64) if temperature is None else temperature.double()
            w = w * tau.view(heads, 1, 1)
        shift = torch.zeros(heads, dtype=torch.float64) if key_shift is None else key_shift.double()
        top = float(tau.max()) if feature_map == "normalized" else None
        return cls(feature_map, w.transpose(1, 2).contiguous(), shift,
                   normaliser_range=normaliser_range(feature_map, num_features, seq_len, top, position))

    @property
    def num_features(self) -> int:
        return self.frequencies.shape[-1]


@dataclass
class PositionFactor:
    """The public settings of RFA's position factor P_ij = 2^s exp(b[h, i, j] - c_h) (see the
    module's docstring): `shift` c_h, the head's largest bias (heads,); `floor`, in nats, the
    least of each head's largest factor exp(b - c_h) over the keys a real query always has
    (itself and a neighbour at distance 1).  A real query's row mass sum_j P_ij m_j is then at
    least 2^s exp(floor); `scale_bits` s lifts it halfway from there to 1."""

    shift: torch.Tensor
    floor: float

    @property
    def scale_bits(self) -> int:
        return math.ceil(-self.floor * math.log2(math.e) / 2) if self.floor < 0 else 0

    def table(self, bias_table):
        """2^s exp(table - c_h) on the (buckets, heads) bias table, plaintext or shared (the
        secure exp of a few hundred values, once per model: `Transformer.position_bias`
        keeps it; pending at high precision)."""
        if F.is_shared(bias_table):
            factor = F.exp(bias_table - self.shift, max_input=0.0, min_input=MIN_SCORE_GAP)
            return factor.reinterpret(factor.frac - self.scale_bits)
        return torch.exp(bias_table - self.shift.to(bias_table)) * 2.0 ** self.scale_bits

    def to_dict(self) -> dict:
        """The settings as rfa.json and the wire carry them."""
        return {"shift": self.shift.tolist(), "floor": float(self.floor)}

    @classmethod
    def from_dict(cls, data: dict) -> "PositionFactor":
        return cls(torch.tensor(data["shift"], dtype=torch.float64), float(data["floor"]))

    def octaves(self) -> tuple[float, float]:
        """What the factor adds to the log2 bounds of a row's normaliser."""
        return self.floor * math.log2(math.e) + self.scale_bits, float(self.scale_bits)


def normaliser_range(feature_map: str, num_features: int, seq_len: int,
                     max_temperature: float | None = None,
                     position: PositionFactor | None = None) -> tuple[float, float]:
    """log2 bounds of an RFA row's normaliser sum_j psi(q).psi(k_j) P_ij m_j (P = 1 without
    a position factor), the secure reciprocal's range; both paths clamp the normaliser into
    it, so a model that uses these settings (the distilled student included) is the deployed
    one."""
    hi = math.log2(num_features * seq_len) + 0.5
    if feature_map == "normalized":
        # psi(q).psi(k) ~ M exp(-tau^2 |q^ - k^|^2 / 2) lies in [M exp(-2 tau^2), M], and a
        # row sums it over 1 to seq_len keys (one octave of margin for the estimator's noise)
        lo = math.log2(num_features * math.exp(-2 * max_temperature ** 2)) - 1
    else:
        lo = -6.0
    if position is not None:
        add_lo, add_hi = position.octaves()
        lo, hi = lo + add_lo, hi + add_hi
    return lo, hi


def rfa_attention(q, k, v, key_mask, features: RandomFeatures, observe=None, position=None, form: str = "auto"):
    """`observe(what, values)`, if given, sees the plaintext values whose ranges the secure
    version must know: "norms" (|q|^2 and |k|^2 of the normalized map), "normaliser".
    `position`: the (1, heads, L, L) factors P_ij of a relative position bias
    (`PositionFactor`), which make the attention quadratic; `features.normaliser_range`
    must then include the factor's octaves.  `form`: "linear" (psi_q (psi_k^T [v m, m])),
    "quadratic" ((psi_q psi_k^T) [v m, m], the same sums associated the other way) or "auto":
    quadratic with a position factor or where it opens fewer values (`quadratic_is_cheaper`)."""
    if form not in RFA_FORMS:
        raise ValueError(f"unknown RFA form {form!r}; choose from {RFA_FORMS}")
    if position is not None and form == "linear":
        raise ValueError("a position factor has no linear RFA form")
    L = q.shape[-2]
    if form == "auto":
        cheaper = position is not None or quadratic_is_cheaper(L, features.num_features, v.shape[-1])
        form = "quadratic" if cheaper else "linear"
    if F.is_shared(q):
        q_dir, k_dir, weighted = _secure_directions(q, k, v, key_mask, features)
    else:
        q_dir, k_dir, weighted = _plain_directions(q, k, v, key_mask, features)
        if observe is not None and features.feature_map == "normalized":
            observe("norms", torch.cat([(q * q).sum(-1), (k * k).sum(-1)]))
    psi = _features(F.cat([q_dir, k_dir], -2), features)        # one Pi_cosine round for both
    psi_q, psi_k = psi[..., :L, :], psi[..., L:, :]
    if form == "quadratic":
        kernel = F.matmul(psi_q, psi_k.mT)                                    # (N, h, L, L)
        if position is not None:
            kernel = _position_weighted(kernel, position)
        if observe is not None and not F.is_shared(q):
            observe("normaliser", (kernel @ weighted[..., -1:]).squeeze(-1))
        return _normalised(kernel, weighted, v.shape[-1], features.normaliser_range)
    summary = F.matmul(psi_k.mT, weighted)                     # (N, h, 2M, d + 1)
    if observe is not None and not F.is_shared(q):
        observe("normaliser", (psi_q @ summary[..., -1:]).squeeze(-1))
    return _normalised(psi_q, summary, v.shape[-1], features.normaliser_range)


RFA_FORMS = ("auto", "linear", "quadratic")


def quadratic_is_cheaper(length: int, num_features: int, head_dim: int) -> bool:
    """Whether RFA's quadratic form opens fewer values than its linear one at this length,
    per text and head: the quadratic form's products open psi_q and psi_k (L x 2M each), its
    (L, L) kernel twice (truncation, product) and [v m, m]; the linear form's open psi_k and
    [v m, m], then psi_q and its (2M, d + 1) summary twice (truncation, product).  Both take
    the same rounds; the difference is 2 (L^2 - 2M (d + 1)) values."""
    return length * length < 2 * num_features * (head_dim + 1)


#: the position factors' fractional bits in the kernel's product: 2^s exp(...) <= 2^s, and
#: with the kernel's 16 bits (|psi.psi| <= 2M) the product stays far inside the ring
POSITION_FRAC = 20


def _position_weighted(kernel, position):
    """kernel * P elementwise: one round under MPC (P, broadcast over the texts, opened once),
    folding the kernel's pending truncation and P's down to POSITION_FRAC bits."""
    if F.is_shared(kernel):
        return run_gate(MulGate(kernel, position, kernel.base_frac, POSITION_FRAC))
    return kernel * position.to(kernel)


def _features(directions, features: RandomFeatures):
    w = features.frequencies                                     # (h, d, M)
    if F.is_shared(directions):
        proj = F.settle(directions) @ w.unsqueeze(0)
        sin, cos = _sincos_at_base(proj)
    else:
        # the plaintext path follows the input's dtype and device (float32 / CUDA when the
        # developer distils the model with autograd: secptune/conversion)
        proj = directions @ w.to(directions).unsqueeze(0)
        sin, cos = torch.sin(proj), torch.cos(proj)
    return F.cat([sin, cos], -1)


def _sincos_at_base(proj):
    """sin and cos at the base precision (8 + 8 bits from the public and dealt factors): no
    truncation round before the products that use them."""
    half = proj.base_frac // 2
    with proj.server.labelled("cosine"):
        return run_gate(TrigGate(proj, 1.0, (1,), None, half, proj.base_frac - half))


def _plain_directions(q, k, v, key_mask, features: RandomFeatures):
    if features.feature_map == "normalized":
        return q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True), _masked_values(v, key_mask)
    shift = features.key_shift.view(1, -1, 1, 1).to(k)
    return q, k, _masked_values(v, key_mask * torch.exp((k * k).sum(-1, keepdim=True) / 2 - shift))


def _secure_directions(q, k, v, key_mask, features: RandomFeatures):
    """One round opens q, k (for their squared norms) and v (for the key mask), each folding
    its pending truncation; the openings of q and k are reused by later products."""
    base = q.base_frac
    if features.feature_map == "normalized":
        sq_q, sq_k, masked_v = SquareGate(q, base), SquareGate(k, base), MulGate(v, key_mask, base, 0)
        q2, k2, v_m = run_round(sq_q, sq_k, masked_v)        # one round for all three
        lo, hi = features.norm_range
        r = F.rsqrt(F.cat([q2.sum(-1, keepdim=True), k2.sum(-1, keepdim=True)], -1), lo, hi)
        q_dir, k_dir = run_round(MulGate(sq_q.opened, r[..., :1], None, 24),
                                 MulGate(sq_k.opened, r[..., 1:], None, 24))
        m = key_mask.expand(*v.shape[:-1], 1)
        return q_dir, k_dir, F.cat([v_m, m.rescale(v_m.frac)], -1)
    sq_k = SquareGate(k, base)
    gates = [sq_k] + ([TruncGate(q, q.frac - base)] if q.frac > base else [])
    k2, *settled = run_round(*gates)
    q_t = settled[0] if settled else q
    shift = features.key_shift.view(1, -1, 1, 1)
    factor = F.exp(k2.sum(-1, keepdim=True).mul_public(0.5, 1) - shift, max_input=4.0)
    weight = run_gate(MulGate(F.settle(factor), key_mask, None, 0))       # factor * m
    weighted_v = run_gate(MulGate(v, weight, base, None))
    return q_t, sq_k.opened.value(), F.cat([weighted_v, weight.expand(*v.shape[:-1], 1).rescale(weighted_v.frac)], -1)
