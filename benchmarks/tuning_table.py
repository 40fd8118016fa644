"""The tuning results table: zero-shot and tuned test accuracy on the packaged tasks, per
mode and attention, over seeds (mean and spread), and the per-generation cost.

    python benchmarks/tuning_table.py --tasks movie-reviews trec sms-spam tweets amazon-food \\
        --seeds 0 1 2 --runs plaintext:softmax mpc:softmax mpc:rfa --generations 40 --workers 2 \\
        --out results/tuning [any `secptune tune` option as --set key=value]

Each (run, task, seed) is one `secptune tune` job (tuning.job.run_job) in its own process;
results.json files land in OUT/<mode>-<attention>/<task>/seed-<seed>/.  Reruns skip jobs
whose results.json exists.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path


def _one(job_dict: dict, folder: str, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    from secptune.tuning.job import TuneJob, run_job

    path = Path(folder)
    if (path / "results.json").exists():
        return folder
    if path.exists():
        import shutil

        shutil.rmtree(path)
    run_job(TuneJob(**job_dict), path)
    return folder


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text == "None" else text


def main(argv=None) -> int:
    from secptune.tuning.job import TuneJob

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["movie-reviews", "trec", "sms-spam", "tweets", "amazon-food"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", default=["plaintext:softmax"], help="mode:attention")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TuneJob fields")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--out", default="results/tuning")
    parser.add_argument("--table-only", action="store_true", help="print the table of what OUT holds")
    args = parser.parse_args(argv)
    if args.table_only:
        print_tables(args)
        return 0
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    base = replace(TuneJob(), **overrides)
    jobs = []
    for run in args.runs:
        mode, attention = run.split(":")
        for task in args.tasks:
            for seed in args.seeds:
                job = replace(base, task=task, seed=seed, mode=mode, attention=attention)
                folder = Path(args.out) / f"{mode}-{attention}" / task / f"seed-{seed}"
                jobs.append((job.__dict__, str(folder)))
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(_one, j, f, args.threads) for j, f in jobs]
        for fut in futures:
            try:
                print("done", fut.result(), file=sys.stderr, flush=True)
            except Exception as exc:                       # report and go on with the others
                print("failed:", repr(exc), file=sys.stderr, flush=True)
    print_tables(args)
    return 0


def print_tables(args) -> None:
    for metric in ("accuracy", "balanced accuracy"):
        print(f"test {metric}, zero-shot -> tuned:")
        print(format_table(args.out, args.runs, args.tasks, args.seeds, balanced=metric != "accuracy"))
    for attention in ("softmax", "rfa"):
        if all((Path(args.out) / f"{mode}-{attention}").is_dir() for mode in ("mpc", "plaintext")):
            print(f"MPC against plaintext with the same seeds ({attention}):")
            print(format_pairs(args.out, attention, args.tasks, args.seeds))


def _results(out: str, mode: str, attention: str, task: str, seed: int) -> dict | None:
    path = Path(out) / f"{mode}-{attention}" / task / f"seed-{seed}" / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def format_pairs(out: str, attention: str, tasks, seeds) -> str:
    """Per task, the seeds run in both modes: tuned test accuracy in plaintext and under MPC
    (mean over those seeds), MPC - plaintext per seed, how many test predictions differ
    (zero-shot, tuned), and the first generation whose best loss differs by more than 1e-2 (a
    near tie broken the other way: the searches part there), and the generation whose prompt
    each kept (best on dev: a dev text's flipped prediction can change it)."""
    lines = [f"{'task':14s} {'seeds':>5s} {'plaintext':>9s} {'MPC':>6s} {'MPC - plaintext per seed':>26s} "
             f"{'differing zero-shot / tuned':>28s} {'parted at generation':>22s} {'kept (plaintext/MPC)':>22s}"]
    every = []
    for task in tasks:
        pairs = [(seed, _results(out, "plaintext", attention, task, seed), _results(out, "mpc", attention, task, seed))
                 for seed in seeds]
        pairs = [(seed, a, b) for seed, a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        plain = [100 * a["accuracy"]["tuned_test"] for _, a, _ in pairs]
        secure = [100 * b["accuracy"]["tuned_test"] for _, _, b in pairs]
        deltas = ", ".join(f"{m - p:+.1f}" for p, m in zip(plain, secure))
        differ, parted, kept = [], [], []
        for _, a, b in pairs:
            n = len(a["test_predictions"]["tuned"])
            count = [sum(x != y for x, y in zip(a["test_predictions"][k], b["test_predictions"][k]))
                     for k in ("zero_shot", "tuned")]
            differ.append(f"{count[0]}/{count[1]} of {n}")
            apart = [g["generation"] for g, h in zip(a["generations"], b["generations"])
                     if abs(g["loss_min"] - h["loss_min"]) > 1e-2]
            parted.append(str(apart[0]) if apart else "-")
            kept.append(f"{a['accuracy']['best_generation']}/{b['accuracy']['best_generation']}")
        lines.append(f"{task:14s} {len(pairs):5d} {statistics.mean(plain):9.1f} {statistics.mean(secure):6.1f} "
                     f"{deltas:>26s} {'; '.join(differ):>28s} {', '.join(parted):>22s} {', '.join(kept):>22s}")
        every.extend(m - p for p, m in zip(plain, secure))
    if every:
        lines.append(f"all {len(every)} pairs: MPC - plaintext {statistics.mean(every):+.2f} points on average, "
                     f"|MPC - plaintext| {statistics.mean(abs(d) for d in every):.2f} on average, "
                     f"{sum(abs(d) <= 1.5 for d in every)} of {len(every)} within 1.5 points")
    return "\n".join(lines)


def format_table(out: str, runs, tasks, seeds, balanced: bool = False) -> str:
    """Per task and run: test accuracy (or balanced accuracy: mean recall over classes)
    without a prompt (zero-shot) and tuned, mean +- std over the seeds found, and n (how
    many seeds)."""
    suffix = "_balanced" if balanced else ""

    def cell(values):
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):5.1f} +- {100 * spread:3.1f}"

    lines = [f"{'task':14s} " + " ".join(f"{r + ': zero-shot -> tuned':>38s}" for r in runs)]
    for task in tasks:
        row = []
        for run in runs:
            mode, attention = run.split(":")
            accs = []
            for seed in seeds:
                acc = (_results(out, mode, attention, task, seed) or {}).get("accuracy", {})
                if f"tuned_test{suffix}" in acc:
                    accs.append((acc[f"zero_shot_test{suffix}"], acc[f"tuned_test{suffix}"]))
            if not accs:
                row.append(f"{'-':>38s}")
                continue
            text = f"{cell([a for a, _ in accs])} -> {cell([t for _, t in accs])} (n={len(accs)})"
            row.append(f"{text:>38s}")
        lines.append(f"{task:14s} " + " ".join(row))
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
