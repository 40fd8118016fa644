"""Black-Box Tuning's search space: a prompt of n token embeddings is A z for a latent z of
dimension d (d << n x hidden) and a fixed random projection A (Sun et al., 2022).

A is drawn from a seed by the data owner and never leaves it.  Its scale follows BBT's
"normal" projection: entries N(0, s^2) with s = embedding_std / (sqrt(d) sigma0), so that a
latent with entries of size sigma0 (CMA-ES's initial spread) gives prompt entries of the size
of a word embedding's.  "he" is the uniform alternative with the same variance (bounds
+-sqrt(3) s), as torch's default (He/Kaiming-uniform) initialisation of BBT's linear layer.
The model developer publishes embedding_std (one number about its word-embedding table).

Deep prompts (Black-Box Tuning v2, Sun et al. 2022): `depth` K > 1 blocks, block 0 at the
word level as above and block k added to layer k's input at the prompt positions; each block
has its own latent of dimension d and its own projection A_k, scaled like that layer's input
(`deep_scales[k - 1]`, published by the developer beside embedding_std: the size of a hidden
state's entries, not of a word's, which is ten times smaller in MiniLM).  A latent of the
whole space is then K x d, block after block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PROJECTIONS = ("normal", "he")
DEPTHS = ("input", "deep")


def blocks_of(depth: str, num_layers: int) -> int:
    """K for a prompt depth: 1 ("input": the word level only) or every layer ("deep")."""
    if depth not in DEPTHS:
        raise ValueError(f"prompt depth must be one of {DEPTHS}, got {depth!r}")
    return num_layers if depth == "deep" else 1


def space_for(dim: int, prompt_length: int, hidden_size: int, scales, sigma0: float, projection: str, seed: int,
              depth: str, num_layers: int) -> "PromptSpace":
    """The prompt space of a model whose developer published `scales` = (embedding_std,
    deep_scales) (models.weights.prompt_scales)."""
    embedding_std, deep_scales = scales
    blocks = blocks_of(depth, num_layers)
    return PromptSpace(dim, prompt_length, hidden_size, embedding_std, sigma0, projection, seed, blocks,
                       tuple(deep_scales[:blocks - 1]))


@dataclass(frozen=True)
class PromptSpace:
    dim: int                    # d, the latent's dimension
    prompt_length: int          # n prompt tokens
    hidden_size: int
    embedding_std: float
    sigma0: float
    projection: str = "normal"
    seed: int = 0
    depth: int = 1                          # K blocks: 1 (word level only) or deep
    deep_scales: tuple[float, ...] = ()     # entry scale of layers 1 .. K-1's inputs

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.dim < 1 or self.prompt_length < 1 or self.depth < 1:
            raise ValueError("the latent dimension, the prompt length and the depth must be at least 1")
        if len(self.deep_scales) != self.depth - 1:
            raise ValueError(f"a prompt of depth {self.depth} needs {self.depth - 1} deep scales, "
                             f"got {len(self.deep_scales)}")

    @property
    def latent_size(self) -> int:
        """K x d: the whole space's latent, block after block."""
        return self.depth * self.dim

    def matrix(self) -> torch.Tensor:
        """A: (K, d, n * hidden), float64, a pure function of the settings (block 0 is the
        word-level projection of a prompt of depth 1, whatever the depth)."""
        shape = (self.dim, self.prompt_length * self.hidden_size)
        blocks = []
        for k, scale in enumerate((self.embedding_std, *self.deep_scales)):
            gen = torch.Generator().manual_seed(self.seed if k == 0 else self.seed * 1_000_003 + k)
            std = scale / (math.sqrt(self.dim) * self.sigma0)
            if self.projection == "normal":
                blocks.append(torch.randn(*shape, generator=gen, dtype=torch.float64) * std)
            else:
                bound = math.sqrt(3.0) * std
                blocks.append((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        return torch.stack(blocks)

    def prompts(self, latents, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """(P, K x d) latents -> (P, n, hidden) prompt embeddings at depth 1, or (P, K, n,
        hidden) deep ones."""
        z = torch.as_tensor(np.asarray(latents, dtype=np.float64))
        if z.ndim == 1:
            z = z.unsqueeze(0)
        if z.shape[1] != self.latent_size:
            raise ValueError(f"latents of dimension {self.latent_size} expected, got {tuple(z.shape)}")
        a = self.matrix() if matrix is None else matrix
        P = z.shape[0]
        out = torch.einsum("pkd,kde->pke", z.reshape(P, self.depth, self.dim), a)
        out = out.reshape(P, self.depth, self.prompt_length, self.hidden_size)
        return out[:, 0] if self.depth == 1 else out
