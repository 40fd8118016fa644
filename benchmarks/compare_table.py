"""The comparison table of `secptune compare`, measured one (method, depth) at a time and
resumable: each measured row is appended to OUT/rows.jsonl as soon as it is done, and a
rerun skips the rows already there (a long run on a shared machine can be continued).

    python benchmarks/compare_table.py SEQ_LEN DEPTHS OUT METHODS
    python benchmarks/compare_table.py 128 0,1,2 results/compare-128 forward-rfa,forward-softmax,prompt-grad,sft

RoBERTa-large shapes with random weights, batch 1, 10 prompt tokens, SGD; writes
OUT/compare.json and OUT/compare.png and prints the table (extrapolated to 24 layers from the
two largest depths measured).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from secptune.tuning.compare import CompareSettings, assemble, format_table, measure_row, model_at_depth, write


def main(argv: list[str]) -> int:
    seq_len, depths, out, methods = int(argv[0]), [int(x) for x in argv[1].split(",")], Path(argv[2]), \
        tuple(argv[3].split(","))
    s = CompareSettings(shape="roberta-large", seq_len=seq_len, layers=tuple(depths), batch=1, prompt_length=10,
                        methods=methods)
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "rows.jsonl"
    done = [json.loads(line) for line in lines.read_text().splitlines()] if lines.exists() else []
    for n in depths:
        config, weights, depth = model_at_depth(s, n)
        for m in methods:
            if any(r["method"] == m and r["layers"] == n for r in done):
                continue
            print(time.strftime("%H:%M:%S"), m, n, flush=True)
            row = measure_row(m, config, weights, s)
            done.append(row)
            with lines.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(time.strftime("%H:%M:%S"), "done", m, n, row["total_s"], row["online_gb"], flush=True)
    result = assemble(s, done, depth)
    print(format_table(result))
    print(write(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
