"""The in-process session: errors surface promptly and clearly, never as a hang."""

from __future__ import annotations

import pytest
import torch

from secptune.mpc import Config, LocalSession, PeerTimeout
from secptune.mpc.netmodel import LAN, WAN_100, WAN_200
from secptune.mpc.comm import Cost, PeerFailed


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
