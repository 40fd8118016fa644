"""Bytes and rounds of every protocol, pinned.

Online bytes are what server 0 sends plus what it receives (the whole server link, both
directions): opening n ring elements costs 16 n.  Dealer bytes are both servers' traffic with
the dealer: server 1's requests (a small header) and corrections, and the DCF correction
words that both servers receive."""

from __future__ import annotations

import math

import pytest
import torch

from secptune.mpc import protocols as P
from secptune.mpc.comm import payload_nbytes
from secptune.mpc.protocols.arithmetic import powers, prepare
from secptune.mpc.protocols.inverse import COMPARE_SLACK, coarse_octaves
from secptune.mpc.protocols.gelu import series_for_bound

OPEN = 16          # online bytes per opened ring element
ANGLE = 4          # bytes each way per angle Pi_cosine opens (the share's top 32 bits)


def header(kind, **params):
    return payload_nbytes(("deal", 0, kind, params))


def dcf_words(count, bits, payload):
    """Bytes of DCF correction words for `count` comparisons of `bits`-bit values."""
    levels = bits - 1
    return count * (levels * (16 + 8 * payload) + 8 * payload) + (2 * levels * count + 7) // 8


def cost_of(session, program, *inputs):
    result = session.run(program, *inputs)
    return result.cost, result.costs


def test_mul_of_fresh_operands(session):
    c, _ = cost_of(session, lambda s, a, b: a * b, torch.ones(10, 7), torch.ones(10, 7))
    assert (c.rounds, c.online_bytes) == (1, 2 * OPEN * 70)
    assert c.dealer_bytes == 8 * 70 + header("mul", shape_x=(10, 7), shape_y=(10, 7), shift_x=0, shift_y=0)


def test_mul_with_folded_truncations(session):
    c, per = cost_of(session, lambda s, a, b: (a * a) * (b * b), torch.ones(50), torch.ones(50))
    # two squares (one opening each), then one product opening both operands
    assert c.rounds == 3
    assert c.online_bytes == OPEN * 50 * (1 + 1 + 2)
    # the folded product's dealer part: rho_x, rho_y, rho_xy whole (8 bytes); m_x, m_y,
    # rho_x m_y, m_x rho_y only ever used times 2^(64 - 16): their 16 low bits (2 bytes)
    folded = (3 * 8 + 4 * 2) * 50 + header("mul", shape_x=(50,), shape_y=(50,), shift_x=16, shift_y=16)
    squares = 2 * (8 * 50 + header("square", shape=(50,), shift=0))
    assert c.dealer_bytes == folded + squares
    assert per["server0"].dealer_bytes == 0          # server 0 derives everything from its seed


def test_broadcast_operands_are_opened_at_their_own_size(session):
    c, _ = cost_of(session, lambda s, a, b: a * b, torch.ones(4, 100), torch.ones(1, 100))
    assert c.online_bytes == OPEN * (400 + 100)


def test_square_and_powers(session):
    c, _ = cost_of(session, lambda s, a: P.square(a), torch.ones(30))
    assert (c.rounds, c.online_bytes) == (1, OPEN * 30)
    c, _ = cost_of(session, lambda s, a: powers(a, 4), torch.ones(30))
    assert (c.rounds, c.online_bytes) == (1, OPEN * 30)
    assert c.dealer_bytes == 3 * 8 * 30 + header("powers", shape=(30,), shift=0, degree=4)


def test_truncation(session):
    c, _ = cost_of(session, lambda s, a: a.rescale(40).truncate(), torch.ones(25))
    assert (c.rounds, c.online_bytes) == (1, OPEN * 25)
    # rho whole, m's 24 low bits (m is only used times 2^(64 - 24)) as an int32
    assert c.dealer_bytes == (8 + 4) * 25 + header("trunc", shape=(25,), shift=24)


def test_matmul_and_its_paper_shape(session):
    c, per = cost_of(session, lambda s, a, b: a @ b, torch.ones(128, 768), torch.ones(768, 768))
    assert c.rounds == 1
    assert c.online_bytes == OPEN * (128 * 768 + 768 * 768) == 11_010_048     # CrypTen: 11.0 MB
    assert c.dealer_bytes == 8 * 128 * 768 + header("matmul", shape_x=(128, 768), shape_y=(768, 768))
    assert per["server0"].dealer_bytes == 0


def test_matmul_with_a_prepared_weight_opens_only_the_activation(session):
    def program(s, a, w):
        prepared = prepare(w)
        with s.cost() as per_product:
            out = a @ prepared
        assert (per_product.rounds, per_product.online_bytes) == (1, OPEN * 128 * 768)
        return out

    c, _ = cost_of(session, program, torch.ones(128, 768), torch.ones(768, 768))
    # preparing opens the weight once; the product opens only the 128 x 768 activation:
    # (128 * 768 + 768 * 768) / (128 * 768) = 7 times fewer bytes than a fresh triple
    assert c.online_bytes == OPEN * (768 * 768 + 128 * 768)
    assert c.rounds == 2


def test_drelu_relu_and_max(session):
    n, bits = 40, session.config.compare_bits
    c, per = cost_of(session, lambda s, a: a.drelu(), torch.ones(n))
    assert (c.rounds, c.online_bytes) == (1, OPEN * n)
    words = dcf_words(n, bits, 1)
    assert per["server0"].dealer_bytes == words
    assert per["server1"].dealer_bytes == words + 8 * n + header("sign", shape=(n,), bits=bits, relu=False)
    c, per = cost_of(session, lambda s, a: a.relu(), torch.ones(n))
    assert (c.rounds, c.online_bytes) == (1, OPEN * n)
    assert per["server0"].dealer_bytes == dcf_words(n, bits, 2)
    c, _ = cost_of(session, lambda s, a: a.max(-1), torch.ones(6, 128))
    assert c.rounds == 7                                  # log2(128) levels of one ReLU each
    assert c.online_bytes == OPEN * 6 * 127               # 127 comparisons per row
    # a coarse maximum (differences below 2^14, read at 2^-5): 14 + 16 + 2 bits, 11 dropped,
    # so DCF trees of 20 levels instead of compare_bits - 1 = 35; the same rounds and openings
    c, per = cost_of(session, lambda s, a: P.maximum(a, -1, bound=1e4 + 2048, resolution=2 ** -5),
                     torch.ones(6, 128))
    assert (c.rounds, c.online_bytes, c.comparisons) == (7, OPEN * 6 * 127, 6 * 127)
    assert per["server0"].dealer_bytes == sum(dcf_words(6 * 2 ** level, 32 - 11, 2) for level in range(7))


def test_cosine_is_one_round_and_half_a_ring_element_each_way(session):
    c, per = cost_of(session, lambda s, a: list(P.sincos(a)), torch.ones(128, 4096))
    assert c.rounds == 1
    assert c.online_bytes == 2 * ANGLE * 128 * 4096         # the share's top 32 bits each way
    assert per["server0"].dealer_bytes == 0
    # server 1: shares of cos t and sin t per value
    assert c.dealer_bytes == 2 * 8 * 128 * 4096 + header("trig", shape=(128, 4096), harmonics=(1,),
                                                             weights=(1.0,), frac=16)


def test_gelu_bound_costs_the_dealer_two_elements_per_harmonic_and_nothing_online(session):
    """A wider series (more harmonics) for a wider calibrated bound: the same rounds and
    online bytes; server 1's dealt bytes grow by two ring elements per harmonic and element."""
    per_element = {}
    for bound in (16.0, 128.0):
        L, K = series_for_bound(bound)
        measured = [cost_of(session, lambda s, a: P.gelu(a, L, K), torch.zeros(n))[0] for n in (1000, 2000)]
        assert [c.rounds for c in measured] == [2, 2]
        assert [c.online_bytes for c in measured] == [(2 * ANGLE + OPEN * 2) * n for n in (1000, 2000)]
        per_element[K] = (measured[1].dealer_bytes - measured[0].dealer_bytes) / 1000
    (k1, b1), (k2, b2) = sorted(per_element.items())
    assert b2 - b1 == 2 * 8 * (k2 - k1)


def test_gelu_by_channels_costs_the_dealer_each_channels_harmonics(session):
    """Bounds per channel: the rounds and online bytes of one series; server 1's dealt bytes
    per row are two ring elements per harmonic of each channel's own series."""
    bounds = (4.0, 4.0, 8.0, 16.0, 128.0)
    measured = [cost_of(session, lambda s, a: P.gelu_by_channels(a, bounds), torch.zeros(n, len(bounds)))[0]
                for n in (1000, 2000)]
    single = [cost_of(session, lambda s, a: P.gelu(a, *series_for_bound(128.0)), torch.zeros(n, len(bounds)))[0]
              for n in (1000, 2000)]
    assert [c.rounds for c in measured + single] == [2, 2, 2, 2]
    assert [c.online_bytes for c in measured] == [c.online_bytes for c in single] == \
        [(2 * ANGLE + OPEN * 2) * n * 5 for n in (1000, 2000)]
    per_row = (measured[1].dealer_bytes - measured[0].dealer_bytes) / 1000
    single_per_row = (single[1].dealer_bytes - single[0].dealer_bytes) / 1000
    # the product x * series deals alike; the series 2 K_c elements per channel
    assert per_row - 2 * 8 * sum(series_for_bound(b)[1] for b in bounds) == \
        single_per_row - 2 * 8 * series_for_bound(128.0)[1] * len(bounds) > 0


@pytest.mark.parametrize("name, program, shape, rounds, opened, angles", [
    # exp: clip (ReLU), then y^2 and (6^-1/3 y)^3 (two openings), then 6 squarings
    ("exp", lambda s, a: P.exp(a, max_input=0.0), (64,), 8, 1 + 2 + 6, 0),
    # GeLU: the sine series' angle (its top half), then x times it (both opened)
    ("gelu", lambda s, a: a.gelu(), (64,), 2, 2, 1),
])
def test_elementwise_composites(session, name, program, shape, rounds, opened, angles):
    c, _ = cost_of(session, program, torch.zeros(shape))
    n = torch.zeros(shape).numel()
    assert c.rounds == rounds
    assert c.online_bytes == OPEN * n * opened + 2 * ANGLE * n * angles


def reciprocal_openings(intervals, slack=COMPARE_SLACK):
    """Openings per element: a comparison per threshold (the range's ends included: values
    outside it are clamped); a selector and an operand per interval to normalise; u
    (square), then u with u^2 (product) and u^2 (square), then u^2 with u^3 (product) and
    u^3 (square); a selector and an operand per interval to rescale.  Over a range wide
    enough for two stages (P.coarse_octaves: n coarse intervals of w octaves): a comparison
    per coarse edge, a selector and an operand per coarse interval, a comparison per fine
    threshold (w - 1), a selector and an operand per fine interval with, in the same round,
    the coarse and the fine indicators for their product, the powers as above, then a
    selector and an operand per joint interval (n w) to rescale."""
    width = coarse_octaves(intervals, slack)
    if width is None:
        return (intervals + 1) + 2 * intervals + 1 + 3 + 3 + 2 * intervals
    n = -(-intervals // width)
    return (n + 1) + 2 * n + (width - 1) + 2 * width + (n + width) + 1 + 3 + 3 + 2 * n * width


@pytest.mark.parametrize("lo, hi, rounds, comparisons", [(0, 8, 6, 9), (0, 12, 8, 4 + 3), (-16, 14, 8, 6 + 5)])
def test_reciprocal_and_rsqrt(session, lo, hi, rounds, comparisons):
    """One stage over 8 octaves, two over 12 (3 coarse intervals of 4) and over the
    LayerNorm's default 30 (5 of 6); rsqrt costs what the reciprocal costs."""
    intervals = hi - lo                         # octaves
    for op in (P.reciprocal, P.rsqrt):
        c, _ = cost_of(session, lambda s, a: op(a, lo, hi), torch.ones(10))
        assert c.rounds == rounds
        assert c.online_bytes == OPEN * 10 * reciprocal_openings(intervals)
        assert c.comparisons == 10 * comparisons


def test_softmax_rounds_and_bytes(session):
    rows, n = 12 * 4, 128
    c, _ = cost_of(session, lambda s, a: a.softmax(-1), torch.zeros(12, 4, n))
    # max 7, exp 8, row-sum truncation 1, reciprocal 6, product 1, truncation 1
    assert c.rounds == 24
    per_row = (n - 1                        # the max: one ReLU per comparison
               + n * (1 + 2 + 6)            # exp: clip, polynomial (two openings), squarings
               + 1                          # the row sum's truncation
               + reciprocal_openings(8, 0)  # over [1, 2^7.5], rounded out to 8 octaves
               + n + 1                      # e times 1 / sum
               + n)                         # the final truncation
    assert c.online_bytes == OPEN * rows * per_row


@pytest.mark.parametrize("weighted", [False, True])
def test_layer_norm(session, weighted):
    rows, D = 4, 64
    x, w, b = torch.ones(rows, D), torch.ones(D), torch.ones(D)

    def program(s, a, weight, bias):
        prepared = prepare(weight)
        with s.cost() as trace:
            out = P.layer_norm(a, prepared if weighted else None, bias).truncate()
        assert trace.rounds == 1 + 8 + 1 + 1           # d^2, rsqrt (its 30 octaves in two stages), product, truncation
        per_element = 16 * rows * D * ((2 if weighted else 1) + 1)
        row_part = trace.online_bytes - per_element
        assert 0 < row_part <= 16 * rows * 450         # the rsqrt and the product on rows
        return out

    session.run(program, x, w, b)


def test_a_reused_opening_costs_only_the_other_operand(session):
    from secptune.mpc.protocols.arithmetic import MulFixedGate, MulGate, SquareGate
    from secptune.mpc.rounds import run_gate

    def program(s, a, b, w):
        square = SquareGate(a)
        run_gate(square)
        with s.cost() as reuse:
            out = run_gate(MulGate(square.opened, b))
        assert (reuse.rounds, reuse.online_bytes) == (1, OPEN * 8)       # b only
        prepared = prepare(w)
        with s.cost() as local:
            out2 = run_gate(MulFixedGate(square.opened, prepared))
        assert (local.rounds, local.online_bytes) == (0, 0)
        return [out, out2]

    session.run(program, torch.ones(100), torch.ones(8, 1), torch.ones(100))


def _octaves(lo, hi, slack=COMPARE_SLACK):
    """An inverse root's comparisons per input: one per octave threshold, both ends included;
    over a range wide enough for two stages, one per coarse edge and one per fine threshold."""
    octaves = math.ceil(hi) - math.floor(lo)
    width = coarse_octaves(octaves, slack)
    return octaves + 1 if width is None else -(-octaves // width) + 1 + width - 1


@pytest.mark.parametrize("n", [16, 64])
def test_comparisons_per_element_are_pinned(session, n):
    """Comparisons (a DCF key pair each) are most of the dealer's traffic: each protocol's
    count, per element or per row of n, as docs/protocols.md states it."""
    rows = 8
    x = torch.randn(rows, n, dtype=torch.float64)
    positive = lambda f: (lambda s, a: f(a * a + 1))          # noqa: E731
    expected = {
        "mul": (lambda s, a: a * a, 0),
        "relu": (lambda s, a: a.relu(), rows * n),
        "drelu": (lambda s, a: a.drelu(), rows * n),
        "max": (lambda s, a: a.max(-1), rows * (n - 1)),                      # a tournament
        "exp": (lambda s, a: a.exp(), rows * n),                               # the clip
        "cos": (lambda s, a: a.cos(), 0),
        "gelu": (lambda s, a: a.gelu(), 0),                                    # a sine series
        "reciprocal": (positive(lambda a: a.reciprocal()), rows * n * _octaves(-10, 18)),
        "rsqrt": (positive(lambda a: a.rsqrt()), rows * n * _octaves(-10, 18)),
        # max, exp's clip, and the reciprocal of each row's sum in [1, n]
        "softmax": (lambda s, a: a.softmax(-1), rows * ((n - 1) + n + _octaves(0, math.log2(n) + 0.5, 0))),
        # the reciprocal root of each row's variance only
        "layer_norm": (lambda s, a: P.layer_norm(a), rows * _octaves(-16 + math.log2(n), 14 + math.log2(n))),
    }
    for name, (program, comparisons) in expected.items():
        c, per = cost_of(session, program, x)
        assert c.comparisons == comparisons, name
        assert per["server0"].comparisons == per["server1"].comparisons == comparisons
