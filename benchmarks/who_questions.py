"""A user's own two-column CSV that is not a packaged task: TREC's questions relabelled
"person" (its HUM class: who is it about?) or "other", with no descriptions (the similarity
head then describes each class by its label name, as for any user's file).

    python benchmarks/who_questions.py who-questions.csv
    secptune tune --data who-questions.csv --mode plaintext --seeds 0 1 2
"""

from __future__ import annotations

import csv
import random
import sys

from secptune.data import load_task


def main(path: str) -> None:
    task = load_task("trec")
    rows = [(text, "person" if task.labels[y] == "HUM" else "other") for text, y in zip(task.texts, task.label_ids)]
    random.Random(0).shuffle(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} questions ({sum(label == 'person' for _, label in rows)} about a person) to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "who-questions.csv")
