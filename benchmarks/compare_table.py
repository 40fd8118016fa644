"""The comparison table of `secptune compare`, measured one (method, depth) at a time and
resumable: each measured row is appended to OUT/rows.jsonl as soon as it is done, and a
rerun skips the rows already there (a long run on a shared machine can be continued).

    python benchmarks/compare_table.py SEQ_LEN DEPTHS OUT METHODS [VOCAB]
    python benchmarks/compare_table.py 128 0 results/compare-128 forward-rfa,forward-softmax,prompt-grad,sft
    python benchmarks/compare_table.py 128 0,1,2 results/compare-128 forward-rfa,forward-softmax,prompt-grad,sft 1024

A layer's cost does not depend on the vocabulary, but full fine-tuning's memory does (the
word table's gradient and update): with VOCAB the depths are measured on a smaller
vocabulary, and the extrapolation to 24 layers takes the fixed part (embedding, head, word
table) from a depth-0 row measured at the full vocabulary in the same OUT.

RoBERTa-large shapes with random weights, batch 1, 10 prompt tokens, SGD; writes
OUT/compare.json and OUT/compare.png and prints the table (extrapolated to 24 layers from the
two largest depths measured).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from secptune.baselines.compare import (CompareSettings, assemble, format_cost_table, measure_row, model_at_depth,
                                        summarise, write_comparison)


def main(argv: list[str]) -> int:
    seq_len, depths, out, methods = int(argv[0]), [int(x) for x in argv[1].split(",")], Path(argv[2]), \
        tuple(argv[3].split(","))
    vocab = int(argv[4]) if len(argv) > 4 else None
    s = CompareSettings(shape="roberta-large", seq_len=seq_len, layers=tuple(depths), batch=1, prompt_length=10,
                        methods=methods, vocab=vocab)
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "rows.jsonl"
    done = [json.loads(line) for line in lines.read_text().splitlines()] if lines.exists() else []
    for row in done:                       # rows saved by an earlier version: today's columns
        row.update(summarise(row["phases"]))
    for n in depths:
        config, weights, depth = model_at_depth(s, n)
        for m in methods:
            if any(r["method"] == m and r["layers"] == n and r.get("vocab", 50265) == config.vocab_size for r in done):
                continue
            print(time.strftime("%H:%M:%S"), m, n, flush=True)
            row = measure_row(m, config, weights, s)
            done.append(row)
            with lines.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(time.strftime("%H:%M:%S"), "done", m, n, row["total_s"], row["online_gb"], flush=True)
    result = assemble(s, done, depth)
    print(format_cost_table(result))
    print(write_comparison(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
