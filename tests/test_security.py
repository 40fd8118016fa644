"""What each party sees.

A server's view is its own shares and randomness plus every message it receives: its
peer's shares of masked values, which together with its own give the opened values; its
share of the owner's inputs; and the dealer's corrections and keys.  Its own shares and
the owner's input shares are uniform by construction; so the tests check that
- every value a server opens is uniform over the ring and distributed the same under two
  very different secrets (a missing or reused mask fails this);
- the dealer's traffic does not depend on the secrets at all: with the same seeds it is
  bit-identical whatever the data;
- the owner's input shares are uniform;
- the dealer receives requests (kinds and shapes), never data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from secptune.mpc import LocalSession
from secptune.mpc import protocols as P
from secptune.mpc.comm import OWNER, SERVERS
from secptune.mpc.protocols.arithmetic import prepare

ALPHA = 1e-6          # false alarm rate per test: a real leak gives p-values near zero


def words(payload) -> list[np.ndarray]:
    """Every 64-bit word in a message, as uint64 (a tensor of narrower elements, such as a
    correction's low bytes, one element per word)."""
    if isinstance(payload, torch.Tensor):
        a = payload.detach().cpu().contiguous().numpy()
        return [a.view(np.uint64).ravel() if a.dtype.itemsize == 8 else a.ravel().astype(np.uint64)]
    if isinstance(payload, np.ndarray):
        return [payload.view(np.uint64).ravel()] if payload.dtype.itemsize == 8 else []
    if isinstance(payload, (list, tuple)):
        return [w for item in payload for w in words(item)]
    if isinstance(payload, dict):
        return [w for item in payload.values() for w in words(item)]
    return []


def edge_bytes(t: torch.Tensor) -> np.ndarray:
    """(2, n): the top and the bottom byte of each element of an opened tensor, in its own
    width (a ring element, or the top half of one that Pi_cosine opens for an angle)."""
    a = t.detach().cpu().contiguous().numpy()
    width = a.dtype.itemsize
    u = a.view(f"u{width}").ravel().astype(np.uint64)
    return np.stack([(u >> np.uint64(8 * width - 8)) & np.uint64(255), u & np.uint64(255)])


def views(program, secrets, seed=None):
    """(the top and bottom bytes of the values server 1 opened, words it received from each
    sender)."""
    with LocalSession(record=True, seed=seed) as session:
        session.run(program, *secrets)
        server = session.servers[1]
        opened = np.concatenate([edge_bytes(t) for t in server.opened] or [np.zeros((2, 0), np.uint64)], axis=1)
        received = {}
        for sender, payload in server.channel.received:
            received.setdefault(sender, []).extend(words(payload))
    return opened, {k: np.concatenate(v) for k, v in received.items() if v}


def byte_histograms(values: np.ndarray) -> list[np.ndarray]:
    """Histograms of the top and the bottom byte of each word (256 bins each): `values`
    are words, or (2, n) top and bottom bytes (`edge_bytes`)."""
    if values.ndim == 2:
        return [np.bincount(row.astype(np.int64), minlength=256) for row in values]
    return [np.bincount((values >> np.uint64(56)).astype(np.int64), minlength=256),
            np.bincount((values & np.uint64(255)).astype(np.int64), minlength=256)]


PROGRAMS = {
    "mul": (lambda s, a, b: a * b, 2),
    "matmul": (lambda s, a, b: a.reshape(64, 64) @ b.reshape(64, 64), 2),
    "prepared matmul": (lambda s, a, b: a.reshape(64, 64) @ prepare(b.reshape(64, 64)), 2),
    "truncation": (lambda s, a, b: (a * b).truncate(), 2),
    "relu": (lambda s, a, b: (a - b).relu(), 2),
    "max": (lambda s, a, b: (a + b).reshape(64, 64).max(-1), 2),
    "cosine": (lambda s, a, b: list(P.sincos(a * 0.01)), 2),
    "gelu": (lambda s, a, b: a.gelu(), 2),
    "softmax": (lambda s, a, b: a.reshape(32, 128).softmax(-1), 2),
    "layernorm": (lambda s, a, b: P.layer_norm(a.reshape(16, 256), b[:256], b[256:512]), 2),
}


def secrets_pair(n=4096):
    g = torch.Generator().manual_seed(7)
    zeros = [torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)]
    loud = [torch.linspace(-20, 20, n, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64) * 3]
    loud[1][0:512] = 1.0                        # keep LayerNorm's weight away from zero
    return zeros, loud


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_opened_values_are_uniform_and_independent_of_the_secrets(name):
    program, _ = PROGRAMS[name]
    zeros, loud = secrets_pair()
    opened_a, _ = views(program, zeros)
    opened_b, _ = views(program, loud)
    assert opened_a.size == opened_b.size > 0
    for ha, hb in zip(byte_histograms(opened_a), byte_histograms(opened_b)):
        for hist in (ha, hb):
            p = chisquare(hist).pvalue
            assert p > ALPHA, f"{name}: opened values are not uniform (p = {p:.2g})"
        p = chi2_contingency(np.stack([ha, hb]))[1]
        assert p > ALPHA, f"{name}: opened values depend on the secret (p = {p:.2g})"


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_dealer_traffic_does_not_depend_on_the_secrets(name):
    program, _ = PROGRAMS[name]
    zeros, loud = secrets_pair()
    seed = bytes(range(16))
    _, received_a = views(program, zeros, seed)
    _, received_b = views(program, loud, seed)
    assert np.array_equal(received_a["dealer"], received_b["dealer"])


def test_narrowed_corrections_are_uniform():
    """The narrow corrections the dealer sends for a truncation mask's top bit (and its
    products with it) are the low bits of value - server 0's share: uniform bytes, whatever
    the secrets."""
    _, loud = secrets_pair(20000)
    with LocalSession(record=True) as session:
        session.run(lambda s, a, b: ((a * b) * (a * b)).truncate(), *loud)
        narrow = [m.contiguous().view(torch.uint8).numpy().ravel() for sender, payload in
                  session.servers[1].channel.received if sender == "dealer" for m in payload
                  if isinstance(m, torch.Tensor) and m.element_size() < 8]
    assert narrow, "the dealer sent narrow corrections"
    assert chisquare(np.bincount(np.concatenate(narrow), minlength=256)).pvalue > ALPHA


def test_owner_input_shares_are_uniform():
    _, loud = secrets_pair(20000)
    _, received = views(lambda s, a, b: a, loud)
    for hist in byte_histograms(received[OWNER]):
        assert chisquare(hist).pvalue > ALPHA


def test_the_dealer_receives_requests_only():
    zeros, _ = secrets_pair()
    with LocalSession(record=True) as session:
        session.run(lambda s, a, b: [(a * b).relu(), a.gelu()], *zeros)
        received = list(session.dealer.channel.received)
    assert received, "the dealer was asked for correlations"
    for sender, message in received:
        assert sender == SERVERS[1]
        assert message[0] == "deal" and not words(message), "a request carried data"
