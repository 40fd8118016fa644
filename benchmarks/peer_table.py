"""What the side-by-side benchmarks against a peer (`engine.py`: CrypTen; `layer_peer.py`:
SPU) share: their command line and their table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def peer_parser(description: str, peer: str, runs: int) -> argparse.ArgumentParser:
    """--runs, --PEER (the interpreter of the peer's side virtual environment), --out and
    --from-json OURS PEER (only format two earlier results)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument(f"--{peer}", metavar="PYTHON", help=f"interpreter of the {peer} side venv")
    parser.add_argument("--out", default="results", help="folder for the JSON results")
    parser.add_argument("--from-json", nargs=2, metavar=("OURS", peer.upper()))
    return parser


def read_pair(paths) -> tuple:
    """(ours, the peer's): two earlier JSON results."""
    return tuple(json.loads(Path(p).read_text()) for p in paths)


def table(rows: list[list[str]]) -> list[str]:
    """Rows of cells, the first the header, as aligned lines with a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines
