"""The in-process session: errors surface promptly and clearly, never as a hang; the dealer
deals a repeated operation ahead without changing what any party sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import randn
from secptune.mpc import Config, LocalSession, PeerTimeout
from secptune.mpc.ahead import DealerAheadMismatch, ScheduleBook
from secptune.mpc.comm import OWNER, Cost, PeerFailed
from secptune.mpc.netmodel import LAN, WAN_100, WAN_200
from secptune.mpc.session import server_op


def test_an_error_on_one_server_is_raised_promptly():
    """Server 0 stops waiting because server 1 failed (PeerFailed), not because its wait for
    server 1 timed out: the session's timeout here is only a guard against a hang."""
    seen = []

    def program(server, x):
        if server.index == 1:
            raise ValueError("server 1 broke")
        try:
            return x * x                   # server 0 would wait for server 1 forever
        except BaseException as exc:
            seen.append(exc)
            raise

    with LocalSession(timeout=600) as session:
        with pytest.raises(ValueError, match="server 1 broke"):
            session.run(program, torch.ones(3))
        assert len(seen) == 1 and isinstance(seen[0], PeerFailed)
        assert "another party failed" in str(seen[0])
        with pytest.raises(RuntimeError, match="closed"):
            session.run(lambda s, x: x, torch.ones(3))


def test_a_peer_that_never_sends_times_out_naming_it():
    def program(server, x):
        if server.index == 0:
            server.channel.recv("server1")   # server 1 never sends this
        return x

    with LocalSession(timeout=1.0) as session:
        with pytest.raises(PeerTimeout, match="server0: no message from server1 within 1 s") as raised:
            session.run(program, torch.ones(2))
        assert not isinstance(raised.value, PeerFailed)     # its own timeout, not another's failure


def test_costs_accumulate_per_label(session=None):
    with LocalSession() as session:
        def program(server, x, y):
            with server.cost() as trace:
                out = (x * y).relu()
            per_label = server.channel.meter.by_top_label()
            assert {"mul", "relu"} <= set(per_label)
            assert trace.rounds == 2
            return out

        session.run(program, torch.ones(4), torch.ones(4))


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="compare_bits"):
        Config(frac_bits=16, compare_bits=10)
    with LocalSession(Config(frac_bits=20, compare_bits=40)) as session:
        (out,) = session.run(lambda s, a: (a * a).truncate(), torch.tensor([1.5, -2.25])).outputs
        assert (out - torch.tensor([2.25, 5.0625], dtype=torch.float64)).abs().max() <= 2 ** -20


def test_network_projection():
    cost = Cost(online_bytes=2 * 375_000_000, rounds=10, seconds=1.0)
    # 375 MB each way over 3 Gbps is 1 s; 10 rounds of 0.8 ms
    assert LAN.project(cost) == pytest.approx(1.0 + 1.0 + 0.008)
    assert WAN_100.project(cost) == pytest.approx(1.0 + 30.0 + 0.8)
    assert WAN_200.seconds(0, 25) == pytest.approx(1.0)


def test_preprocessing_moves_the_dealer_offline():
    x = torch.randn(6, 40, dtype=torch.float64)
    program = lambda s, a: [a.softmax(-1), (a * a).relu()]
    with LocalSession() as session:
        plain = session.run(program, x)
        offline = session.preprocess(program, torch.zeros(6, 40))
        online = session.run(program, x)
        assert offline["server1"].dealer_bytes > 0
        assert online.cost.dealer_bytes == 0                      # nothing left to deal
        assert online.cost.rounds == plain.cost.rounds
        assert online.cost.online_bytes == plain.cost.online_bytes
        for a, b in zip(online.outputs, plain.outputs):
            assert (a - b).abs().max() <= 1e-3
        # a different program than the one preprocessed is refused clearly
        session.preprocess(program, torch.zeros(6, 40))
        with pytest.raises(RuntimeError, match="preprocessed"):
            session.run(lambda s, a: a.gelu(), x)


# --- the dealer ahead of the servers (mpc/ahead.py) --------------------------------------------

_WIDTH = {"cols": 24}          # what the "drifting" operation below reads besides its parameters


@server_op("test_ahead_pass", plan_key=True)
def _ahead_pass(server, rows: int):
    """A repeatable operation with products, comparisons (DCF keys) and a reused opening."""
    x = server.input_from_owner((rows, 24))
    server.reveal_to(OWNER, [x.softmax(-1), (x * x).relu().truncate(), x.gelu()])


@server_op("test_ahead_drifting", plan_key=True)
def _ahead_drifting(server, rows: int):
    """Declared repeatable, but what it asks for depends on something outside its parameters."""
    x = server.input_from_owner((rows, _WIDTH["cols"]))
    server.reveal_to(OWNER, [(x * x).relu()])


@server_op("test_state_change")
def _state_change(server):
    server.store["changed"] = True


def _call(session, op, params, x=None):
    def own():
        if x is not None:
            session.owner.share(x)
        return session.owner.receive() if x is not None else None
    return session.call(op, params, own)[0]


def test_the_dealer_deals_a_repeated_operation_ahead_and_the_servers_see_the_same_messages(gen):
    """The first two calls set the plan (the same requests twice); from the third on the dealer
    deals ahead.  Every message either server receives, and every revealed output, is bit for
    bit what an on-demand dealer gives; a state-changing operation stops the plan until the
    operation has again made the same requests twice.  How many of a planned call's requests
    are dealt ahead depends on the threads' timing (a request server 1 asks for before the
    dealer reached it is dealt on demand): on a loaded machine not all are, so the counts are
    checked per call, ahead and on demand together."""
    xs = [randn(gen, 5, 24) for _ in range(6)]
    runs = {}
    for ahead in (0, 2 << 30):
        with LocalSession(timeout=60, seed=b"\x07" * 16, record=True) as session:
            session.dealer.ahead_bytes = ahead
            counts, outputs = [], []
            for i, x in enumerate(xs):
                if i == 3:
                    _call(session, "test_state_change", {})
                before = (session.dealer.dealt_ahead, session.dealer.dealt_on_demand)
                outputs.append(_call(session, "test_ahead_pass", {"rows": 5}, x))
                counts.append((session.dealer.dealt_ahead - before[0], session.dealer.dealt_on_demand - before[1]))
            runs[ahead] = (counts, outputs, [s.channel.received for s in session.servers])
    (counts0, out0, seen0), (counts1, out1, seen1) = runs[0], runs[2 << 30]
    per_call = counts0[0][1]
    assert per_call > 10 and counts0 == [(0, per_call)] * 6
    # planned: the third call and, after the state change, the sixth
    assert [ahead > 0 for ahead, _ in counts1] == [False, False, True, False, False, True]
    assert all(ahead + on_demand == per_call for ahead, on_demand in counts1)
    for a, b in zip(out0, out1):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    for server0, server1 in zip(seen0, seen1):
        assert len(server0) == len(server1)
        for (peer_a, a), (peer_b, b) in zip(server0, server1):
            assert peer_a == peer_b and _same_payload(a, b)


def _same_payload(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_payload(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_payload(a[k], b[k]) for k in a)
    return a == b


def test_the_dealer_stays_within_its_bound_ahead(gen):
    """Requests larger than the bound are dealt on demand; the outputs do not change."""
    x = randn(gen, 5, 24)
    outputs, dealt = [], []
    for bound in (0, 20_000):
        with LocalSession(timeout=60, seed=b"\x08" * 16) as session:
            session.dealer.ahead_bytes = bound
            outputs.append([_call(session, "test_ahead_pass", {"rows": 5}, x) for _ in range(3)][-1])
            dealt.append((session.dealer.dealt_ahead, session.dealer.dealt_on_demand))
    (ahead0, on_demand0), (ahead1, on_demand1) = dealt
    assert ahead0 == 0 and ahead1 + on_demand1 == on_demand0
    assert ahead1 > 0 and on_demand1 > 2 * on_demand0 / 3            # the third call, split
    assert all(torch.equal(u, v) for u, v in zip(*outputs))


def test_an_operation_that_asks_for_other_than_its_plan_stops_with_a_clear_error(gen):
    """A bug guard: an operation declared repeatable whose requests change between calls
    fails at once, naming the request, instead of using material dealt for another."""
    with LocalSession(timeout=30) as session:
        for _ in range(2):
            _call(session, "test_ahead_drifting", {"rows": 3}, randn(gen, 3, 24))
        _WIDTH["cols"] = 16
        try:
            with pytest.raises(DealerAheadMismatch, match="last two calls"):
                _call(session, "test_ahead_drifting", {"rows": 3}, randn(gen, 3, 16))
        finally:
            _WIDTH["cols"] = 24


def test_a_plan_renumbers_the_requests_it_names():
    """Origins (index, kind, items) and fixed masks inside the operation move with it;
    those before it (a weight's mask prepared at deployment) stay."""
    book = ScheduleBook()
    params = {"mask_index": 3, "reuse_x": ((105, "square", (("shape", (2, 2)), ("mask_index", 104))), ""),
              "shape": (105, 3)}
    for first in (100, 200):
        assert book.begin(b"op", first) is None
        book.record(first + 7, "mul_fixed", _moved(params, first - 100))
    plan = book.begin(b"op", 300)
    assert plan == [(307, "mul_fixed", _moved(params, 200), 0)]
    assert plan[0][2]["mask_index"] == 3 and plan[0][2]["shape"] == (105, 3)


def _moved(params, by):
    origin, prefix = params["reuse_x"]
    items = (origin[2][0], ("mask_index", origin[2][1][1] + by))
    return {**params, "reuse_x": ((origin[0] + by, origin[1], items), prefix)}
