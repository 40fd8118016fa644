"""A control for MPC's error: plaintext scores with Gaussian noise of a chosen size added.

An MPC run's scores differ from the plaintext reference's by the fixed-point truncations and
the protocols' approximations; when two candidates' losses are that close, CMA-ES can rank
them the other way and the two runs part.  Tuning in plaintext with noise of that size on
every score tells whether a perturbation that small parts the searches as often as MPC does.

The noise of a call is drawn from a generator seeded by the run's seed and the exact scores,
so it is a fixed function of (prompt, texts): a resumed run draws what the killed one would
have, and the test set's zero-shot scores are perturbed as the tuning's are.
"""

from __future__ import annotations

import hashlib

import torch


class NoisyScorer:
    """`scorer` (a PlainScorer) whose every score gets N(0, std^2) noise (score units: the
    cosines of the similarity head, the logits of the masked-LM head)."""

    def __init__(self, scorer, std: float, seed: int):
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        self.scorer, self.std, self.seed = scorer, float(std), int(seed)

    @property
    def task(self):
        return self.scorer.task

    def add_texts(self, texts, prompt_length: int = 0, placement: str = "insert"):
        return self.scorer.add_texts(texts, prompt_length, placement)

    def scores(self, texts, prompts: torch.Tensor | None = None, label_sets=None) -> torch.Tensor:
        return perturb(self.scorer.scores(texts, prompts, label_sets), self.std, self.seed)

    def set_prototypes(self, texts, labels, weights: dict[str, float]) -> None:
        self.scorer.set_prototypes(texts, labels, weights)

    def prototype_scores(self, texts, label_sets) -> torch.Tensor:
        return perturb(self.scorer.prototype_scores(texts, label_sets), self.std, self.seed)

    def leave_one_out_scores(self, texts, prompts: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        return perturb(self.scorer.leave_one_out_scores(texts, prompts, mixing), self.std, self.seed)

    def set_prompted_prototypes(self, texts, prompt: torch.Tensor, labels, weights: dict[str, float],
                                texts_per_pass: int | None = None) -> None:
        self.scorer.set_prompted_prototypes(texts, prompt, labels, weights, texts_per_pass)

    def choose_labels(self, name: str) -> None:
        self.scorer.choose_labels(name)


def perturb(scores: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """`scores` + N(0, std^2) noise drawn from a generator seeded by `seed` and the scores."""
    if std == 0:
        return scores
    digest = hashlib.blake2b(scores.detach().cpu().contiguous().numpy().tobytes(), digest_size=8,
                             key=int(seed).to_bytes(8, "little", signed=True)).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    noise = torch.randn(scores.shape, generator=generator, dtype=torch.float64)
    return scores + (std * noise).to(scores.device, scores.dtype)
