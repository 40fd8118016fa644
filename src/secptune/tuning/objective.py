"""The data owner's objective, in plaintext on the scores revealed to it.

Scores are (P, B, C): P prompts, B texts, C classes.  A sentence-similarity head scores
cosines in [-1, 1]; they become logits divided by a temperature (0.05, as sentence-encoder
zero-shot classification does), a masked-LM head's scores are logits already.
- cross-entropy: mean over texts of -log softmax(logits)[label];
- hinge (BBT's alternative): mean over texts of max(0, margin - (logit_label - max other)).
"""

from __future__ import annotations

import torch

LOSSES = ("ce", "hinge")


def loss_of(scores: torch.Tensor, labels: torch.Tensor, kind: str = "ce", scale: float = 1.0,
            margin: float = 1.0) -> torch.Tensor:
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
    return per_text.mean(-1)


def accuracy(scores: torch.Tensor, labels) -> torch.Tensor:
    """(P,) fraction of texts whose top-scoring class is the label (scores (P, B, C) or (B, C))."""
    if scores.ndim == 2:
        scores = scores.unsqueeze(0)
    labels = torch.as_tensor(labels, dtype=torch.long)
    return (scores.argmax(-1) == labels).to(torch.float64).mean(-1)


def balanced_accuracy(predictions, labels) -> float:
    """Mean over the classes present in `labels` of the fraction of that class predicted
    right (macro-averaged recall).  Few-shot splits are balanced (k per class) while test
    sets keep the corpus's class frequencies: a prompt tuned on balanced data moves the
    decision towards balance, which plain accuracy on a skewed test set penalises."""
    predictions = torch.as_tensor(predictions, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long)
    recalls = [(predictions[labels == c] == c).to(torch.float64).mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean())
