"""The data owner's `RemoteSession`: its session with servers, dealer and developer on other
hosts, the interface a `SecureScorer` uses on a `LocalSession`."""

from __future__ import annotations

import secrets
from pathlib import Path

from ..models.deployment import ModelCard
from ..mpc.comm import DEVELOPER, OWNER, SERVERS, Cost
from ..mpc.network import NetworkChannel, Transport
from ..mpc.party import Owner
from ..mpc.prg import derive_seed, new_seed
from ..tuning.developer import DeploymentRequest
from .file import Parties
from .handshake import HandshakeRefused, check_hello, hello


class RemoteSession:
    """The data owner's session with servers, dealer and developer on other hosts: the same
    interface a `SecureScorer` uses on a `LocalSession` (`owner`, `config`, `call`), plus
    `request_model`, the developer's deployment for the owner's public settings.

    `test_seed` (INSECURE, tests only): derive every party's seeds from this one, as
    `LocalSession(seed=...)` does, so that a run is bit-identical to the in-process one."""

    def __init__(self, parties: Parties, secret_key: str | Path | None = None, test_seed: bytes | None = None,
                 record: bool = False, transport: Transport | None = None):
        self.parties = parties
        self.config = parties.config
        self.transport = transport or parties.transport(OWNER, secret_key)
        self._closed = False
        try:
            self._begin(test_seed, record)
        except BaseException:
            self.transport.close()
            self._closed = True
            raise

    def _begin(self, test_seed, record) -> None:
        p = self.parties
        partners = (*SERVERS, DEVELOPER)
        self.transport.wait_connected(list(partners), p.connect_timeout)
        self.session_id = secrets.token_hex(8)
        self.channel = NetworkChannel(self.transport, self.session_id, p.message_timeout, record, watch=partners)
        mine = hello(OWNER, p, p.model, test_seed is not None)
        for party in partners:
            self.channel.send_control(party, "begin", {"hello": mine, "test_seed": test_seed})
        try:
            self.hellos = {party: self.channel.recv_control(party, expect="hello")[1] for party in partners}
            for party, theirs in self.hellos.items():
                check_hello(OWNER, mine, party, theirs)
        except HandshakeRefused as exc:
            self.channel.abort(str(exc))
            raise
        self.model_fingerprint = self.hellos[DEVELOPER]["model"]
        seed = derive_seed(test_seed, "owner0") if test_seed is not None else new_seed()
        self.channel.send_control(SERVERS[0], "seed", seed)
        self.owner = Owner(self.channel, seed, self.config)

    def request_model(self, request: DeploymentRequest):
        """Ask the developer to calibrate for `request` (the owner's public settings) and
        deploy; returns (ModelCard, calibrated ranges or None)."""
        self.channel.send_control(DEVELOPER, "deploy", request.to_wire())
        _, reply = self.channel.recv_control(DEVELOPER, expect="card")
        return ModelCard.from_wire(reply["card"]), reply["calibration"]

    def call(self, op: str, params: dict, owner_work=None):
        """Run server operation `op` on both servers and `owner_work()` here (see
        `LocalSession.call`); the servers report each operation's costs."""
        for server in SERVERS:
            self.channel.send_control(server, "call", {"op": op, "params": params})
        out = owner_work() if owner_work is not None else None
        costs = {}
        for server in SERVERS:
            _, report = self.channel.recv_control(server, expect="done")
            costs[server] = (Cost(**report["cost"]), {k: Cost(**v) for k, v in report["labels"].items()})
        return out, costs

    def wire_bytes(self) -> dict:
        return {peer: dict(counts) for peer, counts in self.transport.wire_bytes.items()}

    def close(self, failure: BaseException | None = None) -> None:
        """End the session (after a failure: tell the other parties why)."""
        if self._closed:
            return
        self._closed = True
        if failure is not None:
            self.channel.abort(f"the owner failed: {failure}")
        else:
            for party in (*SERVERS, DEVELOPER):
                self.channel.send_control(party, "end")
        self.transport.close()       # hands what is queued over before the sockets close

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(exc)
        return False
