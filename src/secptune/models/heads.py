"""What a forward pass returns to the data owner: one score per class.

Both heads start from a weighted sum over positions with weights the owner shares (so the
servers learn neither where the sentence ends nor where the mask token is):
- `SentenceSimilarityHead` (a sentence encoder such as MiniLM): mean pooling (weights
  mask / length), l2 normalisation, and cosine similarity to label-description embeddings.
  The descriptions are the owner's: they are embedded by the same secure forward pass, once,
  and kept shared, so neither server nor the developer learns them.
- `MaskedLMHead` (a model with a masked-LM head, as Black-Box Tuning): the hidden state at
  the mask token, the head's transform, and the logits of the verbalizer words only (their
  vocabulary ids are public to the servers: they say which words score the classes).
"""

from __future__ import annotations

import torch

from ..mpc.protocols import prepare
from ..nn import functional as F


def weighted_positions(h, weights, populations: int):
    """sum_t w_t h_t: h (P * B, L, H), weights (B, L) -> (P, B, H)."""
    N, L, H = h.shape
    B = N // populations
    h = h.reshape(populations, B, L, H)
    with F.labelled(h, "head"):
        return F.mul(h, weights.reshape(1, B, L, 1)).sum(2)


def _as_matrix(table):
    """(H, C) as a prepared operand on the servers, or as is in plaintext."""
    return prepare(F.settle(table)) if F.is_shared(table) else table


class SentenceSimilarityHead:
    norm_range = (-8.0, 16.0)            # log2 of a pooled vector's squared norm

    def __init__(self):
        self.labels = None               # (H, C): normalised label-description embeddings

    def embed(self, h, pool_weights, populations: int = 1):
        pooled = weighted_positions(h, pool_weights, populations)
        with F.labelled(pooled, "head"):
            inv_norm = F.rsqrt(F.sum_of_squares(pooled), *self.norm_range)
            return F.mul(pooled, inv_norm)

    def set_labels(self, label_embeddings):
        """label_embeddings: (C, H), from `embed` of the descriptions."""
        self.labels = _as_matrix(label_embeddings.T)

    def __call__(self, model, h, pool_weights, populations: int):
        e = self.embed(h, pool_weights, populations)
        with F.labelled(e, "head"):
            return F.linear(e, self.labels)


class MaskedLMHead:
    def __init__(self, model, verbalizer_ids: list[int]):
        ids = torch.as_tensor(verbalizer_ids)
        word = model.weights.embeddings.word
        word = word.to_shared() if hasattr(word, "to_shared") else word
        self.decoder = _as_matrix(word[ids].T)
        self.bias = model.weights.lm_head.decoder_bias[ids]

    def __call__(self, model, h, select_weights, populations: int):
        at_mask = weighted_positions(h, select_weights, populations)
        t = model.lm_transform(at_mask)
        with F.labelled(t, "head"):
            return F.linear(t, self.decoder, self.bias)
