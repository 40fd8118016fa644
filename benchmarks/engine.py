"""The engine benchmark beside the CrypTen peer, in one run, with ratios.

    python benchmarks/engine.py [--runs 5] [--crypten CRYPTEN_VENV/bin/python] [--out results]

Runs `secptune bench` (this process) and, when --crypten names the side virtual
environment's interpreter (see benchmarks/crypten_peer.py for its set-up), the CrypTen peer
right after it on the same machine, then prints both side by side.  `--from-json A B` only
formats two earlier JSON results (ours, CrypTen's).

Times are noisy on small machines: compare the ratios of one run, medians over --runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peer_table import peer_parser, read_pair, table

# our operation -> the peer's name for the same computation
PAIRS = [("matmul", "matmul"), ("softmax", "softmax"), ("gelu", "gelu"),
         ("layernorm", "layernorm"), ("cosine", "cos")]


def side_by_side(ours: list[dict], peer: dict) -> str:
    mine = {r["name"]: r for r in ours}
    theirs = {r["op"]: r for r in peer["results"]}
    head = ["operation", "secptune s (inline / online)", "CrypTen s", "MB ours / CrypTen",
            "rounds ours / CrypTen", "max err ours / CrypTen", "time x (inline / online)", "bytes x", "rounds x"]
    rows = [head]
    for name, peer_name in PAIRS:
        if name not in mine or peer_name not in theirs:
            continue
        a, b = mine[name], theirs[peer_name]
        rows.append([
            name,
            f"{a['seconds']:.3f} / {a['online_seconds']:.3f}",
            f"{b['time_s']:.3f}",
            f"{a['online_bytes'] / 1e6:.2f} / {b['bytes'] / 1e6:.2f}",
            f"{a['rounds']} / {b['rounds']}",
            f"{a['max_abs_error']:.1e} / {b['max_abs_err']:.1e}",
            f"{b['time_s'] / a['seconds']:.1f} / {b['time_s'] / a['online_seconds']:.1f}",
            f"{b['bytes'] / a['online_bytes']:.1f}",
            f"{b['rounds'] / a['rounds']:.1f}",
        ])
    lines = table(rows)
    lines.append("x = CrypTen / secptune (above 1: secptune is faster, or sends fewer bytes or rounds)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = peer_parser(__doc__.split("\n")[0], "crypten", 5).parse_args(argv)
    if args.from_json:
        print(side_by_side(*read_pair(args.from_json)))
        return 0

    from secptune.mpc.benchmark import format_table, run_benchmark

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(runs=args.runs, progress=lambda n: print(f"secptune: {n}", file=sys.stderr))
    ours = [r.as_dict() for r in results]
    (out / "secptune.json").write_text(json.dumps(ours, indent=2))
    print(format_table(results))
    if not args.crypten:
        return 0
    peer_json = out / "crypten.json"
    subprocess.run([args.crypten, str(Path(__file__).with_name("crypten_peer.py")),
                    "--runs", str(args.runs), "--json", str(peer_json)], check=True)
    print()
    print(side_by_side(ours, json.loads(peer_json.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
