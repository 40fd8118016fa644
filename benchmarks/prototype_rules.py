"""Rules for the class prototypes' weight, compared on many splits without running a search.

    python benchmarks/prototype_rules.py --seeds 0-9 --out DIR [--threads 2]
    python benchmarks/prototype_rules.py --table-only --out DIR

For each packaged task and seed (16 + 16 shots per class, 500 test texts), the softmax MiniLM
(or `--model mpnet`, all-mpnet-base-v2) embeds the training, dev and test texts once, in plaintext at 32 tokens (what `secptune tune`
computes for the model without a prompt), and for each weight w of PROTOTYPE_WEIGHTS records
which texts are right:
- `dev`: the dev texts, scored by the training texts' prototypes (the rule before ae48515);
- `cross`: the same, followed by the training texts scored by the dev texts' prototypes (the
  two-fold cross-fit `secptune tune --prototypes auto` uses now);
- `test`: the test texts, by the training texts' prototypes;
- `test_all`: the test texts, by the prototypes of the training and dev texts together.
Each rule then picks a weight per split (with `tuning.job.choose_weight` and `stats.gain_p`,
the library's own), and the table prints its mean gain over the descriptions alone (w = 0 by
the training texts, i.e. zero-shot) per task, and how many splits gain or lose significantly
(one-sided McNemar, p < 0.05) or end below zero-shot.  No prompt is searched: at the
budgets that fit a 2-core machine no run kept one (docs/tuning-gains.md).

`flags.json` holds every split's right/wrong strings; `table.txt` the printed table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(text)]


def _bits(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in flags)


def split_embeddings(tasks: list[str], seeds: list[int], threads: int, model: str = "minilm"):
    """Per task and seed: (name, seed, descriptions (C, H), {part: embeddings}, {part: labels})
    for the parts "train", "dev" and "test", embedded once by the softmax model in plaintext at
    32 tokens, without a prompt."""
    from transformers import AutoTokenizer

    from secptune.data import few_shot_split, load_task
    from secptune.models import PlainScorer, SentenceTask, load_model
    from secptune.models.packaged import model_path

    torch.set_num_threads(threads)
    source = model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    config, weights = load_model(source)
    for name in tasks:
        task = load_task(name)
        scorer = PlainScorer(config, weights, tokenizer, SentenceTask(task.descriptions), None, max_length=32)
        descriptions = scorer.head.descriptions.numpy()               # (C, H), normalised

        def embed(texts):
            with torch.no_grad():
                return torch.cat([scorer.embeddings(scorer.add_texts(texts[i:i + 100]))
                                  for i in range(0, len(texts), 100)]).numpy()

        for seed in seeds:
            split = few_shot_split(task, 16, seed=seed, test_size=500)
            parts = {"train": split.train, "dev": split.dev, "test": split.test}
            yield (name, seed, descriptions, {k: embed(p.texts) for k, p in parts.items()},
                   {k: np.array(p.label_ids) for k, p in parts.items()})


def normalised(v: np.ndarray) -> np.ndarray:
    """`v`'s rows at unit length."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def prototype_mixed(e: np.ndarray, y: np.ndarray, w: float, descriptions: np.ndarray) -> np.ndarray:
    """The class vectors SentenceSimilarityHead.set_prototypes computes, before normalising:
    the owner's mixing matrix (prototype_mixing) times the texts and the descriptions."""
    from secptune.models.scoring import prototype_mixing

    return prototype_mixing(y, descriptions.shape[0], w).numpy() @ np.concatenate([e, descriptions])


def prototype_head(e: np.ndarray, y: np.ndarray, w: float, descriptions: np.ndarray) -> np.ndarray:
    """The class vectors SentenceSimilarityHead.set_prototypes computes (normalised rows)."""
    return normalised(prototype_mixed(e, y, w, descriptions))


def record(tasks: list[str], seeds: list[int], threads: int, model: str = "minilm") -> dict:
    from secptune.tuning.job import PROTOTYPE_WEIGHTS

    out = {}
    for name, seed, descriptions, e, y in split_embeddings(tasks, seeds, threads, model):
        train, dev, test = e["train"], e["dev"], e["test"]
        y_train, y_dev, y_test = y["train"], y["dev"], y["test"]
        both, y_both = np.concatenate([train, dev]), np.concatenate([y_train, y_dev])
        flags = {}
        for w in PROTOTYPE_WEIGHTS:
            by_train, by_dev, by_all = (prototype_head(v, labels, w, descriptions)
                                        for v, labels in ((train, y_train), (dev, y_dev), (both, y_both)))
            dev_right = (dev @ by_train.T).argmax(1) == y_dev
            flags[str(w)] = {"dev": _bits(dev_right),
                             "cross": _bits(np.concatenate([dev_right, (train @ by_dev.T).argmax(1) == y_train])),
                             "test": _bits((test @ by_train.T).argmax(1) == y_test),
                             "test_all": _bits((test @ by_all.T).argmax(1) == y_test)}
        out[f"{name}/{seed}"] = flags
        print(f"{name} seed {seed}: " + " ".join(f"{w}: {flags[w]['test_all'].count('1') / 5:.1f}"
                                                 for w in flags), flush=True)
    return out


def _flags(bits: str) -> np.ndarray:
    return np.array([c == "1" for c in bits])


def rules() -> dict:
    from secptune.tuning.job import PROTOTYPE_WEIGHTS, choose_weight
    from secptune.tuning.stats import gain_p

    def by(selection: str, evidence: str, head: str):
        def rule(split):
            right = {w: _flags(split[str(w)][evidence]) for w in PROTOTYPE_WEIGHTS}
            accuracies = {w: float(r.mean()) for w, r in right.items()}
            p_values = {w: gain_p(right[0.0], right[w]) for w in PROTOTYPE_WEIGHTS[1:]}
            return choose_weight(accuracies, p_values, selection), head
        return rule

    return {"best on dev, training texts (before)": by("best", "dev", "test"),
            "significant on dev, training texts": by("significant", "dev", "test"),
            "best cross-fitted, training texts": by("best", "cross", "test"),
            "best cross-fitted, training + dev (now)": by("best", "cross", "test_all"),
            "significant cross-fitted, training + dev": by("significant", "cross", "test_all")}


def table(flags: dict) -> str:
    from secptune.tuning.stats import gain_p

    tasks = sorted({key.split("/")[0] for key in flags})
    lines = [f"{len(flags)} splits; gain of the prototype head over zero-shot, test accuracy points",
             f"{'rule':48s}" + "".join(f"{t[:12]:>13s}" for t in tasks) + "    mean  sig.gains  sig.losses  below"]
    for name, rule in rules().items():
        gains, up, down, below = {t: [] for t in tasks}, 0, 0, 0
        for key, split in flags.items():
            weight, head = rule(split)
            tuned, zero = _flags(split[str(weight)][head]), _flags(split["0.0"]["test"])
            gain = 100 * (tuned.mean() - zero.mean())
            gains[key.split("/")[0]].append(gain)
            up += gain_p(zero, tuned) < 0.05
            down += gain_p(tuned, zero) < 0.05
            below += gain < 0
        lines.append(gain_row(name, 48, gains, up, down) + f"  {below:5d}")
    return "\n".join(lines)


def gain_row(name: str, width: int, gains: dict[str, list[float]], up: int, down: int) -> str:
    """A table row: each task's mean gain, the mean over every split, the significant gains
    and losses."""
    every = [g for v in gains.values() for g in v]
    return (f"{name:{width}s}" + "".join(f"{np.mean(v):+13.2f}" for v in gains.values())
            + f"  {np.mean(every):+6.2f}  {up:9d}  {down:10d}")


def split_parser(description: str, seeds: str) -> argparse.ArgumentParser:
    """The options that pick the splits: --tasks, --seeds, --threads, --model."""
    from secptune.data import list_tasks

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tasks", nargs="+", default=list_tasks())
    parser.add_argument("--seeds", nargs="+", default=[seeds], help=f"seeds or ranges ({seeds})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="minilm", choices=("minilm", "mpnet"), help="the packaged model (softmax)")
    return parser


def record_then_table(args, saved: str, record_splits, print_table) -> int:
    """A simulation's command: unless `--table-only`, `record_splits(seeds)` (JSON) into
    OUT/`saved`; then `print_table(what OUT/saved holds)` into OUT/table.txt and printed."""
    out = Path(args.out)
    if not args.table_only:
        out.mkdir(parents=True, exist_ok=True)
        seeds = [s for text in args.seeds for s in _seeds(text)]
        (out / saved).write_text(json.dumps(record_splits(seeds)))
    text = print_table(json.loads((out / saved).read_text()))
    (out / "table.txt").write_text(text + "\n")
    print(text)
    return 0


def main(argv=None) -> int:
    parser = split_parser(__doc__.split("\n")[0], "0-9")
    parser.add_argument("--out", required=True, help="folder for flags.json and table.txt")
    parser.add_argument("--table-only", action="store_true", help="print the table of an earlier --out")
    args = parser.parse_args(argv)
    return record_then_table(args, "flags.json", lambda seeds: record(args.tasks, seeds, args.threads, args.model),
                             table)


if __name__ == "__main__":
    sys.exit(main())
