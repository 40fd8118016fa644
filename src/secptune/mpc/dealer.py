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
value.  Only values that both servers must hold identically (the correction words of DCF
keys) are sent to both.  Requests are numbered in the order the servers make them (both run
the same program), and request i draws from the AES-CTR stream (seed, i).

Server 1 sends the dealer the request's number, kind and parameters (shapes, bit widths:
never data), the first time its correlation needs a dealt value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .comm import DEALER, SERVERS, Channel
from .prg import PRGStream

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
    def dealt(self, shape, compute: Callable[[], torch.Tensor]):
        """A sharing of `compute()`, which only the dealer evaluates."""

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

    def dealt(self, shape, compute):
        if self._client.party == 0:
            return self._prg.ring(shape)
        return self._next_message()

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

    def dealt(self, shape, compute):
        value = compute()
        share0 = self._prg[0].ring(shape)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"dealt value of shape {tuple(value.shape)}, declared {tuple(shape)}")
        share1 = value - share0
        self.to1.append(share1)
        return Dealt(share0, share1)

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
            self.channel.send(DEALER, ("deal", index, kind, params))
        return self.channel.recv(DEALER)


class Dealer:
    """The dealer party: answers server 1's requests until told to stop."""

    def __init__(self, seeds: tuple[bytes, bytes], channel: Channel, replay_cache: int = 8):
        self.seeds = seeds
        self.channel = channel
        self._replays: OrderedDict = OrderedDict()
        self._replay_cache = replay_cache

    def replay(self, index: int, shape) -> Dealt:
        key = (index, tuple(shape))
        if key not in self._replays:
            source = DealerSource(self, index)
            self._replays[key] = source.ring(shape)
            if len(self._replays) > self._replay_cache:
                self._replays.popitem(last=False)
        return self._replays[key]

    def answer(self, index: int, kind: str, params: dict) -> None:
        source = DealerSource(self, index)
        CORRELATIONS[kind](source, **params)
        if source.to0:
            self.channel.send(SERVERS[0], source.to0)
        self.channel.send(SERVERS[1], source.to1)

    def serve(self) -> None:
        """Answer requests until server 1 says stop."""
        while True:
            message = self.channel.recv(SERVERS[1])
            if message[0] == "stop":
                return
            _, index, kind, params = message
            self.answer(index, kind, params)
