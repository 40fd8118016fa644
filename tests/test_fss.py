"""Distributed comparison functions: shares of beta * [x < alpha] reconstruct exactly."""

from __future__ import annotations

import numpy as np
import pytest

from secptune.mpc.fss import DCFKeys, dcf_eval, dcf_keygen


@pytest.mark.parametrize("payload", [1, 2])
@pytest.mark.parametrize("n_bits", [1, 5, 35, 63])
def test_dcf_reconstructs_comparison(payload, n_bits, gen):
    rng = np.random.default_rng(int(gen.initial_seed()))
    count = 400
    top = 1 << n_bits
    alpha = rng.integers(0, top, count, dtype=np.uint64)
    beta = rng.integers(0, 1 << 63, (count, payload), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    roots = [rng.integers(0, 1 << 63, (count, 2), dtype=np.uint64) for _ in range(2)]
    key0, key1 = dcf_keygen(alpha, beta, n_bits, *roots)
    key0 = DCFKeys.from_common(0, n_bits, roots[0], key0.common())   # as server 0 receives it
    x = rng.integers(0, top, count, dtype=np.uint64)
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


def test_dcf_batches_larger_than_a_chunk(gen):
    from secptune.mpc import fss

    rng = np.random.default_rng(int(gen.initial_seed()))
    count, n_bits = fss.CHUNK + 123, 12
    alpha = rng.integers(0, 1 << n_bits, count, dtype=np.uint64)
    beta = rng.integers(0, 1 << 62, (count, 2), dtype=np.uint64)
    roots = [rng.integers(0, 1 << 63, (count, 2), dtype=np.uint64) for _ in range(2)]
    key0, key1 = dcf_keygen(alpha, beta, n_bits, *roots)
    x = rng.integers(0, 1 << n_bits, count, dtype=np.uint64)
    out = dcf_eval(key0, x) + dcf_eval(key1, x)
    assert np.array_equal(out, np.where((x < alpha)[:, None], beta, np.uint64(0)))
