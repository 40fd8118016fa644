"""Would a head fitted to the owner's shots beat the class prototypes?  A linear probe, simulated.

    python benchmarks/probe_head.py --seeds 0-4 --out DIR [--model minilm|mpnet] [--threads 2]

The similarity head scores a text by its cosine to each class's vector; `--prototypes auto`
mixes each class's description with the mean embedding of the owner's shots of that class,
the weight chosen by cross-fitting (prototype_rules.py).  A more flexible head is a linear
probe on the shots: logits = s (x . d_c) + x . W_c + b_c, the descriptions' cosines at a
fixed scale s = 20 plus a weight matrix W (L2-penalised towards 0, so a strong penalty leaves
the descriptions) and, in one variant, a per-class bias b, fitted by L-BFGS on the
normalised embeddings.  Under MPC the owner could fit it from scores alone (each W_c is a
mix of the shots' embeddings: the representer theorem; the cosines of its texts to one
another are scores of its texts against class sets made of its own texts), so it is a head
the protocol could serve.  This file asks first whether it would help.

For each packaged task and seed (16 + 16 shots per class, 500 test texts), the softmax model
embeds the texts once in plaintext at 32 tokens, without a prompt (prototype_rules.py's
split_embeddings).  Each head's setting is chosen as `--prototypes auto` chooses its weight:
cross-fitted on the 2 x 16 shots per class (training texts scored by a head fitted on the dev
texts and the other way round); then fitted on all the shots and scored on the test texts.
Prints, per task, the mean gain over zero-shot (the descriptions alone) of the prototypes
(the rule `secptune tune` uses), of the probes, and of whichever of the prototypes and the
biased probe cross-fits the better, and how many splits gain or lose
significantly (one-sided McNemar, p < 0.05); `table.txt` in --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from prototype_rules import _seeds, gain_row, normalised, prototype_head, split_embeddings, split_parser

#: the descriptions' cosines are multiplied by this in the probe's logits (cosines differ by
#: hundredths between classes; a logistic model needs them on the scale of its other terms)
SCALE = 20.0
#: the L2 penalties tried for W (each chosen by cross-fitting)
PENALTIES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def fit_probe(e: np.ndarray, y: np.ndarray, descriptions: np.ndarray, penalty: float, bias: bool):
    """The probe fitted on embeddings e (rows normalised) with labels y: a function of
    embeddings returning logits."""
    x = torch.tensor(e, dtype=torch.float64)
    d = torch.tensor(descriptions, dtype=torch.float64)
    labels = torch.tensor(y)
    W = torch.zeros(d.shape[0], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(d.shape[0], dtype=torch.float64, requires_grad=bias)
    optimiser = torch.optim.LBFGS([W, b] if bias else [W], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = SCALE * x @ d.T + x @ W.T + b
        loss = torch.nn.functional.cross_entropy(logits, labels) + penalty * (W ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    W_, b_ = W.detach().numpy(), b.detach().numpy()
    return lambda v: SCALE * v @ descriptions.T + v @ W_.T + b_


def cross_fitted(settings, score) -> tuple[object, float]:
    """The setting whose head, fitted on one half of the shots, scores the other half best
    (both ways round; ties: the first), and that cross-fitted accuracy."""
    accuracy = {s: float(np.concatenate([score(s, "train", "dev"), score(s, "dev", "train")]).mean())
                for s in settings}
    best = max(settings, key=lambda s: accuracy[s])
    return best, accuracy[best]


def heads(descriptions, e, y) -> dict[str, np.ndarray]:
    """Which test texts each head gets right: zero-shot, prototypes, the two probes."""
    from secptune.tuning.job import PROTOTYPE_WEIGHTS

    both = np.concatenate([e["train"], e["dev"]])
    y_both = np.concatenate([y["train"], y["dev"]])
    out = {"zero-shot": (e["test"] @ descriptions.T).argmax(1) == y["test"]}

    def proto_right(w, fit_on, score_on):
        head = prototype_head(e[fit_on], y[fit_on], w, descriptions)
        return (e[score_on] @ head.T).argmax(1) == y[score_on]

    # ties keep the smaller weight, as tuning.job.choose_weight does
    weight, proto_accuracy = cross_fitted(sorted(PROTOTYPE_WEIGHTS), proto_right)
    out["prototypes (cross-fitted weight)"] = (e["test"] @ prototype_head(both, y_both, weight, descriptions).T
                                               ).argmax(1) == y["test"]
    for bias in (True, False):
        def probe_right(penalty, fit_on, score_on, bias=bias):
            logits = fit_probe(e[fit_on], y[fit_on], descriptions, penalty, bias)(e[score_on])
            return logits.argmax(1) == y[score_on]

        # ties keep the stronger penalty (closer to the descriptions)
        penalty, probe_accuracy = cross_fitted(sorted(PENALTIES, reverse=True), probe_right)
        name = "probe with class bias" if bias else "probe without class bias"
        out[name] = fit_probe(both, y_both, descriptions, penalty, bias)(e["test"]).argmax(1) == y["test"]
        if bias:
            # the prototypes or the probe, whichever cross-fits the better (ties: the prototypes)
            chosen = out[name] if probe_accuracy > proto_accuracy else out["prototypes (cross-fitted weight)"]
    out["prototypes or biased probe"] = chosen
    return out


def table(results: dict[str, dict[str, np.ndarray]]) -> str:
    from secptune.tuning.stats import gain_p

    tasks = sorted({key.split("/")[0] for key in results})
    names = [n for n in next(iter(results.values())) if n != "zero-shot"]
    lines = [f"{len(results)} splits; gain over zero-shot, test accuracy points (mean over seeds)",
             f"{'head':34s}" + "".join(f"{t[:12]:>13s}" for t in tasks) + "    mean  sig.gains  sig.losses"]
    for name in names:
        gains = {t: [] for t in tasks}
        up = down = 0
        for key, right in results.items():
            zero, tuned = right["zero-shot"], right[name]
            gains[key.split("/")[0]].append(100 * (tuned.mean() - zero.mean()))
            up += gain_p(zero, tuned) < 0.05
            down += gain_p(tuned, zero) < 0.05
        lines.append(gain_row(name, 34, gains, up, down))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = split_parser(__doc__.split("\n")[0], "0-4")
    parser.add_argument("--out", required=True, help="folder for table.txt")
    args = parser.parse_args(argv)
    seeds = [s for text in args.seeds for s in _seeds(text)]
    results = {}
    for name, seed, descriptions, e, y in split_embeddings(args.tasks, seeds, args.threads, args.model):
        e = {part: normalised(v) for part, v in e.items()}
        results[f"{name}/{seed}"] = heads(descriptions, e, y)
        print(f"{name} seed {seed}: " + ", ".join(f"{k} {100 * v.mean():.1f}"
                                                  for k, v in results[f"{name}/{seed}"].items()), flush=True)
    text = table(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
