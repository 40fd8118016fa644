"""Zero-shot test accuracy of all-mpnet-base-v2 against MiniLM, plaintext, softmax attention.

    python benchmarks/mpnet_zero_shot.py [--out benchmarks/results/mpnet/zero_shot.json] [--prototypes 0]

For each packaged task, `secptune tune` with the similarity head on the task's descriptions
(no class prototypes), one generation (the zero-shot accuracy is the model without a prompt,
scored on the same 500 test texts of seed 0 that every tune run of the task holds out), for
--model minilm and --model mpnet (fetched on first use).  Each run's results.json stays in a
temporary folder; what is written is the accuracies, the command and the seconds.

`--prototypes 1` scores by the class prototypes instead (the mean embedding of each class's
16 training texts, no description): "prototypes_test", a measure of the embeddings that
does not depend on the descriptions' wording (chosen on MiniLM: docs/tuning.md).
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


def command(model: str, task: str, prototypes: str) -> list[str]:
    return ["secptune", "tune", "--model", model, "--attention", "softmax", "--mode", "plaintext", "--task", task,
            "--prototypes", prototypes, "--generations", "1", "--seeds", "0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/mpnet/zero_shot.json"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--prototypes", default="0", help="tune's --prototypes (0: descriptions only)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for model in args.models:
                out = Path(tmp) / f"{model}-{task}"
                argv = command(model, task, args.prototypes)
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
                if "prototypes_test" in acc:
                    row["prototypes_test"] = acc["prototypes_test"]
                    row["prototypes_test_balanced"] = acc["prototypes_test_balanced"]
                rows.append(row)
                also = (f", prototypes {row['prototypes_test']:.1%} (balanced {row['prototypes_test_balanced']:.1%})"
                        if "prototypes_test" in row else "")
                print(f"{task:14s} {model:7s} zero-shot {row['zero_shot_test']:.1%} (balanced "
                      f"{row['zero_shot_test_balanced']:.1%}){also}, {seconds:.0f} s", file=sys.stderr)
    result = {"date": datetime.date.today().isoformat(), "commit": commit,
              "script": " ".join(["python benchmarks/mpnet_zero_shot.py", *sys.argv[1:]]), "test_texts": 500, "seed": 0, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
