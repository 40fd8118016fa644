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
                task_name: str = "movie-reviews", model: str = "minilm", pass_sequences: int = 0):
    """A secure scorer of B training texts of L tokens, set up as `secptune tune` sets it up
    (MiniLM, or its RFA conversion; the developer's calibration), in a LocalSession: yields a
    function that scores P fresh random prompts as a tuning generation does (in one pass, or
    in passes of at most `pass_sequences` sequences: `tuning.loop.population_scores`) and
    returns the cost of its passes together."""
    from secptune.data import few_shot_split, load_task
    from secptune.models import SecureScorer
    from secptune.mpc import LocalSession
    from secptune.tuning.developer import developer_calibration
    from secptune.mpc.comm import Cost
    from secptune.tuning.job import TuneJob, deployment_request, job_scoring_task, load_job_model
    from secptune.tuning.loop import population_scores
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
            before = len(scorer.costs)
            population_scores(scorer, handle, space.prompts(rng.uniform(-1, 1, (P, space.latent_size))), B,
                              pass_sequences)
            passes = [cost for _, cost, _ in scorer.costs[before:]]
            one_pass.passes = len(passes)
            return sum(passes, Cost())

        one_pass.session = session
        yield one_pass


def measure(attention: str, P: int, B: int, L: int, prompt_length: int = 4, repeats: int = 2, head: str = "auto",
            task_name: str = "movie-reviews", model: str = "minilm", pass_sequences: int = 0):
    """The cost of scoring P prompts on B training texts of L tokens (a tuning generation; in
    passes of at most `pass_sequences` sequences, 0: one pass): the last generation's bytes and
    rounds, the median generation's seconds, and its number of passes.  The dealer deals a
    pass ahead once the same pass has asked for the same correlations twice (see
    benchmarks/dealer_ahead.py): in one pass per generation, never with fewer than three
    repeats; in several passes, from a generation's third pass on."""
    costs, times = [], []
    with secure_pass(attention, P, B, L, prompt_length, head, task_name, model, pass_sequences) as one_pass:
        for _ in range(repeats):
            t0 = time.perf_counter()
            costs.append(one_pass())
            times.append(time.perf_counter() - t0)
    return replace(costs[-1], seconds=statistics.median(times)), one_pass.passes


def main(argv=None) -> int:
    from secptune.mpc.netmodel import NETWORKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, mpnet or a model folder (as secptune tune)")
    parser.add_argument("--task", default="movie-reviews")
    parser.add_argument("--attention", default="rfa", choices=("rfa", "softmax"))
    parser.add_argument("--grid", nargs="+", default=["6x4x24", "12x4x24", "6x8x24", "6x4x48"], metavar="PxBxL")
    parser.add_argument("--prompt-length", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pass-sequences", type=int, default=0, metavar="N",
                        help="score a generation in passes of at most N sequences, as secptune tune "
                             "--pass-sequences (default 0: one pass)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'P x B x L':>12s} {'passes':>6s} {'tokens':>7s} {'s':>7s} {'online MB':>10s} {'rounds':>7s} "
          f"{'dealer MB':>10s} " + " ".join(f"{n.name:>18s}" for n in NETWORKS))
    for cell in args.grid:
        P, B, L = (int(v) for v in cell.split("x"))
        cost, passes = measure(args.attention, P, B, L, args.prompt_length, args.repeats, task_name=args.task,
                               model=args.model, pass_sequences=args.pass_sequences)
        row = {"P": P, "B": B, "L": L, "passes": passes, "tokens": P * B * (L + args.prompt_length),
               "seconds": cost.seconds,
               "online_bytes": cost.online_bytes, "rounds": cost.rounds, "dealer_bytes": cost.dealer_bytes,
               "projected": {n.name: n.project(cost) for n in NETWORKS}}
        rows.append(row)
        print(f"{cell:>12s} {passes:6d} {row['tokens']:7d} {cost.seconds:7.1f} {cost.online_bytes / 2**20:10.1f} "
              f"{cost.rounds:7d} {cost.dealer_bytes / 2**20:10.1f} "
              + " ".join(f"{row['projected'][n.name]:18.1f}" for n in NETWORKS), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "task": args.task, "attention": args.attention,
                       "prompt_length": args.prompt_length, "pass_sequences": args.pass_sequences, "rows": rows},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
