"""One transformer layer's online bytes beside a floor: what any protocol of this kind must open.

    python benchmarks/online_floor.py --shape bert-base --length 128 --features 128

The floor counts 16 bytes (8 each way over the server link) for every element that must be
opened at least once under additive sharing with masked openings:
- every product opens each of its secret operands' elements once (a prepared weight is
  masked once at deployment and never opened again; an activation feeding several products,
  such as the input of the fused Q/K/V projection, counts once);
- every non-linearity opens its input once (its protocol's minimum: one masked opening of
  each input element, as a comparison, a cosine or a truncation does).
For one layer of L tokens, width d, h heads of e = d / h, FFN width f, RFA with M features:

| part | softmax | RFA (normalized feature map) |
|---|---|---|
| attention products | X, Q, K, V, the context (5 L d) and the probabilities (h L^2) | X, V, the context (3 L d), Q and K for their norms (2 L d), the features of Q and K (2 x h L 2M), the key-value summaries (h 2M e) and the normaliser's sums (h 2M) |
| attention non-linear | the scores (h L^2) | the projections of Q and K (2 h L M), the norms (2 h L) and the normaliser (h L) |
| LayerNorm (2) | their inputs (2 L d) | the same |
| FFN | its input, the GeLU's output (L d + L f) and the GeLU's input (L f) | the same |

It measures the layer under MPC (random weights of the model's shape, one sequence, all
parties as threads of this process), groups server 0's online bytes by the protocol labels
the engine keeps, and prints measured, floor and their ratio per part, then every label's
bytes, so that each factor above 1.5x can be traced to the protocol that pays it
(docs/protocols.md, "The online-bytes floor").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from forward import SHAPES, secure_layer
from secptune.mpc.comm import cost_difference

OPEN = 16


def floor_elements(kind: str, L: int, d: int, h: int, f: int, M: int) -> dict[str, int]:
    """Elements the floor opens, by part (see the module docstring)."""
    e = d // h
    if kind == "softmax":
        products, nonlinear = 5 * L * d + h * L * L, h * L * L
    else:
        products = 3 * L * d + 2 * L * d + 2 * h * L * 2 * M + h * 2 * M * e + h * 2 * M
        nonlinear = 2 * h * L * M + 2 * h * L + h * L
    return {"attention products": products, "attention non-linear": nonlinear, "layernorm": 2 * L * d,
            "ffn products": L * d + L * f, "ffn gelu": L * f}


def part_of(label: str) -> str:
    """Which part of the floor a protocol label's bytes belong to."""
    parts = label.split("/")
    if parts[0] == "attention":
        return "attention products" if parts[-1] in ("matmul", "linear") else "attention non-linear"
    if parts[0] == "layernorm":
        return "layernorm"
    if parts[0] == "ffn":
        return "ffn gelu" if "gelu" in parts else "ffn products"
    return "output"


def measure(shape: str, L: int, kind: str, features: int) -> dict[str, int]:
    """Server 0's online bytes of one layer under MPC, per protocol label."""
    per_label: dict[str, int] = {}

    def inspect(server, before):
        if server.index == 0:
            for label, cost in cost_difference(server.channel.meter.snapshot(), before).items():
                if cost.online_bytes:
                    per_label[label or "(unlabelled)"] = cost.online_bytes

    secure_layer(shape, L, kind, features, inspect=inspect)
    return per_label


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="bert-base", choices=sorted(SHAPES))
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    s = SHAPES[args.shape]
    d, h, f, L = s["hidden_size"], s["num_heads"], s["intermediate_size"], args.length
    out = {}
    for kind in ("softmax", "rfa"):
        per_label = measure(args.shape, L, kind, args.features)
        measured: dict[str, int] = defaultdict(int)
        for label, nbytes in per_label.items():
            measured[part_of(label)] += nbytes
        floor = {part: OPEN * n for part, n in floor_elements(kind, L, d, h, f, args.features).items()}
        print(f"\n{args.shape} layer, L = {L}, {kind}" + (f" (M = {args.features})" if kind == "rfa" else ""))
        print(f"{'part':>22s} {'measured MB':>12s} {'floor MB':>9s} {'ratio':>6s}")
        for part in list(floor) + ["output"]:
            ratio = measured[part] / floor[part] if floor.get(part) else float("nan")
            print(f"{part:>22s} {measured[part] / 1e6:12.2f} {floor.get(part, 0) / 1e6:9.2f} {ratio:6.2f}")
        total_m, total_f = sum(measured.values()), sum(floor.values())
        print(f"{'layer':>22s} {total_m / 1e6:12.2f} {total_f / 1e6:9.2f} {total_m / total_f:6.2f}")
        print("  by protocol label (MB): " + "; ".join(f"{k} {v / 1e6:.2f}" for k, v in sorted(per_label.items())))
        out[kind] = {"per_label": per_label, "measured": dict(measured), "floor": floor}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": args.shape, "length": L, "features": args.features, **out}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
