"""What the owner knows beyond its shots, in the head: its class prior, its unlabeled texts.

    python benchmarks/owner_knowledge.py --seeds 0-19 --out DIR [--unlabeled 256] [--threads 2]
    python benchmarks/owner_knowledge.py --table-only --out DIR

Simulated on the texts' embeddings, without a search (no run of these budgets kept a searched
prompt: docs/tuning-gains.md).  For each packaged task, the softmax MiniLM (or `--model
mpnet`) embeds every text of the corpus once, in plaintext at 32 tokens without a prompt
(what `secptune tune` computes for the model without a prompt).  Then for each seed (16 + 16
shots per class, 500 test texts, as `tune`) it compares on the test texts, against zero-shot
(the descriptions alone):

- `prototypes`: the head `tune` starts from with a uniform prior: the prototypes of all 64
  shots at the cross-fitted weight (tuning.job);
- `prototypes, prior`: the same with `--class-prior pool` (the class frequencies of the
  task's texts outside the test set): the weight cross-fitted under the prior's weights, then
  the decisions shifted by the prior at the strength cross-fitted likewise (tuning.prior);
- `descriptions, prior`: zero-shot's scores with the prior at the strength chosen on all 64
  shots (what the prior does without prototypes);
- `unlabeled: soft k-means`: the uniform head refined on `--unlabeled` texts drawn from the
  pool outside the shots and the test texts (their labels unused), as semi-supervised
  prototypical networks do: each is assigned to the classes by the softmax of its scores at
  the tuning temperature, and each class vector becomes normalise((1 - a) (its prototype
  mixing) + a (the assigned texts' mean)), five times over, a of 0, 0.25, .. 1 cross-fitted
  as the weight is; `+ estimated prior`: a = 0.5 with the class prior estimated from the
  assignments (EM, Saerens et al. 2002) in them and in the test decisions.

Under MPC each of these is owner-side arithmetic on scores it receives (the prior) or class
sets from mixing matrices it shares (the unlabeled texts); only the prior is built
(`--class-prior`, `--prior-strength`).  `splits.json` holds every split's right/wrong
strings and the strengths chosen, `table.txt` the printed table.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

from prototype_rules import (_bits, _flags, gain_row, normalised, prototype_head,   # beside this script
                             prototype_mixed, record_then_table, split_parser)

#: the soft k-means mixings a the cross-fitting chooses among, and its rounds
MIXINGS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROUNDS = 5


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def refine(mixed: np.ndarray, unlabeled: np.ndarray, a: float, temperature: float, prior: bool):
    """Soft k-means from the class vectors `mixed` (C, H, before normalising) on the
    unlabeled embeddings: (class vectors, log prior; zeros without `prior`)."""
    vectors, log_prior = normalised(mixed), np.zeros(mixed.shape[0])
    if a == 0.0:
        return vectors, log_prior
    for _ in range(ROUNDS):
        assigned = _softmax(unlabeled @ vectors.T / temperature + log_prior)
        vectors = normalised((1 - a) * mixed + a * (assigned.T @ unlabeled) / assigned.sum(0)[:, None])
        if prior:
            log_prior = np.log(assigned.mean(0) + 1e-12)
    return vectors, log_prior


def corpus_embeddings(name: str, scorer) -> tuple[np.ndarray, dict[str, int]]:
    """Every distinct text of the task, embedded once (normalised), and its row by text."""
    from secptune.data import load_task

    texts = list(dict.fromkeys(load_task(name).texts))
    with torch.no_grad():
        e = torch.cat([scorer.embeddings(scorer.add_texts(texts[i:i + 200])) for i in range(0, len(texts), 200)])
    return e.numpy(), {t: i for i, t in enumerate(texts)}


def record(tasks, seeds, unlabeled: int, threads: int, model: str) -> dict:
    from transformers import AutoTokenizer

    from secptune.data import few_shot_split, load_task
    from secptune.models import PlainScorer, SentenceTask, load_model
    from secptune.models.packaged import model_path
    from secptune.tuning.job import PROTOTYPE_WEIGHTS, TuneJob, choose_weight, class_prior
    from secptune.tuning.objective import share_right
    from secptune.tuning.prior import choose_prior_strength, prior_offsets

    torch.set_num_threads(threads)
    source = model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    config, weights = load_model(source)
    scale = 1.0 / TuneJob().temperature
    out = {}
    for name in tasks:
        task = load_task(name)
        scorer = PlainScorer(config, weights, tokenizer, SentenceTask(task.descriptions), None, max_length=32)
        d = scorer.head.descriptions.numpy()
        embeddings, row = corpus_embeddings(name, scorer)
        for seed in seeds:
            split = few_shot_split(task, 16, seed=seed, test_size=500)
            prior = class_prior(TuneJob(class_prior="pool"), task, split)
            e = {k: embeddings[[row[t] for t in getattr(split, k).texts]] for k in ("train", "dev", "test")}
            y = {k: np.array(getattr(split, k).label_ids) for k in ("train", "dev", "test")}
            used = set(split.train.texts) | set(split.dev.texts) | set(split.test.texts)
            pool = sorted(i for t, i in row.items() if t not in used)
            u = embeddings[random.Random(seed).sample(pool, min(unlabeled, len(pool)))]
            folds = ((e["train"], y["train"], e["dev"], y["dev"]), (e["dev"], y["dev"], e["train"], y["train"]))
            both, y_both = np.concatenate([e["train"], e["dev"]]), np.concatenate([y["train"], y["dev"]])
            held_labels = np.concatenate([y["dev"], y["train"]])

            def held_out(w, a=0.0):
                """The dev texts scored by the training texts' class vectors and the reverse."""
                return np.concatenate([s @ refine(prototype_mixed(v, lv, w, d), u, a, 1 / scale, False)[0].T
                                       for v, lv, s, _ in folds])

            def cross(w, a=0.0, weights=None):
                right = torch.as_tensor(held_out(w, a).argmax(1) == held_labels)
                return float(share_right(right, torch.as_tensor(held_labels), weights))

            def right(scores, offsets=0.0):
                return (scores + np.asarray(offsets)).argmax(1) == y["test"]

            w = choose_weight({v: cross(v) for v in PROTOTYPE_WEIGHTS}, {}, "best")
            w_prior = choose_weight({v: cross(v, weights=prior) for v in PROTOTYPE_WEIGHTS}, {}, "best")
            strength = choose_prior_strength(torch.as_tensor(held_out(w_prior)), held_labels, prior, scale)["strength"]
            zero_strength = choose_prior_strength(torch.as_tensor(both @ d.T), y_both, prior, scale)["strength"]
            a = max(MIXINGS, key=lambda m: (cross(w, m), -m))
            test = e["test"]
            flags = {
                "zero-shot": right(test @ d.T),
                "prototypes": right(test @ prototype_head(both, y_both, w, d).T),
                "prototypes, prior": right(test @ prototype_head(both, y_both, w_prior, d).T,
                                           prior_offsets(prior, strength, scale).numpy()),
                "descriptions, prior": right(test @ d.T, prior_offsets(prior, zero_strength, scale).numpy()),
            }
            vectors, _ = refine(prototype_mixed(both, y_both, w, d), u, a, 1 / scale, False)
            flags["unlabeled: soft k-means"] = right(test @ vectors.T)
            vectors, log_prior = refine(prototype_mixed(both, y_both, w, d), u, 0.5, 1 / scale, True)
            flags["unlabeled: + estimated prior"] = right(test @ vectors.T, log_prior / scale)
            out[f"{name}/{seed}"] = {"weight": w, "weight_prior": w_prior, "strength": strength,
                                     "zero_strength": zero_strength, "mixing": a,
                                     **{k: _bits(v) for k, v in flags.items()}}
            print(f"{name} seed {seed}: weight {w} / {w_prior}, strength {strength}, mixing {a}: "
                  + " ".join(f"{k} {v.mean() * 100:.1f}" for k, v in flags.items()), flush=True)
    return out


def table(splits: dict, unlabeled: int) -> str:
    from secptune.tuning.stats import gain_p

    tasks = sorted({key.split("/")[0] for key in splits})
    heads = [k for k, v in next(iter(splits.values())).items() if isinstance(v, str) and k != "zero-shot"]
    lines = [f"{len(splits)} splits ({unlabeled} unlabeled texts each); gain over zero-shot, test accuracy points",
             f"{'head':30s}" + "".join(f"{t[:12]:>13s}" for t in tasks) + "    mean  sig.gains  sig.losses"]
    for head in heads:
        gains, up, down = {t: [] for t in tasks}, 0, 0
        for key, split in splits.items():
            zero, tuned = _flags(split["zero-shot"]), _flags(split[head])
            gains[key.split("/")[0]].append(100 * (tuned.mean() - zero.mean()))
            up += gain_p(zero, tuned) < 0.05
            down += gain_p(tuned, zero) < 0.05
        lines.append(gain_row(head, 30, gains, up, down))
    strengths = [s["strength"] for s in splits.values()]
    lines.append("strengths chosen with the prototypes: "
                 + ", ".join(f"{b:g}: {strengths.count(b)}" for b in sorted(set(strengths))))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = split_parser(__doc__.split("\n")[0], "0-19")
    parser.add_argument("--unlabeled", type=int, default=256, help="unlabeled texts per split")
    parser.add_argument("--out", required=True, help="folder for splits.json and table.txt")
    parser.add_argument("--table-only", action="store_true", help="print the table of an earlier --out")
    args = parser.parse_args(argv)

    def record_splits(seeds):
        return {"unlabeled": args.unlabeled, "model": args.model,
                "splits": record(args.tasks, seeds, args.unlabeled, args.threads, args.model)}

    return record_then_table(args, "splits.json", record_splits, lambda saved: table(saved["splits"], saved["unlabeled"]))


if __name__ == "__main__":
    sys.exit(main())
