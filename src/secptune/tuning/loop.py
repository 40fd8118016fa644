"""The data owner's tuning loop, visibly pycma's: ask, prompts, score, loss, tell, checkpoint.

Each generation scores the whole population on one minibatch of the training texts in one
batched forward pass (P x B sequences: the rounds are those of one prompt).  Every
`eval_every` generations the search distribution's mean is scored on the dev texts; the
best-on-dev latent is kept, and the run stops early after `patience` evaluations without
a better dev accuracy.  The state (CMA-ES, numpy's generator that CMA-ES samples from, the
best latent, the history and costs so far) is written after every generation, so a killed
run resumes from the generation it was in.

The scorer is a `PlainScorer` (the reference) or a `SecureScorer` (MPC): one loop for both.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cma
import numpy as np
import torch

from .objective import accuracy, loss_of
from .prompt import PromptSpace

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TuningConfig:
    """The optimiser and its schedule."""

    popsize: int = 20
    sigma0: float = 0.5
    bound: float = 5.0
    generations: int = 400
    eval_every: int = 5
    patience: int | None = None      # evaluations without a better dev accuracy before stopping
    loss: str = "ce"
    score_scale: float = 1.0         # scores -> logits (1 / temperature for cosine scores)
    seed: int = 0
    #: per-class weights of the loss and the dev accuracy (the owner's class prior), or equal
    class_weights: tuple[float, ...] | None = None


@dataclass
class GenerationRecord:
    generation: int
    seconds: float
    loss_min: float
    loss_mean: float
    batch: int
    cost: dict | None = None                 # online_bytes, rounds, dealer_bytes, ... (MPC)
    categories: dict | None = None           # online bytes per cost category (MPC)
    dev_accuracy: float | None = None
    dev_loss: float | None = None


@dataclass
class TuningState:
    generation: int
    es: cma.CMAEvolutionStrategy
    numpy_state: tuple
    best_latent: np.ndarray
    best_dev_accuracy: float = -1.0
    best_dev_loss: float = float("inf")
    best_generation: int = -1
    stale_evaluations: int = 0
    stopped_early: bool = False
    start_dev_accuracy: float | None = None      # of the starting prompt, z = 0
    history: list[GenerationRecord] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run with other settings."""


class Tuner:
    """Tune a prompt on `train_batches` [(texts handle, labels)] with dev texts `dev`.

    `scorer.scores(handle, prompts)` must return (P, B, C) scores for texts added with
    `scorer.add_texts(texts, prompt_length)`.  `checkpoint` is a file path (or None).
    `settings` (a dict) is stored with the checkpoint and must match on resume.  `meter`,
    if given, returns the secure computation's cumulative (Cost, {category: Cost}); each
    generation's record then holds its difference.
    """

    def __init__(self, scorer, space: PromptSpace, config: TuningConfig, train_batches, dev,
                 checkpoint: str | Path | None = None, settings: dict | None = None, meter=None):
        if not train_batches:
            raise ValueError("no training texts")
        self.scorer, self.space, self.config = scorer, space, config
        self.train_batches, self.dev = train_batches, dev
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.settings = dict(settings or {}, tuning=asdict(config), space=asdict(space))
        self.matrix = space.matrix()
        self.meter = meter
        self.state: TuningState | None = None

    # -- state ------------------------------------------------------------------------------

    def start(self, resume: bool = False) -> TuningState:
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            with open(self.checkpoint, "rb") as f:
                state = pickle.load(f)
            if state.version != CHECKPOINT_VERSION:
                raise CheckpointMismatch(f"{self.checkpoint}: checkpoint version {state.version}, "
                                         f"expected {CHECKPOINT_VERSION}")
            if state.settings != self.settings:
                changed = sorted(k for k in set(state.settings) | set(self.settings)
                                 if state.settings.get(k) != self.settings.get(k))
                raise CheckpointMismatch(f"{self.checkpoint} was written with other settings "
                                         f"({', '.join(changed)}): resume with the same options")
            np.random.set_state(state.numpy_state)
            self.state = state
            return state
        cfg = self.config
        opts = {"popsize": cfg.popsize, "seed": cfg.seed + 1, "bounds": [-cfg.bound, cfg.bound],
                "verbose": -9, "maxiter": cfg.generations}
        # CMA-ES samples from numpy's global generator (seeded by `seed`); it is saved with
        # every checkpoint so that a resumed run draws what the killed one would have
        es = cma.CMAEvolutionStrategy(np.zeros(self.space.dim), cfg.sigma0, opts)
        self.state = TuningState(0, es, np.random.get_state(), np.zeros(self.space.dim),
                                 settings=self.settings)
        return self.state

    def save(self) -> None:
        if self.checkpoint is None:
            return
        self.state.numpy_state = np.random.get_state()
        tmp = self.checkpoint.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(self.state, f)
        os.replace(tmp, self.checkpoint)        # atomic: a kill never leaves half a checkpoint

    @property
    def done(self) -> bool:
        s = self.state
        return s.generation >= self.config.generations or s.stopped_early

    # -- scoring ----------------------------------------------------------------------------

    def prompts(self, latents) -> torch.Tensor:
        return self.space.prompts(latents, self.matrix)

    def evaluate(self, latent) -> tuple[float, float]:
        """(accuracy, loss) of one latent on the dev texts."""
        handle, labels = self.dev
        scores = self.scorer.scores(handle, self.prompts(latent[None]))
        cfg = self.config
        loss = loss_of(scores, labels, cfg.loss, cfg.score_scale, class_weights=cfg.class_weights)
        return float(accuracy(scores, labels, cfg.class_weights)[0]), float(loss[0])

    def _consider(self, latent, record: GenerationRecord | None) -> float:
        s = self.state
        acc, loss = self.evaluate(latent)
        if record is not None:
            record.dev_accuracy, record.dev_loss = acc, loss
        if acc > s.best_dev_accuracy or (acc == s.best_dev_accuracy and loss < s.best_dev_loss):
            s.best_dev_accuracy, s.best_dev_loss = acc, loss
            s.best_latent = np.array(latent, dtype=np.float64)
            s.best_generation = s.generation
            s.stale_evaluations = 0
        else:
            s.stale_evaluations += 1
        return acc

    def step(self) -> GenerationRecord:
        """One generation: ask, score the population on a minibatch, loss, tell (and every
        `eval_every` generations, score the mean on dev)."""
        s, cfg = self.state, self.config
        t0 = time.perf_counter()
        before = self.meter() if self.meter else None
        if s.generation == 0 and s.best_generation < 0:
            s.start_dev_accuracy = self._consider(np.zeros(self.space.dim), None)   # z = 0
            s.stale_evaluations = 0
        latents = s.es.ask()
        b = s.generation % len(self.train_batches)
        handle, labels = self.train_batches[b]
        scores = self.scorer.scores(handle, self.prompts(np.stack(latents)))
        losses = loss_of(scores, labels, cfg.loss, cfg.score_scale, class_weights=cfg.class_weights)
        s.es.tell(latents, losses.tolist())
        record = GenerationRecord(s.generation, 0.0, float(losses.min()), float(losses.mean()), b)
        s.generation += 1
        if s.generation % cfg.eval_every == 0 or s.generation >= cfg.generations:
            self._consider(np.clip(s.es.mean, -cfg.bound, cfg.bound), record)
            if cfg.patience is not None and s.stale_evaluations >= cfg.patience:
                s.stopped_early = True
        if before is not None:
            (total0, cats0), (total1, cats1) = before, self.meter()
            record.cost = (total1 - total0).as_dict()
            record.categories = {k: (v - cats0.get(k, type(v)())).online_bytes for k, v in cats1.items()}
        record.seconds = time.perf_counter() - t0
        s.history.append(record)
        self.save()
        return record
