"""One BERT-base encoder layer at 128 tokens under secptune beside SPU 0.9.5 SEMI2K, in one run.

    python benchmarks/layer_peer.py [--runs 3] [--tokens 128] [--spu SPU_VENV/bin/python] [--out results]

secptune's side (this process): `Transformer.layer` (softmax attention, erf GeLU, post-
LayerNorm, hidden 768, 12 heads, feed-forward 3,072) on a secret x of `--tokens` tokens and
secret weights, all four parties as threads of this process (`secptune.mpc.benchmark.measure`:
the dealer inline, then the online phase alone after `LocalSession.preprocess`).  Inputs are
`spu_peer.draw`'s (N(0, 1) x, N(0, 0.02^2) weights and biases, LayerNorm gains 1 + N(0,
0.02^2)), fresh each run, and the owner's key mask (all ones: no padding), shared too.  As in
a tuning pass, the weight matrices and LayerNorm gains are prepared once (opened under fixed
masks, `prepare`: a deployment's one-time step, not timed or counted).  Three rows:
- "defaults": no calibration, the engine's wide ranges (LayerNorm variances over 2^-16 ..
  2^14, GeLU valid for |x| <= 34), as SPU's generic approximations;
- "defaults, weights unprepared": the same, with every product opening its shared weight
  as well (as SPU's products do: it has no prepared operand);
- "calibrated": the ranges a developer would publish (`models.calibration`), observed on the
  plaintext layer on another draw of the same distribution.

SPU's side: `benchmarks/spu_peer.py` (its docstring: set-up, what it counts), run right after
in its side environment when `--spu` names that environment's interpreter.  The table puts
secptune's inline time (dealer included) beside SPU's execution time (its Beaver provider
inside it), and secptune's online + dealer bytes beside SPU's link bytes (its default
provider counts no offline bytes).  `--from-json OURS SPU` only formats two earlier results.

Times are noisy on small machines: compare the ratios of one run, medians over --runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_table import peer_parser, read_pair, table  # noqa: E402
from spu_peer import draw, reference  # noqa: E402

from secptune.baselines.compare import SHAPES  # noqa: E402
from secptune.models.calibration import Extremes, ranges_from_extremes  # noqa: E402
from secptune.models.transformer import AttentionSettings, Transformer  # noqa: E402
from secptune.models.weights import PREPARED, LayerWeights, ModelConfig, random_model, shapes_only  # noqa: E402
from secptune.mpc.benchmark import Operation, measure  # noqa: E402
from secptune.mpc.protocols import prepare  # noqa: E402

FIELDS = list(LayerWeights.__dataclass_fields__)


def bert_base_layer(ranges: dict | None = None) -> Transformer:
    """One BERT-base layer's model code (a layer alone never reads the word table: one row)."""
    config = ModelConfig(**{**SHAPES["bert-base"], "num_layers": 1, "vocab_size": 1}, layer_norm_eps=1e-12,
                         has_lm_head=False)
    return Transformer(config, shapes_only(random_model(config)), AttentionSettings("softmax"), ranges)


def run_layer(model: Transformer, x, *rest):
    """`Transformer.layer` on `layer_inputs`' tensors: x, the layer's weights, the key mask."""
    *weights, key_mask = rest
    return model.layer(0, x, LayerWeights(*weights), key_mask.reshape(1, 1, -1, 1))


def layer_inputs(tokens: int, seed: int) -> list[torch.Tensor]:
    """x (1, L, H), the layer's weights in `LayerWeights` order, the key mask (1, L): the
    weights of `spu_peer.draw` as the loader stores them, the attention's 1 / sqrt(head_dim)
    split as head_dim^(-1/4) into the query's and the key's columns (`models.weights`)."""
    x, qkv, qkv_bias, *rest = (torch.from_numpy(a) for a in draw(tokens, seed))
    H = x.shape[-1]
    split = torch.ones(3 * H, dtype=torch.float64)
    split[:2 * H] = (H // SHAPES["bert-base"]["num_heads"]) ** -0.25
    return [x.unsqueeze(0), qkv * split, qkv_bias * split, *rest, torch.ones(1, tokens, dtype=torch.float64)]


def check_same_layer(model: Transformer, tokens: int) -> float:
    """secptune's plaintext layer against spu_peer's float64 reference on one draw: both
    sides compute the same function (raises beyond float64 round-off)."""
    ours = run_layer(model, *layer_inputs(tokens, 7))[0].numpy()
    difference = float(abs(ours - reference(draw(tokens, 7))).max())
    if difference > 1e-9:
        raise AssertionError(f"secptune's layer differs from spu_peer's reference by {difference:.1e}")
    return difference


def calibrated_ranges(model: Transformer, tokens: int, seed: int) -> dict:
    """The developer's published ranges for this layer, observed on one plaintext draw."""
    extremes = Extremes()
    model.observe = extremes.observe
    try:
        run_layer(model, *layer_inputs(tokens, seed))
    finally:
        model.observe = None
    return ranges_from_extremes(*extremes.result()).ranges


def layer_operation(tokens: int, ranges: dict, name: str, prepared: bool = True) -> Operation:
    model = bert_base_layer(ranges)

    def compute(*inputs):
        return run_layer(model, *inputs)

    def setup(server, x, *rest):
        *weights, key_mask = rest
        return (x, *(prepare(w) if f in PREPARED else w for f, w in zip(FIELDS, weights)), key_mask)

    def inputs(gen):
        return layer_inputs(tokens, int(torch.randint(2 ** 31, (1,), generator=gen)))

    note = "weights prepared once (not timed)" if prepared else "weights as fresh shares, opened by each product"
    return Operation(name, [], 1.0, lambda server, *shared: compute(*shared).truncate(), compute,
                     note + "; key mask shared", setup=setup if prepared else None, draw=inputs)


def measure_ours(tokens: int, runs: int, seed: int) -> list[dict]:
    model = bert_base_layer()
    check_same_layer(model, tokens)
    rows = []
    calibrated = calibrated_ranges(model, tokens, seed + 1000)
    for name, ranges, prepared in (("defaults", {}, True), ("defaults, weights unprepared", {}, False),
                                   ("calibrated", calibrated, True)):
        m = measure(layer_operation(tokens, ranges, name, prepared), runs=runs, seed=seed)
        rows.append({**m.as_dict(), "ranges": {k: v for k, v in ranges.items() if not k.endswith("channels")}})
    return rows


def side_by_side(ours: list[dict], spu: dict) -> str:
    head = ["secptune ranges", "secptune s inline / online", "SPU s", "time x (inline / online)",
            "secptune MB online + dealer", "SPU MB", "bytes x (online / total)", "rounds / SPU send actions",
            "max abs err secptune / SPU"]
    rows = [head]
    for r in ours:
        total = r["online_bytes"] + r["dealer_bytes"]
        rows.append([
            r["name"], f"{r['seconds']:.2f} / {r['online_seconds']:.2f}", f"{spu['seconds']:.2f}",
            f"{spu['seconds'] / r['seconds']:.1f} / {spu['seconds'] / r['online_seconds']:.1f}",
            f"{r['online_bytes'] / 1e6:.0f} + {r['dealer_bytes'] / 1e6:.0f}", f"{spu['bytes'] / 1e6:.0f}",
            f"{spu['bytes'] / r['online_bytes']:.2f} / {spu['bytes'] / total:.2f}",
            f"{r['rounds']} / {spu['send_actions']}", f"{r['max_abs_error']:.1e} / {spu['max_abs_error']:.1e}"])
    lines = table(rows)
    lines.append(f"x = SPU {spu.get('spu_version', '')} {spu['protocol'].upper()} / secptune "
                 "(above 1: secptune is faster or sends fewer bytes)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = peer_parser(__doc__.split("\n")[0], "spu", 3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.from_json:
        print(side_by_side(*read_pair(args.from_json)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ours = measure_ours(args.tokens, args.runs, args.seed)
    (out / "layer-secptune.json").write_text(json.dumps(ours, indent=1) + "\n")
    for r in ours:
        print(f"secptune {r['name']}: inline {r['seconds']:.2f} s, online {r['online_seconds']:.2f} s, "
              f"{r['online_bytes'] / 1e6:.1f} MB online + {r['dealer_bytes'] / 1e6:.1f} MB dealer, "
              f"{r['rounds']} rounds, max abs error {r['max_abs_error']:.1e}", flush=True)
    if not args.spu:
        return 0
    spu_json = out / "layer-spu.json"
    subprocess.run([args.spu, str(Path(__file__).with_name("spu_peer.py")), "--runs", str(args.runs),
                    "--tokens", str(args.tokens), "--seed", str(args.seed), "--json", str(spu_json)],
                   check=True, stdout=subprocess.DEVNULL)
    print(side_by_side(ours, json.loads(spu_json.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
