"""The data owner's objective, in plaintext on the scores revealed to it.

Scores are (P, B, C): P prompts, B texts, C classes.  A sentence-similarity head scores
cosines in [-1, 1]; they become logits divided by a temperature (0.05, as sentence-encoder
zero-shot classification does), a masked-LM head's scores are logits already.
- cross-entropy: mean over texts of -log softmax(logits)[label];
- hinge (BBT's alternative): mean over texts of max(0, margin - (logit_label - max other)).
Both, and dev accuracy, may weigh each text by its class's weight (`class_weights`): with
weights pi_c, the owner's class prior, a balanced few-shot set estimates the loss and the
accuracy on texts drawn with that prior (importance weighting for label shift).
"""

from __future__ import annotations

import torch

LOSSES = ("ce", "hinge")


def _mean(per_text: torch.Tensor, labels: torch.Tensor, class_weights) -> torch.Tensor:
    """Mean over the last axis, each text weighted by its class's weight (or equally)."""
    if class_weights is None:
        return per_text.mean(-1)
    w = torch.as_tensor(class_weights, dtype=torch.float64)[labels]
    return (per_text * w).sum(-1) / w.sum()


def loss_of(scores: torch.Tensor, labels: torch.Tensor, kind: str = "ce", scale: float = 1.0,
            margin: float = 1.0, class_weights=None) -> torch.Tensor:
    """(P,) loss per prompt."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    logits = scores.to(torch.float64) * scale
    if logits.ndim == 2:
        logits = logits.unsqueeze(0)
    labels = torch.as_tensor(labels, dtype=torch.long)
    P, B, C = logits.shape
    if kind == "ce":
        per_text = -torch.log_softmax(logits, -1).gather(-1, labels.expand(P, B).unsqueeze(-1)).squeeze(-1)
    else:
        right = logits.gather(-1, labels.expand(P, B).unsqueeze(-1)).squeeze(-1)
        others = logits.masked_fill(torch.nn.functional.one_hot(labels, C).bool().expand(P, B, C), float("-inf"))
        per_text = torch.clamp(margin - (right - others.amax(-1)), min=0.0)
    return _mean(per_text, labels, class_weights)


def right_answers(scores: torch.Tensor, labels) -> torch.Tensor:
    """Whether each text's top-scoring class is its label: (P, B) for scores (P, B, C), (B,)
    for (B, C)."""
    return scores.argmax(-1) == torch.as_tensor(labels, dtype=torch.long)


def accuracy(scores: torch.Tensor, labels, class_weights=None) -> torch.Tensor:
    """(P,) fraction of texts whose top-scoring class is the label (scores (P, B, C) or
    (B, C)); with `class_weights`, each text counts its class's weight."""
    if scores.ndim == 2:
        scores = scores.unsqueeze(0)
    return share_right(right_answers(scores, labels), labels, class_weights)


def share_right(right: torch.Tensor, labels, class_weights=None) -> torch.Tensor:
    """The fraction of texts right (flags (..., B)), each text counting its class's weight
    when `class_weights` are given."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    return _mean(torch.as_tensor(right).to(torch.float64), labels, class_weights)


def balanced_accuracy(predictions, labels) -> float:
    """Mean over the classes present in `labels` of the fraction of that class predicted
    right (macro-averaged recall).  Few-shot splits are balanced (k per class) while test
    sets keep the corpus's class frequencies: a prompt tuned on balanced data moves the
    decision towards balance, which plain accuracy on a skewed test set penalises."""
    predictions = torch.as_tensor(predictions, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long)
    recalls = [(predictions[labels == c] == c).to(torch.float64).mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean())
