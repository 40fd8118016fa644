"""Gain against budget: what a longer search buys over the zero-shot model and over its start.

    python benchmarks/budget_curve.py --tasks movie-reviews trec sms-spam tweets amazon-food \\
        --seeds 0 --set popsize=20 batch=32 generations=60 eval_every=5 --workers 2 \\
        --out benchmarks/results/budget-curve [any TuneJob field as --set key=value]

Each (task, seed) is one plaintext `secptune tune` job (tuning.job.run_job, the float64
reference of the MPC run with the same seeds) at the largest budget asked.  Every time the
search's mean is scored on the dev texts (every `eval_every` generations), it is also scored
on the test texts, against the head the test set is scored by (prototypes of the training and
dev texts; with `--set search_prototypes=prompted`, their prototypes under the search's mean,
as such a run's test head is made), decided as the owner decides (its class prior's offsets,
tuning.prior): the owner never sees these test scores, this script does, so that one run
gives the whole curve.  At each budget b (the sequences scored up to an evaluation: the
population on its minibatches, and the dev texts), the prompt a run of that budget would keep is
re-derived from the recorded dev accuracies, losses and p-values, under both selection rules
(`significant`, the default: a searched prompt only on a significant dev gain over the start;
`best`: the best dev accuracy), and its test predictions are compared with the zero-shot
model's and with the start's (McNemar's exact test, paired bootstrap interval).

Writes OUT/<task>/seed-<seed>/{results.json, curve.json}; reruns skip runs whose curve.json
exists.  `--table-only` prints the tables of what OUT holds; `--plot FILE` draws the mean gain
against the sequences scored; `--against DIR ...` compares OUT's runs with the same tasks and
seeds run otherwise (say, the other search head), read up to OUT's last generation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from tuning_table import _value, fresh_run_folder, run_in_pool      # beside this script

TASKS = ["movie-reviews", "trec", "sms-spam", "tweets", "amazon-food"]


def _one(job_dict: dict, folder: str, threads: int) -> str:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from secptune.tuning.job import FINAL_PROTOTYPES, TuneJob, load_job_task, run_job
    from secptune.tuning.loop import _as_handles

    path = fresh_run_folder(folder, "curve.json")
    if path is None:
        return folder
    job = TuneJob(**job_dict)
    _, split = load_job_task(job)
    test, points = [], []
    spent = {"sequences": 0, "seconds": 0.0, "test_seconds": 0.0}

    def progress(record, tuner):
        spent["sequences"] += tuner.config.popsize * len(tuner.train_batches[record.batch][1])
        spent["seconds"] += record.seconds
        if record.generation == 0:                 # the start, scored on dev before generation 0
            spent["sequences"] += len(tuner.dev[1])
            spent["start_dev_loss"] = tuner.evaluate(np.zeros(tuner.space.latent_size), tuner.start_scores)[1]
        if record.dev_accuracy is None:
            return
        spent["sequences"] += len(tuner.dev[1])
        t0 = time.perf_counter()
        scorer = tuner.scorer
        if not test:
            test.extend(scorer.add_texts(split.test.texts[i:i + 200], job.prompt_length, job.prompt_placement)
                        for i in range(0, len(split.test.texts), 200))
        prompts = tuner.prompts(tuner.optimizer.mean()[None])
        head = FINAL_PROTOTYPES if tuner.head is None else tuner.head.set_test_head(tuner.dev, prompts)
        predicted = torch.cat([tuner.shifted(scorer.scores(h, prompts, [head])[0]).argmax(-1)
                               for h in _as_handles(test)])
        spent["test_seconds"] += time.perf_counter() - t0
        points.append({"generation": record.generation + 1, "sequences": spent["sequences"],
                       "seconds": spent["seconds"], "dev_accuracy": record.dev_accuracy,
                       "dev_loss": record.dev_loss, "dev_p": record.dev_p,
                       "test_predictions": predicted.tolist()})

    results = run_job(job, path, progress=progress)
    curve = {"job": job_dict, "start_dev_accuracy": results["accuracy"]["start_dev"],
             "start_dev_loss": spent["start_dev_loss"], "test_labels": list(split.test.label_ids),
             "test_seconds": spent["test_seconds"], "points": points}
    (path / "curve.json").write_text(json.dumps(curve))
    return folder


def kept_at(points: list[dict], start_dev: float, start_loss: float, budget_index: int, rule: str) -> int:
    """Index of the point a run stopped after point `budget_index` keeps (-1: the start),
    by the loop's rule (tuning.loop.Tuner._consider): the best dev accuracy, ties to the
    lower dev loss, then the earlier; under "significant" only points with dev_p < 0.05."""
    from secptune.tuning.loop import SELECTION_P

    best, best_acc, best_loss = -1, start_dev, start_loss
    for i, point in enumerate(points[:budget_index + 1]):
        if rule == "significant" and not point["dev_p"] < SELECTION_P:
            continue
        acc, loss = point["dev_accuracy"], point["dev_loss"]
        if acc > best_acc or (acc == best_acc and loss < best_loss):
            best, best_acc, best_loss = i, acc, loss
    return best


def load_runs(out: Path, tasks, seeds) -> list[tuple[str, int, dict, dict]]:
    runs = []
    for task in tasks:
        for seed in seeds:
            folder = out / task / f"seed-{seed}"
            if (folder / "curve.json").exists():
                results = json.loads((folder / "results.json").read_text())
                curve = json.loads((folder / "curve.json").read_text())
                _check(results, curve, folder)
                runs.append((task, seed, results, curve))
    return runs


def _check(results: dict, curve: dict, folder: Path) -> None:
    """The prompt re-derived at the run's whole budget under its own rule is the one it kept,
    with the same test predictions."""
    points = curve["points"]
    kept = kept_at(points, curve["start_dev_accuracy"], curve["start_dev_loss"], len(points) - 1,
                   results["job"]["selection"])
    generation = 0 if kept < 0 else points[kept]["generation"]
    tuned = results["test_predictions"]["tuned"]
    same = kept < 0 or points[kept]["test_predictions"] == tuned
    if generation != results["accuracy"]["best_generation"] or not same:
        raise ValueError(f"{folder}: the curve re-derives generation {generation}, the run kept "
                         f"{results['accuracy']['best_generation']}")


def curve_rows(runs, rule: str) -> list[dict]:
    """Per evaluation index (a budget), over the runs that reached it: the mean gain of the
    kept prompt over zero-shot and over the start, their significant counts, the mean test
    gain of the search's mean itself (what a perfect selection could keep, over the start),
    and the mean sequences and plaintext seconds."""
    from secptune.tuning.stats import compare_predictions

    rows = []
    depth = max(len(c["points"]) for *_, c in runs)
    for k in range(depth):
        cells = []
        for task, seed, results, curve in runs:
            points = curve["points"]
            if k >= len(points):
                continue
            preds, truth = results["test_predictions"], curve["test_labels"]
            start = preds["prototypes" if "prototypes" in preds else "zero_shot"]
            kept = kept_at(points, curve["start_dev_accuracy"], curve["start_dev_loss"], k, rule)
            tuned = start if kept < 0 else points[kept]["test_predictions"]
            over_zero = compare_predictions(preds["zero_shot"], tuned, truth, seed=seed)
            over_start = compare_predictions(start, tuned, truth, seed=seed)
            searched = _accuracy(points[k]["test_predictions"], truth) - _accuracy(start, truth)
            cells.append((task, points[k], over_zero, over_start, searched, kept))
        rows.append({
            "evaluation": k + 1, "runs": len(cells),
            "generation": statistics.median(p["generation"] for _, p, *_ in cells),
            "sequences": statistics.mean(p["sequences"] for _, p, *_ in cells),
            "seconds": statistics.mean(p["seconds"] for _, p, *_ in cells),
            "gain": 100 * statistics.mean(z["gain"] for _, _, z, *_ in cells),
            "significant": sum(z["significant"] and z["gain"] > 0 for _, _, z, *_ in cells),
            "losses": sum(z["significant"] and z["gain"] < 0 for _, _, z, *_ in cells),
            "over_start": 100 * statistics.mean(s["gain"] for *_, s, _, _ in cells),
            "over_start_significant": sum(s["significant"] and s["gain"] > 0 for *_, s, _, _ in cells),
            "searched_over_start": statistics.mean(m for *_, m, _ in cells),
            "kept_searched": sum(kept >= 0 for *_, kept in cells),
            "tasks_up": _tasks_up(cells),
        })
    return rows


def _accuracy(predictions, truth) -> float:
    """Test accuracy in points."""
    return 100 * sum(a == b for a, b in zip(predictions, truth)) / len(truth)


def _mean(values) -> float:
    values = list(values)
    return statistics.mean(values) if values else float("nan")


def _tasks_up(cells) -> int:
    """Tasks whose mean gain over zero-shot is positive with a significant gain on most of
    their runs (the issue's "significant gain on >= 4 of 5 tasks", per task over seeds)."""
    by_task: dict[str, list] = {}
    for task, _, z, *_ in cells:
        by_task.setdefault(task, []).append(z)
    return sum(statistics.mean(z["gain"] for z in zs) > 0 and 2 * sum(z["significant"] and z["gain"] > 0 for z in zs)
               > len(zs) for zs in by_task.values())


def format_rows(rows: list[dict]) -> str:
    lines = ["| evaluation | generation | sequences | plaintext s | runs | gain over zero-shot | significant gains "
             "/ losses | tasks up | gain over the start (significant) | searched prompt kept | the search's mean "
             "over the start |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['evaluation']} | {r['generation']:g} | {r['sequences']:,.0f} | {r['seconds']:.0f} | "
                     f"{r['runs']} | {r['gain']:+.2f} | {r['significant']} / {r['losses']} | {r['tasks_up']} | "
                     f"{r['over_start']:+.2f} ({r['over_start_significant']}) | {r['kept_searched']} | "
                     f"{r['searched_over_start']:+.2f} |")
    return "\n".join(lines)


def format_tasks(runs, generations=(5, 15, 30, 60)) -> str:
    """Per task, mean over its runs: test accuracy zero-shot, of the start (the prototype head),
    and of the search's mean at some generations, with the training loss (the population's
    best) and the dev accuracy of the search's mean there: where the search is going."""
    by_task: dict[str, list] = {}
    for task, seed, results, curve in runs:
        by_task.setdefault(task, []).append((results, curve))
    head = " | ".join(f"gen {g}: test / dev / train loss" for g in generations)
    lines = [f"| task | runs | zero-shot | start | {head} |", "|" + "---|" * (4 + len(generations))]
    for task, items in by_task.items():
        zero = _mean(_accuracy(r["test_predictions"]["zero_shot"], c["test_labels"]) for r, c in items)
        start = _mean(_accuracy(r["test_predictions"].get("prototypes", r["test_predictions"]["zero_shot"]),
                                c["test_labels"]) for r, c in items)
        cells = []
        for g in generations:
            at = [(r, c, next((p for p in c["points"] if p["generation"] == g), None)) for r, c in items]
            at = [(r, c, p) for r, c, p in at if p is not None]
            if not at:
                cells.append("-")
                continue
            test = _mean(_accuracy(p["test_predictions"], c["test_labels"]) for _, c, p in at)
            dev = _mean(100 * p["dev_accuracy"] for *_, p in at)
            loss = _mean(r["generations"][g - 1]["loss_min"] for r, _, _ in at)
            cells.append(f"{test:.1f} / {dev:.1f} / {loss:.3f}")
        lines.append(f"| {task} | {len(items)} | {zero:.1f} | {start:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def against(runs, others, generations: int) -> str:
    """`runs` against `others` (the same tasks and seeds with another setting, read up to
    `generations`): both heads' last rows under each rule, then per run the search's mean on
    test at that generation, and whether the two predicted alike."""
    for *_, curve in others:
        curve["points"] = [p for p in curve["points"] if p["generation"] <= generations]
    lines = []
    for name, group in (("these runs", runs), ("the others", others)):
        for rule in ("significant", "best"):
            r = curve_rows(group, rule)[-1]
            lines.append(f"{name}, {rule}, generation {r['generation']:g}: gain over zero-shot {r['gain']:+.2f} "
                         f"({r['significant']} / {r['losses']}), over the start {r['over_start']:+.2f} "
                         f"({r['over_start_significant']}), searched prompt kept {r['kept_searched']}, the "
                         f"search's mean over the start {r['searched_over_start']:+.2f}")
    mine = {(task, seed): curve for task, seed, _, curve in runs}
    lines.append("| task | seed | weight | start | these runs | the others | difference |")
    lines.append("|" + "---|" * 7)
    for task, seed, results, curve in others:
        truth = curve["test_labels"]
        a, b = mine[(task, seed)]["points"][-1]["test_predictions"], curve["points"][-1]["test_predictions"]
        start = _accuracy(results["test_predictions"].get("prototypes", results["test_predictions"]["zero_shot"]),
                          truth)
        lines.append(f"| {task} | {seed} | {results['prototypes']['weight']:g} | {start:.1f} | "
                     f"{_accuracy(a, truth):.1f} | {_accuracy(b, truth):.1f} | "
                     f"{'the same predictions' if a == b else f'{_accuracy(a, truth) - _accuracy(b, truth):+.1f}'} |")
    return "\n".join(lines)


def plot(rows_by_rule: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rule, rows in rows_by_rule.items():
        ax.plot([r["sequences"] for r in rows], [r["gain"] for r in rows], marker="o", label=f"kept prompt ({rule})")
    rows = next(iter(rows_by_rule.values()))
    ax.plot([r["sequences"] for r in rows], [r["searched_over_start"] + rows[0]["gain"] - rows[0]["over_start"]
                                             for r in rows], ls="--", label="the search's mean (no selection)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("sequences scored (population x minibatch, and dev texts)")
    ax.set_ylabel("test accuracy gain over zero-shot, points (mean)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    from secptune.tuning.job import TuneJob

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TuneJob fields")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--out", default="results/budget-curve")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--plot", help="a PNG of the mean gain against the sequences scored")
    parser.add_argument("--against", nargs="+", metavar="DIR",
                        help="folders of the same tasks and seeds run otherwise (each run taken from the first "
                             "folder that has it), compared run by run up to these runs' last generation")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.table_only:
        overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
        base = replace(TuneJob(), mode="plaintext", **overrides)
        jobs = [(replace(base, task=task, seed=seed).__dict__, str(out / task / f"seed-{seed}"))
                for task in args.tasks for seed in args.seeds]
        run_in_pool(_one, jobs, args.workers, args.threads)
    runs = load_runs(out, args.tasks, args.seeds)
    if not runs:
        print("no runs in", out)
        return 1
    rows = {rule: curve_rows(runs, rule) for rule in ("significant", "best")}
    for rule, table in rows.items():
        print(f"selection {rule}: {len(runs)} runs ({', '.join(sorted({t for t, *_ in runs}))})")
        print(format_rows(table))
    print("per task (mean over its runs), the search's mean at some generations:")
    print(format_tasks(runs))
    if args.plot:
        plot(rows, Path(args.plot))
    if args.against:
        found = {}
        for folder in args.against:
            for run in load_runs(Path(folder), args.tasks, args.seeds):
                found.setdefault(run[:2], run)
        last = max(p["generation"] for *_, c in runs for p in c["points"])
        print(f"against {', '.join(args.against)}:")
        print(against(runs, [found[(t, s)] for t, s, *_ in runs if (t, s) in found], last))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
