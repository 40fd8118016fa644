"""Shared tensors: sharing, linear operations, shapes, public operands, revealing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from secptune.mpc import LocalSession, RevealDenied, cat, stack
from secptune.mpc.comm import OWNER

from conftest import ULP, randn


def test_share_and_reveal_roundtrip(session, gen):
    x = randn(gen, 3, 4, scale=100)
    (out,) = session.run(lambda server, a: a, x).outputs
    assert (out - x).abs().max() <= ULP / 2


def test_linear_operations_are_local_and_exact(session, gen):
    x, y = randn(gen, 5, 6, scale=10), randn(gen, 5, 6, scale=10)
    c = randn(gen, 6)
    result = session.run(lambda s, a, b: [a + b, a - b, -a, a + 2.5, 3.0 - a, a * 3, a + c, c + a,
                                          (a * 0.5).truncate(), a.sum(-1), a.sum(), a.mean(0)], x, y)
    want = [x + y, x - y, -x, x + 2.5, 3.0 - x, x * 3, x + c, c + x, x * 0.5, x.sum(-1), x.sum(), x.mean(0)]
    for got, ref in zip(result.outputs, want):
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 8 * ULP
    # everything but the one truncation is local: exactly one round
    assert result.cost.rounds == 1


def test_shape_operations_follow_torch(session, gen):
    x = randn(gen, 2, 3, 4)

    def program(s, a):
        return [a.reshape(6, 4), a.permute(2, 0, 1), a.transpose(0, 1), a[1, :, 2:], a.unsqueeze(1),
                a.flatten(), a.T.contiguous() if a.dim() == 2 else a.movedim(0, -1), a.expand(5, 2, 3, 4),
                cat([a, a], dim=1), stack([a, a], dim=0), a.split(2, dim=2)[1], a.flip(0), a.mT]

    want = [x.reshape(6, 4), x.permute(2, 0, 1), x.transpose(0, 1), x[1, :, 2:], x.unsqueeze(1),
            x.flatten(), x.movedim(0, -1), x.expand(5, 2, 3, 4), torch.cat([x, x], 1),
            torch.stack([x, x]), x.split(2, dim=2)[1], x.flip(0), x.mT]
    result = session.run(program, x)
    for got, ref in zip(result.outputs, want):
        assert got.shape == ref.shape and (got - ref).abs().max() <= ULP
    assert result.cost.rounds == 0


def test_operands_at_different_precisions_align(session, gen):
    x, y = randn(gen, 10), randn(gen, 10)
    # x * y is pending at 32 fractional bits; adding x aligns x up to it (exact)
    (out,) = session.run(lambda s, a, b: a * b + a, x, y).outputs
    assert (out - (x * y + x)).abs().max() <= 4 * ULP


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
       st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
       st.floats(-100, 100), st.floats(-100, 100))
def test_sharing_is_linear(xs, ys, a, b):
    n = min(len(xs), len(ys))
    x = torch.tensor(xs[:n], dtype=torch.float64)
    y = torch.tensor(ys[:n], dtype=torch.float64)
    with LocalSession() as session:
        (out,) = session.run(lambda s, u, v: (u * a).truncate() + (v * b).truncate(), x, y).outputs
    # each public product is truncated once (<= 1 ulp each); x, y, a, b are encoded to
    # within half an ulp (a and b relative to their size when small)
    bound = 4 * ULP + (abs(a) + abs(b)) * ULP + (abs(x) + abs(y)).max().item() * ULP
    assert (out - (a * x + b * y)).abs().max().item() <= bound


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_matrix_product_shapes_follow_torch(batch, n, k, m):
    g = torch.Generator().manual_seed(batch * 1000 + n * 100 + k * 10 + m)
    x = torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    y = torch.randn(k, m, generator=g, dtype=torch.float64)
    with LocalSession() as session:
        result = session.run(lambda s, a, b: [a @ b, a @ y, (a @ b).truncate()], x, y)
    for got in result.outputs:
        assert got.shape == (batch, n, m)
        assert (got - x @ y).abs().max() <= 1e-3 * (1 + k)


def test_values_are_revealed_only_to_the_owner(session, gen):
    x = randn(gen, 4)
    with pytest.raises(RevealDenied, match="only to the data owner"):
        session.run(lambda s, a: a.reveal_to("server1"), x)


def test_servers_cannot_reveal_to_the_dealer(gen):
    with LocalSession() as session:
        with pytest.raises(RevealDenied):
            session.run(lambda s, a: a.reveal_to("dealer"), randn(gen, 2))


def test_owner_reconstructs_what_servers_reveal(session, gen):
    x = randn(gen, 3)

    def program(s, a):
        (a * 2).reveal_to(OWNER)      # an explicit reveal, received before the program's outputs
        return a

    # the run's own reveal comes second; the owner only ever sees what is sent to it
    result = session.run(program, x)
    assert (result.outputs[0] - 2 * x).abs().max() <= ULP
