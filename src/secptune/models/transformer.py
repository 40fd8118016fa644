"""The transformer encoder, once, for plaintext and shared tensors (BERT / RoBERTa / MPNet, post-LN).

    embed:  LN(word + position + type)
    layer:  x = LN(x + attention(x, bias) W_out)
            x = LN(x + GeLU(x W_up) W_down)

MPNet adds a relative position bias to every layer's attention scores: bias[h, i, j] =
table[bucket(j - i), h], one learned table shared by all layers.  The buckets depend on
positions only (public), so under MPC the bias is a public gather from the shared table and
its addition to the shared scores is local: no round, no byte.

Read top to bottom like nanoGPT's model.py; every operation goes through `nn.functional`,
which runs the exact float64 formula on torch tensors and the engine's protocols on shared
ones.  `weights` hold float tensors in the first case and prepared / shared tensors in the
second (see weights.py); `attention` picks softmax or random-feature attention per layer.

The same pass trains the gradient baselines (baselines/gradient.py): given a `Tape`, it keeps
what their backward (nn/backward.py) needs, and computes the few operations whose inference
form never builds it in the form that does:
- each product's input, settled (its pending truncation carried out: the backward's
  products reuse it), each GeLU's input;
- each LayerNorm's xh and 1 / sigma (nn.backward.layer_norm_forward: one round more than
  the fused LayerNorm, which never forms xh);
- each attention's q, k, v and probabilities p (nn.backward.attention_forward: softmax only;
  the inference softmax normalises after the value product and never forms p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..nn import backward as B
from ..nn import functional as F
from ..nn.attention import PositionFactor, RandomFeatures, rfa_attention, softmax_attention
from .weights import RELATIVE_BUCKETS, ModelConfig, ModelWeights

#: MPNet's relative distances are bucketed logarithmically up to this distance
RELATIVE_MAX_DISTANCE = 128


def relative_position_buckets(length: int, num_buckets: int = RELATIVE_BUCKETS,
                              max_distance: int = RELATIVE_MAX_DISTANCE) -> torch.Tensor:
    """(L, L) bucket of key j's distance from query i, as Hugging Face's MPNetEncoder buckets it:
    half the buckets for keys before the query, half for keys after; within each, distances
    below a quarter of the buckets exactly, farther ones logarithmically up to `max_distance`
    (in float32, as there, so that a boundary falls in the same bucket)."""
    position = torch.arange(length, dtype=torch.long)
    n = position[:, None] - position[None, :]                   # query minus key
    half = num_buckets // 2
    bucket = (n < 0).to(torch.long) * half
    n = n.abs()
    exact = half // 2
    far = exact + (torch.log(n.float() / exact) / math.log(max_distance / exact) * (half - exact)).to(torch.long)
    far = torch.clamp(far, max=half - 1)
    return bucket + torch.where(n < exact, n, far)


def gelu_bound(ranges: dict, site: str) -> float | None:
    """A GeLU site's calibrated bound on |x| (log2: its range's upper end); None without one
    (the default series)."""
    bound = ranges.get(site)
    return None if bound is None else bound[1]


def gelu_bounds(ranges: dict, site: str):
    """A GeLU site's calibrated bounds on |x| per channel (log2, `channels_key(site)`) where
    the calibration has them, else its one bound (`gelu_bound`)."""
    channels = ranges.get(channels_key(site))
    return tuple(channels) if channels is not None else gelu_bound(ranges, site)


def channels_key(site: str) -> str:
    """The ranges' key of a GeLU site's per-channel bounds."""
    return f"{site}.channels"


@dataclass
class AttentionSettings:
    """softmax, or RFA with one `RandomFeatures` per layer."""

    kind: str = "softmax"
    features: list[RandomFeatures] | None = None
    #: RFA of a model with a relative position bias (MPNet): the public settings of the
    #: factor exp(bias) that multiplies the kernel (nn.attention.PositionFactor)
    position: PositionFactor | None = None

    def __call__(self, layer: int, q, k, v, key_mask, observe=None, bias=None):
        """`bias`: softmax's (1, heads, L, L) position bias, or RFA's factors P of it
        (`Transformer.position_bias`)."""
        if self.kind == "softmax":
            return softmax_attention(q, k, v, key_mask, bias)
        if bias is not None and self.position is None:
            # a bias on the scores multiplies the kernel by exp(bias[i, j]): the quadratic
            # form takes it, with the factor's public settings, which a conversion records
            raise ValueError("random-feature attention of a model with a relative position bias (MPNet) needs "
                             "its position factor's settings: convert the model (secptune convert)")
        return rfa_attention(q, k, v, key_mask, self.features[layer], observe, bias)


@dataclass
class Tape:
    """What a taped forward kept for the backward: the embedding's ("norm"), each layer's and
    the masked-LM head's saved values by name; the owner's one-hot token rows when the word
    lookup ran under MPC, and the number of prompt tokens inserted."""

    embed: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    head: dict = field(default_factory=dict)
    one_hot: object = None
    prompt_length: int = 0


def _settled(saved: dict | None, x):
    """x, settled when the forward is taped (what the tape keeps feeds several products)."""
    return x if saved is None else F.settle(x)


def _kept(saved: dict | None, name: str, x):
    """x settled and kept as `name` when the forward is taped; x as it is otherwise."""
    if saved is None:
        return x
    x = saved[name] = F.settle(x)
    return x


def _keep(saved: dict | None, name: str, x):
    """x kept as `name` (unsettled) when the forward is taped."""
    if saved is not None:
        saved[name] = x
    return x


class Transformer:
    """`ranges` (public, from `models.calibration`): the variance range of each LayerNorm
    ("embed", "<i>.attention", "<i>.ffn", "head") for the secure inverse square root, and the
    bound on |x| of each GeLU ("<i>.gelu", "head.gelu") for its secure series, and where
    the calibration has them its bounds per channel ("<i>.gelu.channels", ...).
    `observe(site, values)`, if set, sees the plaintext values whose ranges those are."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, attention: AttentionSettings | None = None,
                 ranges: dict | None = None):
        self.config = config
        self.weights = weights
        self.attention = attention or AttentionSettings()
        self.ranges = ranges or {}
        self.observe = None
        #: (the bias table, the factor's settings, its RFA factors): computed on first use,
        #: kept while both are the same objects (a fixed weight; the servers' model lives for
        #: the session)
        self._position_factors = None

    def layer_norm(self, site: str, x, weight, bias, saved: dict | None = None, name: str = "norm"):
        """LayerNorm at `site` (its calibrated range); taped, its xh and 1 / sigma kept as `name`."""
        if self.observe is not None and not F.is_shared(x):
            self.observe(site, x.var(-1, unbiased=False) + self.config.layer_norm_eps)
        if saved is None:
            return F.layer_norm(x, weight, bias, self.config.layer_norm_eps, self.ranges.get(site))
        y, saved[name] = B.layer_norm_forward(x, weight, bias, self.config.layer_norm_eps, self.ranges.get(site))
        return y

    def gelu(self, site: str, x):
        """GeLU at `site` (its calibrated bound on |x|, or bounds per channel)."""
        if self.observe is not None and not F.is_shared(x):
            self.observe(site, x.abs())
        return F.gelu(x, gelu_bounds(self.ranges, site))

    def embed(self, word_embeddings, tape: Tape | None = None):
        """(N, L, H) word embeddings (prompt tokens included) -> the first layer's input."""
        e = self.weights.embeddings
        L = word_embeddings.shape[1]
        start = self.config.position_offset
        with F.labelled(word_embeddings, "embedding"):
            x = word_embeddings + e.position[start:start + L] + e.token_type
            return self.layer_norm("embed", x, e.norm_weight, e.norm_bias, None if tape is None else tape.embed)

    def encode(self, x, key_mask, before_layer=None, tape: Tape | None = None):
        """All layers.  key_mask: (N or 1, L), 1 for tokens, 0 for padding (see nn.attention).
        `before_layer(i, x)`, if given, returns layer i's input in place of x for i >= 1 (deep
        prompts add to it; layer 0's input is `embed`'s output, where prompts enter as words)."""
        mask = key_mask.reshape(key_mask.shape[0], 1, key_mask.shape[1], 1)
        bias = self.position_bias(x.shape[1])
        for i, w in enumerate(self.weights.layers):
            if before_layer is not None and i > 0:
                x = before_layer(i, x)
            x = self.layer(i, x, w, mask, tape, bias)
        return x

    def position_bias(self, length: int):
        """MPNet's (1, heads, L, L) relative position bias (None for BERT and RoBERTa): the
        table's rows at the public buckets, a local gather from a shared table.  Under RFA,
        the factors 2^s exp(bias - c_h) instead (`PositionFactor`: one exp of the table per
        model, then the same gather)."""
        table = self.weights.embeddings.relative_bias
        if table is None:
            return None
        position = self.attention.position
        if self.attention.kind == "rfa" and position is not None:
            cached = self._position_factors
            if cached is None or cached[0] is not table or cached[1] is not position:
                cached = self._position_factors = (table, position, position.table(table))
            table = cached[2]
        buckets = relative_position_buckets(length).to(table.device)
        return table[buckets].permute(2, 0, 1).unsqueeze(0)

    def layer(self, i: int, x, w, mask, tape: Tape | None = None, bias=None):
        cfg = self.config
        N, L, H = x.shape
        s = None
        if tape is not None:
            s = {}
            tape.layers.append(s)
        with F.labelled(x, "attention"):
            x = _kept(s, "x", x)
            qkv = F.linear(x, w.qkv, w.qkv_bias)
            heads = _settled(s, qkv).reshape(N, L, 3, cfg.num_heads, cfg.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = heads[0], heads[1], heads[2]
            context = self.attend(i, q, k, v, mask, s, bias)
            context = _kept(s, "context", context.transpose(1, 2).reshape(N, L, H))
            attended = F.linear(context, w.out, w.out_bias)
        with F.labelled(x, "layernorm"):
            x = self.layer_norm(f"{i}.attention", x + attended, w.norm1_weight, w.norm1_bias, s, "norm1")
        with F.labelled(x, "ffn"):
            x = _kept(s, "y1", x)
            pre = _keep(s, "pre", F.linear(x, w.up, w.up_bias))
            hidden = _kept(s, "hidden", self.gelu(f"{i}.gelu", pre))
            out = F.linear(hidden, w.down, w.down_bias)
        with F.labelled(x, "layernorm"):
            y = self.layer_norm(f"{i}.ffn", x + out, w.norm2_weight, w.norm2_bias, s, "norm2")
        return _settled(s, y)

    def attend(self, i: int, q, k, v, mask, saved: dict | None = None, bias=None):
        """Layer i's attention (with MPNet's position bias); taped, softmax that forms its
        probabilities p, kept with q, k, v."""
        if saved is None:
            observe = None if self.observe is None else (lambda what, values: self.observe(f"{i}.{what}", values))
            return self.attention(i, q, k, v, mask, observe, bias)
        if self.attention.kind != "softmax":
            raise ValueError("a taped forward (gradient training) runs softmax attention only")
        saved["q"], saved["k"], saved["v"] = q, k, v
        context, saved["p"] = B.attention_forward(q, k, v, mask, bias)
        return context

    def lm_transform(self, h, tape: Tape | None = None):
        """The masked-LM head's transform (dense, GeLU, LayerNorm) of selected hidden states."""
        head = self.weights.lm_head
        s = None if tape is None else tape.head
        with F.labelled(h, "head"):
            h = _kept(s, "at_mask", h)
            pre = _keep(s, "pre", F.linear(h, head.dense, head.dense_bias))
            t = self.layer_norm("head", self.gelu("head.gelu", pre), head.norm_weight, head.norm_bias, s, "norm")
            return _kept(s, "t", t)
