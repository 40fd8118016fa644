"""Softmax against random-feature attention under MPC as the text length grows: the length at
which RFA becomes the cheaper, which `--attention auto` uses (`secptune.models.attention_cost`).

    python benchmarks/attention_crossover.py --lengths 24 48 96 192 --tokens 384 --runs 2

For each length L, one secure scoring pass of MiniLM (calibrated ranges for that length, as
`secptune tune` sets it up; one prompt of 4 tokens added to the first tokens, the default
placement, so a sequence has L tokens) over B = tokens / L texts, with softmax (the packaged
model) and with RFA (its shipped conversion, M = 128 features), medians; per sequence:
seconds, online and dealer bytes; rounds per pass.  Then the ratio of the two at each length,
and the length from which RFA stays the cheaper, interpolated between the two measured
lengths around it.  All parties are threads of this process.  `--refit A.json B.json`
reports saved runs together (measuring nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from generation_cost import secure_pass


def measure(attention: str, B: int, L: int, runs: int, task: str) -> dict:
    walls, cost = [], None
    with secure_pass(attention, 1, B, L, task_name=task) as one_pass:
        for _ in range(runs):
            t0 = time.perf_counter()
            cost = one_pass()
            walls.append(time.perf_counter() - t0)
    return {"attention": attention, "L": L, "B": B, "seconds": statistics.median(walls), "all_seconds": walls,
            "online_bytes": cost.online_bytes, "dealer_bytes": cost.dealer_bytes, "rounds": cost.rounds}


def crossover(rows: list[dict]) -> float | None:
    """The length from which RFA stays the cheaper: between the last measured length where
    softmax is the cheaper and the next, interpolated linearly on the difference in seconds
    per sequence (None if RFA is never the cheaper at the longest length measured)."""
    per_seq = {(r["attention"], r["L"]): r["seconds"] / r["B"] for r in rows}
    lengths = sorted({L for _, L in per_seq if ("softmax", L) in per_seq and ("rfa", L) in per_seq})
    diff = [per_seq["softmax", L] - per_seq["rfa", L] for L in lengths]      # > 0: RFA cheaper
    if not diff or diff[-1] <= 0:
        return None
    last = max((i for i, d in enumerate(diff) if d <= 0), default=None)
    if last is None:
        return float(lengths[0])
    (a, b), (da, db) = lengths[last:last + 2], diff[last:last + 2]
    return a + (b - a) * (-da) / (db - da)


def report(rows: list[dict]) -> dict:
    per_seq = {(r["attention"], r["L"]): r["seconds"] / r["B"] for r in rows}
    for L in sorted({L for _, L in per_seq}):
        if ("softmax", L) in per_seq and ("rfa", L) in per_seq:
            print(f"L = {L}: RFA / softmax time per sequence {per_seq['rfa', L] / per_seq['softmax', L]:.2f}")
    cross = crossover(rows)
    print(f"RFA is the cheaper from L = {cross:.0f} tokens (interpolated)" if cross else
          "RFA is not the cheaper at the longest length measured")
    return {"crossover": cross}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="movie-reviews")
    parser.add_argument("--lengths", nargs="+", type=int, default=[24, 48, 96, 192])
    parser.add_argument("--tokens", type=int, default=384, help="text tokens per pass: B = tokens / L")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--refit", nargs="+", metavar="JSON", help="report saved runs' rows together "
                                                                    "(measures nothing)")
    args = parser.parse_args(argv)
    if args.refit:
        rows = []
        for path in args.refit:
            with open(path) as f:
                rows += json.load(f)["rows"]
        fitted = report(rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"refit": args.refit, "rows": rows, **fitted}, f, indent=2)
        return 0
    rows = []
    print(f"{'L':>5s} {'B':>4s} {'attention':>9s} {'s/seq':>7s} {'online MB/seq':>14s} {'dealer MB/seq':>14s} "
          f"{'rounds':>7s}")
    for L in args.lengths:
        B = max(1, args.tokens // L)
        for attention in ("softmax", "rfa"):
            row = measure(attention, B, L, args.runs, args.task)
            rows.append(row)
            print(f"{L:5d} {B:4d} {attention:>9s} {row['seconds'] / B:7.2f} {row['online_bytes'] / B / 2**20:14.1f} "
                  f"{row['dealer_bytes'] / B / 2**20:14.1f} {row['rounds']:7d}", flush=True)
    fitted = report(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": args.task, "tokens": args.tokens, "rows": rows, **fitted}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
