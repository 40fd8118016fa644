"""Engine benchmark: BERT-base-shaped secure operations, timed and costed.

Each operation runs on fresh random inputs shared by the owner; what is timed and counted
is the operation alone (sharing the inputs and revealing the output are not), with all four
parties as threads of this process on this machine's cores.  Two times: with the dealer
computing its correlations inline (its work inside the time, as CrypTen's trusted first
party's is), and the online phase alone (the correlations dealt beforehand by
`LocalSession.preprocess`).  Reported: median times over the runs, online bytes (the server
link, both directions), rounds, dealer bytes, projected time on the paper's LAN and WANs
(network model, from the online time), and the max abs error against float64 on the same
(encoded) inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .comm import SERVERS, Cost
from .netmodel import NETWORKS
from .party import Config
from .protocols import layer_norm, prepare, sincos
from .session import LocalSession


@dataclass
class Operation:
    name: str
    shapes: list[tuple]
    scale: float
    secure: Callable            # (server, *shared inputs) -> shared output
    reference: Callable         # (*float64 inputs) -> float64 output
    note: str = ""
    #: (server, *shared inputs) -> the inputs `secure` gets instead, once per run and not
    #: timed (what a deployment prepares once: a weight opened under a fixed mask)
    setup: Callable | None = None
    #: (generator) -> the float64 inputs, in place of N(0, scale^2) entries of `shapes`
    draw: Callable | None = None


def _gelu(x):
    return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _prepare_weight(server, x, w):
    return x, prepare(w)


OPERATIONS = {
    "matmul": Operation("matmul", [(128, 768), (768, 768)], 1.0,
                        lambda s, x, w: x @ w, lambda x, w: x @ w,
                        "both operands shared; result pending (truncation folded into its consumer)"),
    "matmul+trunc": Operation("matmul+trunc", [(128, 768), (768, 768)], 1.0,
                              lambda s, x, w: (x @ w).truncate(), lambda x, w: x @ w,
                              "with an explicit truncation round"),
    "matmul-prepared": Operation("matmul-prepared", [(128, 768), (768, 768)], 1.0,
                                 lambda s, x, w: x @ w, lambda x, w: x @ w,
                                 "weight opened once under a fixed mask (not timed); x opened only",
                                 setup=_prepare_weight),
    "softmax": Operation("softmax", [(12, 128, 128)], 2.0,
                         lambda s, x: x.softmax(-1), lambda x: torch.softmax(x, -1)),
    "gelu": Operation("gelu", [(128, 3072)], 1.0,
                      lambda s, x: x.gelu().truncate(), _gelu),
    "layernorm": Operation("layernorm", [(128, 768)], 1.0,
                           lambda s, x: layer_norm(x).truncate(),
                           lambda x: torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-5),
                           "no affine weight (as the CrypTen peer)"),
    "cosine": Operation("cosine", [(128, 4096)], 1.0,
                        lambda s, x: sincos(x)[1], torch.cos,
                        "Pi_cosine; result pending at 32 fractional bits"),
}


@dataclass
class Measurement:
    name: str
    seconds: float
    online_seconds: float
    online_bytes: int
    rounds: int
    dealer_bytes: int
    max_abs_error: float
    projected: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    online_runs: list = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _quantised(x: torch.Tensor, frac: int) -> torch.Tensor:
    return torch.round(x * 2.0 ** frac) / 2.0 ** frac


def measure(op: Operation, runs: int = 5, seed: int = 0, config: Config | None = None) -> Measurement:
    """Warm up once, then time `runs` runs on fresh inputs, each once with the dealer inline
    and once preprocessed; median times, max error."""
    config = config or Config()
    gen = torch.Generator().manual_seed(seed)
    costs, online, errors = [], [], []
    with LocalSession(config) as session:
        for run in range(runs + 1):
            xs = (op.draw(gen) if op.draw else
                  [torch.randn(*shape, generator=gen, dtype=torch.float64) * op.scale for shape in op.shapes])
            traces: dict[str, Cost] = {}

            def program(server, *shared):
                if op.setup is not None:
                    shared = op.setup(server, *shared)           # once per run, before timing
                with server.cost() as trace:
                    out = op.secure(server, *shared)
                traces[server.name] = trace.result
                return out

            (out,) = session.run(program, *xs).outputs
            inline = _combined(traces)
            session.preprocess(program, *[torch.zeros(x.shape) for x in xs])
            session.run(program, *xs)
            if run == 0:
                continue                                          # warm-up
            costs.append(inline)
            online.append(_combined(traces).seconds)
            ref = op.reference(*[_quantised(x, config.frac_bits) for x in xs])
            errors.append((out - ref).abs().max().item())
    cost = Cost(online_bytes=costs[-1].online_bytes, rounds=costs[-1].rounds,
                dealer_bytes=costs[-1].dealer_bytes, seconds=statistics.median(online))
    return Measurement(op.name, statistics.median(c.seconds for c in costs), cost.seconds,
                       cost.online_bytes, cost.rounds, cost.dealer_bytes, max(errors),
                       {net.name: net.project(cost) for net in NETWORKS},
                       [c.seconds for c in costs], online, op.note)


def _combined(traces: dict[str, Cost]) -> Cost:
    s0, s1 = (traces[s] for s in SERVERS)
    return Cost(online_bytes=s0.online_bytes, rounds=s0.rounds,
                dealer_bytes=s0.dealer_bytes + s1.dealer_bytes, seconds=max(s0.seconds, s1.seconds))


def run_benchmark(names=None, runs: int = 5, seed: int = 0, config: Config | None = None,
                  progress: Callable[[str], None] | None = None) -> list[Measurement]:
    names = list(names or OPERATIONS)
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; choose from {list(OPERATIONS)}")
    out = []
    for name in names:
        if progress:
            progress(name)
        out.append(measure(OPERATIONS[name], runs, seed, config))
    return out


def format_table(results: list[Measurement]) -> str:
    nets = [net.name for net in NETWORKS]
    head = (["operation", "time s", "online s", "online MB", "rounds", "dealer MB", "max abs err"]
            + [f"{n} s" for n in nets])
    rows = [head]
    for r in results:
        rows.append([r.name, f"{r.seconds:.3f}", f"{r.online_seconds:.3f}", f"{r.online_bytes / 1e6:.2f}", str(r.rounds),
                     f"{r.dealer_bytes / 1e6:.1f}", f"{r.max_abs_error:.1e}"]
                    + [f"{r.projected[n]:.2f}" for n in nets])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.name}: {r.note}" for r in results if r.note]
    legend = ["", "time s: dealer inline; online s: correlations dealt beforehand; projections add the",
              "network model's rounds x latency + bytes / bandwidth to the online time."]
    return "\n".join(lines + legend + ([""] + notes if notes else []))
