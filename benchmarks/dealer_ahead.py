"""The dealer ahead of the servers (`secptune.mpc.ahead`): a tuning generation's secure pass
with the dealer on demand and with the dealer dealing the pass's requests ahead, side by
side in one process on the same scorer, alternating, medians.

    python benchmarks/dealer_ahead.py --attention softmax rfa --grid 6x8x24 --runs 3

Each cell runs two warm-up passes (the first two calls of a pass set the dealer's plan),
then alternates a pass with `ahead_bytes = 0` (on demand, as before) and one with the
default bound.  It prints the wall time of each, the seconds the dealer spent dealing (its
busy time), the passes' bytes and rounds (the same either way) and the share of requests
dealt ahead.  All parties are threads of this process: on a 2-core machine the dealer and
the two servers share two cores, so dealing ahead can hide the dealer's work only as far as
the servers leave a core idle; with the dealer on its own machine (`secptune serve`) its
work can hide behind the servers' entirely.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from generation_cost import secure_pass


def measure(attention: str, P: int, B: int, L: int, runs: int, model: str, task: str) -> dict:
    from secptune.mpc.ahead import AHEAD_BYTES

    walls = {"on demand": [], "ahead": []}
    busy = {"on demand": [], "ahead": []}
    shares, cost = [], None
    with secure_pass(attention, P, B, L, task_name=task, model=model) as one_pass:
        dealer = one_pass.session.dealer
        for _ in range(2):
            one_pass()
        for _ in range(runs):
            for mode, bound in (("on demand", 0), ("ahead", AHEAD_BYTES)):
                dealer.ahead_bytes = bound
                before = (dealer.dealt_ahead, dealer.dealt_on_demand, dealer.busy_seconds)
                t0 = time.perf_counter()
                cost = one_pass()
                walls[mode].append(time.perf_counter() - t0)
                busy[mode].append(dealer.busy_seconds - before[2])
                if mode == "ahead":
                    ahead, on_demand = dealer.dealt_ahead - before[0], dealer.dealt_on_demand - before[1]
                    shares.append(ahead / (ahead + on_demand))
    row = {"attention": attention, "P": P, "B": B, "L": L, "runs": runs,
           "online_bytes": cost.online_bytes, "rounds": cost.rounds, "dealer_bytes": cost.dealer_bytes,
           "share_dealt_ahead": min(shares)}
    for mode in walls:
        row[f"{mode} seconds"] = statistics.median(walls[mode])
        row[f"{mode} dealer busy seconds"] = statistics.median(busy[mode])
        row[f"{mode} all seconds"] = walls[mode]
    row["ratio"] = row["ahead seconds"] / row["on demand seconds"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="trec")
    parser.add_argument("--attention", nargs="+", default=["softmax", "rfa"], choices=("rfa", "softmax"))
    parser.add_argument("--grid", nargs="+", default=["6x8x24"], metavar="PxBxL")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'attention':>9s} {'P x B x L':>10s} {'on demand s':>12s} {'dealer busy s':>14s} {'ahead s':>8s} "
          f"{'ratio':>6s} {'dealt ahead':>11s} {'rounds':>7s} {'dealer MB':>10s}")
    for attention in args.attention:
        for cell in args.grid:
            P, B, L = (int(v) for v in cell.split("x"))
            row = measure(attention, P, B, L, args.runs, args.model, args.task)
            rows.append(row)
            print(f"{attention:>9s} {cell:>10s} {row['on demand seconds']:12.1f} "
                  f"{row['on demand dealer busy seconds']:14.1f} {row['ahead seconds']:8.1f} {row['ratio']:6.2f} "
                  f"{row['share_dealt_ahead']:11.0%} {row['rounds']:7d} {row['dealer_bytes'] / 2**20:10.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "task": args.task, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
