"""What one tuning generation costs under MPC, and how it grows with the population P, the
minibatch B and the text length L: time, online bytes, rounds, dealer bytes, projected
LAN/WAN time.  One secure pass scores P prompts on B texts (P x B sequences of n + L tokens).

    python benchmarks/generation_cost.py --attention rfa --grid 6x4x24 12x4x24 6x8x24 6x4x48
    python benchmarks/generation_cost.py --model mpnet --attention softmax --grid 6x8x24

`--model` as `secptune tune` takes it (minilm, converted to RFA for --attention rfa; mpnet,
softmax only; or a folder), with the developer's calibrated ranges as in `secptune tune`, all
parties as threads of this process, the median of --repeats passes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np


@contextmanager
def secure_pass(attention: str, P: int, B: int, L: int, prompt_length: int = 4, head: str = "auto",
                task_name: str = "movie-reviews", model: str = "minilm"):
    """A secure scorer of B training texts of L tokens, set up as `secptune tune` sets it up
    (MiniLM, or its RFA conversion; the developer's calibration), in a LocalSession: yields a
    function that scores P fresh random prompts in one pass and returns the pass's cost."""
    from secptune.data import few_shot_split, load_task
    from secptune.models import SecureScorer
    from secptune.mpc import LocalSession
    from secptune.tuning.developer import developer_calibration
    from secptune.tuning.job import TuneJob, deployment_request, job_scoring_task, load_job_model
    from secptune.tuning.prompt import PromptSpace

    job = TuneJob(task=task_name, model=model, attention=attention, prompt_length=prompt_length, dim=50,
                  max_length=L, popsize=P, batch=B, head=head)
    task = load_task(job.task)
    split = few_shot_split(task, 16, seed=0)
    folder, config, weights, settings, tokenizer = load_job_model(job)
    scoring_task, _ = job_scoring_task(job, task, config)
    space = PromptSpace(job.dim, job.prompt_length, config.hidden_size, float(weights.embeddings.word.std()),
                        job.sigma0, job.projection, 0)
    calibration = developer_calibration(deployment_request(job), config, weights, settings, tokenizer, scoring_task, space)
    with LocalSession(timeout=600) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, scoring_task, settings, L, "private", calibration)
        handle = scorer.add_texts(split.train.texts[:B], job.prompt_length, job.prompt_placement)
        rng = np.random.default_rng(0)

        def one_pass():
            scorer.scores(handle, space.prompts(rng.uniform(-1, 1, (P, space.latent_size))))
            return scorer.last_cost

        one_pass.session = session
        yield one_pass


def measure(attention: str, P: int, B: int, L: int, prompt_length: int = 4, repeats: int = 2, head: str = "auto",
            task_name: str = "movie-reviews", model: str = "minilm"):
    """The cost of one secure pass of P prompts on B training texts of L tokens (a tuning
    generation): the last pass's bytes and rounds, the median pass's seconds.  With fewer
    than three repeats the dealer works on demand throughout (see benchmarks/dealer_ahead.py)."""
    costs, times = [], []
    with secure_pass(attention, P, B, L, prompt_length, head, task_name, model) as one_pass:
        for _ in range(repeats):
            t0 = time.perf_counter()
            costs.append(one_pass())
            times.append(time.perf_counter() - t0)
    return replace(costs[-1], seconds=statistics.median(times))


def main(argv=None) -> int:
    from secptune.mpc.netmodel import NETWORKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, mpnet or a model folder (as secptune tune)")
    parser.add_argument("--task", default="movie-reviews")
    parser.add_argument("--attention", default="rfa", choices=("rfa", "softmax"))
    parser.add_argument("--grid", nargs="+", default=["6x4x24", "12x4x24", "6x8x24", "6x4x48"], metavar="PxBxL")
    parser.add_argument("--prompt-length", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'P x B x L':>12s} {'tokens':>7s} {'s':>7s} {'online MB':>10s} {'rounds':>7s} {'dealer MB':>10s} "
          + " ".join(f"{n.name:>18s}" for n in NETWORKS))
    for cell in args.grid:
        P, B, L = (int(v) for v in cell.split("x"))
        cost = measure(args.attention, P, B, L, args.prompt_length, args.repeats, task_name=args.task,
                       model=args.model)
        row = {"P": P, "B": B, "L": L, "tokens": P * B * (L + args.prompt_length), "seconds": cost.seconds,
               "online_bytes": cost.online_bytes, "rounds": cost.rounds, "dealer_bytes": cost.dealer_bytes,
               "projected": {n.name: n.project(cost) for n in NETWORKS}}
        rows.append(row)
        print(f"{cell:>12s} {row['tokens']:7d} {cost.seconds:7.1f} {cost.online_bytes / 2**20:10.1f} "
              f"{cost.rounds:7d} {cost.dealer_bytes / 2**20:10.1f} "
              + " ".join(f"{row['projected'][n.name]:18.1f}" for n in NETWORKS), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "task": args.task, "attention": args.attention,
                       "prompt_length": args.prompt_length, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
