"""Gates: protocol steps that each open masked values in one round, and can share a round.

A gate asks the dealer for its correlated randomness when it is built, offers this server's
shares of the masked values it needs opened (`masked()`), and turns the opened values into
its result (`finish(opened)`).  `run_round` opens the values of several independent gates in
one exchange, so that, for example, the query, key and value truncations of an attention
layer cost one round together.  Every opened value is a secret plus a fresh uniform mask
over the whole ring: uniformly random to the server that sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Gate(ABC):
    server = None

    @abstractmethod
    def masked(self) -> list[torch.Tensor]:
        """This server's shares of the masked values to open."""

    @abstractmethod
    def finish(self, opened: list[torch.Tensor]):
        """The gate's result, from the opened values."""


def run_round(*gates: Gate) -> list:
    """Open the masked values of all gates in a single round; return each gate's result."""
    if not gates:
        return []
    server = gates[0].server
    messages = [g.masked() for g in gates]
    flat = [m for msgs in messages for m in msgs]
    opened = server.open(flat) if flat else []      # gates on reused openings need no round
    results, at = [], 0
    for gate, msgs in zip(gates, messages):
        results.append(gate.finish(opened[at:at + len(msgs)]))
        at += len(msgs)
    return results


def run_gate(gate: Gate):
    return run_round(gate)[0]
