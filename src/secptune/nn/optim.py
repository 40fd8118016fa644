"""Optimizer steps on plaintext or shared parameters: SGD and Adam.

Parameters, gradients and optimizer states are dicts name -> tensor (torch, or shared: every
value stays secret-shared between the servers; the learning rate and betas are public).

SGD:   w <- w - lr g.
Adam:  m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
       w <- w - lr m_hat / sqrt(v_hat + eps^2),   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).
The eps sits inside the square root (torch adds it outside, m_hat / (sqrt(v_hat) + eps)):
under MPC the inverse square root (mpc/protocols/inverse.py) needs its input bounded below,
and v_hat + eps^2 >= eps^2 is.  The plaintext reference uses the same formula.

Precision under MPC: values at 16 fractional bits, except v, which is kept at 32 (g^2 of a
gradient of 1e-3 is 1e-6, below 2^-16); the inverse square root's range is
[eps^2, 2^adam_hi] (by default [2^-20, 2^4]: eps = 2^-10).

Costs per step, n parameters: SGD 2 rounds (settle the gradients, truncate the updates),
16 n bytes each; Adam 1 round more for g^2, 5 for the inverse square root (about
2 J + 4 openings per element, J = 2 (hi - lo) intervals: for whole weight matrices this
dominates) and 2 for the products.  All of a step's parameters share its rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..mpc.protocols.arithmetic import mul, square
from ..mpc.protocols.inverse import rsqrt
from ..mpc.protocols.truncation import truncate_together
from ..mpc.shared import public_bits
from . import functional as F


def _settle_all(values: list) -> list:
    if not values or not F.is_shared(values[0]):
        return values
    return list(truncate_together(*values))


def _times(x, value: float):
    if F.is_shared(x):
        return x.mul_public(value, public_bits(value, x.base_frac))
    return x * value


@dataclass
class SGD:
    lr: float

    def step(self, params: dict, grads: dict) -> dict:
        names = [n for n in params if n in grads]
        g = dict(zip(names, _settle_all([grads[n] for n in names])))
        updated = [params[n] - _times(g[n], self.lr) for n in names]
        return {**params, **dict(zip(names, _settle_all(updated)))}


@dataclass
class Adam:
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 2.0 ** -10
    adam_hi: float = 4.0             # log2 of the largest v_hat + eps^2 the secure rsqrt accepts
    t: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)

    def step(self, params: dict, grads: dict) -> dict:
        b1, b2 = self.betas
        self.t += 1
        names = [n for n in params if n in grads]
        g = dict(zip(names, _settle_all([grads[n] for n in names])))
        shared = F.is_shared(g[names[0]])
        m_new, v_new = [], []
        for n in names:
            gm = _times(g[n], 1 - b1)
            m_new.append(gm if n not in self.m else _times(self.m[n], b1) + gm)
            sq = square(g[n]) if shared else g[n] * g[n]               # shared: pending at 32
            gv = _times(sq, 1 - b2)
            v_new.append(gv if n not in self.v else _times(self.v[n], b2) + gv)
        m_new = _settle_all(m_new)
        if shared:
            v_new = [v.truncate(2 * v.base_frac) for v in v_new]
        self.m.update(zip(names, m_new))
        self.v.update(zip(names, v_new))
        m_scale = self.lr / (1 - b1 ** self.t)
        v_scale = 1.0 / (1 - b2 ** self.t)
        # every parameter's v_hat in one flat tensor: one inverse square root (5 rounds) and
        # one product for the whole step, whatever the number of tensors
        v_hat = _times(_flat_cat([self.v[n] for n in names]), v_scale) + self.eps ** 2
        m_all = _flat_cat([self.m[n] for n in names])
        if shared:
            lo = math.floor(math.log2(self.eps ** 2))
            inv = rsqrt(v_hat, lo, self.adam_hi, scale=m_scale)          # lr / sqrt, pending at 40
            steps = mul(m_all, inv, None, 24)
        else:
            steps = m_all * (m_scale * v_hat.rsqrt())
        updates = [params[n] - s for n, s in zip(names, _split_like(steps, [params[n] for n in names]))]
        return {**params, **dict(zip(names, _settle_all(updates)))}


def _flat_cat(tensors: list):
    return F.cat([t.reshape(-1) for t in tensors], 0)


def _split_like(flat, like: list) -> list:
    sizes = [math.prod(t.shape) for t in like]
    return [part.reshape(t.shape) for part, t in zip(flat.split(sizes, 0), like)]


def make_optimizer(name: str, lr: float):
    if name == "sgd":
        return SGD(lr)
    if name == "adam":
        return Adam(lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")
