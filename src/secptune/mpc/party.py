"""The parties' contexts: a server (holds shares, runs protocols) and the data owner.

A `Server` is what every shared tensor carries: its name and index, its channel, its handle
on the dealer, the fixed-point encoding and the torch device.  Protocol code receives it
through the tensors and never reaches for a global.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .comm import DEALER, DEVELOPER, OWNER, SERVERS, Channel, CostTrace
from .dealer import DealerClient
from .prg import PRGStream
from .ring import FixedPoint
from .shared import SharedTensor


class RevealDenied(PermissionError):
    """A value was asked for by a party that may not see it."""


@dataclass(frozen=True)
class Config:
    """Settings both servers must agree on.

    frac_bits: fixed-point fractional bits (values are round(x * 2^frac_bits) in Z_2^64).
    compare_bits: comparisons are exact for |x| < 2^(compare_bits - 1) in ring units, i.e.
        |x| < 2^(compare_bits - 1 - frac_bits) in real terms (2^19 by default); the cost
        of a comparison's keys grows linearly with it.
    device: where the servers' shares live ("cpu", "cuda", ...).
    """

    frac_bits: int = 16
    compare_bits: int = 36
    device: str = "cpu"
    fixed_point: FixedPoint = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "fixed_point", FixedPoint(self.frac_bits))
        if not self.frac_bits + 2 <= self.compare_bits <= 62:
            raise ValueError(f"compare_bits must lie in [frac_bits + 2, 62], got {self.compare_bits}")


class Server:
    """One of the two computing servers, as its own program sees itself."""

    def __init__(self, index: int, channel: Channel, dealer_seed: bytes, input_seeds: dict[str, bytes],
                 config: Config):
        if channel.name != SERVERS[index]:
            raise ValueError(f"server {index} needs the channel of {SERVERS[index]}")
        self.index = index
        self.name = SERVERS[index]
        self.peer = SERVERS[1 - index]
        self.channel = channel
        self.config = config
        self.fp = config.fixed_point
        self.device = torch.device(config.device)
        self.dealer = DealerClient(index, dealer_seed, channel)
        #: the seeds server 0 shares with each input party (its input shares come from them)
        self._input_seeds = dict(input_seeds)
        self._inputs = {party: 0 for party in input_seeds}
        #: what a server keeps between runs: the developer's prepared weights, the owner's
        #: cached embedded inputs (keyed by whoever stores them)
        self.store: dict = {}
        #: with a recording channel, every value this server has opened (its view of the
        #: protocols beyond its own shares): tests check these are uniform, whatever the secrets
        self.opened: list[torch.Tensor] = []
        #: a dry run exchanges nothing and computes on meaningless values: it only draws the
        #: program's correlations from the dealer, in order (the offline phase)
        self.dry = False

    # --- costs -------------------------------------------------------------------------
    def cost(self) -> CostTrace:
        """`with server.cost() as c: ...` then c.online_bytes, c.rounds, c.dealer_bytes."""
        return CostTrace(self.channel.meter)

    @contextmanager
    def labelled(self, name: str):
        with self.channel.meter.labelled(name):
            yield

    # --- communication -----------------------------------------------------------------
    def open(self, shares: list[torch.Tensor]) -> list[torch.Tensor]:
        """One round: both servers learn the sums of their shares.  Only ever call this on
        masked values (see rounds.py); what it opens, both servers see."""
        if self.dry:
            return list(shares)
        theirs = self.channel.exchange(self.peer, [s.cpu() for s in shares])
        opened = [mine + other.to(self.device) for mine, other in zip(shares, theirs)]
        if self.channel.record:
            self.opened.extend(opened)
        return opened

    def input_from_owner(self, shape, frac: int | None = None):
        """This server's share of the owner's next input (the owner calls `InputParty.share`)."""
        return self.input_from(OWNER, shape, frac)

    def input_from(self, party: str, shape, frac: int | None = None):
        """This server's share of the next tensor `party` (the owner or the model developer)
        shares: server 0's comes from the seed it holds with that party, server 1's arrives."""
        frac = self.fp.frac_bits if frac is None else frac
        if self.dry:
            return SharedTensor(torch.zeros(shape, dtype=torch.int64, device=self.device), frac, self)
        if party not in self._inputs:
            raise ValueError(f"{party!r} is not an input party; input parties are {tuple(self._inputs)}")
        index = self._inputs[party]
        self._inputs[party] += 1
        if self.index == 0:
            share = PRGStream(self._input_seeds[party], index).ring(shape)
        else:
            share = self.channel.recv(party)
            if tuple(share.shape) != tuple(shape):
                raise ValueError(f"{party} input {index} has shape {tuple(share.shape)}, expected {tuple(shape)}")
        return SharedTensor(share.to(self.device), frac, self)

    def reveal_to(self, party: str, tensors) -> None:
        if party != OWNER:
            raise RevealDenied(
                f"{self.name} asked to reveal a shared value to {party!r}: values are revealed "
                f"only to the data owner ({OWNER!r}); servers see masked values only"
            )
        if not self.dry:
            self.channel.send(OWNER, [(t.share.cpu(), t.frac) for t in tensors])

    def stop_dealer(self) -> None:
        if self.index == 1:
            self.channel.send(DEALER, ("stop",))


class InputParty:
    """A party that secret-shares tensors with the servers: the data owner (its texts and
    prompts) or the model developer (its weights)."""

    def __init__(self, channel: Channel, seed: bytes, config: Config):
        self.channel = channel
        self.config = config
        self.fp = config.fixed_point
        self._seed = seed
        self._inputs = 0

    def share(self, x, frac: int | None = None) -> None:
        """Secret-share a real tensor: server 0's share comes from the seed it holds with this
        party, so only server 1 receives anything (its share, uniformly random to it)."""
        encoded = self.fp.encode(x, frac)
        index = self._inputs
        self._inputs += 1
        mask = PRGStream(self._seed, index).ring(encoded.shape)
        self.channel.send(SERVERS[1], encoded - mask)


class Developer(InputParty):
    """The model developer: shares its weights once; it receives nothing."""

    def __init__(self, channel: Channel, seed: bytes, config: Config):
        if channel.name != DEVELOPER:
            raise ValueError("the developer needs the developer's channel")
        super().__init__(channel, seed, config)


class Owner(InputParty):
    """The data owner: shares inputs with the servers and reconstructs what they reveal to it."""

    def __init__(self, channel: Channel, owner_seed: bytes, config: Config):
        if channel.name != OWNER:
            raise ValueError("the owner needs the owner's channel")
        super().__init__(channel, owner_seed, config)

    def receive(self) -> list[torch.Tensor]:
        """Reconstruct the values both servers revealed to the owner, as float64 tensors."""
        parts = [self.channel.recv(s) for s in SERVERS]
        if len(parts[0]) != len(parts[1]):
            raise RuntimeError("the servers revealed different numbers of values")
        out = []
        for (share0, frac0), (share1, frac1) in zip(*parts):
            if frac0 != frac1 or share0.shape != share1.shape:
                raise RuntimeError("the servers revealed mismatched shares")
            out.append(self.fp.decode(share0 + share1, frac0))
        return out
