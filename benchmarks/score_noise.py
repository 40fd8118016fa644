"""MPC's error on what CMA-ES decides from, beside Gaussian noise of the same size in plaintext.

Per task: a job's first CMA-ES generation (its P candidates, drawn as the job draws them) is
scored on the job's first K minibatches in plaintext and under MPC (all parties in this
process), with the same developer calibration, so that the plaintext scores are the exact
reference of the MPC ones.  Printed per task:

- the scores' error (MPC - plaintext): std and max |.|, in score units (cosines for the
  similarity head): the std is what `--score-noise` should be to mimic it;
- the candidates' losses' error: std and max |.|, and the std of the control's;
- how often CMA-ES's ranking changes: the fraction of candidate pairs whose losses are
  ordered the other way, under MPC and under plaintext + N(0, std^2) noise on every score
  (tuning.noise.NoisyScorer, std: all tasks' pooled score std, or --noise);
- the gap between the two best candidates' plaintext losses (how near the ties are).

    python benchmarks/score_noise.py --tasks movie-reviews trec sms-spam tweets amazon-food \\
        --attention rfa --batches 2 --out results/score-noise
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

def discordant(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(pairs ordered the other way in `b` than in `a`, all pairs) of two loss vectors."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    return sum(bool((a[i] - a[j]) * (b[i] - b[j]) < 0) for i, j in pairs), len(pairs)


def measure(task_name: str, attention_kind: str, seed: int, batches: int) -> dict:
    """Plaintext and MPC scores and losses of one job's first generation on its first minibatches."""
    from secptune.cli import build_parser, tune_job
    from secptune.mpc import Config, LocalSession
    from secptune.tuning import loss_of
    from secptune.tuning.job import job_scoring_task, class_prior, job_scorer, job_tuner, load_job_model, load_job_task

    # the embedded default budget (`secptune tune`'s own defaults), with the tuning table's 100 test
    # texts (the split's train and dev texts depend on it)
    job = tune_job(build_parser().parse_args(["tune", "--task", task_name, "--attention", attention_kind,
                                              "--mode", "mpc", "--seeds", str(seed), "--test-size", "100"]))
    task, split = load_job_task(job)
    prior = class_prior(job, task, split)
    _, config, weights, attention, tokenizer = load_job_model(job)
    scoring_task, scale = job_scoring_task(job, task, config)
    plain_job = replace(job, mode="plaintext")
    space, plain, _, _ = job_scorer(plain_job, config, weights, attention, tokenizer, scoring_task, None)
    plain_tuner = job_tuner(plain_job, plain, space, split, scale, prior)
    plain_tuner.start()
    prompts = plain_tuner.prompts(plain_tuner.optimizer.ask(0))
    cfg = plain_tuner.config
    out = {"scores": [], "losses": []}
    t0 = time.perf_counter()
    with LocalSession(Config(), timeout=600.0) as session:
        _, secure, _, _ = job_scorer(job, config, weights, attention, tokenizer, scoring_task, session)
        secure_tuner = job_tuner(job, secure, space, split, scale, prior)
        for (ph, labels), (sh, _) in list(zip(plain_tuner.train_batches, secure_tuner.train_batches))[:batches]:
            s_plain, s_mpc = plain.scores(ph, prompts), secure.scores(sh, prompts)
            losses = [loss_of(s, labels, cfg.loss, cfg.score_scale, class_weights=cfg.class_weights)
                      for s in (s_plain, s_mpc)]
            out["scores"].append((s_plain.tolist(), s_mpc.tolist()))
            out["losses"].append(([float(x) for x in losses[0]], [float(x) for x in losses[1]], labels.tolist()))
    out["mpc_seconds"] = time.perf_counter() - t0
    out["job"] = asdict(job)
    out["score_scale"], out["loss"], out["class_weights"] = cfg.score_scale, cfg.loss, cfg.class_weights
    return out


def noisy_losses(record: dict, std: float, seed: int) -> list[list[float]]:
    """The plaintext scores of `record` with the control's noise (NoisyScorer's draw), as losses."""
    from secptune.tuning import loss_of
    from secptune.tuning.noise import perturb

    return [[float(x) for x in loss_of(perturb(torch.tensor(plain, dtype=torch.float64), std, seed),
                                       torch.tensor(labels), record["loss"], record["score_scale"],
                                       class_weights=record["class_weights"])]
            for (plain, _), (_, _, labels) in zip(record["scores"], record["losses"])]


def summarize(records: dict, noise: float | None) -> str:
    diffs = {t: torch.cat([torch.tensor(m) - torch.tensor(p) for p, m in r["scores"]]).flatten() for t, r in records.items()}
    pooled = float(torch.cat(list(diffs.values())).std())
    std = pooled if noise is None else noise
    lines = [f"pooled score error std {pooled:.2e}; control noise std {std:.2e}",
             f"{'task':14s} {'score err std':>13s} {'max':>9s} {'loss err std':>12s} {'max':>9s} "
             f"{'noise loss err std':>18s} {'swapped MPC':>12s} {'swapped noise':>14s} {'best-two gap':>13s} {'MPC s':>6s}"]
    for task, r in records.items():
        d = diffs[task]
        loss_err = torch.cat([torch.tensor(m) - torch.tensor(p) for p, m, _ in r["losses"]])
        noisy = noisy_losses(r, std, r["job"]["seed"])
        noise_err = torch.cat([torch.tensor(n) - torch.tensor(p) for (p, _, _), n in zip(r["losses"], noisy)])
        swaps, noise_swaps, gaps = [0, 0], [0, 0], []
        for (p, m, _), n in zip(r["losses"], noisy):
            for total, other in ((swaps, m), (noise_swaps, n)):
                k, of = discordant(torch.tensor(p), torch.tensor(other))
                total[0] += k
                total[1] += of
            best = sorted(p)
            gaps.append(best[1] - best[0])
        lines.append(f"{task:14s} {float(d.std()):13.2e} {float(d.abs().max()):9.2e} {float(loss_err.std()):12.2e} "
                     f"{float(loss_err.abs().max()):9.2e} {float(noise_err.std()):18.2e} {f'{swaps[0]}/{swaps[1]}':>12s} "
                     f"{f'{noise_swaps[0]}/{noise_swaps[1]}':>14s} {statistics.median(gaps):13.2e} "
                     f"{r['mpc_seconds']:6.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["movie-reviews", "trec", "sms-spam", "tweets", "amazon-food"])
    parser.add_argument("--attention", default="rfa", choices=("rfa", "softmax"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=2, help="minibatches of the first generation to score")
    parser.add_argument("--noise", type=float, help="the control's std (default: the pooled score error std)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--out", default="results/score-noise")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    for task in args.tasks:
        path = out / f"{args.attention}-{task}-seed{args.seed}.json"
        if not path.exists():                          # reruns reuse what was measured
            path.write_text(json.dumps(measure(task, args.attention, args.seed, args.batches)))
        records[task] = json.loads(path.read_text())
        print(f"{task}: measured", file=sys.stderr, flush=True)
    table = summarize(records, args.noise)
    print(table)
    (out / f"{args.attention}-seed{args.seed}.txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
