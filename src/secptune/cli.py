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
