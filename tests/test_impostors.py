"""Parties that stay up: whoever can reach a listening port (no listed key, or a listed key on
another party's link) cannot abort a session or block a later one, and a listed peer's
malformed message fails only the session it was sent in.

Loopback only.  The networked runs use `test_network`'s deployment (four `secptune serve`
processes on a tiny random-weight BERT) and its fixed test seeds, so that a disturbed run can
be compared bit for bit with an undisturbed one."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

from secptune.mpc.comm import PeerFailed
from secptune.parties import Parties, RemoteSession
from secptune.mpc.keys import load_pair, load_public, make_keys
from secptune.mpc.network import (HANDSHAKE_TIMEOUT, NetworkChannel, Transport, binds, link_endpoint,
                                  peers_of)
from secptune.mpc.wire import WireError
from secptune.tuning.job import TuneJob, run_job
from test_network import SMALL, TEST_SEED, Deployment, loopback_addresses, write_parties

IDLE_CONNECTIONS = 200


def listening_ports(addresses: dict[str, str]) -> list[tuple[str, str, int]]:
    """(listener, the peer its port is for, port) of every listening socket of a deployment."""
    out = []
    for party, address in addresses.items():
        for peer in peers_of(party):
            if binds(party, peer):
                out.append((party, peer, int(link_endpoint(address, peer).rsplit(":", 1)[1])))
    return out


class Impostors:
    """Every kind of unauthenticated visitor on every listening port, until `stop()`: bare
    connect-and-close, raw garbage, a ZMTP greeting without CURVE (a NULL-mechanism DEALER that
    even claims the peer's routing id), CURVE with a key not in parties.toml, CURVE with a
    listed party's real key on another party's link, and IDLE_CONNECTIONS idle connections
    that are reopened as the listener drops them."""

    def __init__(self, ports, keys):
        self.ports, self.keys = ports, keys
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.idle: list[socket.socket] = []
        self.rounds = 0
        self._stop = threading.Event()
        stranger_public, stranger_secret = zmq.curve_keypair()
        developer = load_pair(keys / "developer.key_secret")
        for listener, peer, port in ports:
            server_key = load_public(keys / f"{listener}.key")
            null = self._socket(peer)
            null.connect(f"tcp://127.0.0.1:{port}")
            for public, secret in ((stranger_public, stranger_secret), (developer.public, developer.secret)):
                if peer == "developer" and public == developer.public:
                    continue                                 # that one is the listed key of this link
                s = self._socket(peer)
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = public, secret, server_key
                s.connect(f"tcp://127.0.0.1:{port}")
        self._thread = threading.Thread(target=self._visit, daemon=True)
        self._thread.start()

    def _socket(self, routing_id: str) -> zmq.Socket:
        s = self.context.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 200)
        s.setsockopt(zmq.ROUTING_ID, routing_id.encode())
        self.sockets.append(s)
        return s

    def _visit(self):
        garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8
        while not self._stop.is_set():
            for _, _, port in self.ports:
                for payload in (b"", garbage, b"\xff" + bytes(9) + b"\x7f\x03\x01NULL" + bytes(48)):
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                            if payload:
                                c.sendall(payload)
                    except OSError:
                        pass
            # idle connections: topped up to IDLE_CONNECTIONS (a listener drops each after
            # HANDSHAKE_TIMEOUT s); those it dropped are closed here
            self.idle = [c for c in self.idle if not _closed_by_peer(c)]
            while len(self.idle) < IDLE_CONNECTIONS:
                _, _, port = self.ports[len(self.idle) % len(self.ports)]
                try:
                    self.idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
            self.rounds += 1
            self._stop.wait(0.3)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        for c in self.idle:
            c.close()
        for s in self.sockets:
            s.close(linger=0)
        self.context.term()


def _closed_by_peer(c: socket.socket) -> bool:
    c.setblocking(False)
    try:
        gone = c.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        gone = False
    except OSError:
        gone = True
    if gone:
        c.close()
    return gone


def _outcome(results: dict) -> dict:
    return {"losses": [(g["loss_min"], g["loss_mean"], g["dev_accuracy"]) for g in results["generations"]],
            "accuracy": results["accuracy"], "predictions": results["test_predictions"]}


@pytest.mark.slow
def test_impostors_on_every_port_change_no_run_nor_the_next(tmp_path, tiny_bert):
    d = Deployment(tmp_path, tiny_bert)
    d.start("server0", "server1", "dealer", "developer")
    job = TuneJob(model=str(tiny_bert), **SMALL)
    impostors = None
    try:
        with RemoteSession(Parties.load(d.parties), test_seed=TEST_SEED) as session:
            undisturbed = _outcome(run_job(job, tmp_path / "undisturbed", session=session))
        impostors = Impostors(listening_ports(d.addresses), d.keys)
        # the impostors are at it while the parties are idle, longer than a handshake may take
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT + 2
        while (impostors.rounds < 3 or time.monotonic() < deadline) and time.monotonic() < deadline + 60:
            time.sleep(0.2)
        assert len(impostors.idle) == IDLE_CONNECTIONS
        with RemoteSession(Parties.load(d.parties), test_seed=TEST_SEED) as session:
            beside = _outcome(run_job(job, tmp_path / "beside", session=session))
        rounds = impostors.rounds
        impostors.stop()
        impostors = None
        assert rounds > 5                        # they kept at it all through the run
        with RemoteSession(Parties.load(d.parties), test_seed=TEST_SEED) as session:
            after = _outcome(run_job(job, tmp_path / "after", session=session))
        assert beside == undisturbed and after == undisturbed
        for role in ("server0", "server1", "dealer", "developer"):
            assert d.procs[role].poll() is None, d.log(role)
            assert "ended:" not in d.log(role), d.log(role)         # no session of theirs failed
    finally:
        if impostors is not None:
            impostors.stop()
        d.stop()


# -- a listed peer's malformed messages ------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    """server0 listening for the owner and the owner connected, in this process; messages as
    small as 1 MB (max_message_mb) so that an oversized one is cheap."""
    make_keys(tmp_path / "keys")
    parties = Parties.load(write_parties(tmp_path, tmp_path / "keys", loopback_addresses(), max_message_mb=1))
    with parties.transport("server0") as server0, parties.transport("owner") as owner:
        owner.wait_connected(["server0"], 20)
        server0.wait_connected(["owner"], 20)
        yield server0, owner


def _raw(owner: Transport, *frames: bytes) -> None:
    """Send frames exactly as given (past `Transport.send`'s checks), as a faulty peer would."""
    owner._outlet.send_multipart([b"server0", *frames])


def _next_session_works(server0: Transport, owner: Transport, session: str) -> None:
    owner.wait_connected(["server0"], 20)
    NetworkChannel(owner, session).send("server0", {"x": 1})
    assert NetworkChannel(server0, session, timeout=20, watch=["owner"]).recv("owner") == {"x": 1}


def _fails_in_one_line(channel: NetworkChannel, match: str, within: float) -> None:
    t0 = time.monotonic()
    with pytest.raises(PeerFailed, match=match) as caught:
        channel.recv("owner")
    assert "\n" not in str(caught.value) and time.monotonic() - t0 < within


@pytest.mark.parametrize("envelope", [
    b'{"s":"a","k":"data","h":' + b"[" * 200_000 + b"]" * 200_000 + b"}",      # past json's recursion
    b'{"s":"a","k":"data","h":' + b'{"L":[' * 100 + b"1" + b"]}" * 100 + b"}",   # parses; too deep to decode
    b'{"s":"a","k":"data","h":{"T":7,"dtype":"int64","shape":[2]}}',          # names a frame it lacks
    b"\x80\x04\x95 not json",
    b'["s","k","h"]',
], ids=["nested-200000", "nested-100", "missing-frame", "not-json", "not-an-envelope"])
def test_a_malformed_message_fails_its_session_only(pair, envelope):
    server0, owner = pair
    channel = NetworkChannel(server0, "a", timeout=20, watch=["owner"])
    _raw(owner, envelope)
    _fails_in_one_line(channel, "malformed message", within=10)
    assert server0._thread.is_alive() and server0._failure is None
    _next_session_works(server0, owner, "b")


def test_an_oversized_message_fails_its_session_and_the_peer_reconnects(pair):
    server0, owner = pair
    with pytest.raises(WireError, match="exceeds max_message"):        # a party refuses to send one
        NetworkChannel(owner, "a").send("server0", bytes(2 << 20))
    channel = NetworkChannel(server0, "a", timeout=20, watch=["owner"])
    _raw(owner, b'{"s":"a","k":"data","h":{"B":0}}', bytes(2 << 20))   # libzmq closes the connection
    _fails_in_one_line(channel, "lost the connection to owner", within=10)
    assert server0._thread.is_alive() and server0._failure is None
    _next_session_works(server0, owner, "b")
