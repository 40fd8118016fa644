"""Optimizer steps on plaintext or shared parameters: SGD and Adam.

Parameters, gradients and optimizer states are dicts name -> tensor (torch, or shared: every
value stays secret-shared between the servers; the learning rate and betas are public).

SGD:   w <- w - lr g.
Adam:  m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
       w <- w - lr m_hat / sqrt(v_hat + eps^2),   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).
The eps sits inside the square root (torch adds it outside, m_hat / (sqrt(v_hat) + eps)):
under MPC the inverse square root (mpc/protocols/inverse.py) needs its input bounded below,
and v_hat + eps^2 >= eps^2 is.  The plaintext reference uses the same formula.

Precision under MPC: parameters at 16 fractional bits; m and v kept at 32 (g^2 of a
gradient of 1e-3 is 1e-6, below 2^-16, and Adam's step m / sqrt(v) is about lr whatever the
size of g, so a small g's m needs its relative precision).  (1 - b2) g^2 is the square of
sqrt(1 - b2) g (SQUARE_FRAC), and b2 v is at 48 bits: both stay within the ring for
gradients up to 2^11 times the loss scale (2 at the baselines' 2^10).  The inverse square
root's range is the same for every step, [eps^2 (1 - b2), 2^adam_hi] times grad_scale^2 (the
bias correction rides in its public scale); by default eps = 2^-10, so the range is
[2^-30, 2^4] (J = 34 octaves).

Costs per step, n parameters: SGD 2 rounds (settle the gradients, truncate the updates),
16 n bytes each (a tensor of more than 2^23 elements, a word table, is updated in blocks of
rows, 2 rounds per block, to bound memory); Adam 1 round more for g^2, 5 for the inverse square root (about
2 J + 4 openings per element, J = 2 (hi - lo) intervals: for whole weight matrices this
dominates) and 2 for the products.  All of a step's parameters share its rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..mpc.protocols.arithmetic import SquareGate, mul
from ..mpc.protocols.truncation import TruncGate
from ..mpc.rounds import run_round
from ..mpc.protocols.inverse import rsqrt
from ..mpc.protocols.truncation import truncate_together
from ..mpc.shared import public_bits
from ..nn import functional as F


def _settle_all(values: list) -> list:
    if not values or not F.is_shared(values[0]):
        return values
    return list(truncate_together(*values))


def _times(x, value: float):
    if F.is_shared(x):
        return x.mul_public(value, public_bits(value, x.base_frac))
    return x * value


#: Adam squares sqrt(1 - b2) g read at this many fractional bits (the product of g and the
#: public root, pending, truncated inside the square's opening), so (1 - b2) g^2 comes at 40
#: bits.  Squaring g first and multiplying by (1 - b2) = 2^-10 at 25 bits put the product at
#: 57 bits, where it overflowed the ring from a scaled gradient of 2^8 (0.25 at the loss
#: scale of 2^10): all-mpnet-base-v2's prompt gradients reach 0.6, and their Adam steps came
#: out hundreds of times too large
SQUARE_FRAC = 20

#: a shared tensor larger than this (a word table) is updated in blocks of rows, one pair of
#: rounds each, so that the truncation masks of only one block are held at once (memory)
UPDATE_BLOCK = 1 << 23


@dataclass
class SGD:
    lr: float
    grad_scale: float = 1.0          # the loss scale the gradients carry (divided out here)

    def step(self, params: dict, grads: dict) -> dict:
        names = [n for n in params if n in grads]
        large = [n for n in names if F.is_shared(params[n]) and params[n].numel() > UPDATE_BLOCK]
        small = [n for n in names if n not in large]
        out = {**params, **self._update({n: params[n] for n in small}, {n: grads[n] for n in small})}
        for n in large:
            rows = max(1, UPDATE_BLOCK // max(1, params[n].numel() // params[n].shape[0]))
            blocks = [self._update({n: p}, {n: g})[n]
                      for p, g in zip(params[n].split(rows, 0), grads[n].split(rows, 0))]
            out[n] = F.cat(blocks, 0)
        return out

    def _update(self, params: dict, grads: dict) -> dict:
        names = list(params)
        g = _settle_all([grads[n] for n in names])
        updated = [params[n] - _times(gn, self.lr / self.grad_scale) for n, gn in zip(names, g)]
        return dict(zip(names, _settle_all(updated)))


@dataclass
class Adam:
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 2.0 ** -10
    adam_hi: float = 4.0             # log2 of the largest v_hat + eps^2 the secure rsqrt accepts
    grad_scale: float = 1.0          # the loss scale the gradients carry: m / sqrt(v) is free of
                                     # it, eps and the range scale with it
    t: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)

    def step(self, params: dict, grads: dict) -> dict:
        b1, b2 = self.betas
        self.t += 1
        names = [n for n in params if n in grads]
        g = dict(zip(names, _settle_all([grads[n] for n in names])))
        shared = F.is_shared(g[names[0]])
        if shared:                    # every (1 - b2) g^2 in one round, as (sqrt(1 - b2) g)^2
            root = math.sqrt(1 - b2)
            squares = run_round(*(SquareGate(_times(g[n], root), SQUARE_FRAC) for n in names))
        else:
            squares = [(1 - b2) * g[n] * g[n] for n in names]
        m_new, v_new = [], []
        for n, gv in zip(names, squares):
            gm = _times(g[n], 1 - b1)
            m_new.append(gm if n not in self.m else _times(self.m[n], b1) + gm)
            v_new.append(gv if n not in self.v else _times(self.v[n], b2) + gv)
        if shared:                    # m and v kept at 32 bits (see the module's docstring), one round
            both = m_new + v_new
            kept = run_round(*(TruncGate(t, t.frac - 2 * t.base_frac) for t in both))
            m_new, v_new = kept[:len(names)], kept[len(names):]
        self.m.update(zip(names, m_new))
        self.v.update(zip(names, v_new))
        m_scale = self.lr / (1 - b1 ** self.t)
        v_scale = 1.0 / (1 - b2 ** self.t)
        # every parameter's v_hat in one flat tensor: one inverse square root (6 rounds) and
        # one product for the whole step, whatever the number of tensors
        eps = self.eps * self.grad_scale
        # v_hat + eps^2 = v_scale (v + eps^2 / v_scale): the bias correction rides in the
        # inverse square root's public scale, so v stays at 32 bits (its comparisons fit)
        v_all = _flat_cat([self.v[n] for n in names]) + eps ** 2 / v_scale
        m_all = _flat_cat([self.m[n] for n in names])
        if shared:
            # a fixed range for every step: v + eps^2 / v_scale >= eps^2 (1 - b2)
            lo = math.floor(math.log2(eps ** 2 * (1 - b2)))
            hi = self.adam_hi + 2 * math.log2(self.grad_scale)
            inv = rsqrt(v_all, lo, hi, scale=m_scale / math.sqrt(v_scale))   # pending at 40
            steps = mul(m_all, inv, 2 * m_all.base_frac, 24)
        else:
            steps = m_all * (m_scale / math.sqrt(v_scale) * v_all.rsqrt())
        updates = [params[n] - s for n, s in zip(names, _split_like(steps, [params[n] for n in names]))]
        return {**params, **dict(zip(names, _settle_all(updates)))}


def _flat_cat(tensors: list):
    return F.cat([t.reshape(-1) for t in tensors], 0)


def _split_like(flat, like: list) -> list:
    sizes = [math.prod(t.shape) for t in like]
    return [part.reshape(t.shape) for part, t in zip(flat.split(sizes, 0), like)]


def make_optimizer(name: str, lr: float, grad_scale: float = 1.0):
    if name == "sgd":
        return SGD(lr, grad_scale)
    if name == "adam":
        return Adam(lr, grad_scale=grad_scale)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")
