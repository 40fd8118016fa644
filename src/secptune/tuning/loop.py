"""The data owner's tuning loop, visibly pycma's: ask, prompts, score, loss, tell, checkpoint.

Each generation scores the whole population on one minibatch of the training texts in one
batched forward pass (P x B sequences: the rounds are those of one prompt).  The search
starts at z = 0: with prompts added to the texts' tokens (the default placement) that is the
model without a prompt, exactly.  That start is scored on the dev texts first, and every
`eval_every` generations the search's mean is; the prompt kept is the best on dev among
them, the start included (ties keep the earlier, so a search that finds nothing better
keeps the zero-shot model and says so: `TuningState.kept_start`).  With selection
"significant" (the default) a searched prompt must moreover beat the start on the dev texts
by a one-sided exact McNemar test at p < SELECTION_P (`stats.gain_p`): on 32 dev texts a
gain of one or two texts is noise, and keeping it loses on test as often as it gains.  The
run stops early after `patience` evaluations without a kept prompt.

The state is checkpointed after every generation, in a file that executes nothing on load
(`save_checkpoint`: JSON settings and history, and numpy arrays, in one .npz read without
pickle).  The optimiser is not stored: a resumed run rebuilds it by replaying the recorded
candidates and losses (`optimizers.replay`), which also refuses a checkpoint whose
candidates this run would not have drawn.

The scorer is a `PlainScorer` (the reference) or a `SecureScorer` (MPC): one loop for both.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .objective import accuracy, loss_of, right_answers
from .optimizers import ReplayMismatch, make_optimizer, replay
from .prompt import PromptSpace
from .stats import gain_p

#: 4: the minibatch schedule of `minibatch_index` (3 gave generation g minibatch g mod n);
#: 5: the search's head in the settings (`search_prototypes`: a version 4 run searched "fixed");
#: 6: with a class prior, the decisions add the prior's log (`Tuner.score_offsets`), which the
#: losses of a version 5 run with the same settings did not
CHECKPOINT_VERSION = 6
#: "significant": a searched prompt is kept only if it beats the start on dev significantly
#: (one-sided exact McNemar, p < SELECTION_P); "best": the best dev accuracy, however slight
SELECTIONS = ("significant", "best")
SELECTION_P = 0.05
#: sequences per secure pass of a generation by default (`population_scores`): MiniLM under
#: MPC on 2 cores took 0.34 s per sequence of 36 tokens in passes of 32 and 64 sequences,
#: 0.44 in passes of 96, 0.85 in one pass of 640 (docs/protocols.md)
POPULATION_PASS_SEQUENCES = 64


def minibatch_index(generation: int, sweep: int, batches: int) -> int:
    """The training minibatch of a generation.  With K = `sweep` blocks searched in turn
    (deep prompts), generation g searches block k = g mod K in sweep s = g div K, on minibatch
    (s + k) mod n: a sweep's blocks take consecutive minibatches, and each block moves on by
    one minibatch per sweep, so it meets all n of them.  (Minibatch g mod n would tie block k
    to the minibatches congruent to k modulo gcd(K, n): with MiniLM's 6 blocks and TREC's 3
    minibatches of 32, each block only ever saw one of them, and fitted it.)  With one
    block, g mod n."""
    return (generation // sweep + generation % sweep) % batches


def population_scores(scorer, handle, prompts: torch.Tensor, texts: int, pass_sequences: int | None, score=None):
    """(P, B, C) scores of P prompts on the B = `texts` texts of `handle`, in as few passes of
    at most `pass_sequences` sequences (P x B) as whole prompts allow, their sizes balanced
    (None or 0: one pass).  Each pass costs the rounds of one.  `score(handle, prompts)`
    scores one pass (default: `scorer.scores`)."""
    score = score or scorer.scores
    P = prompts.shape[0]
    per_pass = max(1, pass_sequences // texts) if pass_sequences else P
    parts = math.ceil(P / per_pass)
    if parts == 1:
        return score(handle, prompts)
    return torch.cat([score(handle, part) for part in torch.tensor_split(prompts, parts)], 0)


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
    optimizer: str = "cma"           # "cma" or "spsa" (optimizers.py)
    spsa_lr: float = 0.5
    selection: str = "significant"   # SELECTIONS


@dataclass
class GenerationRecord:
    generation: int
    seconds: float
    loss_min: float
    loss_mean: float
    batch: int
    block: int = 0                           # the prompt block searched (deep prompts)
    cost: dict | None = None                 # online_bytes, rounds, dealer_bytes, ... (MPC)
    categories: dict | None = None           # online bytes per cost category (MPC)
    dev_accuracy: float | None = None
    dev_loss: float | None = None
    dev_p: float | None = None               # one-sided McNemar p of its dev gain over the start


@dataclass
class TuningState:
    generation: int
    best_latent: np.ndarray
    best_dev_accuracy: float = -1.0
    best_dev_loss: float = float("inf")
    best_generation: int = -1
    stale_evaluations: int = 0
    stopped_early: bool = False
    start_dev_accuracy: float | None = None      # of the starting prompt, z = 0
    #: which dev texts the start gets right (what a searched prompt's dev gain is tested against)
    start_dev_right: list[bool] | None = None
    history: list[GenerationRecord] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    #: every generation's candidates (P, K x d) and losses (P,), which the optimiser replays
    asked: list[np.ndarray] = field(default_factory=list)
    losses: list[np.ndarray] = field(default_factory=list)
    version: int = CHECKPOINT_VERSION

    @property
    def kept_start(self) -> bool:
        """Whether the prompt kept is the start (z = 0): nothing searched beat it on dev."""
        return self.best_generation == 0


class CheckpointMismatch(ValueError):
    """A checkpoint that this run cannot continue: written with other settings, by another
    version, tampered with, or not a checkpoint."""


def save_checkpoint(path: Path, state: TuningState) -> None:
    """One .npz, written atomically (a kill never leaves half a checkpoint) and readable by
    the owner only (0600): its JSON part (settings, history, counters) and its arrays."""
    meta = {f.name: getattr(state, f.name) for f in fields(state) if f.name not in ("best_latent", "asked", "losses")}
    meta["history"] = [asdict(r) for r in state.history]
    P = state.asked[0].shape if state.asked else (0, len(state.best_latent))
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
              "best_latent": np.asarray(state.best_latent, dtype=np.float64),
              "asked": np.stack(state.asked) if state.asked else np.zeros((0, *P)),
              "losses": np.stack(state.losses) if state.losses else np.zeros((0, P[0]))}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> TuningState:
    """The state in `path`, read without unpickling anything; CheckpointMismatch names a file
    that is not such a checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            best, asked, losses = data["best_latent"], data["asked"], data["losses"]
        if meta.get("version") != CHECKPOINT_VERSION:
            raise CheckpointMismatch(f"{path}: checkpoint version {meta.get('version')}, expected {CHECKPOINT_VERSION}")
        history = [GenerationRecord(**r) for r in meta.pop("history")]
        state = TuningState(best_latent=best, history=history, asked=list(asked), losses=list(losses), **meta)
    except CheckpointMismatch:
        raise
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointMismatch(f"{path} is not a tuning checkpoint ({type(exc).__name__}: {exc})") from None
    if len(state.asked) != state.generation or len(state.losses) != state.generation:
        raise CheckpointMismatch(f"{path}: {len(state.asked)} recorded generations for generation {state.generation}")
    return state


def _as_handles(handles) -> list:
    """A list of handles as it is; one handle (a plaintext scorer's is a tuple) as a list."""
    return handles if isinstance(handles, list) else [handles]


class Tuner:
    """Tune a prompt on `train_batches` [(texts handle, labels)] with dev texts `dev`
    ((handle, labels), or ([handles], labels) for dev texts added in parts, scored one part per
    pass in order: a secure pass's time per text grows with its size past a few dozen texts).

    `scorer.scores(handle, prompts)` must return (P, B, C) scores for texts added with
    `scorer.add_texts(texts, prompt_length)`.  `checkpoint` is a file path (or None).
    `settings` (a dict) is stored with the checkpoint and must match on resume.  `meter`,
    if given, returns the secure computation's cumulative (Cost, {category: Cost}); each
    generation's record then holds its difference.  `pass_sequences`: a generation's
    population is scored in passes of at most that many sequences (`population_scores`).
    `head`, once set, scores the search instead of the scorer's active class set (a
    `tuning.prompted.PromptedPrototypes`: class prototypes that follow the prompt; set after
    the prototype weight is chosen, tuning.job).  `score_offsets`, once set, (C,) in score
    units, is added to every score the owner receives before its losses and decisions (the
    owner's class prior in its decisions, tuning.job; nothing of it leaves the owner).
    """

    def __init__(self, scorer, space: PromptSpace, config: TuningConfig, train_batches, dev,
                 checkpoint: str | Path | None = None, settings: dict | None = None, meter=None,
                 pass_sequences: int | None = None):
        if not train_batches:
            raise ValueError("no training texts")
        if config.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {config.selection!r}")
        self.scorer, self.space, self.config = scorer, space, config
        self.train_batches, self.dev = train_batches, dev
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.settings = json.loads(json.dumps(dict(settings or {}, tuning=asdict(config), space=asdict(space))))
        self.matrix = space.matrix()
        self.meter = meter
        self.pass_sequences = pass_sequences
        self.head = None
        self.score_offsets: torch.Tensor | None = None
        self.state: TuningState | None = None
        self.optimizer = None
        #: the start's dev scores (1, B, C), where an earlier pass already scored the model the
        #: search starts from (z = 0) on the dev texts: generation 0 then takes them instead
        #: of scoring the dev texts again
        self.start_scores: torch.Tensor | None = None

    # -- state ------------------------------------------------------------------------------

    def _new_optimizer(self):
        cfg = self.config
        return make_optimizer(cfg.optimizer, self.space.depth, self.space.dim, cfg.popsize, cfg.sigma0, cfg.bound,
                              cfg.seed, cfg.spsa_lr)

    def start(self, resume: bool = False) -> TuningState:
        self.optimizer = self._new_optimizer()
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            state = load_checkpoint(self.checkpoint)
            if state.settings != self.settings:
                changed = sorted(k for k in set(state.settings) | set(self.settings)
                                 if state.settings.get(k) != self.settings.get(k))
                raise CheckpointMismatch(f"{self.checkpoint} was written with other settings "
                                         f"({', '.join(changed)}): resume with the same options")
            try:
                replay(self.optimizer, np.asarray(state.asked), np.asarray(state.losses))
            except ReplayMismatch as exc:
                raise CheckpointMismatch(f"{self.checkpoint}: {exc}: another run's or a tampered checkpoint") from None
            self.state = state
            return state
        self.state = TuningState(0, np.zeros(self.space.latent_size), settings=self.settings)
        return self.state

    def save(self) -> None:
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, self.state)

    @property
    def done(self) -> bool:
        s = self.state
        return s.generation >= self.config.generations or s.stopped_early

    # -- scoring ----------------------------------------------------------------------------

    def prompts(self, latents) -> torch.Tensor:
        return self.space.prompts(latents, self.matrix)

    def shifted(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` (..., C) as the owner decides by them: plus `score_offsets`, where set."""
        return scores if self.score_offsets is None else scores + self.score_offsets.to(scores.dtype)

    def dev_scores(self, latent) -> torch.Tensor:
        """(1, B, C): the dev texts' scores under one latent, as received (no offsets)."""
        handles = self.dev[0]
        prompts = self.prompts(np.asarray(latent)[None])
        if self.head is not None:
            return self.head.dev_scores(_as_handles(handles), prompts)
        return torch.cat([self.scorer.scores(h, prompts) for h in _as_handles(handles)], dim=1)

    def evaluate(self, latent, scores: torch.Tensor | None = None) -> tuple[float, float, list[bool]]:
        """(accuracy, loss, which dev texts it gets right) of one latent on the dev texts (from
        `scores`, its dev scores (1, B, C) as received, where they are known already)."""
        labels = self.dev[1]
        scores = self.shifted(self.dev_scores(latent) if scores is None else scores)
        cfg = self.config
        loss = loss_of(scores, labels, cfg.loss, cfg.score_scale, class_weights=cfg.class_weights)
        right = right_answers(scores[0], labels).tolist()
        return float(accuracy(scores, labels, cfg.class_weights)[0]), float(loss[0]), right

    def _consider(self, latent, record: GenerationRecord | None, scores: torch.Tensor | None = None) -> float:
        """Score `latent` on dev and keep it if it is better than the kept prompt (and, with
        selection "significant", significantly better than the start); None as `record`
        marks the start itself."""
        s = self.state
        acc, loss, right = self.evaluate(latent, scores)
        holds = True
        if record is None:
            s.start_dev_right = right
        else:
            record.dev_accuracy, record.dev_loss = acc, loss
            record.dev_p = gain_p(s.start_dev_right, right)
            holds = self.config.selection == "best" or record.dev_p < SELECTION_P
        if holds and (acc > s.best_dev_accuracy or (acc == s.best_dev_accuracy and loss < s.best_dev_loss)):
            s.best_dev_accuracy, s.best_dev_loss = acc, loss
            s.best_latent = np.array(latent, dtype=np.float64)
            s.best_generation = s.generation
            s.stale_evaluations = 0
        else:
            s.stale_evaluations += 1
        return acc

    def step(self) -> GenerationRecord:
        """One generation: ask, score the population on a minibatch, loss, tell (and every
        `eval_every` generations, score the search's mean on dev)."""
        s, cfg = self.state, self.config
        t0 = time.perf_counter()
        before = self.meter() if self.meter else None
        if s.generation == 0 and s.best_generation < 0:
            s.start_dev_accuracy = self._consider(np.zeros(self.space.latent_size), None,   # z = 0
                                                  self.start_scores)
            s.stale_evaluations = 0
        latents = self.optimizer.ask(s.generation)
        b = minibatch_index(s.generation, self.optimizer.sweep, len(self.train_batches))
        handle, labels = self.train_batches[b]
        score = None if self.head is None else (lambda h, prompts: self.head.train_scores(h, labels, prompts))
        scores = self.shifted(population_scores(self.scorer, handle, self.prompts(latents), len(labels),
                                                self.pass_sequences, score))
        losses = loss_of(scores, labels, cfg.loss, cfg.score_scale, class_weights=cfg.class_weights)
        self.optimizer.tell(latents, losses.tolist())
        s.asked.append(np.asarray(latents, dtype=np.float64))
        s.losses.append(losses.numpy().astype(np.float64))
        record = GenerationRecord(s.generation, 0.0, float(losses.min()), float(losses.mean()), b,
                                  self.optimizer.block(s.generation))
        s.generation += 1
        if s.generation % cfg.eval_every == 0 or s.generation >= cfg.generations:
            self._consider(self.optimizer.mean(), record)
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
