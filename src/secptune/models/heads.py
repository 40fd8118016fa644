"""What a forward pass returns to the data owner: one score per class.

Both heads start from a weighted sum over positions with weights the owner shares (so the
servers learn neither where the sentence ends nor where the mask token is):
- `SentenceSimilarityHead` (a sentence encoder such as MiniLM): mean pooling (weights
  mask / length), l2 normalisation, and cosine similarity to label-description embeddings.
  The descriptions are the owner's: they are embedded by the same secure forward pass, once,
  and kept shared, so neither server nor the developer learns them.  Class prototypes
  (`set_prototypes`) mix each description with the mean embedding of the owner's labelled
  texts of that class, under MPC too: the owner shares the mixing matrix (its labels and
  the mixing weight stay secret), and the result is kept shared beside the descriptions.
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
        self.descriptions = None         # (C, H): normalised label-description embeddings
        #: named (H, C) class matrices: "descriptions", and "prototypes" once set
        self.label_sets: dict = {}
        self.active = "descriptions"

    @property
    def labels(self):
        return self.label_sets[self.active]

    def embed(self, h, pool_weights, populations: int = 1):
        pooled = weighted_positions(h, pool_weights, populations)
        with F.labelled(pooled, "head"):
            inv_norm = F.rsqrt(F.sum_of_squares(pooled), *self.norm_range)
            return F.mul(pooled, inv_norm)

    def set_labels(self, description_embeddings, groups: list[int] | None = None):
        """description_embeddings: (N, H), from `embed` of the descriptions, class by class;
        `groups[c]` of them describe class c (default: one each).  A class with several gets
        their normalised sum: a public 0/1 matrix times the shares (exact and local), then one
        inverse square root, as `embed` normalises."""
        labels = description_embeddings
        if groups is not None and any(n != 1 for n in groups):
            if sum(groups) != labels.shape[0] or min(groups) < 1:
                raise ValueError(f"{labels.shape[0]} description embeddings for groups {groups}")
            member = torch.repeat_interleave(torch.eye(len(groups), dtype=torch.int64), torch.tensor(groups), dim=1)
            sums = member @ labels if F.is_shared(labels) else member.to(labels) @ labels
            with F.labelled(sums, "head"):
                labels = F.mul(sums, F.rsqrt(F.sum_of_squares(sums), *self.norm_range))
        self.descriptions = labels
        self.label_sets = {"descriptions": _as_matrix(labels.T)}
        self.active = "descriptions"

    def set_prototypes(self, text_embeddings, mixing, name: str = "prototypes"):
        """Class vectors from the owner's labelled texts: normalise(mixing @ [E; D]) for the
        texts' normalised embeddings E (B, H) and the descriptions D (C, H); `mixing` (C, B + C)
        is the owner's (row c: weight / count_c on class c's texts, 1 - weight on D_c).  One
        product of two shared matrices and one inverse square root per class; the class set
        `name`, active from now on."""
        stacked = F.cat([text_embeddings, self.descriptions], 0)
        with F.labelled(stacked, "head"):
            sums = F.matmul(mixing, stacked)
            labels = F.mul(sums, F.rsqrt(F.sum_of_squares(sums), *self.norm_range))
        self.label_sets[name] = _as_matrix(labels.T)
        self.active = name

    def leave_one_out_scores(self, e, mixing):
        """Scores (P, B, C) of each of B texts against class vectors made from the other
        texts of the same batch under the same prompt: text i, class c's vector is
        normalise(mixing[i C + c] @ [E_p; D]) for E_p (B, H) the batch's normalised
        embeddings under prompt p and D the descriptions.  `mixing` (B C, B + C) is the
        owner's (`models.scoring.leave_one_out_mixing`: text i never in its own row), so the
        labels and the weight stay secret; in plaintext the same function, exactly.

        Computed in the Gram space of the batch: Q_p = X_p X_p^T for X_p = [E_p; D], T_p =
        mixing @ Q_p; then text i's score for class c is T_p[i C + c, i] (a public selection)
        over the square root of sum_k T_p[i C + c, k] mixing[i C + c, k].  So the secure cost
        is two products of (B + C)-wide matrices, one elementwise product and one inverse
        square root per (prompt, text, class), none of them H wide."""
        P, B, H = e.shape
        C = self.descriptions.shape[0]
        descriptions = self.descriptions.unsqueeze(0).expand(P, C, H)
        x = F.cat([e, descriptions], 1)                                    # (P, B + C, H)
        with F.labelled(x, "head"):
            gram = F.matmul(x, x.transpose(1, 2))                          # (P, B + C, B + C)
            m = mixing.unsqueeze(0).expand(P, B * C, B + C)
            t = F.settle(F.matmul(m, F.settle(gram)))                      # (P, B C, B + C)
            own = torch.eye(B, B + C, dtype=torch.int64).repeat_interleave(C, 0)   # row i C + c: column i
            numerator = (t * (own if F.is_shared(t) else own.to(t))).sum(-1)
            norm2 = F.mul(t, m).sum(-1, keepdim=True)
            inv_norm = F.rsqrt(norm2, *self.norm_range)
            return F.mul(numerator.reshape(P, B * C, 1), inv_norm).reshape(P, B, C)

    def choose(self, name: str):
        """The class set `name` becomes "prototypes", the active one."""
        self.label_sets["prototypes"] = self.label_sets[name]
        self.active = "prototypes"

    def __call__(self, model, h, pool_weights, populations: int, label_sets=None):
        """Scores (P, B, C) against the active class vectors, or (P, B, k C) against each of
        the k named `label_sets` in turn (one pass scored by several heads)."""
        return self.score(self.embed(h, pool_weights, populations), label_sets)

    def score(self, e, label_sets=None):
        """Scores of normalised embeddings `e` (..., H) against the active class vectors, or
        against each named class set in turn: one product of shares."""
        with F.labelled(e, "head"):
            if label_sets is None:
                return F.linear(e, self.labels)
            return F.cat([F.linear(e, self.label_sets[name]) for name in label_sets], -1)


class MaskedLMHead:
    def __init__(self, model, verbalizer_ids: list[int]):
        ids = torch.as_tensor(verbalizer_ids)
        word = model.weights.embeddings.word
        word = word.to_shared() if hasattr(word, "to_shared") else word
        self.decoder = _as_matrix(word[ids].T)
        self.bias = model.weights.lm_head.decoder_bias[ids]

    def __call__(self, model, h, select_weights, populations: int, label_sets=None):
        if label_sets is not None:
            raise ValueError("the masked-LM head has one set of classes (its verbalizers)")
        at_mask = weighted_positions(h, select_weights, populations)
        t = model.lm_transform(at_mask)
        with F.labelled(t, "head"):
            return F.linear(t, self.decoder, self.bias)
