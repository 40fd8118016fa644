"""The tuning results table: zero-shot and tuned test accuracy on the packaged tasks, per
mode and attention, over seeds (mean and spread), and the per-generation cost.

    python benchmarks/tuning_table.py --tasks movie-reviews trec sms-spam tweets amazon-food \\
        --seeds 0 1 2 --runs plaintext:softmax mpc:softmax mpc:rfa --set generations=40 --workers 2 \\
        --out results/tuning [any TuneJob field as --set key=value]

Each (run, task, seed) is one `secptune tune` job (tuning.job.run_job) in its own process;
results.json files land in OUT/<mode>-<attention>/<task>/seed-<seed>/.  Reruns skip jobs
whose results.json exists.  When OUT holds a mode's runs in both modes, the MPC runs are
paired with the plaintext ones seed by seed; `--pair A B` pairs any two folders of runs
(e.g. plaintext against plaintext with `--set score_noise=STD`, the control for MPC's error).
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

    path = fresh_run_folder(folder, "results.json")
    if path is not None:
        run_job(TuneJob(**job_dict), path)
    return folder


def fresh_run_folder(folder: str, done: str) -> Path | None:
    """The run folder, emptied of an unfinished run; None where `done` is in it already (a
    rerun skips finished runs)."""
    path = Path(folder)
    if (path / done).exists():
        return None
    if path.exists():
        import shutil

        shutil.rmtree(path)
    return path


def run_in_pool(fn, jobs, workers: int, threads: int) -> None:
    """fn(job, folder, threads) for every (job, folder) in `jobs`, `workers` processes at a
    time, each job's end (or failure) reported on stderr."""
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, j, f, threads) for j, f in jobs]
        for fut in futures:
            try:
                print("done", fut.result(), file=sys.stderr, flush=True)
            except Exception as exc:                       # report and go on with the others
                print("failed:", repr(exc), file=sys.stderr, flush=True)


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
    parser.add_argument("--pair", nargs=2, metavar=("REFERENCE", "OTHER"),
                        help="also compare two folders of runs seed by seed (e.g. OUT/plaintext-rfa and "
                             "NOISY/plaintext-rfa, runs with --set score_noise=STD)")
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
    run_in_pool(_one, jobs, args.workers, args.threads)
    print_tables(args)
    return 0


def print_tables(args) -> None:
    for metric in ("accuracy", "balanced accuracy"):
        print(f"test {metric}, zero-shot -> tuned:")
        print(format_tuning_table(args.out, args.runs, args.tasks, args.seeds, balanced=metric != "accuracy"))
    for run in args.runs:
        mode, attention = run.split(":")
        print(f"gains, {run} (tuned - zero-shot on the same test texts; McNemar's exact test per seed):")
        print(format_gains(Path(args.out) / f"{mode}-{attention}", args.tasks, args.seeds))
    for attention in ("softmax", "rfa"):
        plain, secure = (Path(args.out) / f"{mode}-{attention}" for mode in ("plaintext", "mpc"))
        if plain.is_dir() and secure.is_dir():
            print(f"MPC against plaintext with the same seeds ({attention}):")
            print(format_pairs(plain, secure, args.tasks, args.seeds))
    if args.pair:
        a, b = args.pair
        print(f"B ({b}) against A ({a}) with the same seeds:")
        print(format_pairs(a, b, args.tasks, args.seeds, names=("A", "B")))


def _results(runs: str | Path, task: str, seed: int) -> dict | None:
    path = Path(runs) / task / f"seed-{seed}" / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def format_pairs(reference: str | Path, other: str | Path, tasks, seeds, names=("plaintext", "MPC")) -> str:
    """Per task, the seeds run in both folders of runs (`reference`, e.g. OUT/plaintext-rfa,
    and `other`, e.g. OUT/mpc-rfa): tuned test accuracy in each (mean over those seeds), other
    - reference per seed, how many test predictions differ (zero-shot, tuned), and the first
    generation whose best loss differs by more than 1e-2 (a near tie broken the other way:
    the searches part there), and the generation whose prompt each kept (best on dev: a dev
    text's flipped prediction can change it)."""
    ref, oth = names
    lines = [f"{'task':14s} {'seeds':>5s} {ref:>9s} {oth:>9s} {'difference per seed':>20s} "
             f"{'differing zero-shot / tuned':>28s} {'parted at generation':>22s} {'kept (each)':>14s}"]
    every = []
    for task in tasks:
        pairs = [(seed, _results(reference, task, seed), _results(other, task, seed)) for seed in seeds]
        pairs = [(seed, a, b) for seed, a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        first = [100 * a["accuracy"]["tuned_test"] for _, a, _ in pairs]
        second = [100 * b["accuracy"]["tuned_test"] for _, _, b in pairs]
        deltas = ", ".join(f"{m - p:+.1f}" for p, m in zip(first, second))
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
        lines.append(f"{task:14s} {len(pairs):5d} {statistics.mean(first):9.1f} {statistics.mean(second):9.1f} "
                     f"{deltas:>20s} {'; '.join(differ):>28s} {', '.join(parted):>22s} {', '.join(kept):>14s}")
        every.extend(m - p for p, m in zip(first, second))
    if every:
        lines.append(f"all {len(every)} pairs: {oth} - {ref} {statistics.mean(every):+.2f} points on average, "
                     f"|{oth} - {ref}| {statistics.mean(abs(d) for d in every):.2f} on average, "
                     f"{sum(abs(d) <= 1.5 for d in every)} of {len(every)} within 1.5 points")
    return "\n".join(lines)


def format_gains(runs: str | Path, tasks, seeds) -> str:
    """Per task: the gain of each seed with its paired 95% interval and McNemar p-value, the
    mean gain, how many seeds gained significantly (p < 0.05, interval above 0) and how many
    kept the starting prompt; a last line over every task."""
    lines = [f"{'task':14s} {'mean gain':>9s} {'significant':>11s} {'kept start':>10s}  per seed: gain [95% interval] p"]
    gains, significant, tasks_up = [], 0, 0
    for task in tasks:
        found = [r["comparison"] | {"kept": r["kept_start"]} for r in (_results(runs, task, seed) for seed in seeds)
                 if r is not None and "comparison" in r]
        if not found:
            continue
        mean = 100 * statistics.mean(c["gain"] for c in found)
        up = sum(c["significant"] and c["gain"] > 0 for c in found)
        seeds_text = "; ".join(f"{100 * c['gain']:+.1f} [{100 * c['gain_interval'][0]:+.1f}, "
                               f"{100 * c['gain_interval'][1]:+.1f}] p={c['mcnemar_p']:.2g}" for c in found)
        lines.append(f"{task:14s} {mean:+9.1f} {up:>7d} of {len(found)} {sum(c['kept'] for c in found):>6d}  {seeds_text}")
        gains.extend(100 * c["gain"] for c in found)
        significant += up
        tasks_up += mean > 0 and up * 2 > len(found)
    if gains:
        lines.append(f"all {len(gains)} runs: mean gain {statistics.mean(gains):+.2f} points; {significant} significant "
                     f"gains; tasks with a mean gain and a significant one on most seeds: {tasks_up}")
    return "\n".join(lines)


def format_tuning_table(out: str, runs, tasks, seeds, balanced: bool = False) -> str:
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
                acc = (_results(Path(out) / f"{mode}-{attention}", task, seed) or {}).get("accuracy", {})
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
