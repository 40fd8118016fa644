"""Gradient training of a transformer on plaintext or shared tensors: the forward pass taped
(models/transformer.py keeps what the backward needs), the backward through every layer,
and the gradients.

Two baselines train with it (baselines/training.py): full fine-tuning (every weight is
trained) and gradient prompt tuning (only the soft prompt; the backward still crosses every
layer to reach it).  The model is the one `models/transformer.py` computes (post-LN
BERT/RoBERTa/MPNet, the masked-LM head's verbalizer logits as class scores), over the same
`ModelWeights`; what differs from the inference forward is what is kept:

- each product's input (for the weight gradient), each LayerNorm's xh and 1 / sigma, each
  GeLU's input, each attention's q, k, v and probabilities p (the inference forward never
  forms p: it normalises after the value product; see nn/backward.attention_forward).

Weights in the three settings (`TrainingWeights`):
- plaintext: float64 tensors, transposes W^T in the clear;
- prompt tuning under MPC: the weights never change, so every matrix is prepared (opened
  once under a fixed mask) and so is its transpose, once at deployment: each product, in
  the forward (x W) and the backward (dy W^T), opens only the activation side;
- full fine-tuning under MPC: plain shared tensors; every product with a weight uses a fresh
  Beaver triple (opening both sides) because the weights change every step: no mask of a
  weight is ever reused across steps.

The texts: token ids as the owner's one-hot rows (B * L, V), so that the word lookup
(one-hot @ word table) and its gradient (one-hot^T @ dx) run under MPC when the word table
is trained; the class labels: the owner's one-hot rows (B, C).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..models.scoring import forward_hidden
from ..models.transformer import Tape, Transformer, gelu_bound, relative_position_buckets
from ..models.weights import ModelConfig, ModelWeights, present_fields
from ..mpc.protocols import prepare
from ..mpc.protocols.arithmetic import PreparedOperand
from ..mpc.shared import SharedTensor
from ..nn import backward as B
from ..nn import functional as F

MATRICES = ("qkv", "out", "up", "down")


@dataclass
class TrainingWeights:
    """The model's weights, the transposes its backward multiplies by, and the verbalizer
    ids of the masked-LM head (public: they say which words score the classes)."""

    weights: ModelWeights
    transposed: dict            # name -> W^T (torch, prepared or shared)
    verbalizer_ids: torch.Tensor

    @classmethod
    def plaintext(cls, weights: ModelWeights, verbalizer_ids) -> "TrainingWeights":
        return cls(weights, _transposes(weights, lambda w: w.T.contiguous()), torch.as_tensor(verbalizer_ids))

    @classmethod
    def prepared(cls, weights: ModelWeights, verbalizer_ids) -> "TrainingWeights":
        """Prompt tuning under MPC: `weights` as `share_weights` returns them (prepared);
        each matrix's transpose is prepared too, once (one opening of it)."""
        with _server_of(weights).labelled("prepare_transposes"):
            t = _transposes(weights, lambda w: prepare(w.to_shared().mT.contiguous()))
        return cls(weights, t, torch.as_tensor(verbalizer_ids))

    @classmethod
    def fresh(cls, weights: ModelWeights, verbalizer_ids) -> "TrainingWeights":
        """Full fine-tuning under MPC: `weights` shared, never prepared."""
        return cls(weights, _transposes(weights, lambda w: w.mT), torch.as_tensor(verbalizer_ids))

    def decoder(self):
        """(H, C): the tied word rows of the verbalizer words."""
        word = self.weights.embeddings.word
        word = word.to_shared() if isinstance(word, PreparedOperand) else word
        return word[self.verbalizer_ids].mT

    def with_params(self, params: dict) -> "TrainingWeights":
        """These weights with the named tensors replaced (after an optimizer step)."""
        new = self.weights.map(lambda name, t: t)
        for name, value in params.items():
            record, attr = _locate(new, name)
            setattr(record, attr, value)
        return TrainingWeights.fresh(new, self.verbalizer_ids) if params else self


def _server_of(weights: ModelWeights):
    return weights.embeddings.word.server


def _transposes(weights: ModelWeights, transpose) -> dict:
    out = {}
    for i, layer in enumerate(weights.layers):
        for name in MATRICES:
            out[f"layers.{i}.{name}"] = transpose(getattr(layer, name))
    if weights.lm_head is not None:
        out["lm_head.dense"] = transpose(weights.lm_head.dense)
    return out


def _locate(weights: ModelWeights, name: str):
    parts = name.split(".")
    if parts[0] == "layers":
        return weights.layers[int(parts[1])], parts[2]
    return getattr(weights, parts[0]), parts[1]


def named_parameters(weights: ModelWeights) -> dict:
    """Every trainable tensor by name ("embeddings.word", "layers.0.qkv", "lm_head.dense_bias").
    MPNet (a relative position bias) has no token-type embedding: its zero row stays zero."""
    out = {}
    mpnet = weights.embeddings.relative_bias is not None
    for name, tensor in present_fields(weights.embeddings):     # BERT has no position bias (None)
        if not (mpnet and name == "token_type"):
            out[f"embeddings.{name}"] = tensor
    for i, layer in enumerate(weights.layers):
        for f in fields(layer):
            out[f"layers.{i}.{f.name}"] = getattr(layer, f.name)
    if weights.lm_head is not None:
        for f in fields(weights.lm_head):
            out[f"lm_head.{f.name}"] = getattr(weights.lm_head, f.name)
    return out


@dataclass
class Inputs:
    """One batch on the servers (or in plaintext): the owner's one-hot token rows (B * L, V)
    or its word embeddings (B, L, H), the key mask (B, n + L), the mask-token selection
    weights (B, n + L) and the one-hot labels (B, C)."""

    key_mask: object
    select: object
    labels: object
    one_hot: object = None
    words: object = None


class GradientModel:
    """The transformer's taped forward (models/transformer.py) and its backward, with the
    masked-LM head's verbalizer logits as class scores."""

    def __init__(self, config: ModelConfig, ranges: dict | None = None):
        self.config = config
        self.ranges = ranges or {}

    # --- forward ---------------------------------------------------------------------------
    def forward(self, tw: TrainingWeights, inputs: Inputs, prompt=None):
        """Class logits (B, C) and the tape.  `prompt` (n, H) or None."""
        cfg, w = self.config, tw.weights
        tape = Tape(prompt_length=0 if prompt is None else prompt.shape[0])
        words = inputs.words
        if words is None:                         # the word lookup, under MPC when shared
            with F.labelled(inputs.one_hot, "embedding"):
                rows = _lookup(inputs.one_hot, w.embeddings.word)
            words = F.settle(rows).reshape(inputs.key_mask.shape[0], -1, cfg.hidden_size)
            tape.one_hot = inputs.one_hot
        model = Transformer(cfg, w, ranges=self.ranges)
        h = forward_hidden(model, words, None if prompt is None else prompt.unsqueeze(0), inputs.key_mask,
                           tape=tape)
        with F.labelled(h, "head"):
            N, L, H = h.shape
            at_mask = F.mul(h, inputs.select.reshape(N, L, 1)).sum(1)
        t = model.lm_transform(at_mask, tape)
        with F.labelled(t, "head"):
            decoder = tape.head["decoder"] = F.settle(tw.decoder())
            return F.linear(t, decoder, w.lm_head.decoder_bias[tw.verbalizer_ids]), tape

    # --- backward --------------------------------------------------------------------------
    def backward(self, tw: TrainingWeights, inputs: Inputs, tape: Tape, d_logits, weight_grads: bool):
        """Gradients by parameter name (when `weight_grads`) and the prompt's gradient
        (n, H) (when the forward had a prompt)."""
        grads = {}
        e = tw.weights.embeddings
        d_h = self.head_backward(tw, inputs.select, tape.head, d_logits, grads, weight_grads)
        d_bias = None                   # MPNet: the position bias's (heads, L, L), summed over layers
        for i in reversed(range(len(tw.weights.layers))):
            d_h, d_scores = self.layer_backward(i, tw, tape.layers[i], d_h, grads, weight_grads)
            if weight_grads and e.relative_bias is not None:
                d_scores = d_scores.sum(0)
                d_bias = d_scores if d_bias is None else d_bias + d_scores
        with F.labelled(d_h, "embedding"):
            dx, dg, db = B.layer_norm_backward(tape.embed["norm"], e.norm_weight, d_h, weight_grads)
            dx = F.settle(dx)
            d_prompt = None
            n = tape.prompt_length
            if n:
                d_prompt = dx[:, 1:1 + n].sum(0)
            if weight_grads:
                grads["embeddings.norm_weight"], grads["embeddings.norm_bias"] = dg, db
                grads["embeddings.position"] = _rows_into(e.position, self.config.position_offset, dx.sum(0))
                if e.relative_bias is None:
                    grads["embeddings.token_type"] = dx.sum(0).sum(0)
                else:                   # MPNet: no token type; the bias table (no layer: zero)
                    grads["embeddings.relative_bias"] = (_zeros_like(e.relative_bias) if d_bias is None
                                                         else _bucket_rows(e.relative_bias, d_bias))
                rows = tape.head["d_decoder_rows"]
                if tape.one_hot is not None:
                    text_rows = (_drop_prompt(dx, n) if n else dx).reshape(-1, dx.shape[-1])
                    d_word = F.settle(_word_gradient(tape.one_hot, text_rows))
                    grads["embeddings.word"] = _add_rows(d_word, tw.verbalizer_ids, rows)
                else:
                    grads["embeddings.word"] = _scatter_rows(e.word, tw.verbalizer_ids, rows)
        return grads, d_prompt

    def head_backward(self, tw, select, s, d_logits, grads, weight_grads):
        head = tw.weights.lm_head
        with F.labelled(d_logits, "head"):
            d_logits = F.settle(d_logits)
            d_t, d_dec, d_bias = B.linear_backward(s["t"], s["decoder"].mT, d_logits, weight_grads)
            dt, dg, db = B.layer_norm_backward(s["norm"], head.norm_weight, d_t, weight_grads)
            d_pre = B.gelu_backward(s["pre"], F.settle(dt), gelu_bound(self.ranges, "head.gelu"))
            d_at, d_dense, d_dense_bias = B.linear_backward(s["at_mask"], tw.transposed["lm_head.dense"],
                                                            F.settle(d_pre), weight_grads)
            N, L = select.shape
            d_h = F.mul(F.settle(d_at).reshape(N, 1, -1), select.reshape(N, L, 1))
        if weight_grads:
            # the tied decoder's rows: added into the word table's gradient by the embedding's
            # backward (in place: a word-table-sized gradient is large)
            s["d_decoder_rows"] = F.settle(d_dec.mT)
            grads["lm_head.decoder_bias"] = _scatter_rows(head.decoder_bias, tw.verbalizer_ids, d_bias)
            grads["lm_head.norm_weight"], grads["lm_head.norm_bias"] = dg, db
            grads["lm_head.dense"], grads["lm_head.dense_bias"] = d_dense, d_dense_bias
        return d_h

    def layer_backward(self, i, tw, s, d_y2, grads, weight_grads):
        """(the gradient of layer i's input, of its attention scores (N, heads, L, L))."""
        cfg, w = self.config, tw.weights.layers[i]
        N, L, H = s["x"].shape
        name = f"layers.{i}."
        g = {}
        with F.labelled(d_y2, "layernorm"):
            d_sum2, g["norm2_weight"], g["norm2_bias"] = B.layer_norm_backward(
                s["norm2"], w.norm2_weight, F.settle(d_y2), weight_grads)
            d_sum2 = F.settle(d_sum2)
        with F.labelled(d_y2, "ffn"):
            d_hidden, g["down"], g["down_bias"] = B.linear_backward(s["hidden"], tw.transposed[name + "down"],
                                                                    d_sum2, weight_grads)
            d_pre = F.settle(B.gelu_backward(s["pre"], F.settle(d_hidden), gelu_bound(self.ranges, f"{i}.gelu")))
            d_y1, g["up"], g["up_bias"] = B.linear_backward(s["y1"], tw.transposed[name + "up"], d_pre,
                                                            weight_grads)
        with F.labelled(d_y2, "layernorm"):
            d_sum1, g["norm1_weight"], g["norm1_bias"] = B.layer_norm_backward(
                s["norm1"], w.norm1_weight, F.settle(d_y1 + d_sum2), weight_grads)
            d_sum1 = F.settle(d_sum1)
        with F.labelled(d_y2, "attention"):
            d_context, g["out"], g["out_bias"] = B.linear_backward(s["context"], tw.transposed[name + "out"],
                                                                   d_sum1, weight_grads)
            d_context = F.settle(d_context).reshape(N, L, cfg.num_heads, cfg.head_dim).transpose(1, 2)
            dq, dk, dv, d_scores = B.attention_backward(s["q"], s["k"], s["v"], s["p"], d_context)
            d_qkv = F.settle(F.cat([t.unsqueeze(0) for t in F.settle(dq, dk, dv)], 0))
            d_qkv = d_qkv.permute(1, 3, 0, 2, 4).reshape(N, L, 3 * H)
            dx, g["qkv"], g["qkv_bias"] = B.linear_backward(s["x"], tw.transposed[name + "qkv"], d_qkv,
                                                            weight_grads)
        if weight_grads:
            grads.update({name + k: v for k, v in g.items()})
        return F.settle(dx) + d_sum1, d_scores


#: rows of the word table per product in the lookup and its gradient under full fine-tuning:
#: a (V, H) table is multiplied in blocks of rows, one round each, so that no Beaver triple
#: larger than this many rows is held at once (memory), at a few rounds more per step
WORD_BLOCK = 8192


def _lookup(one_hot, word):
    """one_hot (B L, V) @ word (V, H), in blocks of the vocabulary for a shared table."""
    if not isinstance(word, SharedTensor) or word.shape[0] <= WORD_BLOCK:
        return F.linear(one_hot, word)
    out = None
    for start in range(0, word.shape[0], WORD_BLOCK):
        part = F.linear(one_hot[:, start:start + WORD_BLOCK], word[start:start + WORD_BLOCK])
        out = part if out is None else out + part
    return out


def _word_gradient(one_hot, rows):
    """one_hot^T (V, B L) @ rows (B L, H), in blocks of the vocabulary when shared."""
    V = one_hot.shape[1]
    if not F.is_shared(one_hot) or V <= WORD_BLOCK:
        return F.matmul(one_hot.mT, rows)
    return F.cat([F.matmul(one_hot[:, start:start + WORD_BLOCK].mT, rows) for start in range(0, V, WORD_BLOCK)], 0)


def _drop_prompt(dx, n: int):
    return F.cat([dx[:, :1], dx[:, 1 + n:]], 1)


def _add_rows(base, ids: torch.Tensor, rows):
    """base with `rows` added at row indices `ids`, in place (both at the same precision)."""
    if not F.is_shared(base):
        return base.index_add_(0, ids, rows)
    if rows.frac != base.frac:
        raise ValueError("rows and base must be at the same precision")
    base.share.index_add_(0, ids.to(base.device), rows.share)
    return base


def _zeros_like(t):
    if isinstance(t, SharedTensor):
        return SharedTensor(torch.zeros_like(t.share), t.frac, t.server)
    if isinstance(t, PreparedOperand):
        return SharedTensor(torch.zeros(t.shape, dtype=torch.int64, device=t.server.device), t.frac, t.server)
    return torch.zeros_like(t)


def _scatter_rows(like, ids: torch.Tensor, rows):
    """A tensor shaped like `like`, zero but for `rows` added at row indices `ids` (local)."""
    base = _zeros_like(like)
    if not F.is_shared(rows):
        return base.index_add(0, ids, rows)
    frac = max(base.frac, rows.frac)
    share = base.rescale(frac).share.index_add(0, ids.to(rows.device), rows.rescale(frac).share.reshape(
        len(ids), *base.shape[1:]))
    return SharedTensor(share, frac, rows.server)


def _rows_into(like, start: int, rows):
    """Zero rows shaped like `like` with `rows` placed from row `start` (local)."""
    ids = torch.arange(start, start + rows.shape[0])
    return _scatter_rows(like, ids, rows)


def _bucket_rows(table, d_bias):
    """MPNet's (buckets, heads) table gradient from its bias's (heads, L, L): bias[h, i, j] is
    table[bucket(j - i), h], so each (i, j)'s gradient adds into its bucket's row (public
    buckets: local under MPC)."""
    heads, L, _ = d_bias.shape
    return _scatter_rows(table, relative_position_buckets(L).reshape(-1), d_bias.reshape(heads, L * L).mT)
