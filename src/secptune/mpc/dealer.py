"""The dealer: correlated randomness from PRG seeds.

Each kind of correlated randomness (a Beaver triple, a truncation pair, DCF keys, ...) is
written once, as a *correlation*: a function that draws from a `Source`.  The same function
runs in three places:

- on server b, where `ring(shape)` is b's share drawn from b's own seed, and `dealt(...)`
  is a share of a value only the dealer can compute;
- on the dealer, where every draw yields both shares, so it can compute what the servers
  cannot (the product of the two random operands, the most significant bit of a mask, ...).

Server 0's shares of dealt values come from its seed, so server 0 receives nothing but its
seed; server 1 receives a correction (the dealt value minus server 0's share) for each dealt
value, in 1, 2 or 4 bytes for a value needed only modulo 2^b, b <= 8, 16 or 32.  Only
values that both servers must hold identically (the correction words of DCF keys) are sent
to both.  Requests are numbered in the order the servers make them (both run the same
program), and request i draws from the AES-CTR stream (seed, i).

Server 1 sends the dealer the request's number, kind and parameters (shapes, bit widths:
never data), the first time its correlation needs a dealt value.  When a server operation
repeats (a tuning pass), the dealer deals its requests ahead of time (`ahead.py`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .ahead import AHEAD_BYTES, DealerAheadMismatch, PlanFollower, ScheduleBook
from .comm import DEALER, SERVERS, Channel, payload_nbytes
from .prg import PRGStream
from .ring import narrow

CORRELATIONS: dict[str, Callable] = {}


def correlation(name: str):
    """Register a correlation function `fn(source, **params) -> dict` under a name."""

    def register(fn):
        if name in CORRELATIONS and CORRELATIONS[name] is not fn:
            raise ValueError(f"correlation {name!r} is registered twice")
        CORRELATIONS[name] = fn
        return fn

    return register


@dataclass
class Dealt:
    """On the dealer: both shares of a sharing it dealt."""

    share0: torch.Tensor
    share1: torch.Tensor

    @property
    def value(self) -> torch.Tensor:
        return self.share0 + self.share1


@dataclass
class Own:
    """On the dealer: each server's private random words (not a sharing)."""

    of0: np.ndarray
    of1: np.ndarray


class Source(ABC):
    """What a correlation draws from; see the module docstring."""

    @abstractmethod
    def ring(self, shape):
        """A fresh uniform sharing of a uniform ring tensor."""

    @abstractmethod
    def dealt(self, shape, compute: Callable[[], torch.Tensor], bits: int = 64):
        """A sharing of `compute()`, which only the dealer evaluates.  With `bits` <= 32 the
        shares add up to it modulo 2^bits only: server 1's correction travels, and is kept,
        as int8, int16 or int32 (`ring.narrow`), for a value the servers only ever use
        multiplied by a multiple of 2^(64 - bits) (a truncation mask's top bit, times
        2^(64 - s)), where the higher bits vanish mod 2^64 anyway."""

    @abstractmethod
    def own(self, shape):
        """Uniform uint64 words private to each server (the dealer knows both)."""

    @abstractmethod
    def common(self, compute: Callable[[], object]):
        """A value the dealer computes and sends to both servers."""

    @abstractmethod
    def replay(self, index: int, shape):
        """The dealer's view of the sharing drawn first by earlier request `index`
        (a fixed operand's mask); servers keep their own share and get None."""

    @abstractmethod
    def recall(self, origin):
        """The dealer's view of an earlier request's parts, origin = (index, kind, params as
        sorted items): the dealer re-runs that correlation from its seeds; servers keep
        their own shares and get None."""


class ServerSource(Source):
    def __init__(self, client: "DealerClient", index: int, kind: str, params: dict):
        self._client = client
        self._index = index
        self._kind = kind
        self._params = params
        self._prg = PRGStream(client.seed, index)
        self._inbox: list | None = None
        self._read = 0

    def _next_message(self):
        # read without consuming: in one process the message is the dealer's own list
        if self._inbox is None:
            self._inbox = self._client.fetch(self._index, self._kind, self._params)
        self._read += 1
        return self._inbox[self._read - 1]

    def ring(self, shape):
        return self._prg.ring(shape)

    def dealt(self, shape, compute, bits=64):
        if self._client.party == 0:
            return self._prg.ring(shape)
        return self._next_message()          # narrowed by the dealer where bits allow

    def own(self, shape):
        return self._prg.uint64(shape)

    def common(self, compute):
        return self._next_message()

    def replay(self, index, shape):
        return None

    def recall(self, origin):
        return None


class DealerSource(Source):
    def __init__(self, dealer: "Dealer", index: int):
        self._dealer = dealer
        self._prg = (PRGStream(dealer.seeds[0], index), PRGStream(dealer.seeds[1], index))
        self.to0: list = []
        self.to1: list = []

    def ring(self, shape):
        return Dealt(self._prg[0].ring(shape), self._prg[1].ring(shape))

    def dealt(self, shape, compute, bits=64):
        value = compute()
        share0 = self._prg[0].ring(shape)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"dealt value of shape {tuple(value.shape)}, declared {tuple(shape)}")
        share1 = value - share0
        self.to1.append(narrow(share1, bits))
        return Dealt(share0, share1)          # the dealer's view: the exact value

    def own(self, shape):
        return Own(self._prg[0].uint64(shape), self._prg[1].uint64(shape))

    def common(self, compute):
        value = compute()
        self.to0.append(value)
        self.to1.append(value)
        return value

    def replay(self, index, shape):
        return self._dealer.replay(index, shape)

    def recall(self, origin):
        index, kind, items = origin
        return CORRELATIONS[kind](DealerSource(self._dealer, index), **dict(items))


class PreprocessingMismatch(RuntimeError):
    """The program asked for other correlations than were preprocessed for it."""


class DealerClient:
    """A server's handle on the dealer: runs correlations on its side of the protocol.

    Offline/online split: while `recording`, every correlation dealt is also kept; `load`
    turns what was recorded into a stash that later `deal` calls consume in order (checking
    that each asks for the same kind and parameters), with no work and no dealer traffic.
    """

    def __init__(self, party: int, seed: bytes, channel: Channel):
        self.party = party
        self.seed = seed
        self.channel = channel
        self.requests = 0
        self.last_index = -1
        self.recording: list | None = None
        self.stash: deque = deque()
        self._plan = PlanFollower() if party == 1 else None

    def begin(self, op: str | None = None, key=None) -> None:
        """A server operation starts: `op` and its plan key if it leaves the servers' state
        as it found it (a later call with an equal key asks for the same correlations, which
        the dealer can deal ahead), else None.  Server 1 tells the dealer."""
        if self._plan is not None:
            digest = self._plan.begin(op, key, self.requests)
            if digest is not None:
                self.channel.send(DEALER, ("op", digest, self.requests))

    def deal(self, kind: str, **params) -> dict:
        if self.stash:
            index, want_kind, want_params, parts = self.stash.popleft()
            if (want_kind, want_params) != (kind, params):
                raise PreprocessingMismatch(
                    f"preprocessed a {want_kind!r} correlation {want_params}, but the program asks "
                    f"for {kind!r} {params}: preprocess the same program with the same shapes")
            self.last_index = index
            return parts
        index = self.requests
        self.requests += 1
        self.last_index = index
        parts = CORRELATIONS[kind](ServerSource(self, index, kind, params), **params)
        if self.recording is not None:
            self.recording.append((index, kind, params, parts))
        return parts

    def load(self) -> int:
        """Move what was recorded into the stash; returns how many correlations it holds."""
        self.stash.extend(self.recording or [])
        self.recording = None
        return len(self.stash)

    def fetch(self, index: int, kind: str, params: dict) -> list:
        if self.party == 1:
            self._plan.check(index, kind, params)
            self.channel.send(DEALER, ("deal", index, kind, params))
        return self.channel.recv(DEALER)


class Dealer:
    """The dealer party: answers server 1's requests until told to stop, dealing a repeated
    operation's requests ahead of them (see `ahead.py`), at most `ahead_bytes` ahead."""

    def __init__(self, seeds: tuple[bytes, bytes], channel: Channel, replay_cache: int = 8,
                 ahead_bytes: int = AHEAD_BYTES):
        self.seeds = seeds
        self.channel = channel
        self._replays: OrderedDict = OrderedDict()
        self._replay_cache = replay_cache
        self.ahead_bytes = ahead_bytes
        self._book = ScheduleBook()
        self._plan: deque = deque()          # planned requests not yet dealt
        self._ahead: deque = deque()         # dealt ahead, not yet asked for
        self._ahead_total = 0
        #: requests dealt ahead of server 1's asking, and on demand; seconds spent dealing
        #: (for logs, benchmarks and tests)
        self.dealt_ahead = 0
        self.dealt_on_demand = 0
        self.busy_seconds = 0.0

    def replay(self, index: int, shape) -> Dealt:
        key = (index, tuple(shape))
        if key not in self._replays:
            source = DealerSource(self, index)
            self._replays[key] = source.ring(shape)
            if len(self._replays) > self._replay_cache:
                self._replays.popitem(last=False)
        return self._replays[key]

    def answer(self, index: int, kind: str, params: dict) -> int:
        """Deal request `index`; returns the bytes sent to both servers."""
        start = time.perf_counter()
        source = DealerSource(self, index)
        CORRELATIONS[kind](source, **params)
        sent = 0
        if source.to0:
            self.channel.send(SERVERS[0], source.to0)
            sent += payload_nbytes(source.to0)
        self.channel.send(SERVERS[1], source.to1)
        self.busy_seconds += time.perf_counter() - start
        return sent + payload_nbytes(source.to1)

    def serve(self) -> None:
        """Answer requests until server 1 says stop."""
        while True:
            message = self._next_message()
            if message[0] == "stop":
                return
            if message[0] == "op":
                self._begin(message[1] or None, message[2])
            else:
                self._deal(*message[1:])

    def _next_message(self):
        """Server 1's next message; while none has come, deal the plan ahead."""
        while self._plan and self._ahead_total + self._plan[0][3] <= self.ahead_bytes:
            message = self.channel.poll(SERVERS[1])
            if message is not None:
                return message
            index, kind, params, _ = request = self._plan.popleft()
            nbytes = self.answer(index, kind, params)
            self._ahead.append(request[:3] + (nbytes,))
            self._ahead_total += nbytes
            self.dealt_ahead += 1
        return self.channel.recv(SERVERS[1])

    def _begin(self, digest: bytes | None, first: int) -> None:
        if self._ahead:
            raise DealerAheadMismatch(f"dealer: {len(self._ahead)} requests dealt ahead were never asked for")
        self._plan = deque(self._book.begin(digest, first) or [])

    def _deal(self, index: int, kind: str, params: dict) -> None:
        if self._ahead:
            dealt = self._ahead.popleft()
            if dealt[:3] != (index, kind, params):
                raise DealerAheadMismatch(f"dealer: dealt {dealt[1]!r} {dealt[2]} ahead as request {dealt[0]}, "
                                          f"but server 1 asks for {kind!r} {params} as request {index}")
            self._ahead_total -= dealt[3]
            self._book.record(index, kind, params, dealt[3])
            return
        if self._plan:
            if self._plan[0][:3] == (index, kind, params):
                self._plan.popleft()
            else:                            # nothing of it was dealt: drop it (server 1 stops too)
                self._plan.clear()
        nbytes = self.answer(index, kind, params)
        self.dealt_on_demand += 1
        self._book.record(index, kind, params, nbytes)
