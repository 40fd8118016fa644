"""Products of shared tensors: Beaver multiplication with folded truncation, matrix products,
and products with a prepared (masked once) operand such as a weight matrix.

Elementwise product, `mul(x, y)`, one round.  Each operand is opened masked: plainly
(xh = x + r, a Beaver opening) when it is at the target precision, or as a truncation opening
(truncation.py) when it carries pending fractional bits; either way X = A - R with A public
and R = rho - k * m linear in dealt shares.  Then

    X * Y = A_x A_y - A_x R_y - A_y R_x + R_x R_y,
    R_x R_y = rho_x rho_y - k_y rho_x m_y - k_x m_x rho_y + k_x k_y m_x m_y,

and the dealer deals the products of its masks (rho_x rho_y, rho_x m_y, m_x rho_y, and m_x m_y
only when k_x k_y does not vanish mod 2^64).  So a product whose inputs still need truncating
costs one round, not two.  Since k = 2^(64 - s), every term with an m is needed modulo 2^s
only (m_x m_y modulo 2^(s_x + s_y - 64)): the dealer sends those parts as int8, int16 or
int32 where s allows (`Source.dealt`'s bits), 2 bytes instead of 8 at the usual s = 16.
Online: 16 bytes per element of each operand (8 each way); broadcasting operands are opened
at their own size.

Matrix product, `matmul(x, y)`, one round: a Beaver triple (A, B, C = A @ B), both operands
opened (inputs with pending bits are truncated first: a mask's wrap term cannot pass through
a matrix product).  Online: 16 bytes per element of x and of y.  Each server computes two
ring products, the dealer one; ring products run exactly through float64 limbs (ring.py).

Prepared operand: a tensor W that is multiplied many times (a weight) is opened once as
F = W + M (M a fixed dealt mask, uniformly random); each later product x @ W opens only x:
x @ W = xh @ F - xh @ M - A @ F + A @ M with the dealer re-deriving M from its seeds to deal
A @ M.  For a 128x768 by 768x768 product that is 7x fewer online bytes than a fresh triple.
"""

from __future__ import annotations

from math import comb

import torch

from ..dealer import correlation
from ..ring import ring_matmul
from ..rounds import Gate, run_gate
from ..shared import SharedOperand, SharedTensor
from .truncation import TruncatedMask, has_shift, mask_with_truncation, top_shift, truncate, truncate_together


def _broadcast(a, b) -> tuple:
    return tuple(torch.broadcast_shapes(tuple(a), tuple(b)))


def _matmul_shape(a, b) -> tuple:
    return tuple(torch.matmul(torch.empty(a, device="meta"), torch.empty(b, device="meta")).shape)


# --- correlations ---------------------------------------------------------------------------

def _recalled_mask(src, reuse):
    """(None, rho, m) of an operand opened earlier: reuse = (origin, prefix), prefix naming
    its parts in that correlation ("" for r/rho/m, "_x" or "_y" for a product's)."""
    origin, prefix = reuse
    parts = src.recall(origin)
    if parts is None:                      # a server: it kept its own shares
        return None, None, None
    rho = parts["rho" + prefix]
    return None, rho, parts["m" + prefix]


def _operand_mask(src, shape, shift, reuse):
    """A fresh (truncation) mask for an operand, or the one it was opened under before."""
    return mask_with_truncation(src, shape, shift) if reuse is None else _recalled_mask(src, reuse)


@correlation("mul")
def mul_correlation(src, shape_x, shape_y, shift_x, shift_y, reuse_x=None):
    out = _broadcast(shape_x, shape_y)
    rx, rho_x, m_x = _operand_mask(src, shape_x, shift_x, reuse_x)
    ry, rho_y, m_y = mask_with_truncation(src, shape_y, shift_y)
    parts = {"rx": rx, "rho_x": rho_x, "m_x": m_x, "ry": ry, "rho_y": rho_y, "m_y": m_y}
    parts["rho_xy"] = src.dealt(out, lambda: rho_x.value * rho_y.value)
    # products with a top bit m are only used times k (a multiple of 2^(64 - s)): their low
    # bits travel only (top_shift)
    if has_shift(shift_y):
        parts["rho_x_m_y"] = src.dealt(out, lambda: rho_x.value * m_y.value, bits=top_shift(shift_y))
    if has_shift(shift_x):
        parts["m_x_rho_y"] = src.dealt(out, lambda: m_x.value * rho_y.value, bits=top_shift(shift_x))
    if _k_product_survives(shift_x, shift_y):
        parts["m_xy"] = src.dealt(out, lambda: m_x.value * m_y.value,
                                  bits=top_shift(shift_x) + top_shift(shift_y) - 64)
    return parts


def _k_product_survives(shift_x, shift_y) -> bool:
    """Whether k_x k_y = 2^(128 - s_x - s_y) is nonzero mod 2^64 somewhere (s_x + s_y > 64)."""
    if not (has_shift(shift_x) and has_shift(shift_y)):
        return False
    xs = shift_x if isinstance(shift_x, tuple) else (shift_x,)
    ys = shift_y if isinstance(shift_y, tuple) else (shift_y,)
    return max(xs) + max(ys) > 64


@correlation("square")
def square_correlation(src, shape, shift):
    r, rho, m = mask_with_truncation(src, shape, shift)
    parts = {"r": r, "rho": rho, "m": m}
    parts["rho_sq"] = src.dealt(shape, lambda: rho.value * rho.value)
    if has_shift(shift):
        parts["rho_m"] = src.dealt(shape, lambda: rho.value * m.value, bits=top_shift(shift))
    return parts


@correlation("powers")
def powers_correlation(src, shape, shift, degree):
    r, rho, m = mask_with_truncation(src, shape, shift)
    parts = {"r": r, "rho": rho, "m": m}
    rho_pow = rho
    for a in range(2, degree + 1):
        prev = rho_pow
        rho_pow = src.dealt(shape, lambda prev=prev: prev.value * rho.value)
        parts[f"rho{a}"] = rho_pow
    if has_shift(shift):
        # rho^a m for a = 1 .. degree - 1 (a = 0 is m itself)
        for a in range(1, degree):
            base = rho if a == 1 else parts[f"rho{a}"]
            parts[f"rho{a}m"] = src.dealt(shape, lambda base=base: base.value * m.value, bits=top_shift(shift))
    return parts


@correlation("matmul")
def matmul_correlation(src, shape_x, shape_y):
    a = src.ring(shape_x)
    b = src.ring(shape_y)
    c = src.dealt(_matmul_shape(shape_x, shape_y), lambda: ring_matmul(a.value, b.value))
    return {"a": a, "b": b, "c": c}


@correlation("fixed_mask")
def fixed_mask_correlation(src, shape):
    return {"mask": src.ring(shape)}


@correlation("matmul_fixed")
def matmul_fixed_correlation(src, shape_x, shape_w, mask_index):
    a = src.ring(shape_x)
    w_mask = src.replay(mask_index, shape_w)
    c = src.dealt(_matmul_shape(shape_x, shape_w), lambda: ring_matmul(a.value, w_mask.value))
    return {"a": a, "c": c}


@correlation("mul_fixed")
def mul_fixed_correlation(src, shape_x, shape_w, shift_x, mask_index, reuse_x=None):
    out = _broadcast(shape_x, shape_w)
    rx, rho_x, m_x = _operand_mask(src, shape_x, shift_x, reuse_x)
    w_mask = src.replay(mask_index, shape_w)
    parts = {"rx": rx, "rho_x": rho_x, "m_x": m_x}
    parts["rho_x_w"] = src.dealt(out, lambda: rho_x.value * w_mask.value)
    if has_shift(shift_x):
        parts["m_x_w"] = src.dealt(out, lambda: m_x.value * w_mask.value, bits=top_shift(shift_x))
    return parts


# --- elementwise products --------------------------------------------------------------------

class _OperandMask(TruncatedMask):
    """A TruncatedMask whose dealt parts came inside a product's correlation; `reuse`
    names them for the dealer (the request and the parts' suffix) once the gate is built."""

    def __init__(self, server, shift, r, rho, m):
        self.server, self.shift = server, shift
        self.parts = {"r": r, "rho": rho, "m": m}
        self.r = r.to(server.device)
        self.reuse = None


def _origin(server, kind: str, params: dict) -> tuple:
    return (server.dealer.last_index, kind, tuple(sorted(params.items())))


class Opened:
    """A shared value already opened under a mask (X = A - R), reusable as an operand of
    later products without opening it again: the dealer re-derives its mask from its seeds.

    Take it from a gate after its round (`gate.opened_x`, `gate.opened`).  Reusing an
    opening reveals nothing new: the servers only combine what they already hold.
    """

    def __init__(self, x: SharedTensor, mask: _OperandMask, frac: int):
        self.server, self.mask, self.frac = x.server, mask, frac
        self.shape = tuple(x.shape)

    def value(self) -> SharedTensor:
        return SharedTensor(self.mask.value(), self.frac, self.server)


def _shift_to(x: SharedTensor, frac: int | None) -> int:
    target = x.base_frac if frac is None else frac
    return max(x.frac - target, 0)


class MulGate(Gate):
    """x * y (elementwise, broadcasting), folding pending truncations of x and y.

    An operand's shift may also be given explicitly per column of its last dimension
    (x_shift / y_shift, a tuple): its share is then read as being at x_frac + shift_j bits
    in column j, and is truncated to x_frac (a stack of differently scaled copies)."""

    def __init__(self, x, y: SharedTensor, x_frac=None, y_frac=None, x_shift=None, y_shift=None):
        self.server, self.x, self.y = x.server, x, y
        self.reused = isinstance(x, Opened)
        if self.reused:
            sx, self.frac_x = x.mask.shift, x.frac
        else:
            sx = _shift_to(x, x_frac) if x_shift is None else tuple(int(v) for v in x_shift)
            self.frac_x = x.frac - sx if x_shift is None else x_frac
        sy = _shift_to(y, y_frac) if y_shift is None else tuple(int(v) for v in y_shift)
        self.frac_y = y.frac - sy if y_shift is None else y_frac
        params = dict(shape_x=tuple(x.shape), shape_y=tuple(y.shape), shift_x=sx, shift_y=sy)
        if self.reused:
            params["reuse_x"] = x.mask.reuse
        p = x.server.dealer.deal("mul", **params)
        self.p = p
        origin = _origin(self.server, "mul", params)
        if self.reused:
            self.mx = x.mask
        else:
            self.mx = _OperandMask(x.server, sx, p["rx"], p["rho_x"], p["m_x"])
            self.mx.reuse = (origin, "_x")
        self.my = _OperandMask(x.server, sy, p["ry"], p["rho_y"], p["m_y"])
        self.my.reuse = (origin, "_y")

    def masked(self):
        if self.reused:
            return [self.my.masked(self.y.share)]
        return [self.mx.masked(self.x.share), self.my.masked(self.y.share)]

    def finish(self, opened):
        mx, my, dev = self.mx, self.my, self.server.device
        if not self.reused:
            mx.open(opened[0])
        my.open(opened[-1])
        self.opened_x = Opened(self.x, mx, self.frac_x) if not self.reused else self.x
        self.opened_y = Opened(self.y, my, self.frac_y)
        rr = self.p["rho_xy"].to(dev)
        if my.k is not None:
            rr = rr - my.k * self.p["rho_x_m_y"].to(dev)
        if mx.k is not None:
            rr = rr - mx.k * self.p["m_x_rho_y"].to(dev)
            if my.k is not None and "m_xy" in self.p:
                rr = rr + mx.k * my.k * self.p["m_xy"].to(dev)
        share = rr - mx.A * my.R() - my.A * mx.R()
        if self.server.index == 0:
            share = share + mx.A * my.A
        return SharedTensor(share, self.frac_x + self.frac_y, self.server)


class SquareGate(Gate):
    """x * x with one opening, folding a pending truncation of x."""

    def __init__(self, x: SharedTensor, x_frac=None):
        self.server, self.x = x.server, x
        s = _shift_to(x, x_frac)
        params = dict(shape=tuple(x.shape), shift=s)
        p = x.server.dealer.deal("square", **params)
        self.p = p
        self.mx = _OperandMask(x.server, s, p["r"], p["rho"], p["m"])
        self.mx.reuse = (_origin(self.server, "square", params), "")

    def masked(self):
        return [self.mx.masked(self.x.share)]

    def finish(self, opened):
        mx, dev = self.mx, self.server.device
        mx.open(opened[0])
        self.opened = Opened(self.x, mx, self.x.frac - mx.shift)
        rr = self.p["rho_sq"].to(dev)
        if mx.k is not None:
            # R^2 = rho^2 - 2 k rho m + k^2 m  (m is a bit, so m^2 = m)
            rr = rr - 2 * mx.k * self.p["rho_m"].to(dev) + mx.k * mx.k * mx.m
        share = rr - 2 * mx.A * mx.R()
        if self.server.index == 0:
            share = share + mx.A * mx.A
        return SharedTensor(share, 2 * (self.x.frac - mx.shift), self.server)


class PowersGate(Gate):
    """x^2 .. x^d from one opening of x (folding a pending truncation of x).

    With X = A - R, A public and R = rho - k m: X^i = sum_l C(i, l) A^(i-l) (-R)^l and
    R^l = rho^l + sum_{j>=1} C(l, j) (-k)^j rho^(l-j) m (m is a bit), all exact mod 2^64;
    the dealer deals rho^a and rho^a m.  Cost: 1 round, 8 bytes per element each way; the
    dealer sends server 1 d ring elements per element (rho^a) and, with a shift s, d narrow
    ones (m and rho^a m, needed modulo 2^s: 1, 2 or 4 bytes each for s <= 32).  x^i is at i (frac)
    bits, so |x|^d 2^(d frac) must stay below 2^62.
    """

    def __init__(self, x: SharedTensor, degree: int, x_frac=None):
        if degree < 2:
            raise ValueError("powers start at the square")
        self.server, self.x, self.degree = x.server, x, degree
        s = _shift_to(x, x_frac)
        p = x.server.dealer.deal("powers", shape=tuple(x.shape), shift=s, degree=degree)
        self.p = p
        self.mx = _OperandMask(x.server, s, p["r"], p["rho"], p["m"])

    def masked(self):
        return [self.mx.masked(self.x.share)]

    def finish(self, opened):
        mx, dev, d = self.mx, self.server.device, self.degree
        mx.open(opened[0])
        rho = {1: mx.rho}
        rho.update({a: self.p[f"rho{a}"].to(dev) for a in range(2, d + 1)})
        rho_m = {0: mx.m}
        if mx.k is not None:
            rho_m.update({a: self.p[f"rho{a}m"].to(dev) for a in range(1, d)})
        # shares of R^l, l = 1 .. d (R^0 = 1 is public)
        r_pow = {}
        for l in range(1, d + 1):
            share = rho[l]
            if mx.k is not None:
                neg_k_pow = torch.ones_like(mx.k)
                for j in range(1, l + 1):
                    neg_k_pow = neg_k_pow * (-mx.k)
                    share = share + comb(l, j) * neg_k_pow * rho_m[l - j]
            r_pow[l] = share
        a_pow = {0: torch.ones_like(mx.A), 1: mx.A}
        for i in range(2, d + 1):
            a_pow[i] = a_pow[i - 1] * mx.A
        frac = self.x.frac - mx.shift
        out = []
        for i in range(2, d + 1):
            share = sum(comb(i, l) * (-1) ** l * a_pow[i - l] * r_pow[l] for l in range(1, i + 1))
            if self.server.index == 0:
                share = share + a_pow[i]
            out.append(SharedTensor(share, i * frac, self.server))
        return out


def powers(x: SharedTensor, degree: int, x_frac: int | None = None) -> list[SharedTensor]:
    """[x^2, ..., x^degree] in one round (x truncated to x_frac inside it)."""
    with x.server.labelled("powers"):
        return run_gate(PowersGate(x, degree, x_frac))


def mul(x: SharedTensor, y: SharedTensor, x_frac: int | None = None,
        y_frac: int | None = None) -> SharedTensor:
    """x * y in one round; operands above x_frac / y_frac (default frac_bits) are truncated
    inside the same round.  The result has frac x_frac + y_frac (pending truncation)."""
    if x is y:
        return square(x, x_frac)
    with x.server.labelled("mul"):
        return run_gate(MulGate(x, y, x_frac, y_frac))


def square(x: SharedTensor, x_frac: int | None = None) -> SharedTensor:
    """x * x in one round with one opening (8 bytes per element each way)."""
    with x.server.labelled("square"):
        return run_gate(SquareGate(x, x_frac))


# --- matrix products -------------------------------------------------------------------------

class MatmulGate(Gate):
    """x @ y for shared x and y (batched and broadcasting like torch.matmul)."""

    def __init__(self, x: SharedTensor, y: SharedTensor):
        self.server, self.x, self.y = x.server, x, y
        self.p = x.server.dealer.deal("matmul", shape_x=tuple(x.shape), shape_y=tuple(y.shape))

    def masked(self):
        dev = self.server.device
        return [self.x.share + self.p["a"].to(dev), self.y.share + self.p["b"].to(dev)]

    def finish(self, opened):
        xh, yh = opened
        dev = self.server.device
        a, b, c = (self.p[k].to(dev) for k in ("a", "b", "c"))
        # X Y = (xh - a)(yh - b) = xh yh - xh b - a yh + a b
        if self.server.index == 0:
            share = ring_matmul(xh, yh - b) - ring_matmul(a, yh) + c
        else:
            share = c - ring_matmul(xh, b) - ring_matmul(a, yh)
        return SharedTensor(share, self.x.frac + self.y.frac, self.server)


class PreparedOperand(SharedOperand):
    """A shared tensor opened once under a fixed mask, for many products (a weight).

    Preparing costs one round and 16 bytes per element once; every later product with it
    opens only the other operand.  Keep one per server (it holds this server's mask share).
    """

    def __init__(self, w: SharedTensor):
        server = w.server
        self.server = server
        self.frac = w.frac
        self.shape = tuple(w.shape)
        mask = server.dealer.deal("fixed_mask", shape=self.shape)["mask"].to(server.device)
        self.mask_index = server.dealer.last_index
        with server.labelled("prepare"):
            (self.public,) = server.open([w.share + mask])
        self.mask = mask

    def to_shared(self) -> SharedTensor:
        own = self.public if self.server.index == 0 else 0
        return SharedTensor(own - self.mask, self.frac, self.server)

    @property
    def T(self):
        raise TypeError("prepare the transposed tensor instead: masks are fixed per layout")


def prepare(w: SharedTensor) -> PreparedOperand:
    """Open w once under a fixed mask so that later products open only their other operand."""
    return PreparedOperand(w)


class MatmulFixedGate(Gate):
    def __init__(self, x: SharedTensor, w: PreparedOperand):
        self.server, self.x, self.w = x.server, x, w
        self.p = x.server.dealer.deal("matmul_fixed", shape_x=tuple(x.shape), shape_w=w.shape,
                                      mask_index=w.mask_index)

    def masked(self):
        return [self.x.share + self.p["a"].to(self.server.device)]

    def finish(self, opened):
        (xh,) = opened
        dev = self.server.device
        a, c = self.p["a"].to(dev), self.p["c"].to(dev)
        f, m = self.w.public, self.w.mask
        # X W = (xh - a)(F - M) = xh F - xh M - a F + a M
        if self.server.index == 0:
            share = ring_matmul(xh, f - m) - ring_matmul(a, f) + c
        else:
            share = c - ring_matmul(xh, m) - ring_matmul(a, f)
        return SharedTensor(share, self.x.frac + self.w.frac, self.server)


class MulFixedGate(Gate):
    """x * w elementwise for a prepared w, folding a pending truncation of x.  With x
    already opened (an `Opened`), nothing is opened at all: the product is local."""

    def __init__(self, x, w: PreparedOperand, x_frac=None):
        self.server, self.x, self.w = x.server, x, w
        self.reused = isinstance(x, Opened)
        s = x.mask.shift if self.reused else _shift_to(x, x_frac)
        self.frac_x = x.frac if self.reused else x.frac - s
        params = dict(shape_x=tuple(x.shape), shape_w=w.shape, shift_x=s, mask_index=w.mask_index)
        if self.reused:
            params["reuse_x"] = x.mask.reuse
        p = x.server.dealer.deal("mul_fixed", **params)
        self.p = p
        if self.reused:
            self.mx = x.mask
        else:
            self.mx = _OperandMask(x.server, s, p["rx"], p["rho_x"], p["m_x"])
            self.mx.reuse = (_origin(self.server, "mul_fixed", params), "_x")

    def masked(self):
        return [] if self.reused else [self.mx.masked(self.x.share)]

    def finish(self, opened):
        mx, dev = self.mx, self.server.device
        if not self.reused:
            mx.open(opened[0])
        f, m = self.w.public, self.w.mask
        # X W = (A - R)(F - M) = A F - A M - R F + R M,  R M = rho M - k m M
        rm = self.p["rho_x_w"].to(dev)
        if mx.k is not None:
            rm = rm - mx.k * self.p["m_x_w"].to(dev)
        share = rm - mx.A * m - mx.R() * f
        if self.server.index == 0:
            share = share + mx.A * f
        return SharedTensor(share, self.frac_x + self.w.frac, self.server)


def matmul(x: SharedTensor, y) -> SharedTensor:
    """x @ y for shared or prepared y: one round after truncating pending inputs (one round,
    shared by both operands when both need it).  The result is at x.frac + y.frac."""
    server = x.server
    with server.labelled("matmul"):
        x, y = _truncate_for_matmul(x, y)
        if isinstance(y, PreparedOperand):
            return run_gate(MatmulFixedGate(x, y))
        return run_gate(MatmulGate(x, y))


def mul_fixed(x: SharedTensor, w: PreparedOperand, x_frac: int | None = None) -> SharedTensor:
    with x.server.labelled("mul"):
        return run_gate(MulFixedGate(x, w, x_frac))


def _truncate_for_matmul(x, y):
    if isinstance(y, SharedTensor):
        return truncate_together(x, y)
    return truncate_together(x)[0], y


__all__ = ["Opened", "mul", "square", "powers", "PowersGate", "matmul", "prepare", "PreparedOperand", "mul_fixed",
           "MulGate", "SquareGate", "MatmulGate", "MatmulFixedGate", "MulFixedGate", "truncate"]
