"""The owner's class prior in its decisions (`--class-prior pool|NUMBERS`, `--prior-strength`).

The few-shot texts are balanced (16 per class), the texts the owner will classify are not:
spam is 12% of SMS spam's messages, and a head that scores classes as if they were equally
common calls too many of them spam.  With the owner's class prior pi (the class frequencies
of its labelled texts, or numbers it gives), the owner decides by

    logit_c + beta * log(pi_c)

where logit_c is the class's score times the head's scale (1 / temperature for cosines):
beta = 1 is Bayes' rule for scores that are calibrated log-likelihoods, and cosines at a
fixed temperature are not, so beta is chosen among PRIOR_STRENGTHS by its accuracy on
held-out scores of the owner's labelled texts, each text weighted by its class's prior (the
accuracy on texts drawn with that prior).  No strength above Bayes' 1: where the scores tell
the classes apart poorly, the weighted accuracy of a few dozen shots peaks where the prior
alone decides (the majority class everywhere), which a larger beta would reach.  The offsets beta log(pi_c) / scale are added by the
owner to every score it receives, before the search's losses, the dev accuracies and the
test predictions (`Tuner.score_offsets`): under MPC nothing changes on the servers, and the
prior never leaves the owner.  Zero-shot predictions stay the model's own (no offsets).
"""

from __future__ import annotations

import math

import torch

from .objective import accuracy

#: the strengths beta that `--prior-strength auto` chooses among (0: the decisions unshifted;
#: 1: Bayes' rule)
PRIOR_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def prior_offsets(prior, strength: float, score_scale: float) -> torch.Tensor:
    """(C,) the owner's offsets in score units: strength * log(prior) / score_scale."""
    log_prior = torch.log(torch.as_tensor(prior, dtype=torch.float64))
    return strength * log_prior / score_scale


def choose_prior_strength(scores: torch.Tensor, labels, prior, score_scale: float) -> dict:
    """The strength of PRIOR_STRENGTHS whose decisions on the held-out `scores` (B, C) of
    labelled texts are the most accurate, each text weighted by its class's prior (ties: the
    smaller): {"strength": beta, "accuracy": {beta: weighted accuracy}}."""
    if not math.isclose(sum(prior), 1.0, rel_tol=1e-9):
        raise ValueError(f"the class prior must sum to 1, got {sum(prior)}")
    weighted = {b: float(accuracy(scores + prior_offsets(prior, b, score_scale), labels, prior)[0])
                for b in PRIOR_STRENGTHS}
    strength = max(PRIOR_STRENGTHS, key=lambda b: (weighted[b], -b))
    return {"strength": strength, "accuracy": {str(b): a for b, a in weighted.items()}}
