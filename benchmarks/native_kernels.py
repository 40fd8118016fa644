"""The native kernels (secptune.mpc.native) against their numpy/torch twins, side by side.

    python benchmarks/native_kernels.py [--runs 3] [--texts 32] [--length 24] [--out FILE.json] [--kernels-only]

1. Each kernel alone, medians of `--runs`, native and twin alternating:
   - DCF key generation and one server's evaluation, 2^17 comparisons of 40 bits (payload 1);
   - the harmonic series of a GeLU-sized input: 2^20 elements, 30 odd harmonics (the dealer's
     rounded cos/sin table, and one server's sine sum over the dealt shares).
2. One secure scoring pass of the packaged MiniLM (RFA and softmax, `--texts` texts of
   `--length` tokens, public-embedding mode; benchmarks/pass_cost.py's pass), with
   SECPTUNE_NATIVE=1 and =0 alternating, `--runs` each: seconds (median) and their ratio.
   Bytes and rounds are the same either way (printed once).

All parties are threads of this process, so a pass's seconds are inline (the dealer deals on
demand).  Seconds depend on the machine and its load: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from secptune.data import load_task
from secptune.mpc import native
from secptune.mpc.fss import dcf_eval, dcf_keygen
from secptune.mpc.protocols.trig import TrigGate, _dealer_harmonics

from pass_cost import measure


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _with(flag: str, fn):
    os.environ["SECPTUNE_NATIVE"] = flag
    try:
        return fn()
    finally:
        os.environ.pop("SECPTUNE_NATIVE", None)


class _CPUServer:
    device = torch.device("cpu")


def _series_sum(delta, harmonics, cos_t, sin_t):
    """One server's sine sum, through the gate's own finish on either implementation (a gate
    built around given dealt shares, without a session)."""
    gate = TrigGate.__new__(TrigGate)
    gate.server, gate.need_cos, gate.harmonics = _CPUServer(), False, tuple(harmonics)
    gate.public_frac, gate.dealt_frac = 16, 16
    gate.p = {**{f"cos{i}": c for i, c in enumerate(cos_t)}, **{f"sin{i}": s for i, s in enumerate(sin_t)}}
    return gate.finish([delta])


def kernels(runs: int) -> dict:
    rng = np.random.default_rng(0)
    count, bits = 1 << 17, 40
    alpha = rng.integers(0, 1 << bits, count, dtype=np.uint64)
    beta = rng.integers(0, 1 << 63, (count, 1), dtype=np.uint64)
    roots = [rng.integers(0, 1 << 63, (count, 2), dtype=np.uint64) for _ in range(2)]
    x = rng.integers(0, 1 << bits, count, dtype=np.uint64)
    n, harmonics = 1 << 20, list(range(1, 60, 2))
    t = torch.from_numpy(rng.integers(-(1 << 62), 1 << 62, n, dtype=np.int64))
    scales = [2.0 ** 16 / k for k in harmonics]
    cos_t, sin_t = _dealer_harmonics(t, harmonics, scales)
    cases = {
        "dcf_keygen": lambda: dcf_keygen(alpha, beta, bits, *roots),
        "dcf_eval": (lambda key=dcf_keygen(alpha, beta, bits, *roots)[0]: dcf_eval(key, x)),
        "dealer_harmonics": lambda: _dealer_harmonics(t, harmonics, scales),
        "server_series": lambda: _series_sum(t, harmonics, cos_t, sin_t),
    }
    out = {}
    for name, fn in cases.items():
        seconds = {"native": [], "twin": []}
        for _ in range(runs):
            seconds["native"].append(_with("1", lambda: _timed(fn)))
            seconds["twin"].append(_with("0", lambda: _timed(fn)))
        med = {k: statistics.median(v) for k, v in seconds.items()}
        out[name] = {"native_s": med["native"], "twin_s": med["twin"], "speedup": med["twin"] / med["native"]}
        print(f"{name:18s} native {med['native']:.3f} s  twin {med['twin']:.3f} s  "
              f"speed-up {med['twin'] / med['native']:.1f}x", flush=True)
    return out


def passes(runs: int, texts: int, length: int) -> dict:
    sentences = load_task("movie-reviews").texts[:texts]
    out = {}
    for kind in ("rfa", "softmax"):
        seconds = {"native": [], "twin": []}
        cost = None
        for _ in range(runs):
            for name, flag in (("native", "1"), ("twin", "0")):
                result = _with(flag, lambda: measure(kind, sentences, length, 1))
                seconds[name].append(result["seconds"])
                cost = {k: result[k] for k in ("online_bytes", "dealer_bytes", "rounds")}
        med = {k: statistics.median(v) for k, v in seconds.items()}
        out[kind] = {"native_s": med["native"], "twin_s": med["twin"], "ratio": med["native"] / med["twin"],
                     "all_seconds": seconds, **cost}
        print(f"pass {kind:8s} {texts}x{length}: native {med['native']:.1f} s  twin {med['twin']:.1f} s  "
              f"({med['native'] / med['twin']:.2f}x the time); online {cost['online_bytes'] / 1e6:.1f} MB, "
              f"dealer {cost['dealer_bytes'] / 1e6:.1f} MB, {cost['rounds']} rounds", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--out", default=None)
    parser.add_argument("--kernels-only", action="store_true",
                        help="part 1 only (e.g. to compare two versions of the kernels, run against each in turn)")
    args = parser.parse_args(argv)
    if native.kernels is None:
        print("the native kernels are not built here (pip install -e . with a C compiler)", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    result = {"aes_ni": native.aes_enabled(), "kernels": kernels(args.runs)}
    if not args.kernels_only:
        result.update(passes=passes(args.runs, args.texts, args.length), texts=args.texts, length=args.length)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
