"""The secure GeLU's calibrated bounds: do they hold the owner's texts, and what do they buy?

    python benchmarks/gelu_bounds.py [--models minilm mpnet] [--texts 256] [--pass-texts 8]
                                     [--out benchmarks/results/gelu-bounds/bounds.json]

Part 1, per model and packaged task: the developer's calibration for a default `tune` job on
that task (`calibration_for`, on the other tasks' texts, as `tune` computes it), and the
largest |x| at each GeLU site and channel on --texts of the task's own texts (never
calibrated on), without a prompt and with 3 random prompts of the job's prompt space (a
seed the developer did not use).  Prints each site's bound, the largest |x| seen against
it, and per channel: how many channels' inputs went past their bound, the largest ratio
and excess (a value beyond is computed by the reflected series, on both paths; the series
stays within 3e-5 of GeLU up to the bound plus 1), and the harmonics the channels' series
take against the site's one series.

Part 2, per model: one secure scoring pass of --pass-texts movie-review test sentences at
tune's text length, public embeddings, softmax attention, in one process (2 servers, dealer
and owner as threads, the dealer dealing on demand), with the movie-review calibration (a)
without its GeLU bounds (the fixed series, valid for |x| <= 34), (b) with one bound per
site and (c) with one bound per channel; the max abs error of the cosine scores against
the exact plaintext model (torch's GeLU, the same LayerNorm ranges), the online and dealer
bytes, rounds and seconds, side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from secptune.data import list_tasks, load_task
from secptune.models import PlainScorer, SecureScorer, SentenceTask
from secptune.models.calibration import CHANNELS, Calibration, observed_extremes
from secptune.models.transformer import channels_key
from secptune.models.weights import prompt_scales
from secptune.mpc import Config, LocalSession
from secptune.mpc.protocols.gelu import series_for_bound
from secptune.tuning.developer import calibration_for
from secptune.tuning.job import TuneJob, deployment_request, load_job_model
from secptune.tuning.prompt import space_for

REPO = Path(__file__).resolve().parents[1]
OWNER_SEED = 7


def without_gelu_bounds(calibration: Calibration) -> Calibration:
    return Calibration({k: v for k, v in calibration.ranges.items() if not k.endswith((".gelu", CHANNELS))},
                       calibration.margin)


def site_bounds_only(calibration: Calibration) -> Calibration:
    """The calibration with one GeLU bound per site (its per-channel bounds dropped)."""
    return Calibration({k: v for k, v in calibration.ranges.items() if not k.endswith(CHANNELS)}, calibration.margin)


def exact_gelu(calibration: Calibration) -> Calibration:
    """The calibration with every GeLU bound at 2^10: torch's exact GeLU in plaintext."""
    return Calibration({k: ((10.0, 10.0) if k.endswith(".gelu") else v)
                        for k, v in site_bounds_only(calibration).ranges.items()}, calibration.margin)


def owner_extremes(job: TuneJob, config, weights, attention, tokenizer, texts: list[str]) -> dict:
    """Largest |x| per GeLU site (and per channel, at channels_key(site)) on `texts`,
    unprompted and with 3 random prompts of the job's space."""
    request = deployment_request(job)
    space = space_for(request.dim, request.prompt_length, config.hidden_size, prompt_scales(weights),
                      request.sigma0, request.projection, OWNER_SEED, request.prompt_depth, config.num_layers)
    rng = np.random.default_rng(OWNER_SEED)
    prompts = space.prompts(rng.uniform(-request.bound, request.bound, (3, space.latent_size)))
    high: dict[str, float] = {}
    for p in (None, prompts):
        _, h = observed_extremes(config, weights, attention, tokenizer, texts, job.max_length, p,
                                 placement=job.prompt_placement)
        for site, v in h.items():
            if site.endswith(".gelu"):
                high[site] = max(high.get(site, 0.0), v)
            elif site.endswith(CHANNELS):
                high[site] = tuple(max(a, b) for a, b in zip(high.get(site, v), v))
    return high


def secure_pass(config, weights, tokenizer, task, attention, length, calibration, texts) -> dict:
    with LocalSession(Config(), timeout=1200) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, SentenceTask(task.descriptions), attention,
                              length, "public", calibration)
        handle = scorer.add_texts(texts, 0)
        start = time.perf_counter()
        scores = scorer.scores(handle)
        seconds = time.perf_counter() - start
        _, cost, _ = scorer.costs[-1]
    return {"scores": torch.as_tensor(scores, dtype=torch.float64), "seconds": seconds,
            "online_bytes": cost.online_bytes, "dealer_bytes": cost.dealer_bytes, "rounds": cost.rounds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "mpnet"])
    parser.add_argument("--tasks", nargs="+", default=None, help="packaged tasks (default: all)")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--pass-texts", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gelu-bounds/bounds.json"))
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    results = {"date": datetime.date.today().isoformat(), "commit": commit,
               "command": "python benchmarks/gelu_bounds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "models": {}}
    for model in args.models:
        job = TuneJob(model=model, attention="softmax", mode="plaintext", head="similarity")
        _, config, weights, attention, tokenizer = load_job_model(job)
        rows, calibrations = [], {}
        for name in args.tasks or list_tasks():
            task_job = replace(job, task=name)
            calibration = calibrations[name] = calibration_for(deployment_request(task_job), config, weights,
                                                               attention, tokenizer)
            pool = load_task(name).texts
            texts = random.Random(0).sample(pool, min(args.texts, len(pool)))
            high = owner_extremes(task_job, config, weights, attention, tokenizer, texts)
            for site in sorted((s for s in high if s.endswith(".gelu")), key=lambda s: (len(s), s)):
                bound = 2.0 ** calibration.ranges[site][1]
                half_period, harmonics = series_for_bound(bound)
                seen = np.array(high[channels_key(site)])
                channel_bounds = 2.0 ** np.array(calibration.ranges[channels_key(site)])
                channel_harmonics = sum(series_for_bound(float(b))[1] for b in channel_bounds)
                rows.append({"task": name, "site": site, "bound": bound, "owner_max": high[site],
                             "beyond": high[site] > bound, "harmonics": harmonics,
                             "channels": len(seen), "channels_beyond": int((seen > channel_bounds).sum()),
                             "channel_max_ratio": float((seen / channel_bounds).max()),
                             "channel_max_excess": float((seen - channel_bounds).max()),
                             "channel_harmonics": channel_harmonics})
            mine = [r for r in rows if r["task"] == name]
            worst = max(mine, key=lambda r: r["owner_max"] / r["bound"])
            print(f"{model} {name}: bounds " + ", ".join(f"{r['bound']:.0f}" for r in mine)
                  + f"; tightest {worst['site']} max |x| {worst['owner_max']:.1f} of {worst['bound']:.1f}; per channel: "
                  + f"{sum(r['channels_beyond'] for r in mine)} of {sum(r['channels'] for r in mine)} beyond, "
                  + f"largest ratio {max(r['channel_max_ratio'] for r in mine):.2f}, excess "
                  + f"{max(r['channel_max_excess'] for r in mine):+.2f}; harmonics x channels "
                  + f"{sum(r['channel_harmonics'] for r in mine)} against {sum(r['harmonics'] * r['channels'] for r in mine)}",
                  flush=True)
        entry = results["models"][model] = {"bounds": rows}
        if args.pass_texts:
            name = "movie-reviews" if "movie-reviews" in calibrations else next(iter(calibrations))
            task = load_task(name)
            texts = random.Random(1).sample(task.texts, args.pass_texts)
            calibration = calibrations[name]
            exact = PlainScorer(config, weights.map(lambda _, t: t.to(torch.float64)), tokenizer,
                                SentenceTask(task.descriptions), attention, job.max_length,
                                calibration=exact_gelu(calibration))
            reference = torch.as_tensor(exact.scores(exact.add_texts(texts)), dtype=torch.float64)
            passes = {}
            for label, cal in (("fixed series", without_gelu_bounds(calibration)),
                               ("calibrated bounds", site_bounds_only(calibration)),
                               ("bounds per channel", calibration)):
                r = secure_pass(config, weights, tokenizer, task, attention, job.max_length, cal, texts)
                r["max_abs_error"] = float((r.pop("scores") - reference).abs().max())
                passes[label] = r
                print(f"{model} pass, {label}: error {r['max_abs_error']:.2e}, {r['seconds']:.1f} s, "
                      f"online {r['online_bytes'] / 1e6:.1f} MB, dealer {r['dealer_bytes'] / 1e6:.1f} MB, "
                      f"{r['rounds']} rounds", flush=True)
            entry["pass"] = {"task": name, "texts": args.pass_texts, "length": job.max_length, **passes}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
