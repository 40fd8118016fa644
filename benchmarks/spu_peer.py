"""Peer baseline: one BERT-base encoder layer at 128 tokens on SPU 0.9.5, SEMI2K, two parties.

This script is NOT part of secptune and SPU is NOT a project dependency: it runs in a side
virtual environment kept outside the repository (SPU pins numpy < 2 and jax <= 0.4.34).

Set-up (once; SPU 0.9.5 ships wheels for CPython 3.10 and 3.11 on x86_64 Linux):

    python3 -m venv SPU_VENV
    SPU_VENV/bin/pip install spu==0.9.5

Run (prints one JSON object; `benchmarks/layer_peer.py --spu SPU_VENV/bin/python` runs it
beside secptune's layer and prints both):

    SPU_VENV/bin/python benchmarks/spu_peer.py [--runs 3] [--tokens 128] [--json out.json]

What it measures
----------------
Post-LayerNorm BERT-base layer (hidden 768, 12 heads, feed-forward 3,072, erf GeLU, LayerNorm
eps 1e-12), batch 1, `--tokens` tokens, no padding: the computation of
`secptune.models.Transformer.layer`.  The input x is N(0, 1) (a LayerNorm's output), weights
and biases N(0, 0.02^2), LayerNorm gains 1 + N(0, 0.02^2); every one of them secret
(VIS_SECRET), the same draws as `layer_peer.py`'s (numpy, `--seed`).

The two parties are threads of this process joined by SPU's in-memory link
(`spu.utils.simulation.Simulator`'s set-up: `link.create_mem`, one `Runtime` per party),
protocol SEMI2K on the 64-bit ring (FM64, SPU's default 18 fractional bits).  SPU's
default Beaver provider for SEMI2K, and the only one its wheel can run without a separate
TTP beaver server (which the wheel does not ship; `MultiParty` is refused for SEMI2K), is
`TrustedFirstParty`: party 0 derives every correlation itself from seeds, so SPU counts no
bytes for the offline phase, and its time is inside the execution time.  SPU itself names
that provider unsafe (`BeaverTfpUnsafe`: party 0 knows every triple).  `--protocol
cheetah` runs SPU's two-party protocol with no trusted party instead (correlations by
oblivious transfer and homomorphic encryption, all on the link).

Per run, fresh input shares, then SPU's own profile of party 0 (`enable_pphlo_profile`):
the execution time, the bytes party 0 sent and received (their sum is all the traffic on
the link between the two parties), and its send actions (messages party 0 sent; SPU keeps
no round count: in a two-party protocol a round is one message each way, so this is an
upper bound on rounds where messages are not batched).  One warm-up run (its compile is
not timed either), then the median over `--runs`.  The max abs error is against numpy
float64 on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

HIDDEN, HEADS, FFN, EPS = 768, 12, 3072, 1e-12


def draw(tokens: int, seed: int) -> list[np.ndarray]:
    """x, then the layer's weights in `LayerWeights` order (qkv, qkv_bias, out, out_bias,
    norm1 gain, norm1 bias, up, up_bias, down, down_bias, norm2 gain, norm2 bias)."""
    rng = np.random.default_rng(seed)
    H, I = HIDDEN, FFN

    def w(*shape):
        return rng.standard_normal(shape) * 0.02

    return [rng.standard_normal((tokens, H)),
            w(H, 3 * H), w(3 * H), w(H, H), w(H), 1 + w(H), w(H), w(H, I), w(I), w(I, H), w(H), 1 + w(H), w(H)]


def bert_layer(np_, erf, x, qkv, qkv_bias, out, out_bias, g1, b1, up, up_bias, down, down_bias, g2, b2):
    """The layer in array code: `np_` is numpy (the float64 reference) or jax.numpy."""
    L = x.shape[0]
    d = HIDDEN // HEADS
    h = x @ qkv + qkv_bias
    q, k, v = (h[:, i * HIDDEN:(i + 1) * HIDDEN].reshape(L, HEADS, d).transpose(1, 0, 2) for i in range(3))
    s = (q @ k.transpose(0, 2, 1)) / np_.sqrt(float(d))
    e = np_.exp(s - s.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    context = (p @ v).transpose(1, 0, 2).reshape(L, HIDDEN)

    def layer_norm(y, g, b):
        mu = y.mean(-1, keepdims=True)
        c = y - mu
        return c / np_.sqrt((c * c).mean(-1, keepdims=True) + EPS) * g + b

    y = layer_norm(x + context @ out + out_bias, g1, b1)
    pre = y @ up + up_bias
    hidden = pre * 0.5 * (1 + erf(pre / np_.sqrt(2.0)))
    return layer_norm(y + hidden @ down + down_bias, g2, b2)


def reference(inputs: list[np.ndarray]) -> np.ndarray:
    from math import erf
    return bert_layer(np, np.vectorize(erf), *inputs)


class Captured:
    """What SPU's C++ logger writes to file descriptor 1 inside the block."""

    def __enter__(self):
        sys.stdout.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(1)
        os.dup2(self.file.fileno(), 1)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()


PROFILE = {
    "seconds": re.compile(r"execution took ([0-9.e+-]+)s"),
    "link": re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+)"),
    "section": re.compile(r"(HLO|HAL|MPC) profiling: total time"),
    "op": re.compile(r"- (.+?), executed (\d+) times, duration ([0-9.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                     r"send actions (\d+)"),
}


def operations(log: str) -> dict:
    """SPU's profile of its (pphlo) operations: seconds, bytes both ways, send actions."""
    ops, section = {}, None
    for line in log.splitlines():
        header = PROFILE["section"].search(line)
        if header:
            section = header.group(1)
            continue
        op = PROFILE["op"].search(line)
        if op and section == "HLO":
            name, count, seconds, sent, received, actions = op.groups()
            ops[name] = dict(executed=int(count), seconds=float(seconds), bytes=int(sent) + int(received),
                             send_actions=int(actions))
    return ops


def run_spu(inputs, runs: int, protocol: str) -> dict:
    import jax
    import jax.numpy as jnp
    import spu.libspu as libspu
    from spu import api as spu_api
    from spu.utils import frontend as spu_fe

    kind = {"semi2k": libspu.ProtocolKind.SEMI2K, "cheetah": libspu.ProtocolKind.CHEETAH}[protocol]
    config = libspu.RuntimeConfig(protocol=kind, field=libspu.FieldType.FM64)
    config.enable_pphlo_profile = True
    io = spu_api.Io(2, config)
    names = [f"in{i}" for i in range(len(inputs))]
    executable, _ = spu_fe.compile(spu_fe.Kind.JAX, lambda *a: bert_layer(jnp, jax.scipy.special.erf, *a),
                                   [x.astype(np.float32) for x in inputs], {}, names,
                                   [libspu.Visibility.VIS_SECRET] * len(inputs), lambda out: ["out0"])
    desc = libspu.link.Desc()
    desc.recv_timeout_ms = 3600 * 1000          # CHEETAH's products take minutes on 2 cores
    for rank in range(2):
        desc.add_party(f"id_{rank}", f"thread_{rank}")

    def once():
        shares = [io.make_shares(x.astype(np.float32), libspu.Visibility.VIS_SECRET) for x in inputs]
        results = [None, None]
        errors = []

        def party(rank):
            try:
                rank_config = libspu.RuntimeConfig(config)
                rank_config.enable_pphlo_profile = rank == 0
                runtime = spu_api.Runtime(libspu.link.create_mem(desc, rank), rank_config)
                for name, share in zip(names, shares):
                    runtime.set_var(name, share[rank])
                runtime.run(executable)
                results[rank] = runtime.get_var("out0")
            except BaseException as exc:          # surfaced in the caller below
                errors.append(exc)

        threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
        t0 = time.perf_counter()
        with Captured() as log:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        out = np.asarray(io.reconstruct(results), dtype=np.float64)
        seconds = float(PROFILE["seconds"].findall(log.text)[-1])
        sent, received, actions = (int(v) for v in PROFILE["link"].findall(log.text)[-1])
        return out, dict(seconds=seconds, wall_seconds=wall, bytes=sent + received, sent=sent,
                         received=received, send_actions=actions, operations=operations(log.text))

    once()                                                # warm-up
    measured, outputs = [], []
    for _ in range(runs):
        out, m = once()
        measured.append(m)
        outputs.append(out)
    return {"protocol": protocol, "fraction_bits": config.fxp_fraction_bits or 18,
            "seconds": statistics.median(m["seconds"] for m in measured),
            "wall_seconds": statistics.median(m["wall_seconds"] for m in measured),
            "bytes": measured[-1]["bytes"], "send_actions": measured[-1]["send_actions"],
            "runs": measured, "output": outputs[-1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", choices=["semi2k", "cheetah"], default="semi2k")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    import spu
    inputs = draw(args.tokens, args.seed)
    result = run_spu(inputs, args.runs, args.protocol)
    expected = reference(inputs)
    out = result.pop("output")
    result.update(spu_version=spu.__version__, tokens=args.tokens, seed=args.seed,
                  max_abs_error=float(np.abs(out - expected).max()),
                  mean_abs_error=float(np.abs(out - expected).mean()))
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
