"""Backward passes of the transformer's layers, on plaintext or shared tensors.

A minimal hand-written autograd: each layer's training forward saves what its backward needs
(`LayerNormSaved`, the attention probabilities, the inputs of products), and each backward
below turns the gradient of a layer's output into the gradients of its input and, when asked,
of its weights.  As in `functional`, every function takes torch tensors (the float64
reference: the exact derivative) or `SharedTensor`s (the engine's protocols), so comparing
the two measures the protocols' error and nothing else; tests/test_backward.py checks the
plaintext path against torch autograd and the secure path against the plaintext one.

Formulas (y the layer's output, dy its gradient; products are Beaver products under MPC):

- linear, y = x W + b:        dx = dy W^T,  dW = x^T dy,  db = sum dy.
  Under MPC W^T is a prepared operand (prompt tuning: weights never change, so W^T is
  opened once under a fixed mask and each product opens only dy) or the shared W itself
  (full fine-tuning: a fresh Beaver triple every step, since W changes every step).
- LayerNorm, y = xh g + b, xh = (x - mean) r, r = 1 / sqrt(var + eps):
  dxh = dy g,  dx = r (dxh - mean(dxh) - xh mean(dxh xh)),  dg = sum dy xh,  db = sum dy.
  The forward saves xh and r (r pending at 40 bits, so that its relative precision is kept).
- the embedding, x = word + position + type: the prompt's gradient is dx at its positions
  summed over the batch; the word table's is one-hot^T dx (a product under MPC).
- GeLU, y = x (1 + erf(x / sqrt 2)) / 2:  y' = (1 + E(x) + x E'(x)) / 2, where
  E(x) = sum_k b_k sin(k w x) is the forward's erf series (mpc/protocols/gelu.py) and
  E'(x) = sum_k b_k k w cos(k w x) its derivative, also a Fourier series: both come from
  Pi_cosine in one round (two openings of x), then x E'(x) and dy y' are two products.
- softmax, p = softmax(s):    ds = p (dp - sum(dp p)).
- attention, o = softmax(q k^T + mask + bias) v:  dv = p^T do,  dp = do v^T,  ds =
  softmax's, dq = ds k,  dk = ds^T q (the 1 / sqrt(d) is folded into the query and key
  weights).  MPNet's bias[h, i, j] = table[bucket(j - i), h] (public buckets): the table's
  gradient sums ds over the batch and the layers into its buckets, locally (no round).
- cross-entropy of logits z against one-hot labels y over a batch of B:
  dz = (softmax(z) - y) / B; under MPC the labels are the owner's shared one-hot rows and
  the softmax runs on the shared logits.  A public loss scale (2^10 in the baselines)
  multiplies dz, as mixed-precision training does, so that gradients of 1e-5 .. 1e-3 keep
  their relative precision at 16 fractional bits; the optimizer divides it out.

Costs (online, per call; n elements of the tensor named; pinned in tests/test_backward.py):
linear backward: one product opening dy (prepared W^T: 16 n_dy bytes, 1 round) or dy and W
(fresh triple), and for dW one more product opening x and dy (2 rounds in all); LayerNorm
backward: 5 rounds (dy g with dy xh, the row dot product, the row sums settled, xh times a
row value, times 1 / sigma); GeLU backward: 3 rounds, 96 n bytes; softmax backward: 2
rounds, 64 n bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..mpc import protocols
from ..mpc.protocols.arithmetic import MulFixedGate, MulGate, PreparedOperand, SquareGate, mul, mul_fixed
from ..mpc.protocols.gelu import SERIES_FRAC, erf_series
from ..mpc.protocols.inverse import rsqrt
from ..mpc.protocols.trig import TrigGate
from ..mpc.rounds import run_gate, run_round
from ..mpc.shared import SharedTensor, public_bits
from . import functional as F
from .attention import MASKED_SCORE

INV_FRAC = 24           # the saved 1 / sigma of LayerNorm is used at 24 fractional bits


def _rows(t):
    """All dimensions but the last flattened: (rows, features)."""
    return t.reshape(-1, t.shape[-1])


def _times(x, w):
    """x * w elementwise for a shared, prepared or public w (one round, or none for public)."""
    if isinstance(w, PreparedOperand):
        return mul_fixed(x, w)
    if isinstance(w, SharedTensor):
        return mul(x, w)
    return x * w


def _scale(x, value: float):
    """x times a public real, locally (a shared result stays pending)."""
    if F.is_shared(x):
        return x.mul_public(value, public_bits(value, x.base_frac))
    return x * value


# --- linear --------------------------------------------------------------------------------

def linear_backward(x, weight_t, dy, weight_grad: bool = True):
    """(dx, dW, db) of y = x W + b; `weight_t` is W^T (torch, prepared or shared).  Without
    `weight_grad` only dx is computed (dW, db are None)."""
    dx = F.linear(dy, weight_t)
    if not weight_grad:
        return dx, None, None
    x2, dy2 = _rows(x), _rows(dy)
    dw = F.matmul(x2.mT, dy2)
    db = dy2.sum(0)
    return dx, dw, db


# --- LayerNorm -----------------------------------------------------------------------------

@dataclass
class LayerNormSaved:
    normalized: object      # xh = (x - mean) / sigma
    inv_std: object         # 1 / sigma per row (keepdim); shared: pending at 40 bits


def layer_norm_forward(x, weight, bias, eps: float, var_range: tuple[float, float] | None = None):
    """LayerNorm that also returns what its backward needs.  Shared: the variance's inverse
    square root as in mpc/protocols/layernorm.py, then xh = d r and y = xh g + b (one round
    more than the fused forward, which never forms xh)."""
    if not F.is_shared(x):
        d = x - x.mean(-1, keepdim=True)
        inv = ((d * d).mean(-1, keepdim=True) + eps).rsqrt()
        xh = d * inv
        return xh * weight + bias, LayerNormSaved(xh, inv)
    server = x.server
    D, base = x.shape[-1], x.base_frac
    lo, hi = var_range or F.DEFAULT_VAR_RANGE
    with server.labelled("layernorm"):
        x = F.settle(x)
        mean = x.sum(-1, keepdim=True).mul_public(1.0 / D, public_bits(1.0 / D, base))
        d = x - mean
        squares = SquareGate(d, base)
        total = run_gate(squares).sum(-1, keepdim=True) + D * eps
        log_d = math.log2(D)
        inv = rsqrt(total, lo + log_d, hi + log_d, scale=math.sqrt(D))        # pending at 40
        xh = F.settle(run_gate(MulGate(squares.opened, inv, None, INV_FRAC)))
        return _times(xh, weight) + bias, LayerNormSaved(xh, inv)


def layer_norm_backward(saved: LayerNormSaved, weight, dy, weight_grad: bool = True):
    """(dx, dg, db) of LayerNorm from its saved xh and 1 / sigma; `weight` is g (torch,
    prepared or shared).  dg, db are None without `weight_grad`."""
    xh, inv = saved.normalized, saved.inv_std
    D = xh.shape[-1]
    if not F.is_shared(dy):
        dxh = dy * weight
        centred = dxh - dxh.mean(-1, keepdim=True) - xh * (dxh * xh).mean(-1, keepdim=True)
        dx = inv * centred
        if not weight_grad:
            return dx, None, None
        return dx, _rows(dy * xh).sum(0), _rows(dy).sum(0)
    with dy.server.labelled("layernorm"):
        # round 1: dy g and, for dg, dy xh (both open dy)
        if isinstance(weight, PreparedOperand):
            gates = [MulFixedGate(dy, weight)]
        elif isinstance(weight, SharedTensor):
            gates = [MulGate(dy, weight)]
        else:
            gates = []                                    # a public g: dy g is local
        if weight_grad:
            gates.append(MulGate(dy, xh))
        done = run_round(*gates)
        dxh = done[0] if len(gates) > int(weight_grad) else dy * weight
        # round 2: sum(dxh xh) per row (folding dxh's truncation); round 3: both row sums
        # settled at once (row values: cheap) before the division by D
        row_dot, row_sum = F.settle(mul(dxh, xh).sum(-1, keepdim=True), dxh.sum(-1, keepdim=True))
        centred = dxh - _scale(row_sum, 1.0 / D) - mul(xh, _scale(row_dot, 1.0 / D), None, 24)   # round 4
        dx = mul(centred, inv, None, INV_FRAC)                                          # round 5
        if not weight_grad:
            return dx, None, None
        return dx, _rows(done[-1]).sum(0), _rows(dy).sum(0)


# --- GeLU ----------------------------------------------------------------------------------

_DERIVATIVE_SERIES = {}


def _series(half_period: float, harmonics: int):
    key = (half_period, harmonics)
    if key not in _DERIVATIVE_SERIES:
        omega, ks, b = erf_series(half_period, harmonics)
        _DERIVATIVE_SERIES[key] = (omega, ks, b, tuple(bk * k * omega for k, bk in zip(ks, b)))
    return _DERIVATIVE_SERIES[key]


def gelu_backward(x, dy, bound_log2: float | None = None):
    """dx of y = GeLU(x) (the forward's input x saved).  Shared: the derivative of the
    forward's series at the site's bound (F.gelu), valid where that series is."""
    if not F.is_shared(x):
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        return dy * (cdf + x * pdf)
    omega, ks, b, db = _series(*F.gelu_series(bound_log2))
    with x.server.labelled("gelu"):
        xs = x.truncate() if x.frac > 40 else x
        (erf, _), (_, d_erf) = run_round(TrigGate(xs, omega, ks, b, SERIES_FRAC, SERIES_FRAC),
                                         TrigGate(xs, omega, ks, db, SERIES_FRAC, SERIES_FRAC))
        x_d_erf = mul(x, d_erf, x.base_frac, SERIES_FRAC)
        top = erf.frac
        twice = erf + x_d_erf.rescale(top) + 1                 # 2 GeLU'(x), at 48 bits
        return mul(dy, twice.reinterpret(top + 1), None, SERIES_FRAC)


# --- softmax and attention -----------------------------------------------------------------

def softmax_backward(p, dp):
    """ds of p = softmax(s) along the last dimension."""
    if not F.is_shared(p):
        return p * (dp - (dp * p).sum(-1, keepdim=True))
    with p.server.labelled("softmax"):
        total = mul(dp, p).sum(-1, keepdim=True)
        return mul(p, dp - total)


def attention_forward(q, k, v, key_mask, bias=None):
    """Softmax attention that keeps its probabilities: (output, p).  The inference forward
    (nn.attention.softmax_attention) normalises after the value product and never forms p;
    the backward needs p, so training forms it.  Padded keys score MASKED_SCORE lower and
    get exactly zero weight (the secure exp clips them).  `bias`: as softmax_attention's
    (MPNet's position bias; its gradient is the scores' gradient, `attention_backward`'s ds)."""
    q, k = F.settle(q, k)
    scores = F.matmul(q, k.mT) + (key_mask.mT - 1) * MASKED_SCORE
    if bias is not None:
        scores = scores + bias
    p = F.settle(F.softmax(F.settle(scores), -1))
    return F.matmul(p, F.settle(v)), p


def attention_backward(q, k, v, p, d_out):
    """(dq, dk, dv, ds) of o = softmax(q k^T + mask + bias) v from the saved q, k, v and p;
    ds, the scores' gradient, settled, is also the gradient of an additive bias (MPNet's)."""
    d_out = F.settle(d_out)
    dv = F.matmul(p.mT, d_out)
    dp = F.matmul(d_out, F.settle(v).mT)
    ds = F.settle(softmax_backward(p, dp))
    q, k = F.settle(q, k)
    return F.matmul(ds, k), F.matmul(ds.mT, q), dv, ds


# --- the classification loss ---------------------------------------------------------------

def cross_entropy_backward(logits, labels_one_hot, loss_scale: float = 1.0):
    """dz of the mean cross-entropy of logits (B, C) against one-hot labels (B, C), times a
    public `loss_scale` (as mixed-precision training scales its loss): the gradients of a
    small model are 1e-5 .. 1e-3, a few units of 2^-16, and scaling them by 2^10 keeps their
    relative precision through the backward; the optimizer divides it out."""
    B = logits.shape[0]
    if not F.is_shared(logits):
        return (torch.softmax(logits, -1) - labels_one_hot) * (loss_scale / B)
    with logits.server.labelled("loss"):
        probs = protocols.softmax(F.settle(logits), -1)
        return _scale(probs - labels_one_hot, loss_scale / B)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The loss itself, on revealed logits (the owner's side)."""
    return float(torch.nn.functional.cross_entropy(logits.double(), labels.long()))
