"""The ring Z_2^64 on int64 tensors, and fixed-point encoding into it.

Arithmetic on torch int64 tensors wraps modulo 2^64 (two's complement), which is exactly
the ring.  Products of ring matrices: on the CPU, torch's own int64 matmul (it wraps, and in
torch 2.13 it is 4-8x faster than the alternative below); on CUDA, where cuBLAS has no integer
GEMM, exactly through float64 limbs so that the GPU's float64 GEMM does the work.  Both are
tested against exact big-integer arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RING_BITS = 64
#: Values whose ring representation reaches 2^62 break the truncation protocol.
SAFE_BITS = 62


class FixedPointOverflow(ValueError):
    """A real value does not fit the fixed-point range."""


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding x -> round(x * 2^frac_bits) in Z_2^64.

    The encodable range is |x| < 2^(62 - frac_bits): one bit of headroom for sums
    and the truncation protocol's offset. Products of two encoded values carry
    2 * frac_bits fractional bits until truncated, so their real value must stay
    below 2^(62 - 2 * frac_bits) (2^30 with the default 16 bits).
    """

    frac_bits: int = 16

    def __post_init__(self):
        if not 0 <= self.frac_bits <= 30:
            raise ValueError(f"frac_bits must be in [0, 30], got {self.frac_bits}")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    def max_value(self, frac_bits: int | None = None) -> float:
        f = self.frac_bits if frac_bits is None else frac_bits
        return float(2 ** (SAFE_BITS - f))

    def encode(self, x, frac_bits: int | None = None, device=None) -> torch.Tensor:
        """Encode a real tensor; raises FixedPointOverflow outside the range."""
        f = self.frac_bits if frac_bits is None else frac_bits
        x = torch.as_tensor(x, dtype=torch.float64, device=device)
        if not torch.isfinite(x).all():
            raise FixedPointOverflow("cannot encode NaN or infinity")
        limit = 2.0 ** (SAFE_BITS - f)
        if x.numel() and x.abs().max().item() >= limit:
            raise FixedPointOverflow(
                f"value {x.abs().max().item():.4g} outside the fixed-point range "
                f"|x| < 2^{SAFE_BITS - f} = {limit:.4g} ({f} fractional bits)"
            )
        return torch.round(x * (2.0 ** f)).to(torch.int64)

    def decode(self, r: torch.Tensor, frac_bits: int | None = None) -> torch.Tensor:
        f = self.frac_bits if frac_bits is None else frac_bits
        return r.to(torch.float64) / (2.0 ** f)


def logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x >> bits treating x as an unsigned 64-bit integer."""
    if bits == 0:
        return x
    return (x >> bits) & ((1 << (RING_BITS - bits)) - 1)


def msb(x: torch.Tensor) -> torch.Tensor:
    """Most significant bit of each ring element, as int64 0/1."""
    return (x < 0).to(torch.int64)


#: the narrowest integer dtype holding b low bits, by bytes (`narrow`)
_NARROW = {1: torch.int8, 2: torch.int16, 4: torch.int32}


def narrow(x: torch.Tensor, bits: int) -> torch.Tensor:
    """int64 `x` in the narrowest of int8, int16 and int32 that keeps its low `bits` bits (x
    itself past 32 bits).  The cast keeps the low bits (two's complement), so the result
    equals x modulo 2^(its width); and arithmetic with int64 tensors promotes it, so a value
    needed modulo 2^bits only can be used as it is, never widened."""
    if not 0 < bits <= 64:
        raise ValueError(f"between 1 and 64 bits, got {bits}")
    for width, dtype in _NARROW.items():
        if bits <= 8 * width:
            return x.to(dtype)
    return x


# Signed limbs of 22, 21 and 21 bits: x = l0 + l1 * 2^22 + l2 * 2^43 (mod 2^64).
# Each limb lies in [-2^21, 2^21), so a limb product is at most 2^42 in magnitude and a
# sum of 2048 of them stays below 2^53: exact in float64.  Limb pairs whose offsets add
# to 64 or more vanish modulo 2^64, so a ring product needs 6 float products, not 9.
_LIMB_SHIFTS = (0, 22, 43)
_MAX_EXACT_K = 2048


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """Split int64 x into centred limbs (as float64) with sum(l_i * 2^shift_i) = x mod 2^64."""
    l0 = (x << 42) >> 42                     # low 22 bits, sign-extended
    rest = (x - l0) >> 22
    l1 = (rest << 43) >> 43                  # next 21 bits, sign-extended
    l2 = (((rest - l1) >> 21) << 43) >> 43   # top limb, needed only mod 2^21
    return [l0.to(torch.float64), l1.to(torch.float64), l2.to(torch.float64)]


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact (a @ b) mod 2^64 for int64 tensors, batched like torch.matmul."""
    if a.device.type == "cpu":
        return torch.matmul(a, b)
    return limb_matmul(a, b)


def limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a @ b) mod 2^64 through float64 products of 21/22-bit limbs (exact)."""
    k = a.shape[-1]
    if k > _MAX_EXACT_K:
        out = None
        for start in range(0, k, _MAX_EXACT_K):
            part = limb_matmul(a[..., start:start + _MAX_EXACT_K], b[..., start:start + _MAX_EXACT_K, :])
            out = part if out is None else out + part
        return out
    la, lb = _limbs(a), _limbs(b)
    out = None
    for i, si in enumerate(_LIMB_SHIFTS):
        # group the products that share a's limb i: one BLAS call per limb of a
        js = [j for j, sj in enumerate(_LIMB_SHIFTS) if si + sj < RING_BITS]
        rhs = torch.cat([lb[j] for j in js], dim=-1) if len(js) > 1 else lb[js[0]]
        prod = torch.matmul(la[i], rhs)
        n = lb[0].shape[-1]
        for idx, j in enumerate(js):
            term = (prod[..., idx * n:(idx + 1) * n]).to(torch.int64) << (si + _LIMB_SHIFTS[j])
            out = term if out is None else out + term
    return out


def ring_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise product mod 2^64 (torch int64 multiplication wraps)."""
    return a * b
