"""Zero-shot test accuracy of all-mpnet-base-v2 against MiniLM, plaintext, softmax attention.

    python benchmarks/mpnet_zero_shot.py [--out benchmarks/results/mpnet/zero_shot.json]

For each packaged task, `secptune tune` with the similarity head on the task's descriptions
(no class prototypes), one generation (the zero-shot accuracy is the model without a prompt,
scored on the same 500 test texts of seed 0 that every tune run of the task holds out), for
--model minilm and --model mpnet (fetched on first use).  Each run's results.json stays in a
temporary folder; what is written is the accuracies, the command and the seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("movie-reviews", "trec", "sms-spam", "tweets", "amazon-food")
MODELS = ("minilm", "mpnet")
REPO = Path(__file__).resolve().parents[1]


def command(model: str, task: str) -> list[str]:
    return ["secptune", "tune", "--model", model, "--attention", "softmax", "--mode", "plaintext", "--task", task,
            "--prototypes", "0", "--generations", "1", "--seeds", "0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/mpnet/zero_shot.json"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for model in args.models:
                out = Path(tmp) / f"{model}-{task}"
                argv = command(model, task)
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "secptune.cli", *argv[1:], "--out", str(out)],
                                      capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return done.returncode
                acc = json.loads((out / "results.json").read_text())["accuracy"]
                row = {"task": task, "model": model, "zero_shot_test": acc["zero_shot_test"],
                       "zero_shot_test_balanced": acc["zero_shot_test_balanced"],
                       "command": " ".join(argv + ["--out", "RUN"]), "seconds": round(seconds, 1)}
                rows.append(row)
                print(f"{task:14s} {model:7s} zero-shot {row['zero_shot_test']:.1%} (balanced "
                      f"{row['zero_shot_test_balanced']:.1%}), {seconds:.0f} s", file=sys.stderr)
    result = {"date": datetime.date.today().isoformat(), "commit": commit,
              "script": "python benchmarks/mpnet_zero_shot.py", "test_texts": 500, "seed": 0, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
