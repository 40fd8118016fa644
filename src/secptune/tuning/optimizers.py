"""The data owner's forward-only optimisers over a prompt latent of K blocks of d entries.

Both are plain ask / tell loops the owner runs on revealed losses; neither runs under MPC.

- `CMASearch`: CMA-ES (pycma), one instance per block.  With K = 1 this is Black-Box
  Tuning's search; with K > 1 (deep prompts) it is BBTv2's divide and conquer: generation g
  searches block g mod K while every other block stays at its own search's mean, so a
  generation's population differs in one block only and costs one batched pass.
- `SPSASearch`: MeZO-style zeroth-order SGD (Malladi et al. 2023; SPSA, Spall 1992).  Each
  generation draws P / 2 random directions u_i ~ N(0, I), scores z + eps u_i and z - eps u_i
  (P candidates, one batched pass, as CMA-ES's population), and steps
  z <- clip(z - lr * mean_i [(L(z + eps u_i) - L(z - eps u_i)) / (2 eps)] u_i).

Neither holds state that a checkpoint must pickle: both are a pure function of their
settings and of the losses told so far, so a resumed run rebuilds its optimiser by replaying
the recorded generations (`replay`), and a record that does not replay is refused.
"""

from __future__ import annotations

import cma
import numpy as np

OPTIMIZERS = ("cma", "spsa")


class ReplayMismatch(ValueError):
    """Recorded candidates that the optimiser does not draw again: another run's or a
    tampered checkpoint."""


class CMASearch:
    def __init__(self, blocks: int, dim: int, popsize: int, sigma0: float, bound: float, seed: int):
        self.blocks, self.dim, self.bound = blocks, dim, bound
        opts = {"popsize": popsize, "bounds": [-bound, bound], "verbose": -9}
        # each search draws from its own generator (pycma's default is numpy's global one), so
        # that a search is a function of its seed and the losses told, whatever else runs
        self.searches = []
        for k in range(blocks):
            gen = np.random.default_rng([seed, k])
            randn = lambda *shape, gen=gen: gen.standard_normal(shape)  # noqa: E731
            self.searches.append(cma.CMAEvolutionStrategy(np.zeros(dim), sigma0,
                                                          dict(opts, seed=seed + 1 + k, randn=randn)))
        self._block = 0

    def mean(self) -> np.ndarray:
        """The whole latent (K x d): every block's search mean, within the bounds."""
        return np.concatenate([np.clip(s.mean, -self.bound, self.bound) for s in self.searches])

    def ask(self, generation: int) -> np.ndarray:
        self._block = generation % self.blocks
        base = self.mean()
        asked = np.stack(self.searches[self._block].ask())
        out = np.repeat(base[None], len(asked), 0)
        out[:, self._block * self.dim:(self._block + 1) * self.dim] = asked
        return out

    def tell(self, latents: np.ndarray, losses) -> None:
        part = latents[:, self._block * self.dim:(self._block + 1) * self.dim]
        self.searches[self._block].tell(list(part), list(map(float, losses)))

    def block(self, generation: int) -> int:
        return generation % self.blocks

    @property
    def sweep(self) -> int:
        """Generations per sweep over the blocks (each searched in turn)."""
        return self.blocks


class SPSASearch:
    def __init__(self, blocks: int, dim: int, popsize: int, sigma0: float, bound: float, seed: int,
                 lr: float = 0.5, eps: float | None = None):
        if popsize % 2:
            raise ValueError(f"SPSA scores antithetic pairs: the population must be even, got {popsize}")
        self.size, self.pairs, self.bound = blocks * dim, popsize // 2, bound
        self.lr, self.eps = lr, sigma0 / 5 if eps is None else eps
        self.rng = np.random.default_rng(seed + 1)
        self.z = np.zeros(self.size)
        self._directions = None

    def mean(self) -> np.ndarray:
        return self.z.copy()

    def ask(self, generation: int) -> np.ndarray:
        self._directions = self.rng.standard_normal((self.pairs, self.size))
        return np.concatenate([self.z + self.eps * self._directions, self.z - self.eps * self._directions])

    def tell(self, latents: np.ndarray, losses) -> None:
        losses = np.asarray(losses, dtype=np.float64)
        slopes = (losses[:self.pairs] - losses[self.pairs:]) / (2 * self.eps)
        gradient = (slopes[:, None] * self._directions).mean(0)
        self.z = np.clip(self.z - self.lr * gradient, -self.bound, self.bound)

    def block(self, generation: int) -> int:
        return 0

    @property
    def sweep(self) -> int:
        """Every generation moves the whole latent: a sweep is one generation."""
        return 1


def make_optimizer(kind: str, blocks: int, dim: int, popsize: int, sigma0: float, bound: float, seed: int,
                   lr: float = 0.5):
    if kind == "cma":
        return CMASearch(blocks, dim, popsize, sigma0, bound, seed)
    if kind == "spsa":
        return SPSASearch(blocks, dim, popsize, sigma0, bound, seed, lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")


def replay(optimizer, asked: np.ndarray, losses: np.ndarray) -> None:
    """Tell `optimizer` the recorded generations again: (G, P, K x d) candidates and (G, P)
    losses.  Every generation's candidates must be the ones it asks for now."""
    for g in range(len(asked)):
        latents = optimizer.ask(g)
        if latents.shape != asked[g].shape or not np.array_equal(latents, asked[g]):
            raise ReplayMismatch(f"generation {g}'s candidates are not this run's")
        optimizer.tell(latents, losses[g])
