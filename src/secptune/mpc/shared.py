"""Additively shared fixed-point tensors.

A `SharedTensor` is one server's share (an int64 tensor, arithmetic mod 2^64) of a real tensor
x, together with the number of fractional bits `frac` of its encoding: the two shares sum to
round(x * 2^frac).  Products leave their result at the sum of their operands' fractional bits
("pending truncation"); the truncation is done when something needs it, and multiplications
fold their operands' pending truncations into their own round (see protocols/arithmetic.py).
Operators keep frac at most 2 * frac_bits; values at frac f must satisfy |x| < 2^(62 - f).

Public operands mix freely: Python ints and integer tensors are exact integers (no
truncation needed after multiplying by them); floats and float tensors are encoded at
frac_bits.
"""

from __future__ import annotations

import math
import numbers

import torch

from .ring import ring_matmul

#: the protocols behind `SharedTensor`'s operators and methods, by name; `mpc.protocols`
#: registers them when it is imported (the `mpc` package imports it first), so that this
#: module, which the protocols build on, imports none of them
PROTOCOLS: dict = {}


class SharedOperand:
    """A shared value in another form than a `SharedTensor` that products take by a
    protocol (`protocols.arithmetic.PreparedOperand`, a weight opened once under a mask)."""


def _protocol(name: str):
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise RuntimeError(f"no protocol {name!r}: import secptune.mpc (it registers the protocols)") from None


def public_bits(value, base: int) -> int:
    """Fractional bits for encoding a public real factor: `base`, plus enough that a small
    factor keeps `base` significant bits (its product then has the ring magnitude it would
    have with a factor near 1), at most 2 * base."""
    peak = float(torch.as_tensor(value, dtype=torch.float64).abs().max()) if not isinstance(
        value, numbers.Real) else abs(float(value))
    if peak == 0.0 or peak >= 0.5:
        return base
    return min(base - math.floor(math.log2(peak)) - 1, 2 * base)


def _is_integer(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point()
    return isinstance(value, numbers.Integral)


class SharedTensor:
    __slots__ = ("share", "frac", "server")
    __array_priority__ = 1000  # so that tensor * shared calls our __rmul__

    def __init__(self, share: torch.Tensor, frac: int, server):
        if share.dtype != torch.int64:
            raise TypeError(f"a share is an int64 tensor, got {share.dtype}")
        self.share = share
        self.frac = int(frac)
        self.server = server

    # --- basics --------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def size(self, dim: int | None = None):
        return self.share.size() if dim is None else self.share.size(dim)

    def dim(self) -> int:
        return self.share.dim()

    def numel(self) -> int:
        return self.share.numel()

    @property
    def ndim(self) -> int:
        return self.share.dim()

    @property
    def device(self) -> torch.device:
        return self.share.device

    def __len__(self) -> int:
        return len(self.share)

    def __repr__(self) -> str:
        return f"SharedTensor(shape={tuple(self.shape)}, frac={self.frac}, party={self.server.name})"

    @property
    def base_frac(self) -> int:
        return self.server.fp.frac_bits

    def _new(self, share: torch.Tensor, frac: int | None = None) -> "SharedTensor":
        return SharedTensor(share, self.frac if frac is None else frac, self.server)

    def _encode_public(self, value, frac: int) -> torch.Tensor:
        if _is_integer(value):
            t = torch.as_tensor(value, dtype=torch.int64, device=self.device)
            return t << frac if frac else t
        return self.server.fp.encode(value, frac, device=self.device)

    def rescale(self, frac: int) -> "SharedTensor":
        """The same value at more fractional bits (a local shift); fewer needs `truncate`."""
        if frac < self.frac:
            raise ValueError("rescaling to fewer fractional bits is a truncation: use truncate()")
        return self if frac == self.frac else self._new(self.share << (frac - self.frac), frac)

    def reinterpret(self, frac: int) -> "SharedTensor":
        """The same shares read at another number of fractional bits: x * 2^(self.frac - frac)."""
        return self._new(self.share, frac)

    # --- linear operations (local) -------------------------------------------------------
    def __add__(self, other) -> "SharedTensor":
        if isinstance(other, SharedTensor):
            frac = max(self.frac, other.frac)
            return self._new(self.rescale(frac).share + other.rescale(frac).share, frac)
        if self.server.index == 0:
            return self._new(self.share + self._encode_public(other, self.frac))
        shape = torch.broadcast_shapes(self.shape, torch.as_tensor(other).shape)
        return self._new(self.share.expand(shape).clone() if shape != self.shape else self.share)

    __radd__ = __add__

    def __neg__(self) -> "SharedTensor":
        return self._new(-self.share)

    def __sub__(self, other) -> "SharedTensor":
        return self + (-other)

    def __rsub__(self, other) -> "SharedTensor":
        return (-self) + other

    # --- products ------------------------------------------------------------------------
    def __mul__(self, other) -> "SharedTensor":
        if isinstance(other, SharedTensor):
            return _protocol("mul")(self, other)
        if _is_integer(other):
            return self._new(self.share * self._encode_public(other, 0))
        x = self if self.frac <= self.base_frac else self.truncate()
        bits = public_bits(other, self.base_frac)
        return x._new(x.share * x._encode_public(other, bits), x.frac + bits)

    __rmul__ = __mul__

    def mul_public(self, value, frac: int) -> "SharedTensor":
        """Multiply by a public real encoded at `frac` bits (local; the result is at
        self.frac + frac, with no automatic truncation)."""
        return self._new(self.share * self._encode_public(value, frac), self.frac + frac)

    def __truediv__(self, other) -> "SharedTensor":
        if isinstance(other, SharedTensor):
            return self * _protocol("reciprocal")(other)
        return self * (1.0 / torch.as_tensor(other, dtype=torch.float64)
                       if isinstance(other, torch.Tensor) else 1.0 / other)

    def __matmul__(self, other) -> "SharedTensor":
        if isinstance(other, (SharedTensor, SharedOperand)):
            return _protocol("matmul")(self, other)
        x = self.truncate() if self.frac > self.base_frac else self
        if _is_integer(other):
            return x._new(ring_matmul(x.share, torch.as_tensor(other, device=self.device)))
        w = x._encode_public(other, self.base_frac)
        return x._new(ring_matmul(x.share, w), x.frac + self.base_frac)

    def __rmatmul__(self, other) -> "SharedTensor":
        x = self.truncate() if self.frac > self.base_frac else self
        if _is_integer(other):
            return x._new(ring_matmul(torch.as_tensor(other, device=self.device), x.share))
        w = x._encode_public(other, self.base_frac)
        return x._new(ring_matmul(w, x.share), x.frac + self.base_frac)

    def square(self) -> "SharedTensor":
        return _protocol("square")(self)

    # --- truncation and reveal -----------------------------------------------------------
    def truncate(self, frac: int | None = None) -> "SharedTensor":
        """Drop fractional bits down to `frac` (default frac_bits): one round unless already there."""
        return _protocol("truncate")(self, self.base_frac if frac is None else frac)

    def reveal_to(self, party: str) -> None:
        """Send this server's share to `party`, which must be the data owner."""
        self.server.reveal_to(party, [self])

    # --- nonlinear functions (protocols) -------------------------------------------------
    def relu(self) -> "SharedTensor":
        return _protocol("relu")(self)

    def drelu(self) -> "SharedTensor":
        """[x >= 0] as a shared integer 0/1 tensor (frac 0)."""
        return _protocol("drelu")(self)

    def __ge__(self, other) -> "SharedTensor":
        return (self - other).drelu()

    def __le__(self, other) -> "SharedTensor":
        return (other - self).drelu()

    def __gt__(self, other) -> "SharedTensor":
        return 1 - (other - self).drelu()

    def __lt__(self, other) -> "SharedTensor":
        return 1 - (self - other).drelu()

    def max(self, dim: int = -1, keepdim: bool = False) -> "SharedTensor":
        return _protocol("maximum")(self, dim, keepdim)

    def exp(self) -> "SharedTensor":
        return _protocol("exp")(self)

    def reciprocal(self) -> "SharedTensor":
        return _protocol("reciprocal")(self)

    def rsqrt(self) -> "SharedTensor":
        return _protocol("rsqrt")(self)

    def cos(self) -> "SharedTensor":
        return _protocol("cos")(self)

    def sin(self) -> "SharedTensor":
        return _protocol("sin")(self)

    def gelu(self) -> "SharedTensor":
        return _protocol("gelu")(self)

    def softmax(self, dim: int = -1) -> "SharedTensor":
        return _protocol("softmax")(self, dim)

    # --- reductions and shape operations (local) -----------------------------------------
    def sum(self, dim=None, keepdim: bool = False) -> "SharedTensor":
        if dim is None:
            return self._new(self.share.sum())
        return self._new(self.share.sum(dim=dim, keepdim=keepdim))

    def mean(self, dim=None, keepdim: bool = False) -> "SharedTensor":
        total = self.sum(dim, keepdim)
        count = self.numel() // max(total.numel(), 1) if dim is not None else self.numel()
        return total * (1.0 / count)

    def _view_op(name):
        def op(self, *args, **kwargs):
            return self._new(getattr(self.share, name)(*args, **kwargs))

        op.__name__ = name
        op.__doc__ = f"torch.Tensor.{name} on the share (local)."
        return op

    reshape = _view_op("reshape")
    view = _view_op("view")
    permute = _view_op("permute")
    transpose = _view_op("transpose")
    movedim = _view_op("movedim")
    unsqueeze = _view_op("unsqueeze")
    squeeze = _view_op("squeeze")
    expand = _view_op("expand")
    flatten = _view_op("flatten")
    contiguous = _view_op("contiguous")
    repeat = _view_op("repeat")
    flip = _view_op("flip")
    roll = _view_op("roll")
    narrow = _view_op("narrow")
    __getitem__ = _view_op("__getitem__")
    del _view_op

    @property
    def T(self) -> "SharedTensor":
        return self._new(self.share.T)

    @property
    def mT(self) -> "SharedTensor":
        return self._new(self.share.mT)

    def split(self, size, dim: int = 0) -> list["SharedTensor"]:
        return [self._new(s) for s in self.share.split(size, dim)]

    def chunk(self, chunks: int, dim: int = 0) -> list["SharedTensor"]:
        return [self._new(s) for s in self.share.chunk(chunks, dim)]

    def masked_select_public(self, mask: torch.Tensor) -> "SharedTensor":
        """Entries where a public mask holds (a public selection reveals nothing)."""
        return self._new(self.share[mask])

    def where_public(self, mask: torch.Tensor, other: "SharedTensor") -> "SharedTensor":
        """Elementwise choice by a public mask: self where mask, else other."""
        frac = max(self.frac, other.frac)
        return self._new(torch.where(mask.to(self.device), self.rescale(frac).share,
                                     other.rescale(frac).share), frac)


def _aligned(tensors) -> list[SharedTensor]:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("nothing to combine")
    frac = max(t.frac for t in tensors)
    return [t.rescale(frac) for t in tensors]


def cat(tensors, dim: int = 0) -> SharedTensor:
    parts = _aligned(tensors)
    return parts[0]._new(torch.cat([p.share for p in parts], dim))


def stack(tensors, dim: int = 0) -> SharedTensor:
    parts = _aligned(tensors)
    return parts[0]._new(torch.stack([p.share for p in parts], dim))


def zeros(server, shape, frac: int | None = None) -> SharedTensor:
    """A sharing of zeros (both shares zero: a public constant, known to both servers)."""
    return SharedTensor(torch.zeros(shape, dtype=torch.int64, device=server.device),
                        server.fp.frac_bits if frac is None else frac, server)


def public(server, value, frac: int | None = None) -> SharedTensor:
    """A public value as a (trivial) sharing: server 0 holds it, server 1 holds zero."""
    f = server.fp.frac_bits if frac is None else frac
    enc = server.fp.encode(value, f, device=server.device)
    return SharedTensor(enc if server.index == 0 else torch.zeros_like(enc), f, server)
