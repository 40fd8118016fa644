"""Peer baseline: CrypTen 0.4.1 on five BERT-base-shaped secure operations (+1 variant).

This script is NOT part of secptune and CrypTen is NOT a project dependency.
It runs in a side virtual environment kept outside the repository, because
CrypTen is unmaintained and needs a small patch to import on a current torch.

Set-up (once):

    python3 -m venv CRYPTEN_VENV
    CRYPTEN_VENV/bin/pip install torch==2.13.0 omegaconf pyyaml scipy onnx
    CRYPTEN_VENV/bin/pip install --no-deps crypten==0.4.1
    # torch >= 2.x has no torch.onnx._internal.registration; crypten only uses
    # it for ONNX model import, which this benchmark does not need:
    sed -i 's/^    from torch.onnx._internal.registration import registry  # noqa$/    registry = None/' \
        CRYPTEN_VENV/lib/python3.11/site-packages/crypten/nn/onnx_converter.py

No other patch is needed for `import crypten` on torch 2.13.0 (CPU).

Run:

    CRYPTEN_VENV/bin/python benchmarks/crypten_peer.py [--json out.json]

What it measures
----------------
Two parties, two OS processes on this machine, launched with
``crypten.mpc.context.run_multiprocess(world_size=2)`` (gloo over loopback).
Beaver triples come from CrypTen's default provider ``mpc.provider: "TFP"``
(TrustedFirstParty): party 0 samples the triples itself and shares them with
pseudo-random zero sharings, so triple generation costs no communication but
its local compute (e.g. the int64 a@b of a matmul triple) happens inline and is
included in the wall time.  No TTP process is started.

Per operation: fresh random encrypted inputs for every run, one warm-up run,
then the median of ``--runs`` (default 3) timed runs.  Before each run both
parties meet at a barrier, then reset CrypTen's communication statistics;
rank 0 times the op with ``time.perf_counter``; the statistics are read right
after the op (``cfg.communicator.verbose = True``).

Byte/round counts are CrypTen's own bookkeeping
(crypten/communicator/communicator.py, ``_logging``), per party:
  * every communicator call counts as one round (a batched all_reduce that
    opens eps and delta together is one round);
  * all_reduce of n elements counts 2*n*8 bytes (what the party sends plus what
    it receives); broadcast/reduce/gather count n*8 at a receiver and
    (P-1)*n*8 at the sender; scatter counts what the source sends and what each
    other party receives.
For two parties every exchange is an all_reduce (opening), so rank 0's count
equals bytes sent + received by rank 0, i.e. the total traffic on the wire
between the two parties in both directions (each party sends about half).
The table reports rank 0's count; rank 1's count is checked to match.

Operations (inputs float32, compared against torch float64 on the same values):
  matmul     128x768 @ 768x768, both encrypted, N(0,1) entries
  softmax    12x128x128 along the last dim, N(0, 2^2)        (MPCTensor.softmax)
  gelu       128x3072, N(0,1).  CrypTen 0.4.1 has no gelu; composed as
             x * 0.5 * (1 + erf(x / sqrt(2))) with CrypTen's erf (Taylor series,
             cfg.functions.erf_iterations = 8)
  gelu_fixedpow  same inputs and composition, but with CrypTen's pow() bug
             fixed in this script (see _pow_fixed): CrypTen 0.4.1 computes x^p
             for odd p >= 5 as x^(3(p-1)/2), so its stock erf is wrong even for
             small |x|.  Same bytes and rounds as "gelu"; shows the accuracy the
             intended algorithm would have.  Either way the 8-term Taylor erf
             diverges for |x| > ~3, so the GeLU rows also print the error
             restricted to |x| <= 2 and |x| <= 3.
  layernorm  128x768 over the last dim, N(0,1).  CrypTen 0.4.1 has no
             LayerNorm module (and its var() divides by n-1 when
             unbiased=False); composed as d = x - mean(x), var = mean(d^2),
             d * inv_sqrt(var + 1e-5), gamma=1, beta=0 (no affine step)
  cos        128x4096, N(0,1)                                  (MPCTensor.cos)
All CrypTen settings are the defaults (16 fractional bits, etc.).

The error column decodes the opened ring values exactly (ring / 2^16 in
float64).  CrypTen's get_plain_text() is not used for it because its
FixedPointEncoder.decode is off by exactly 1.0 for some negative values (e.g.
about 16 of the 98,304 matmul outputs); that error is kept in the JSON as
max_abs_err_get_plain_text.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch

import crypten
import crypten.communicator as comm
from crypten.mpc.context import run_multiprocess


# name -> description printed in the table
OPS = {
    "matmul": "128x768 @ 768x768 (both encrypted)",
    "softmax": "12x128x128, dim=-1, inputs N(0,4)",
    "gelu": "128x3072, composed x*0.5*(1+erf(x/sqrt2))",
    "gelu_fixedpow": "as gelu, with pow() odd-exponent fix",
    "layernorm": "128x768, composed mean/var/inv_sqrt",
    "cos": "128x4096",
}

LN_EPS = 1e-5


def _inputs(op, gen):
    """Plaintext float32 inputs for `op` (identical in both parties)."""
    if op == "matmul":
        return [torch.randn(128, 768, generator=gen), torch.randn(768, 768, generator=gen)]
    if op == "softmax":
        return [2.0 * torch.randn(12, 128, 128, generator=gen)]
    if op in ("gelu", "gelu_fixedpow"):
        return [torch.randn(128, 3072, generator=gen)]
    if op == "layernorm":
        return [torch.randn(128, 768, generator=gen)]
    if op == "cos":
        return [torch.randn(128, 4096, generator=gen)]
    raise ValueError(op)


def _pow_fixed(x, p):
    """CrypTen 0.4.1's MPCTensor.pow with its odd-exponent branch corrected.

    crypten/common/functions/power.py computes odd p as
    ``(x^2 * x).pow((p - 1) // 2)`` = x^(3(p-1)/2), which is x^p only for p = 3;
    erf calls it (through pos_pow) with p = 3, 5, ..., 17.  Here odd p is
    ``x^2 .pow((p - 1) // 2) * x``: the same square-and-multiply structure.
    """
    if p == 1:
        return x.clone()
    if p == 2:
        return x.square()
    if p % 2 == 0:
        return _pow_fixed(x.square(), p // 2)
    return _pow_fixed(x.square(), (p - 1) // 2).mul(x)


def _erf_fixed_pow(z):
    """crypten.common.functions.approximations.erf, using _pow_fixed."""
    iters = crypten.cfg.functions.erf_iterations
    output = z.clone()
    for n in range(1, iters + 1):
        multiplier = ((-1) ** n) / (math.factorial(n) * (2 * n + 1))
        output = output.add(_pow_fixed(z, 2 * n + 1).mul(multiplier))
    return output.mul(2.0 / math.sqrt(math.pi))


def _secure(op, xs):
    """The secure computation itself, on CrypTen MPCTensors."""
    if op == "matmul":
        return xs[0].matmul(xs[1])
    if op == "softmax":
        return xs[0].softmax(-1)
    if op == "gelu":
        x = xs[0]
        return x.mul(0.5) * (x.mul(1.0 / math.sqrt(2.0)).erf() + 1)
    if op == "gelu_fixedpow":
        x = xs[0]
        return x.mul(0.5) * (_erf_fixed_pow(x.mul(1.0 / math.sqrt(2.0))) + 1)
    if op == "layernorm":
        x = xs[0]
        d = x - x.mean(-1, keepdim=True)
        var = d.square().mean(-1, keepdim=True)
        return d * (var + LN_EPS).inv_sqrt()
    if op == "cos":
        return xs[0].cos()
    raise ValueError(op)


def _reference(op, xs):
    """Float64 plaintext reference on the same (float32) input values."""
    xs = [x.double() for x in xs]
    if op == "matmul":
        return xs[0] @ xs[1]
    if op == "softmax":
        return torch.softmax(xs[0], dim=-1)
    if op in ("gelu", "gelu_fixedpow"):
        return torch.nn.functional.gelu(xs[0])  # exact erf form
    if op == "layernorm":
        return torch.nn.functional.layer_norm(xs[0], xs[0].shape[-1:], eps=LN_EPS)
    if op == "cos":
        return torch.cos(xs[0])
    raise ValueError(op)


def _decode_exact(enc):
    """Open `enc` and decode ring value / 2^f exactly in float64.

    CrypTen's own FixedPointEncoder.decode (used by get_plain_text) divides
    negative values by (scale - 1) and is off by exactly 1.0 whenever a negative
    value's fractional part lies within |value| ulps of an integer; that is an
    artefact of decoding, not of the protocol, so the error column uses this
    exact decoding instead (get_plain_text's error is kept in the JSON).
    """
    ring = enc._tensor.reveal()  # int64 ring elements, no downscaling
    return ring.double() / enc._tensor.encoder.scale


def _party(ops, runs, seed):
    """Body run by each party (rank 0 and rank 1) in its own process."""
    crypten.cfg.communicator.verbose = True
    c = comm.get()
    rank = c.get_rank()
    results = []
    for op_i, op in enumerate(ops):
        times, nbytes, rounds, errs, errs_gpt, ctimes = [], [], [], [], [], []
        extra = {}
        for run in range(runs + 1):  # run 0 is the warm-up
            gen = torch.Generator().manual_seed(seed + 1000 * op_i + run)
            plain = _inputs(op, gen)
            enc = [crypten.cryptensor(x, src=0) for x in plain]

            c.barrier()
            c.reset_communication_stats()
            t0 = time.perf_counter()
            out = _secure(op, enc)
            elapsed = time.perf_counter() - t0
            stats = c.get_communication_stats()

            # Outside the measured window: open the result and compare.
            ref = _reference(op, plain)
            diff = (_decode_exact(out) - ref).abs()
            err_gpt = (out.get_plain_text().double() - ref).abs().max().item()
            if run == 0:
                continue
            times.append(elapsed)
            nbytes.append(stats["bytes"])
            rounds.append(stats["rounds"])
            errs.append(diff.max().item())
            errs_gpt.append(err_gpt)
            if op.startswith("gelu"):  # Taylor erf diverges for large |x|
                for bound in (2, 3):
                    inside = plain[0].abs() <= bound
                    extra.setdefault(f"max_abs_err_abs_x_le_{bound}", []).append(
                        diff[inside].max().item()
                    )
            ctimes.append(stats["time"])
        results.append(
            {
                **{k: max(v) for k, v in extra.items()},
                "op": op,
                "shape": OPS[op],
                "rank": rank,
                "torch_threads": torch.get_num_threads(),
                "time_s": statistics.median(times),
                "times_s": times,
                "bytes": statistics.median(nbytes),
                "rounds": statistics.median(rounds),
                "max_abs_err": max(errs),
                "max_abs_err_runs": errs,
                "max_abs_err_get_plain_text": max(errs_gpt),
                "crypten_comm_time_s": statistics.median(ctimes),
            }
        )
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write results to this JSON file")
    p.add_argument("--runs", type=int, default=3, help="timed runs per op (median)")
    p.add_argument(
        "--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS)
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            p.error(f"unknown op {o!r}")

    provider = crypten.cfg.mpc.provider
    per_rank = run_multiprocess(world_size=2)(_party)(ops, args.runs, args.seed)
    if per_rank is None:
        print("a party failed", file=sys.stderr)
        return 1
    r0, r1 = per_rank
    for a, b in zip(r0, r1):
        a["bytes_rank1"] = b["bytes"]
        a["rounds_rank1"] = b["rounds"]

    print(f"CrypTen {crypten.__version__}, torch {torch.__version__}, 2 parties / 2 processes, "
          f"provider {provider}, precision_bits {crypten.cfg.encoder.precision_bits}, "
          f"median of {args.runs} runs (rank 0 wall time)")
    hdr = f"{'op':<13} {'shape':<42} {'time s':>8} {'MB':>9} {'rounds':>7} {'max abs err':>12}"
    print(hdr)
    print("-" * len(hdr))
    for r in r0:
        print(f"{r['op']:<13} {r['shape']:<42} {r['time_s']:>8.3f} {r['bytes'] / 1e6:>9.2f} "
              f"{r['rounds']:>7.0f} {r['max_abs_err']:>12.3e}")
        for bound in (2, 3):
            key = f"max_abs_err_abs_x_le_{bound}"
            if key in r:
                print(f"  max abs err restricted to |x| <= {bound}: {r[key]:.3e}")
        if r["bytes"] != r["bytes_rank1"] or r["rounds"] != r["rounds_rank1"]:
            print(f"  note: rank 1 counted {r['bytes_rank1'] / 1e6:.2f} MB, "
                  f"{r['rounds_rank1']:.0f} rounds")
    print("MB = 1e6 bytes as CrypTen counts them for rank 0 (its sent + received bytes).")

    if args.json:
        meta = {
            "framework": f"crypten {crypten.__version__}",
            "torch": torch.__version__,
            "parties": 2,
            "provider": provider,
            "precision_bits": crypten.cfg.encoder.precision_bits,
            "runs": args.runs,
            "torch_threads_per_party": r0[0]["torch_threads"] if r0 else None,
            "bytes_meaning": "CrypTen per-party count for rank 0: sent + received",
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": r0}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
