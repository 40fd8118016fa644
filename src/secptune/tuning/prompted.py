"""Class prototypes that follow the prompt: the search's head in `--search-prototypes prompted`.

With the fixed head (`fixed`), the prototypes are the owner's texts embedded without a
prompt, and the search moves the training texts' prompted embeddings towards them: the
texts are scored against vectors they are part of, and a prompt that fits the training
texts moves the test texts away from the same vectors (benchmarks/budget_curve.py: a longer
search loses test accuracy).  Here the prototypes are made under the same prompt as the
texts they score, as the tuned model will use them:

- the search's loss: each training text of a minibatch, under each candidate prompt, is
  scored against class vectors made from the *other* texts of the minibatch under that
  prompt (leave one out), mixed with the descriptions at the prototype weight
  (`SentenceSimilarityHead.leave_one_out_scores`; one pass of the minibatch, as before, and
  a few small products in the batch's Gram space);
- the dev texts: scored against the training texts' prototypes under the prompt (a pass of
  the training texts more per evaluation);
- the test texts (tuning.job): against the prototypes of the training and dev texts under
  the kept prompt.

At z = 0 every one of these is the fixed head without a prompt, so the start is unchanged.
Under MPC the owner shares each minibatch's leave-one-out mixing (its labels and the weight
inside, secret) and the prototypes stay shared; the owner receives only scores.
"""

from __future__ import annotations

import torch

from ..models.scoring import leave_one_out_mixing
from .loop import _as_handles

#: `--search-prototypes`: "fixed" (the owner's texts embedded without a prompt) or "prompted"
SEARCH_PROTOTYPES = ("fixed", "prompted")

#: the class set the dev texts are scored by: the training texts' prototypes under the prompt
SEARCH_PROMPTED = "prototypes under the prompt"
#: the class set the test texts are scored by: the training and dev texts' prototypes under the
#: kept prompt
FINAL_PROMPTED = "prototypes of all texts under the prompt"


class PromptedPrototypes:
    """The search's head: `train_batches` [(handle, labels)] the training minibatches (their
    texts added for the job's prompts), `weight` the prototype weight, `classes` C;
    `texts_per_pass`: the prototypes' texts are embedded in passes of up to that many
    (several minibatches a pass: a pass's rounds per pass, not per minibatch)."""

    def __init__(self, scorer, train_batches, weight: float, classes: int, texts_per_pass: int | None = None):
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"prompted prototypes need a prototype weight in (0, 1], got {weight}")
        self.scorer, self.weight, self.classes = scorer, weight, classes
        self.texts_per_pass = texts_per_pass
        self.handles = [handle for handle, _ in train_batches]
        self.labels = torch.cat([labels for _, labels in train_batches])

    def train_scores(self, handle, labels, prompts: torch.Tensor) -> torch.Tensor:
        """(P, B, C): the minibatch's texts, leave one out, under each prompt."""
        return self.scorer.leave_one_out_scores(handle, prompts, leave_one_out_mixing(labels, self.classes,
                                                                                     self.weight))

    def dev_scores(self, handles: list, prompt: torch.Tensor) -> torch.Tensor:
        """(1, B, C): the dev texts under `prompt` against the training texts' prototypes under it."""
        self.scorer.set_prompted_prototypes(self.handles, prompt, self.labels, {SEARCH_PROMPTED: self.weight},
                                            self.texts_per_pass)
        return torch.cat([self.scorer.scores(h, prompt, [SEARCH_PROMPTED]) for h in handles], dim=1)

    def set_test_head(self, dev, prompt: torch.Tensor) -> str:
        """The test texts' class set: the training and `dev` texts' ((handles or [handles],
        labels), as the Tuner's) prototypes under `prompt`, a pass over them; its name."""
        handles, labels = dev
        self.scorer.set_prompted_prototypes(self.handles + _as_handles(handles), prompt, torch.cat([self.labels, labels]),
                                            {FINAL_PROMPTED: self.weight}, self.texts_per_pass)
        return FINAL_PROMPTED
