"""End to end: the total MPC time and bytes each method needs to reach the same dev accuracy
on one task (the "end-to-end picture"; the paper's SST-2 figures: SFT 65.86 h / 67.36 TB,
gradient prompt tuning 86.15 h / 149.37 TB, forward-only tuning 8.81 h / 14.22 TB).

    python benchmarks/end_to_end.py --task movie-reviews --seeds 0 1 2 --iterations 60 --out OUT

Every method scores classes with the same masked-LM head (MiniLM's identity head, tied to its
word table: `models.weights.with_identity_head`), on the same few-shot split per seed:
- sft-adam / sft-sgd: full fine-tuning with Adam (lr 1e-4) or SGD (lr 1e-2), batches of 8 texts;
- prompt-grad: gradient prompt tuning of 4 prompt tokens, Adam (lr 1e-2), batches of 8;
- forward-softmax / forward-rfa: forward-only tuning (CMA-ES, popsize 6, d 50, 4 prompt
  tokens, batches of 8), on MiniLM and on its RFA conversion.
The learning rates were chosen on seed 0's dev set in plaintext (README).

Two measurements, combined:
1. the dev-accuracy curve of each method and seed, from its plaintext run (every `--eval-every`
   iterations).  The plaintext run is the secure run's reference: the same code on float64
   tensors, which the secure runs follow (tests/test_backward.py, tests/test_tuning.py);
2. the cost of one iteration under MPC (both servers in this process): the second of two
   secure iterations of each method at the same shapes (an SFT step, a gradient prompt-tuning
   step; for forward-only tuning the median time of two CMA-ES generations of popsize x batch
   sequences, `generation_cost.measure`).  SFT with Adam does not fit this
   machine (its update takes an inverse square root of all 22.7 M weights), so SFT's step is
   measured with SGD (the sft-sgd row), and Adam's extra update cost is measured per parameter on a slice of
   `ADAM_SLICE` parameters and scaled to the model's count: the update is elementwise, so its
   bytes are exactly linear in the parameter count and its rounds do not grow.
The target is the highest dev accuracy that every method's median best reaches (or each of
`--target`); iterations to target are the first evaluated iteration at or above it, per seed.
Totals = iterations x cost per iteration (dev evaluations and the one-off sharing of the model
and texts are not counted, for any method); LAN and WAN times are projected from bytes and
rounds (mpc/netmodel.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from secptune.baselines.compare import step_total
from secptune.baselines.gradient import named_parameters
from secptune.baselines.optim import make_optimizer
from secptune.baselines.training import LOSS_SCALE, TrainJob, load_train_model, run_train_job
from secptune.mpc import LocalSession
from secptune.mpc.comm import Cost
from secptune.mpc.netmodel import NETWORKS
from secptune.tuning.job import TuneJob, run_job

METHODS = ("sft-adam", "sft-sgd", "prompt-grad", "forward-softmax", "forward-rfa")
#: parameters in the slice on which Adam's update is measured under MPC (its dealer material is
#: about 210 KB per parameter: 2^18 of them ran out of a 23 GB machine's memory)
ADAM_SLICE = 1 << 14


def train_job(method: str, args, seed: int, mode: str, steps: int) -> TrainJob:
    optimizer, lr = {"sft-adam": ("adam", args.sft_lr), "sft-sgd": ("sgd", args.sft_sgd_lr),
                     "prompt-grad": ("adam", args.prompt_lr)}[method]
    return TrainJob(method="prompt" if method == "prompt-grad" else "sft", task=args.task, mode=mode,
                    shots=args.shots, steps=steps, batch=args.batch, max_length=args.max_length,
                    prompt_length=args.prompt_length, optimizer=optimizer, lr=lr, seed=seed,
                    eval_every=args.eval_every if mode == "plaintext" else 0)


def tune_job(method: str, args, seed: int, mode: str, generations: int) -> TuneJob:
    return TuneJob(task=args.task, attention=method.split("-")[1], mode=mode, head="mlm", shots=args.shots,
                   seed=seed, test_size=1, max_length=args.max_length, prompt_length=args.prompt_length,
                   dim=args.dim, popsize=args.popsize, generations=generations, batch=args.batch,
                   eval_every=args.eval_every if mode == "plaintext" else generations)


def curve(method: str, args, seed: int, out: Path) -> list[tuple[int, float]]:
    """[(iterations done, dev accuracy)] of the plaintext run."""
    folder = out / "plaintext" / f"{method}-seed{seed}"
    if method.startswith("forward"):
        r = run_job(tune_job(method, args, seed, "plaintext", args.iterations), folder)
        points = [(0, r["accuracy"]["start_dev"])]
        points += [(g["generation"] + 1, g["dev_accuracy"]) for g in r["generations"] if g["dev_accuracy"] is not None]
        return points
    r = run_train_job(train_job(method, args, seed, "plaintext", args.iterations), folder)
    return [(d["step"], d["accuracy"]) for d in r["dev"]]


def iteration_cost(method: str, args, out: Path) -> dict:
    """One iteration's cost under MPC: the second of two (seed 0)."""
    folder = out / "mpc" / method
    if method.startswith("forward"):
        from generation_cost import measure           # benchmarks/generation_cost.py

        cost, _ = measure(method.split("-")[1], args.popsize, args.batch, args.max_length, args.prompt_length,
                          repeats=2, head="mlm", task_name=args.task)
        return {"cost": cost.as_dict(), "note": f"a CMA-ES generation: {args.popsize} x {args.batch} sequences "
                                                f"(the median of 2 passes' seconds)"}
    if method == "prompt-grad":
        r = run_train_job(train_job(method, args, 0, "mpc", 2), folder)
        return {"cost": step_total(r["steps"][1]["costs"]).as_dict(), "note": "an Adam step"}
    sgd_path = out / "mpc" / "sft-sgd-step.json"                 # one measurement for both SFT rows
    if not sgd_path.exists():
        r = run_train_job(train_job("sft-sgd", args, 0, "mpc", 2), out / "mpc" / "sft-sgd")
        sgd_path.write_text(json.dumps(step_total(r["steps"][1]["costs"]).as_dict()))
    sgd = Cost(**json.loads(sgd_path.read_text()))
    if method == "sft-sgd":
        return {"cost": sgd.as_dict(), "note": "an SGD step"}
    params = _sft_parameters()
    extra = _adam_extra(params)
    total = sgd + extra
    return {"cost": total.as_dict(), "sgd_step": sgd.as_dict(), "adam_extra": extra.as_dict(), "parameters": params,
            "note": "an SGD step measured, plus Adam's extra update cost per parameter x parameters"}


def _sft_parameters() -> int:
    _, weights, _ = load_train_model("minilm")
    return sum(t.numel() for t in named_parameters(weights).values())


def _adam_extra(parameters: int) -> Cost:
    """(Adam update - SGD update) on `parameters` weights under MPC: measured on ADAM_SLICE
    parameters, bytes and seconds scaled linearly, rounds as measured."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(ADAM_SLICE, generator=gen, dtype=torch.float64) * 0.05
    g = torch.randn(ADAM_SLICE, generator=gen, dtype=torch.float64) * 1e-3 * LOSS_SCALE
    costs = {}
    with LocalSession(timeout=3600) as session:
        for name in ("sgd", "adam"):
            def program(s, w, g):
                opt = make_optimizer(name, 1e-3, LOSS_SCALE)
                p = {"w": w}
                for _ in range(2):
                    with s.cost() as trace:
                        p = opt.step(p, {"w": g})
                s.store["cost"] = trace.result
                return [p["w"]]

            session.run(program, w, g)
            costs[name] = session.servers[0].store["cost"], session.servers[1].store["cost"]
    from secptune.mpc.comm import servers_cost

    sgd, adam = servers_cost(*costs["sgd"]), servers_cost(*costs["adam"])
    scale = parameters / ADAM_SLICE
    return Cost(online_bytes=round((adam.online_bytes - sgd.online_bytes) * scale), rounds=adam.rounds - sgd.rounds,
                dealer_bytes=round((adam.dealer_bytes - sgd.dealer_bytes) * scale), io_bytes=0,
                seconds=(adam.seconds - sgd.seconds) * scale)


def first_at(points, target: float):
    return next((it for it, acc in points if acc >= target - 1e-9), None)


def summarise(curves: dict, costs: dict, target: float | None) -> dict:
    best = {m: statistics.median(max(a for _, a in pts) for pts in per_seed.values()) for m, per_seed in curves.items()}
    if target is None:
        target = min(best.values())
    rows = {}
    for m, per_seed in curves.items():
        its = {seed: first_at(pts, target) for seed, pts in per_seed.items()}
        cost = Cost(**costs[m]["cost"])
        # the median over seeds, a seed that never reached the target counting as infinity
        median = statistics.median(math.inf if i is None else i for i in its.values())
        median = None if math.isinf(median) else median
        row = {"start_dev": statistics.median(pts[0][1] for pts in per_seed.values()), "best_dev": best[m],
               "iterations": its, "median_iterations": median, "per_iteration": cost.as_dict()}
        if median is not None:
            row["total"] = {"seconds": median * cost.seconds, "online_bytes": median * cost.online_bytes,
                            "rounds": median * cost.rounds, "dealer_bytes": median * cost.dealer_bytes}
            row["total"].update({net.name: median * net.project(cost) for net in NETWORKS})
        rows[m] = row
    return {"target": target, "methods": rows}


def table(summary: dict) -> str:
    lines = [f"target dev accuracy {summary['target']:.3f}",
             "| method | dev start -> best (median) | iterations to target (per seed; median) | per iteration: s / "
             "online GB / rounds | total: s / online GB / dealer GB | total LAN / WAN h |",
             "|---|---|---|---|---|---|"]
    for m, r in summary["methods"].items():
        c = r["per_iteration"]
        its = ", ".join("-" if i is None else str(i) for i in r["iterations"].values())
        per = f"{c['seconds']:.1f} / {c['online_bytes'] / 1e9:.3f} / {c['rounds']}"
        if "total" in r:
            t = r["total"]
            tot = f"{t['seconds']:.0f} / {t['online_bytes'] / 1e9:.1f} / {t['dealer_bytes'] / 1e9:.1f}"
            nets = " / ".join(f"{t[n.name] / 3600:.2f}" for n in NETWORKS)
            med = r["median_iterations"]
        else:
            tot, nets, med = "not reached", "-", "not reached"
        lines.append(f"| {m} | {r['start_dev']:.3f} -> {r['best_dev']:.3f} | {its}; {med} | {per} | {tot} | {nets} |")
    lines.append("networks: " + ", ".join(n.name for n in NETWORKS))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="movie-reviews")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=60, help="steps / generations of each plaintext run")
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=24)
    p.add_argument("--prompt-length", type=int, default=4)
    p.add_argument("--popsize", type=int, default=6)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--sft-lr", type=float, default=1e-4, help="SFT with Adam")
    p.add_argument("--sft-sgd-lr", type=float, default=1e-2, help="SFT with SGD")
    p.add_argument("--prompt-lr", type=float, default=1e-2)
    p.add_argument("--target", type=float, nargs="+", help="dev accuracies to reach (default: the lowest median "
                                                           "best)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--curves-only", action="store_true", help="only the plaintext curves (the costs later, alone)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "end_to_end.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"curves": {}, "costs": {}}
    state["settings"] = vars(args)

    def save():
        state_path.write_text(json.dumps(state, indent=1))

    for m in args.methods:                                  # resumable: finished parts are kept
        for seed in args.seeds:
            if str(seed) not in state["curves"].setdefault(m, {}):
                t0 = time.perf_counter()
                state["curves"][m][str(seed)] = curve(m, args, seed, out)
                print(f"{m} seed {seed}: plaintext curve in {time.perf_counter() - t0:.0f} s: "
                      f"{state['curves'][m][str(seed)]}", file=sys.stderr)
                save()
    if args.curves_only:
        return 0
    for m in args.methods:
        if m not in state["costs"]:
            t0 = time.perf_counter()
            state["costs"][m] = iteration_cost(m, args, out)
            print(f"{m}: one iteration under MPC {state['costs'][m]['cost']} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
            save()
    curves = {m: state["curves"][m] for m in args.methods}
    state["summary"] = [summarise(curves, state["costs"], t) for t in (args.target or [None])]
    save()
    print("\n\n".join(table(s) for s in state["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
