"""Communicators: how a party's messages reach the others, and what they cost.

A party names its peers "server0", "server1", "dealer", "owner" and "developer".  A communicator moves
payloads (tensors, numpy arrays, bytes, or lists and dicts of them) and counts every byte
it sends and receives, by link kind and by the protocol label active at the time:

- online: server <-> server traffic, the cost of the secure computation itself; a round is
  one exchange, in which both servers send before either receives;
- dealer: correlated randomness from the dealer (the offline phase);
- io: the data owner's inputs to the servers and the outputs revealed to it, and the model
  developer's shared weights.

`InProcessHub` connects parties running as threads in one process (tests, default run).
`network.NetworkChannel` implements the same `Channel` interface over ZeroMQ with CURVE.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np
import torch

SERVERS = ("server0", "server1")
DEALER = "dealer"
OWNER = "owner"
DEVELOPER = "developer"
PARTIES = SERVERS + (DEALER, OWNER, DEVELOPER)
#: what `Channel._poll` returns when no message has arrived
NOTHING = object()


class PeerTimeout(TimeoutError):
    """A peer did not send within the communicator's timeout."""


class PeerFailed(PeerTimeout):
    """Waiting stopped because another party failed (a consequence, not the cause)."""


def payload_nbytes(obj) -> int:
    """Bytes a payload occupies on the wire (its raw buffers)."""
    if obj is None:
        return 0
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, (list, tuple)):
        return sum(payload_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(payload_nbytes(o) for o in obj.values())
    if isinstance(obj, (int, float, bool, str)):
        return 8
    if hasattr(obj, "nbytes"):
        return int(obj.nbytes)
    raise TypeError(f"cannot size a payload of type {type(obj).__name__}")


@dataclass
class Cost:
    """What a piece of computation cost one party (counts of its own sends and receives)."""

    online_bytes: int = 0
    rounds: int = 0
    dealer_bytes: int = 0
    io_bytes: int = 0
    seconds: float = 0.0
    #: secure comparisons (a DCF key pair each): what most dealer bytes pay for
    comparisons: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    @property
    def bytes(self) -> int:
        """Online bytes (both directions of the server link)."""
        return self.online_bytes

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def servers_cost(s0: Cost, s1: Cost) -> Cost:
    """One computation's cost from both servers' own counts: server 0's view of the online
    link (both directions) and rounds, the dealer's traffic to both servers, both servers'
    input/output traffic, the slower server's time and the comparisons (both servers run
    the same ones)."""
    return Cost(online_bytes=s0.online_bytes, rounds=s0.rounds, dealer_bytes=s0.dealer_bytes + s1.dealer_bytes,
                io_bytes=s0.io_bytes + s1.io_bytes, seconds=max(s0.seconds, s1.seconds), comparisons=s0.comparisons)


@dataclass
class CostMeter:
    """Per-label running totals; labels nest ("attention/softmax/exp")."""

    totals: dict = field(default_factory=lambda: defaultdict(Cost))
    _labels: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return "/".join(self._labels)

    def add(self, **counts) -> None:
        cost = self.totals[self.label]
        for k, v in counts.items():
            setattr(cost, k, getattr(cost, k) + v)

    def total(self, prefix: str | None = None) -> Cost:
        out = Cost()
        for label, c in self.totals.items():
            if prefix is None or label == prefix or label.startswith(prefix + "/"):
                out = out + c
        return out

    @contextmanager
    def labelled(self, name: str):
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    def by_top_label(self) -> dict[str, Cost]:
        """Totals per outermost label ("softmax" for "softmax/exp/square", ...)."""
        return group_costs(self.totals, lambda label: label.split("/")[0] or "(unlabelled)")

    def snapshot(self) -> dict[str, Cost]:
        """A copy of the per-label totals (subtract two with `cost_difference`)."""
        return {label: Cost(**c.as_dict()) for label, c in self.totals.items()}


COST_CATEGORIES = ("attention", "gelu", "layernorm", "matmul", "other")


def cost_category(label: str) -> str:
    """Where a labelled cost goes in a transformer's breakdown: the attention's non-linear
    part (softmax, or RFA's cosine, norms and normaliser), GeLU, LayerNorm, products with
    weights or between activations (matmul), and the rest (embedding lookup, head, ...)."""
    parts = label.split("/")
    if "gelu" in parts:
        return "gelu"
    if "layernorm" in parts:
        return "layernorm"
    if parts[-1] in ("matmul", "linear"):
        return "matmul"
    return "attention" if parts[0] == "attention" else "other"


def group_costs(per_label: dict[str, Cost], key) -> dict[str, Cost]:
    out: dict[str, Cost] = defaultdict(Cost)
    for label, c in per_label.items():
        out[key(label)] = out[key(label)] + c
    return dict(out)


def cost_difference(after: dict[str, Cost], before: dict[str, Cost]) -> dict[str, Cost]:
    """Per-label cost between two snapshots (labels that did not change are left out)."""
    out = {}
    for label, c in after.items():
        d = c - before.get(label, Cost())
        if any(d.as_dict().values()):
            out[label] = d
    return out


class CostTrace:
    """Cost of a block of code, filled in when the block exits (`with party.cost() as c`)."""

    def __init__(self, meter: CostMeter):
        self._meter = meter
        self._start: Cost | None = None
        self._t0 = 0.0
        self.result = Cost()

    def __enter__(self):
        self._start = self._meter.total()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.result = self._meter.total() - self._start
        self.result.seconds = time.perf_counter() - self._t0
        return False

    def __getattr__(self, name):
        if name.startswith("_") or name == "result":
            raise AttributeError(name)
        return getattr(self.result, name)


def _link_kind(me: str, peer: str) -> str:
    if me in SERVERS and peer in SERVERS:
        return "online"
    if DEALER in (me, peer):
        return "dealer"
    return "io"


class Channel(ABC):
    """A party's endpoint: send to and receive from named peers, counting bytes."""

    def __init__(self, name: str, timeout: float = 120.0, record: bool = False):
        if name not in PARTIES:
            raise ValueError(f"unknown party {name!r}; parties are {PARTIES}")
        self.name = name
        self.timeout = timeout
        self.meter = CostMeter()
        self.record = record
        self.received: list[tuple[str, object]] = []

    @abstractmethod
    def _send(self, peer: str, payload) -> None: ...

    @abstractmethod
    def _recv(self, peer: str): ...

    @abstractmethod
    def _poll(self, peer: str):
        """The next message from `peer` if one has arrived, else `NOTHING`; never waits."""

    def send(self, peer: str, payload) -> None:
        kind = _link_kind(self.name, peer)
        self.meter.add(**{f"{kind}_bytes": payload_nbytes(payload)})
        self._send(peer, payload)

    def recv(self, peer: str):
        return self._counted(peer, self._recv(peer))

    def poll(self, peer: str):
        """The next message from `peer` if one has arrived, else None, without waiting."""
        payload = self._poll(peer)
        return None if payload is NOTHING else self._counted(peer, payload)

    def _counted(self, peer: str, payload):
        kind = _link_kind(self.name, peer)
        self.meter.add(**{f"{kind}_bytes": payload_nbytes(payload)})
        if self.record:
            self.received.append((peer, payload))
        return payload

    def exchange(self, peer: str, payload):
        """One round: send ours, receive theirs."""
        self.send(peer, payload)
        out = self.recv(peer)
        if _link_kind(self.name, peer) == "online":
            self.meter.add(rounds=1)
        return out


class InProcessHub:
    """Queues between parties living in one process (one thread each)."""

    def __init__(self, timeout: float = 120.0, record: bool = False):
        self.timeout = timeout
        self.record = record
        self._queues: dict[tuple[str, str], queue.Queue] = defaultdict(queue.Queue)
        self._lock = threading.Lock()
        self.failed = threading.Event()

    def queue(self, src: str, dst: str) -> queue.Queue:
        with self._lock:
            return self._queues[(src, dst)]

    def channel(self, name: str) -> "InProcessChannel":
        return InProcessChannel(self, name, timeout=self.timeout, record=self.record)


class InProcessChannel(Channel):
    def __init__(self, hub: InProcessHub, name: str, timeout: float, record: bool):
        super().__init__(name, timeout, record)
        self.hub = hub

    def _send(self, peer: str, payload) -> None:
        self.hub.queue(self.name, peer).put(payload)

    def _poll(self, peer: str):
        try:
            return self.hub.queue(peer, self.name).get_nowait()
        except queue.Empty:
            if self.hub.failed.is_set():
                raise PeerFailed(f"{self.name}: another party failed; gave up waiting for {peer}") from None
            return NOTHING

    def _recv(self, peer: str):
        q = self.hub.queue(peer, self.name)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if self.hub.failed.is_set():
                    raise PeerFailed(f"{self.name}: another party failed; gave up waiting for {peer}") from None
                if time.monotonic() > deadline:
                    raise PeerTimeout(
                        f"{self.name}: no message from {peer} within {self.timeout:.0f} s"
                    ) from None
