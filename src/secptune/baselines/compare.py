"""`secptune compare`: one iteration of each tuning method under MPC, side by side.

Methods (all four parties as threads of this process, one `LocalSession` per method):
- "sft": full fine-tuning; one iteration = one optimizer step on a batch of B texts:
  forward, loss gradient, backward through every layer, update of every weight (word
  table included; fresh Beaver triples for every product with a weight).
- "prompt-grad": gradient prompt tuning; one iteration = one optimizer step on the batch:
  forward, backward through every layer down to the n prompt tokens, update of the prompt.
  The weights and their transposes are prepared at deployment, the texts' word embeddings
  looked up once per set of texts: neither is part of the iteration.
- "forward-softmax", "forward-rfa": forward-only tuning; one iteration = one forward pass of
  the same batch with one prompt (the paper's per-iteration cost; a CMA-ES generation is P
  such prompts in one batched pass), scores revealed to the owner; no backward, no update
  under MPC (the owner's CMA-ES step is plaintext and negligible).
Every method sees sequences of the same total length L (n prompt tokens + L - n text tokens
for the prompt methods, L text tokens for SFT), the same batch, the same random weights.

Columns: forward s, backward s (loss gradient + backward pass), update s, total s, online GB
(the server link, both directions: what the ratios use), rounds, dealer GB (the offline
phase, counted separately), and projected LAN / WAN time (mpc/netmodel.py: the measured
compute + rounds x latency + bytes / bandwidth).  Ratios are against forward-only + RFA.

With two or more layer counts measured (0 layers is the embedding and the head alone) the
per-layer cost is the difference of the two largest, and the cost at the model's full depth
is extrapolated linearly, c(N) = c(b) + (N - b) (c(b) - c(a)) / (b - a), marked
"extrapolated" in the output; the per-layer increments between every pair of depths
measured are reported, to show that the cost is linear in the layers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..models.heads import MaskedLMHead
from ..models.scoring import forward_scores
from ..models.transformer import AttentionSettings, Transformer
from ..models.packaged import model_path
from ..models.rfa import dropped_in
from ..models.weights import (ModelConfig, ModelWeights, developer_share, load_model, random_model, shapes_only,
                              share_weights, with_identity_head)
from ..mpc import Config, LocalSession
from ..mpc.comm import OWNER, Cost, servers_cost
from ..mpc.netmodel import NETWORKS
from ..nn import functional as F
from ..runfolder import locks_run_folder, write_private
from ..tuning.report import _pyplot
from .training import Trainer, TrainBatch, developer_gelu_bounds

METHODS = ("sft", "prompt-grad", "forward-softmax", "forward-rfa")
LABELS = {"sft": "full fine-tuning (SFT)", "prompt-grad": "gradient prompt tuning",
          "forward-softmax": "forward-only, softmax", "forward-rfa": "forward-only + RFA"}
SHAPES = {
    "bert-base": dict(hidden_size=768, num_heads=12, intermediate_size=3072, vocab_size=30522, max_positions=512,
                      position_offset=0, pad_token_id=0, model_type="bert", num_layers=12),
    "roberta-large": dict(hidden_size=1024, num_heads=16, intermediate_size=4096, vocab_size=50265,
                          max_positions=514, position_offset=2, pad_token_id=1, model_type="roberta",
                          num_layers=24),
    "tiny": dict(hidden_size=32, num_heads=4, intermediate_size=64, vocab_size=1000, max_positions=128,
                 position_offset=0, pad_token_id=0, model_type="bert", num_layers=2),
}
VERBALIZERS = (10, 20)          # two word ids scoring the classes (random weights: any two)


@dataclass
class CompareSettings:
    shape: str = "roberta-large"
    model: str | None = None        # "minilm", "mpnet" or a local Hugging Face folder instead of a shape
    layers: tuple = (1, 2)
    seq_len: int = 512
    batch: int = 1
    prompt_length: int = 10
    features: int = 64
    optimizer: str = "sgd"
    lr: float = 1e-3
    methods: tuple = METHODS
    seed: int = 0
    vocab: int | None = None        # a smaller vocabulary for a shape (per-layer costs in less memory)


def shape_config(shape: str, layers: int) -> tuple[ModelConfig, int]:
    """(config with `layers` layers, the shape's full depth)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    depth = spec.pop("num_layers")
    return ModelConfig(num_layers=layers, layer_norm_eps=1e-5, has_lm_head=True, **spec), depth


def model_at_depth(s: CompareSettings, layers: int) -> tuple[ModelConfig, ModelWeights, int]:
    """(config, weights, full depth): random weights of a shape, or a model's first `layers`
    layers (a sentence encoder gets the identity masked-LM head, as `secptune train` gives it)."""
    if s.model is None:
        config, depth = shape_config(s.shape, layers)
        if s.vocab is not None:
            config = replace(config, vocab_size=s.vocab)
        return config, random_model(config, s.seed), depth
    config, weights = with_identity_head(*load_model(model_path(s.model)))
    if layers > config.num_layers:
        raise ValueError(f"{s.model} has {config.num_layers} layers, fewer than {layers}")
    cut = ModelWeights(weights.embeddings, weights.layers[:layers], weights.lm_head)
    return replace(config, num_layers=layers), cut, config.num_layers


def developer_ranges(s: CompareSettings) -> dict:
    """A model's GeLU bounds as the developer calibrates them for `secptune train`
    (`developer_gelu_bounds`, on every packaged task's texts), once, at the deepest depth
    measured: layer i's bound depends on layers 0 .. i alone, so a shallower cut reads the
    same ones.  None for a shape's random weights (the default series).  The bounds set the
    dealer's bytes, not the online ones."""
    if s.model is None:
        return {}
    config, weights, _ = model_at_depth(s, max(s.layers))
    tokenizer = AutoTokenizer.from_pretrained(model_path(s.model), local_files_only=True)
    return developer_gelu_bounds(config, weights, tokenizer, None, s.seq_len)


def _batch(config: ModelConfig, s: CompareSettings, text_len: int, gen: torch.Generator) -> TrainBatch:
    ids = torch.randint(3, config.vocab_size, (s.batch, text_len), generator=gen)
    mask = torch.ones(s.batch, text_len, dtype=torch.long)
    return TrainBatch(ids, mask, torch.full((s.batch,), text_len // 2), torch.randint(0, 2, (s.batch,), generator=gen))


def measure_method(method: str, config: ModelConfig, weights: ModelWeights, s: CompareSettings,
                   ranges: dict | None = None) -> dict:
    """One iteration of `method`: phase costs (both servers combined); `ranges`: the GeLU
    bounds (`developer_ranges`)."""
    gen = torch.Generator().manual_seed(s.seed)
    prompt_methods = method != "sft"
    n = s.prompt_length if prompt_methods else 0
    batch = _batch(config, s, s.seq_len - n, gen)
    prompt = torch.randn(n, config.hidden_size, generator=gen, dtype=torch.float64) * 0.02 if n else None
    with LocalSession(Config(), timeout=3600) as session:
        if method in ("sft", "prompt-grad"):
            trainer = Trainer(config, weights, list(VERBALIZERS), "sft" if method == "sft" else "prompt",
                              s.optimizer, s.lr, prompt=prompt, session=session, ranges=ranges)
            result = trainer.step(batch)
            costs = result.costs
        else:
            costs = {"forward": _forward_only(session, config, weights, batch, prompt,
                                              "rfa" if method == "forward-rfa" else "softmax", s, ranges)}
    return {phase: c.as_dict() for phase, c in costs.items()}


def _forward_only(session, config, weights, batch: TrainBatch, prompt, kind: str, s: CompareSettings,
                  ranges: dict | None = None) -> Cost:
    """One forward pass of the batch with one prompt: the texts' embeddings and masks were
    shared once (per set of texts); the prompt is shared, the scores revealed."""
    if kind == "rfa":           # MPNet's position bias: RFA's quadratic form with its factor
        attention = dropped_in(config, s.features, s.seq_len, weights.embeddings.relative_bias)
    else:
        attention = AttentionSettings()
    one_hot, mask, select, _ = batch.owner_tensors(config.vocab_size, 2, prompt.shape[0])
    words = weights.embeddings.word[batch.ids]
    shapes = shapes_only(weights)
    costs = {}

    def deploy(server):
        model = Transformer(config, share_weights(server, shapes), attention, ranges=ranges)
        server.store["model"] = model
        server.store["head"] = MaskedLMHead(model, list(VERBALIZERS))
        server.store["texts"] = (server.input_from_owner(tuple(words.shape)),
                                 server.input_from_owner(tuple(mask.shape), frac=0),
                                 server.input_from_owner(tuple(select.shape), frac=0))

    def owner_deploy():
        developer_share(session.developer, weights)
        session.owner.share(words)
        session.owner.share(mask, frac=0)
        session.owner.share(select, frac=0)

    session.on_servers(deploy, owner_deploy)

    def score(server):
        with server.cost() as trace:
            shared_prompt = server.input_from_owner((1, *prompt.shape))
            w, m, sel = server.store["texts"]
            out = forward_scores(server.store["model"], server.store["head"], w, shared_prompt, m, sel)
            server.reveal_to(OWNER, [F.settle(out)])
        costs[server.name] = trace.result

    def owner():
        session.owner.share(prompt.unsqueeze(0))
        return session.owner.receive()

    session.on_servers(score, owner)
    return servers_cost(costs["server0"], costs["server1"])


def step_total(phases: dict) -> Cost:
    """One iteration's cost from its phases' cost dicts: forward, backward and update (a
    prompt's lookup of its texts, if any, is apart)."""
    total = Cost()
    for phase in ("forward", "backward", "update"):
        if phase in phases:
            total = total + Cost(**phases[phase])
    return total


def summarise(phases: dict) -> dict:
    """A row: seconds per phase, total, online / dealer GB, rounds, projections."""
    total = step_total(phases)
    row = {f"{p}_s": phases[p]["seconds"] if p in phases else 0.0 for p in ("forward", "backward", "update")}
    row.update(total_s=total.seconds, online_gb=total.online_bytes / 1e9, dealer_gb=total.dealer_bytes / 1e9,
               rounds=total.rounds, online_bytes=total.online_bytes, dealer_bytes=total.dealer_bytes)
    row.update({net.name: net.project(total) for net in NETWORKS})
    # the network's part alone (rounds x latency + bytes / bandwidth): exact, whatever the
    # load on this machine
    row.update({f"{net.name} network": net.seconds(total.online_bytes, total.rounds) for net in NETWORKS})
    return row


def extrapolate(a: dict, b: dict, depth: int) -> dict:
    """c(depth) = c(a) + (depth - a) (c(b) - c(a)) / (b - a) for every numeric column, from
    rows measured at a < b layers."""
    skip = ("layers", "measured", "wall_s", "vocab")
    la, lb = a["layers"], b["layers"]
    return {k: a[k] + (depth - la) * (b[k] - a[k]) / (lb - la) for k in a
            if k not in skip and isinstance(a[k], (int, float)) and not isinstance(a[k], bool)}


def run_compare(s: CompareSettings, progress=None, on_row=None) -> dict:
    """Measure every method at every layer count; `on_row(row)` sees each measured row as
    soon as it is done (to save partial results of a long run)."""
    unknown = [m for m in s.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    rows = []
    depth = None
    ranges = developer_ranges(s)
    for layers in s.layers:
        config, weights, depth = model_at_depth(s, layers)
        for method in s.methods:
            if progress:
                progress(f"{method}, {layers} layer(s), L = {s.seq_len}")
            rows.append(measure_row(method, config, weights, s, ranges))
            if on_row:
                on_row(rows[-1])
    return assemble(s, rows, depth)


def measure_row(method: str, config: ModelConfig, weights: ModelWeights, s: CompareSettings,
                ranges: dict | None = None) -> dict:
    t0 = time.time()
    phases = measure_method(method, config, weights, s, ranges)
    return dict(method=method, layers=config.num_layers, vocab=config.vocab_size, measured=True,
                wall_s=time.time() - t0,
                phases=phases, **summarise(phases))


def assemble(s: CompareSettings, rows: list[dict], depth: int) -> dict:
    """The result: measured rows, rows extrapolated linearly to `depth` from the two largest
    depths measured, and ratios."""
    rows = [r for r in rows if r["measured"]]
    for method in s.methods:
        for_method = [r for r in rows if r["method"] == method]
        vocabs = {r.get("vocab") for r in for_method}
        # the per-layer cost from the vocabulary with the most depths measured (a layer's
        # cost does not depend on the vocabulary); the fixed part (embedding, head, the word
        # table's update) from the depth-0 row of the largest vocabulary, if there is one
        source = max(vocabs, key=lambda v: (len({r["layers"] for r in for_method if r.get("vocab") == v}), v or 0))
        mine = sorted((r for r in for_method if r.get("vocab") == source), key=lambda r: r["layers"])
        if len(mine) < 2 or depth <= mine[-1]["layers"]:
            continue
        a, b = mine[0], mine[-1]                  # the smallest and largest depths: the mean increment
        steps = b["layers"] - a["layers"]
        per_layer = {k: (b[k] - a[k]) / steps for k in ("total_s", "online_gb", "rounds", "dealer_gb")}
        # linearity: the per-layer cost between every pair of consecutive depths measured
        increments = [{"from": x["layers"], "to": y["layers"],
                       **{k: (y[k] - x[k]) / (y["layers"] - x["layers"]) for k in ("total_s", "online_gb", "rounds")}}
                      for x, y in zip(mine, mine[1:])]
        full = max(vocabs, key=lambda v: v or 0)
        base = next((r for r in for_method if r.get("vocab") == full and r["layers"] == 0), None)
        if full != source and base is not None:
            zero = {**base, "layers": 0}
            step_row = {k: (zero[k] + (b[k] - a[k]) / steps) if isinstance(zero[k], (int, float)) else zero[k]
                        for k in zero}
            step_row["layers"] = 1
            values = extrapolate(zero, step_row, depth)
            note = f"depth 0 at vocabulary {full}, per layer from vocabulary {source}"
        else:
            values = extrapolate(a, b, depth)
            note = "mean increment over the depths measured"
        rows.append(dict(method=method, layers=depth, measured=False, per_layer=per_layer, increments=increments,
                         note=note, **values))
    return {"settings": {**s.__dict__, "layers": list(s.layers), "methods": list(s.methods)},
            "depth": depth, "rows": rows, "ratios": ratios(rows)}


def _ratio_key(r: dict) -> str:
    if not r["measured"]:
        return f"{r['layers']} layers (extrapolated)"
    return f"{r['layers']} layers" + (f", vocabulary {r['vocab']}" if r.get("vocab") else "")


def ratios(rows: list[dict]) -> dict:
    """Per depth (and vocabulary, or extrapolated): each method's cost over forward-only + RFA's."""
    out = {}
    for r in rows:
        key = _ratio_key(r)
        base = next((b for b in rows if b["method"] == "forward-rfa" and _ratio_key(b) == key), None)
        if base is None:
            continue
        out.setdefault(key, {})[r["method"]] = {
            "time": r["total_s"] / base["total_s"], "online_bytes": r["online_gb"] / base["online_gb"],
            "rounds": r["rounds"] / base["rounds"],
            **{net.name: r[net.name] / base[net.name] for net in NETWORKS},
            **{f"{net.name} network": r[f"{net.name} network"] / base[f"{net.name} network"] for net in NETWORKS}}
    return out


def format_cost_table(result: dict) -> str:
    nets = [net.name for net in NETWORKS]
    head = ["method", "layers", "vocab", "forward s", "backward s", "update s", "total s", "online GB", "rounds",
            "dealer GB"] + [f"{n} s" for n in nets] + ["x time", "x GB", "x rounds", "x LAN net", "x WAN100 net"]
    lines = [head]
    rat = result["ratios"]
    for r in result["rows"]:
        ratio = rat.get(_ratio_key(r), {}).get(r["method"], {})
        lines.append([LABELS[r["method"]], f"{r['layers']}" + ("" if r["measured"] else "*"), str(r.get("vocab", "")),
                      f"{r['forward_s']:.2f}", f"{r['backward_s']:.2f}", f"{r['update_s']:.2f}",
                      f"{r['total_s']:.2f}", f"{r['online_gb']:.3f}", f"{r['rounds']:.0f}", f"{r['dealer_gb']:.2f}"]
                     + [f"{r[n]:.1f}" for n in nets]
                     + [f"{ratio.get(k, float('nan')):.1f}" for k in
                        ("time", "online_bytes", "rounds", f"{nets[0]} network", f"{nets[-1]} network")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    s = result["settings"]
    out += ["", f"{_measured(s)}, L = {s['seq_len']} tokens, batch {s['batch']}, prompt {s['prompt_length']} "
                f"tokens, optimizer {s['optimizer']}; x ...: over forward-only + RFA at the same depth (online "
                f"bytes; the dealer's offline bytes are the separate column; 'net': the network model's "
                f"rounds x latency + bytes / bandwidth alone, without this machine's compute time)"]
    if any(not r["measured"] for r in result["rows"]):
        out.append("* extrapolated linearly: c(N) = c(a) + (N - a) x per-layer cost")
        for r in result["rows"]:
            if not r["measured"]:
                steps = "; ".join(f"{i['from']}->{i['to']}: {i['total_s']:.2f} s, {i['online_gb']:.3f} GB, "
                                  f"{i['rounds']:.0f} rounds" for i in r["increments"])
                out.append(f"  per layer, {LABELS[r['method']]}: {steps} ({r['note']})")
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    plt = _pyplot()
    rows = [r for r in result["rows"] if not r["measured"]] or \
        [r for r in result["rows"] if r["layers"] == max(x["layers"] for x in result["rows"])]
    names = [LABELS[r["method"]] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    lan = NETWORKS[0].name
    for ax, key, label in ((axes[0], "total_s", "compute s (this machine)"), (axes[1], "online_gb", "online GB"),
                           (axes[2], lan, f"projected s, {lan}")):
        vals = [r[key] for r in rows]
        bars = ax.bar(range(len(rows)), vals, color=["C3", "C1", "C0", "C2"][:len(rows)])
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    depth = rows[0]["layers"]
    s = result["settings"]
    fig.suptitle(f"one iteration under MPC: {_measured(s)}, {depth} layers"
                 + (" (extrapolated)" if not rows[0]["measured"] else "") + f", L = {s['seq_len']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _measured(settings: dict) -> str:
    """What was measured: the model, or a shape's random weights."""
    model = settings.get("model")
    return f"model {model}" if model else f"{settings['shape']} shapes"


@locks_run_folder("out")
def write_comparison(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / "compare.json", out / "compare.png"
    write_private(js, json.dumps(result, indent=2))
    plot(result, png)
    return js, png

