"""The ring Z_2^64 and fixed-point encoding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from secptune.mpc.ring import FixedPoint, FixedPointOverflow, limb_matmul, logical_shift_right, msb, narrow, ring_matmul

MOD = 1 << 64


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> list[list[int]]:
    """(a @ b) mod 2^64 with Python integers, as signed int64 values."""
    out = []
    for i in range(a.shape[0]):
        row = []
        for j in range(b.shape[1]):
            v = sum(int(a[i, k]) * int(b[k, j]) for k in range(a.shape[1])) % MOD
            row.append(v - MOD if v >= 1 << 63 else v)
        out.append(row)
    return out


def full_range(gen, *shape):
    return torch.randint(-(1 << 63), (1 << 63) - 1, shape, generator=gen, dtype=torch.int64)


@pytest.mark.parametrize("product", [ring_matmul, limb_matmul])
def test_ring_matmul_is_exact_mod_2_64(product, gen):
    a, b = full_range(gen, 5, 37), full_range(gen, 37, 4)
    a[0, :] = -(1 << 63)                     # the most negative element, squared, wraps
    b[:, 0] = -(1 << 63)
    assert product(a, b).tolist() == exact_matmul(a, b)


def test_limb_matmul_splits_long_inner_dimension(gen):
    a, b = full_range(gen, 2, 5000), full_range(gen, 5000, 3)
    assert limb_matmul(a, b).tolist() == exact_matmul(a, b)


def test_ring_matmul_batches_like_torch(gen):
    a, b = full_range(gen, 3, 4, 6), full_range(gen, 6, 2)
    out = ring_matmul(a, b)
    assert out.shape == (3, 4, 2)
    assert out[1].tolist() == exact_matmul(a[1], b)


def test_encode_decode_roundtrip_and_rounding():
    fp = FixedPoint(16)
    x = torch.tensor([0.0, 1.0, -1.0, 2.5, -3.25, 1e-6, -1e-6, 123456.789, -98765.4321])
    back = fp.decode(fp.encode(x))
    assert (back - x.double()).abs().max() <= 2.0 ** -17
    assert fp.encode(torch.tensor([-1.0])).item() == -(1 << 16)      # negatives in two's complement


def test_encode_rejects_values_outside_the_range():
    fp = FixedPoint(16)
    assert fp.max_value() == 2.0 ** 46
    fp.encode(torch.tensor([2.0 ** 46 - 1], dtype=torch.float64))
    with pytest.raises(FixedPointOverflow, match="outside the fixed-point range"):
        fp.encode(torch.tensor([2.0 ** 46]))
    with pytest.raises(FixedPointOverflow):
        fp.encode(torch.tensor([-(2.0 ** 47)]))
    with pytest.raises(FixedPointOverflow, match="NaN"):
        fp.encode(torch.tensor([float("nan")]))


def test_frac_bits_are_configurable_and_checked():
    assert FixedPoint(20).encode(torch.tensor([1.0])).item() == 1 << 20
    with pytest.raises(ValueError):
        FixedPoint(40)


def test_wraparound_arithmetic_is_the_ring():
    big = torch.tensor([(1 << 63) - 1])
    assert (big + 1).item() == -(1 << 63)
    assert msb(torch.tensor([-1, 0, 1, -(1 << 63)])).tolist() == [1, 0, 0, 1]
    assert logical_shift_right(torch.tensor([-1]), 60).item() == 15


@settings(max_examples=50, deadline=None)
@given(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, 63))
def test_logical_shift_matches_unsigned_shift(value, bits):
    got = logical_shift_right(torch.tensor([value]), bits).item()
    assert got % MOD == (value % MOD) >> bits


@pytest.mark.parametrize("bits, dtype", [(1, torch.int8), (8, torch.int8), (9, torch.int16), (16, torch.int16),
                                         (24, torch.int32), (32, torch.int32), (40, torch.int64), (64, torch.int64)])
def test_narrow_keeps_a_ring_element_modulo_its_width(gen, bits, dtype):
    x = full_range(gen, 3, 50)
    x[0, :4] = torch.tensor([-1, 0, -(1 << 63), (1 << 63) - 1])
    sent = narrow(x, bits)
    assert sent.dtype == dtype and sent.shape == x.shape
    keep = 1 << (8 * sent.element_size())
    assert [v % keep for v in sent.flatten().tolist()] == [v % keep for v in x.flatten().tolist()]
    # used as it is: int64 arithmetic promotes it, exact modulo its width
    k = torch.full_like(x, 1 << (64 - 8 * sent.element_size())) if dtype != torch.int64 else torch.ones_like(x)
    assert torch.equal(k * sent, k * x)
    with pytest.raises(ValueError):
        narrow(x, 0)
