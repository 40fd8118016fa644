"""Black-Box Tuning's search space: a prompt of n token embeddings is A z for a latent z of
dimension d (d << n x hidden) and a fixed random projection A (Sun et al., 2022).

A is drawn from a seed by the data owner and never leaves it.  Its scale follows BBT's
"normal" projection: entries N(0, s^2) with s = embedding_std / (sqrt(d) sigma0), so that a
latent with entries of size sigma0 (CMA-ES's initial spread) gives prompt entries of the size
of a word embedding's.  "he" is the uniform alternative with the same variance (bounds
+-sqrt(3) s), as torch's default (He/Kaiming-uniform) initialisation of BBT's linear layer.
The model developer publishes embedding_std (one number about its word-embedding table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PROJECTIONS = ("normal", "he")


@dataclass(frozen=True)
class PromptSpace:
    dim: int                    # d, the latent's dimension
    prompt_length: int          # n prompt tokens
    hidden_size: int
    embedding_std: float
    sigma0: float
    projection: str = "normal"
    seed: int = 0

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.dim < 1 or self.prompt_length < 1:
            raise ValueError("the latent dimension and the prompt length must be at least 1")

    def matrix(self) -> torch.Tensor:
        """A: (d, n * hidden), float64, a pure function of the settings."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.dim, self.prompt_length * self.hidden_size)
        std = self.embedding_std / (math.sqrt(self.dim) * self.sigma0)
        if self.projection == "normal":
            return torch.randn(*shape, generator=gen, dtype=torch.float64) * std
        bound = math.sqrt(3.0) * std
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    def prompts(self, latents, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """(P, d) latents -> (P, n, hidden) prompt embeddings."""
        z = torch.as_tensor(np.asarray(latents, dtype=np.float64))
        if z.ndim == 1:
            z = z.unsqueeze(0)
        if z.shape[1] != self.dim:
            raise ValueError(f"latents of dimension {self.dim} expected, got {tuple(z.shape)}")
        a = self.matrix() if matrix is None else matrix
        return (z @ a).reshape(z.shape[0], self.prompt_length, self.hidden_size)
