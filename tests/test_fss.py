"""Distributed comparison functions: shares of beta * [x < alpha] reconstruct exactly, with
the native implementation and with numpy's, which give bit-identical keys and shares."""

from __future__ import annotations

import numpy as np
import pytest

from secptune.mpc import fss
from secptune.mpc.fss import DCFKeys, dcf_eval, dcf_keygen

IMPLEMENTATIONS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(
    not fss.native_available(), reason="the native DCF is not built here or the CPU has no AES-NI"))]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request, monkeypatch):
    """Run the test on one implementation of the DCF (SECPTUNE_NATIVE chooses)."""
    monkeypatch.setenv("SECPTUNE_NATIVE", "1" if request.param == "native" else "0")
    assert fss.native_available() == (request.param == "native")
    return request.param


@pytest.mark.parametrize("payload", [1, 2])
@pytest.mark.parametrize("n_bits", [1, 5, 35, 63, 64])
def test_dcf_reconstructs_comparison(payload, n_bits, gen, implementation):
    rng = np.random.default_rng(int(gen.initial_seed()))
    count = 400
    top = 1 << n_bits
    alpha = rng.integers(0, top, count, dtype=np.uint64) if n_bits < 64 else rng.integers(0, 1 << 63, count, dtype=np.uint64) * np.uint64(2)
    beta = rng.integers(0, 1 << 63, (count, payload), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    roots = [rng.integers(0, 1 << 63, (count, 2), dtype=np.uint64) for _ in range(2)]
    key0, key1 = dcf_keygen(alpha, beta, n_bits, *roots)
    key0 = DCFKeys.from_common(0, n_bits, roots[0], key0.common())   # as server 0 receives it
    x = rng.integers(0, top, count, dtype=np.uint64) if n_bits < 64 else alpha ^ rng.integers(0, 1 << 63, count, dtype=np.uint64)
    # edge cases: at alpha, just below and above it, and the ends of the domain
    x[:50] = alpha[:50]
    x[50:100] = np.where(alpha[50:100] > 0, alpha[50:100] - np.uint64(1), 0)
    x[100:150] = np.minimum(alpha[100:150] + np.uint64(1), np.uint64(top - 1))
    x[150:160] = 0
    x[160:170] = top - 1
    out = dcf_eval(key0, x) + dcf_eval(key1, x)
    want = np.where((x < alpha)[:, None], beta, np.uint64(0))
    assert np.array_equal(out, want)


def test_dcf_keys_validate_inputs():
    roots = np.zeros((1, 2), dtype=np.uint64)
    with pytest.raises(ValueError, match="fit"):
        dcf_keygen(np.array([8], dtype=np.uint64), np.array([1], dtype=np.uint64), 3, roots, roots)
    with pytest.raises(ValueError, match="payload"):
        dcf_keygen(np.array([1], dtype=np.uint64), np.ones((1, 3), dtype=np.uint64), 3, roots, roots)


def test_dcf_key_size_is_as_documented():
    count, n, payload = 10, 20, 2
    roots = np.zeros((count, 2), dtype=np.uint64)
    key, _ = dcf_keygen(np.zeros(count, np.uint64), np.zeros((count, payload), np.uint64), n, roots, roots)
    nbytes = sum(v.nbytes for v in key.common().values())
    assert nbytes == count * (n * (16 + 8 * payload) + 8 * payload) + (2 * n * count + 7) // 8


def test_dcf_batches_larger_than_a_chunk(gen, implementation):
    rng = np.random.default_rng(int(gen.initial_seed()))
    count, n_bits = fss.CHUNK + 123, 12
    alpha = rng.integers(0, 1 << n_bits, count, dtype=np.uint64)
    beta = rng.integers(0, 1 << 62, (count, 2), dtype=np.uint64)
    roots = [rng.integers(0, 1 << 63, (count, 2), dtype=np.uint64) for _ in range(2)]
    key0, key1 = dcf_keygen(alpha, beta, n_bits, *roots)
    x = rng.integers(0, 1 << n_bits, count, dtype=np.uint64)
    out = dcf_eval(key0, x) + dcf_eval(key1, x)
    assert np.array_equal(out, np.where((x < alpha)[:, None], beta, np.uint64(0)))


@pytest.mark.skipif(not fss.native_available(), reason="the native DCF is not built here or the CPU has no AES-NI")
@pytest.mark.parametrize("payload", [1, 2])
def test_native_dcf_equals_numpy_bit_for_bit(payload, gen, monkeypatch):
    """Keys from one implementation evaluate to the same shares in the other: the dealer and
    the servers need not run the same one."""
    rng = np.random.default_rng(int(gen.initial_seed()))
    count, n_bits = 2 * fss.CHUNK + 77, 37          # several chunks, a last one partly full
    alpha = rng.integers(0, 1 << n_bits, count, dtype=np.uint64)
    beta = rng.integers(0, 1 << 63, (count, payload), dtype=np.uint64)
    roots = [rng.integers(0, 1 << 63, (count, 2), dtype=np.uint64) for _ in range(2)]
    x = rng.integers(0, 1 << n_bits, count, dtype=np.uint64)
    keys, shares = {}, {}
    for name, flag in (("numpy", "0"), ("native", "1")):
        monkeypatch.setenv("SECPTUNE_NATIVE", flag)
        keys[name] = dcf_keygen(alpha, beta, n_bits, *roots)
        shares[name] = [dcf_eval(k, x) for k in keys[name]]
    for field in ("cw_seed", "cw_value", "cw_t", "cw_final"):
        assert np.array_equal(getattr(keys["numpy"][0], field), getattr(keys["native"][0], field)), field
    for a, b in zip(shares["numpy"], shares["native"]):
        assert np.array_equal(a, b)
    # a part of a batch (strided correction words) evaluates as the whole batch's rows
    part = keys["native"][1].part(slice(100, 300))
    assert np.array_equal(dcf_eval(part, x[100:300]), shares["native"][1][100:300])
