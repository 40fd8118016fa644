"""How often do CMA-ES's candidate prompts drive a secure inverse root's input out of its
calibrated range?  The plaintext twin of a tuning run (the same job, seeds and developer
calibration an MPC run uses): every generation's population is scored with the model's
observe hook on, and per site the RFA normalisers <= 0, the values below their calibrated
range and those above it are counted.  Out-of-range inputs are clamped alike on both paths
(nn/functional.py); this counts how often that happens.

    python benchmarks/prompt_ranges.py --model FOLDER --task sms-spam --generations 8

With softmax attention it also records each attention row's spread of raw scores (bias
included), over all keys (padded ones too: what the secure row maximum's comparisons must
cover, nn.attention.SCORE_SPREAD = 2048) and over the real keys (nn.attention.MIN_SCORE_GAP
= 144 bounds how far below the maximum a real score stays exact), and prints their maxima.

Defaults are TuneJob's (Black-Box Tuning's sizes: 50 prompt tokens, d = 500, popsize 20,
batch 32).
"""

from __future__ import annotations

import argparse
import json

import torch

from secptune.models import transformer
from secptune.nn.attention import softmax_attention
from secptune.nn.functional import clamped_range
from secptune.tuning.job import (TuneJob, class_prior, job_scoring_task, job_scorer, job_tuner, load_job_model,
                                 load_job_task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sms-spam")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the per-generation counts here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    job = TuneJob(task=args.task, mode="plaintext", test_size=100, model=args.model, generations=args.generations)
    task, split = load_job_task(job)
    _, config, weights, attention, tokenizer = load_job_model(job)
    scoring_task, scale = job_scoring_task(job, task, config)
    space, scorer, _, calibration = job_scorer(job, config, weights, attention, tokenizer, scoring_task, None)
    ranges = calibration.ranges
    tuner = job_tuner(job, scorer, space, split, scale, class_prior(job, task, split))
    tuner.start()
    counts: dict[str, list[int]] = {}

    def observe(site, values):
        if site not in ranges:
            return
        lo, hi = clamped_range(*ranges[site])
        v = values.detach().double()
        c = counts.setdefault(site, [0, 0, 0, 0])
        c[0] += int((v <= 0).sum())
        c[1] += int((v < 2.0 ** lo).sum())
        c[2] += int((v > 2.0 ** hi).sum())
        c[3] += v.numel()

    scorer.model.observe = observe
    spread = {"all keys": 0.0, "real keys": 0.0}

    def recording(q, k, v, key_mask, bias=None):
        scores = q @ k.mT + (0 if bias is None else bias)
        spread["all keys"] = max(spread["all keys"], float((scores.amax(-1) - scores.amin(-1)).max()))
        real = key_mask.mT.bool().expand_as(scores)
        top = scores.masked_fill(~real, -float("inf")).amax(-1)
        low = scores.masked_fill(~real, float("inf")).amin(-1)
        spread["real keys"] = max(spread["real keys"], float((top - low).max()))
        return softmax_attention(q, k, v, key_mask, bias)

    transformer.softmax_attention = recording
    total = {"nonpositive": 0, "below": 0, "above": 0, "values": 0}
    rows = []
    while not tuner.done:
        counts.clear()
        record = tuner.step()
        out = {site: c[:3] for site, c in counts.items() if any(c[:3])}
        for c in counts.values():
            for i, key in enumerate(total):
                total[key] += c[i]
        rows.append({"generation": record.generation, "loss_min": record.loss_min, "out_of_range": out})
        print(record.generation, f"loss min {record.loss_min:.4f} mean {record.loss_mean:.4f}",
              "sites out of range (<= 0, below, above):", out, flush=True)
    print("total", total)
    print("largest spread of a row's raw attention scores:", {key: round(v, 2) for key, v in spread.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranges": ranges, "generations": rows, "total": total, "score_spread": spread}, f, indent=1)


if __name__ == "__main__":
    main()
