"""The transformer encoder, once, for plaintext and shared tensors (BERT / RoBERTa, post-LN).

    embed:  LN(word + position + type)
    layer:  x = LN(x + attention(x) W_out)
            x = LN(x + GeLU(x W_up) W_down)

Read top to bottom like nanoGPT's model.py; every operation goes through `nn.functional`,
which runs the exact float64 formula on torch tensors and the engine's protocols on shared
ones.  `weights` hold float tensors in the first case and prepared / shared tensors in the
second (see weights.py); `attention` picks softmax or random-feature attention per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..nn import functional as F
from ..nn.attention import RandomFeatures, rfa_attention, softmax_attention
from .weights import ModelConfig, ModelWeights


@dataclass
class AttentionSettings:
    """softmax, or RFA with one `RandomFeatures` per layer."""

    kind: str = "softmax"
    features: list[RandomFeatures] | None = None

    def __call__(self, layer: int, q, k, v, key_mask, observe=None):
        if self.kind == "softmax":
            return softmax_attention(q, k, v, key_mask)
        return rfa_attention(q, k, v, key_mask, self.features[layer], observe)


class Transformer:
    """`ranges` (public, from `models.calibration`): the variance range of each LayerNorm
    ("embed", "<i>.attention", "<i>.ffn", "head") for the secure inverse square root.
    `observe(site, values)`, if set, sees the plaintext values whose ranges those are."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, attention: AttentionSettings | None = None,
                 ranges: dict | None = None):
        self.config = config
        self.weights = weights
        self.attention = attention or AttentionSettings()
        self.ranges = ranges or {}
        self.observe = None

    def layer_norm(self, site: str, x, weight, bias):
        if self.observe is not None and not F.is_shared(x):
            self.observe(site, x.var(-1, unbiased=False) + self.config.layer_norm_eps)
        return F.layer_norm(x, weight, bias, self.config.layer_norm_eps, self.ranges.get(site))

    def embed(self, word_embeddings):
        """(N, L, H) word embeddings (prompt tokens included) -> the first layer's input."""
        e = self.weights.embeddings
        L = word_embeddings.shape[1]
        start = self.config.position_offset
        with F.labelled(word_embeddings, "embedding"):
            x = word_embeddings + e.position[start:start + L] + e.token_type
            return self.layer_norm("embed", x, e.norm_weight, e.norm_bias)

    def encode(self, x, key_mask, before_layer=None):
        """All layers.  key_mask: (N or 1, L), 1 for tokens, 0 for padding (see nn.attention).
        `before_layer(i, x)`, if given, returns layer i's input in place of x for i >= 1 (deep
        prompts add to it; layer 0's input is `embed`'s output, where prompts enter as words)."""
        mask = key_mask.reshape(key_mask.shape[0], 1, key_mask.shape[1], 1)
        for i, w in enumerate(self.weights.layers):
            if before_layer is not None and i > 0:
                x = before_layer(i, x)
            x = self.layer(i, x, w, mask)
        return x

    def layer(self, i: int, x, w, mask):
        cfg = self.config
        N, L, H = x.shape
        observe = None if self.observe is None else (lambda what, values: self.observe(f"{i}.{what}", values))
        with F.labelled(x, "attention"):
            qkv = F.linear(x, w.qkv, w.qkv_bias)
            heads = qkv.reshape(N, L, 3, cfg.num_heads, cfg.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = heads[0], heads[1], heads[2]
            context = self.attention(i, q, k, v, mask, observe)
            context = context.transpose(1, 2).reshape(N, L, H)
            attended = F.linear(context, w.out, w.out_bias)
        with F.labelled(x, "layernorm"):
            x = self.layer_norm(f"{i}.attention", x + attended, w.norm1_weight, w.norm1_bias)
        with F.labelled(x, "ffn"):
            hidden = F.gelu(F.linear(x, w.up, w.up_bias))
            out = F.linear(hidden, w.down, w.down_bias)
        with F.labelled(x, "layernorm"):
            return self.layer_norm(f"{i}.ffn", x + out, w.norm2_weight, w.norm2_bias)

    def lm_transform(self, h):
        """The masked-LM head's transform (dense, GeLU, LayerNorm) of selected hidden states."""
        head = self.weights.lm_head
        with F.labelled(h, "head"):
            t = F.gelu(F.linear(h, head.dense, head.dense_bias))
            return self.layer_norm("head", t, head.norm_weight, head.norm_bias)
