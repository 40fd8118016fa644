"""One tuning job as a user runs it: pick the model and data, build the scorer (plaintext or
MPC in one process), tune, score the best-on-dev prompt on the test set beside the zero-shot
model, and write results.json, learning-curve.png and cost-breakdown.png.

What the data owner holds here and never shares: the texts' labels, its class prior (and the
offsets it adds to its scores, tuning.prior), the losses, the latents z, the projection A and
the CMA-ES state (all in `Tuner`).  What the servers receive: shares
of the texts (one-hot rows or embeddings), of their masks, and of the population's prompts.
"""

from __future__ import annotations

import json
import math
import platform
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cma
import numpy as np
import torch
import transformers
from transformers import AutoTokenizer

from .. import __version__
from ..data import DataError, few_shot_split, load_file, load_task, with_descriptions
from ..models import (AttentionSettings, MaskedLMTask, ModelFolderError, PlainScorer, SecureScorer,
                      SentenceTask, converted_minilm_folder, load_attention, load_model)
from ..models.attention_cost import cheaper_attention, crossover_tokens
from ..models.packaged import PACKAGED, model_path
from ..models.rfa import RFA_FILE, shipped_features
from ..models.scoring import PLACEMENTS
from ..models.weights import prompt_scales, with_identity_head
from ..mpc import Config, LocalSession
from ..mpc.comm import COST_CATEGORIES, Cost, cost_category, group_costs
from ..mpc.netmodel import NETWORKS
from ..runfolder import locks_run_folder, write_private
from .developer import DeploymentRequest, developer_calibration
from .loop import POPULATION_PASS_SEQUENCES, SELECTION_P, SELECTIONS, CheckpointMismatch, Tuner, TuningConfig
from .noise import NoisyScorer
from .objective import LOSSES, accuracy, balanced_accuracy, right_answers, share_right
from .optimizers import OPTIMIZERS
from .prompt import DEPTHS, PROJECTIONS, PromptSpace, space_for
from .prior import choose_prior_strength, prior_offsets
from .prompted import SEARCH_PROTOTYPES, PromptedPrototypes
from .report import plot_costs, plot_learning_curve
from .stats import compare_predictions, gain_p

MODES = ("plaintext", "mpc")
#: "auto": the cheaper under MPC at the job's length among the model's attentions (see
#: `choose_attention`)
ATTENTIONS = ("auto", "softmax", "rfa")
HEADS = ("auto", "similarity", "mlm")
CHECKPOINT_FILE = "checkpoint.npz"
#: the prototype weights `--prototypes auto` chooses among, cross-fitted on the training and dev
#: texts (`_set_prototypes`; ties: the smaller)
PROTOTYPE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: texts per secure pass when scoring dev and test sets: bounds memory, and a pass's time per
#: text grows with its size (MiniLM, RFA, 24 tokens, 2 cores: 0.41-0.56 s per text at 24
#: texts, 0.53-0.63 at 48, 0.78-0.93 at 96)
EVAL_CHUNK = 24


class JobError(ValueError):
    """A job that cannot run as asked (reported in one line by the command)."""


@dataclass(frozen=True)
class TuneJob:
    task: str = "movie-reviews"
    data: str | None = None               # a user's CSV / TSV / JSONL / HF folder instead
    #: a JSON file of label -> description(s) for the similarity head (data.with_descriptions)
    descriptions: str | None = None
    model: str = "minilm"                 # "minilm", "mpnet" or a local Hugging Face folder
    attention: str = "auto"
    mode: str = "mpc"
    head: str = "auto"
    embedding: str = "private"
    shots: int = 16
    #: dev examples per class (None: `shots`, Black-Box Tuning's protocol); the prompt kept is
    #: the best on dev, and on 16 + 16 texts the dev gain does not carry over to test (README)
    dev_shots: int | None = None
    seed: int = 0
    test_size: int = 500
    max_length: int = 24
    prompt_length: int = 4
    #: "add": added to the text's tokens 1 .. n, so that the starting prompt (z = 0) is the
    #: zero-shot model; "insert": n new tokens after the first (Black-Box Tuning's), whose
    #: zero start is not
    prompt_placement: str = "add"
    #: "input": a prompt at the word level; "deep": one at every layer's input (BBTv2), each
    #: layer's block searched in turn by its own CMA-ES
    prompt_depth: str = "deep"
    #: "cma" (CMA-ES, Black-Box Tuning's) or "spsa" (MeZO-style zeroth-order SGD)
    optimizer: str = "cma"
    spsa_lr: float = 0.5
    #: "significant": a searched prompt replaces the start only where it beats it on the dev
    #: texts by a one-sided exact McNemar test (p < 0.05); "best": the best dev accuracy,
    #: however slight the gain
    selection: str = "significant"
    #: similarity head: the weight of the class prototypes (the mean embedding of the owner's
    #: training texts of each class, under MPC) mixed into each description; 0: descriptions
    #: only; "auto": the weight of PROTOTYPE_WEIGHTS most accurate by cross-fitting on the
    #: training and dev texts (for the similarity head; the masked-LM head has none)
    prototypes: float | str = "auto"
    #: the search's class prototypes: "prompted", the owner's texts embedded under each
    #: candidate prompt (the training texts leave one out; tuning.prompted), as the tuned
    #: model's test head is made; "fixed", embedded once without a prompt.  The same search
    #: where there are no prototypes (weight 0, the masked-LM head)
    search_prototypes: str = "prompted"
    dim: int = 50
    projection: str = "normal"
    popsize: int = 6
    sigma0: float = 0.5
    bound: float = 5.0
    generations: int = 6
    batch: int = 8
    eval_every: int = 3
    #: sequences (prompts x texts) per secure pass of a generation: a larger population is
    #: scored in several passes (balanced, whole prompts each; 0: always one pass).  On a
    #: CPU a pass's time per sequence grows past a few dozen sequences and its memory with
    #: them; each further pass costs a pass's rounds (tuning.loop.population_scores)
    pass_sequences: int = POPULATION_PASS_SEQUENCES
    patience: int | None = None
    loss: str = "ce"
    temperature: float = 0.05             # cosine scores -> logits (sentence-similarity head)
    #: the class prior the loss and the dev accuracy weigh the balanced few-shot texts by, and
    #: the owner's decisions add (`prior_strength`): "pool", the class frequencies of the
    #: owner's labelled texts outside the test set (those the few-shot texts were drawn from);
    #: one number per class ("0.85,0.15"); or "uniform", none
    class_prior: str = "pool"
    #: with a class prior, the owner decides by logit_c + beta log(prior_c) (tuning.prior):
    #: "auto", the beta of PRIOR_STRENGTHS most accurate on held-out scores of the shots under
    #: the prior's weights; or a number (0: the decisions unshifted)
    prior_strength: float | str = "auto"
    #: plaintext only: the std of Gaussian noise added to every score, a control for MPC's
    #: error (tuning.noise; benchmarks/score_noise.py measures MPC's)
    score_noise: float = 0.0
    device: str = "cpu"

    def check(self) -> None:
        for name, value, allowed in (("mode", self.mode, MODES), ("attention", self.attention, ATTENTIONS),
                                     ("head", self.head, HEADS), ("loss", self.loss, LOSSES),
                                     ("projection", self.projection, PROJECTIONS),
                                     ("embedding", self.embedding, ("private", "public")),
                                     ("prompt_placement", self.prompt_placement, PLACEMENTS),
                                     ("prompt_depth", self.prompt_depth, DEPTHS),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("selection", self.selection, SELECTIONS),
                                     ("search_prototypes", self.search_prototypes, SEARCH_PROTOTYPES)):
            if value not in allowed:
                raise JobError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {value!r}")
        for name in ("shots", "test_size", "max_length", "prompt_length", "dim", "popsize", "generations",
                     "batch", "eval_every"):
            if getattr(self, name) < 1:
                raise JobError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.pass_sequences < 0:
            raise JobError(f"--pass-sequences must be at least 0 (0: one pass), got {self.pass_sequences}")
        if self.dev_shots is not None and self.dev_shots < 1:
            raise JobError(f"--dev-shots must be at least 1, got {self.dev_shots}")
        if self.popsize < 2:
            raise JobError("--popsize must be at least 2 (CMA-ES needs a population)")
        if self.prompt_placement == "add" and self.prompt_length >= self.max_length:
            raise JobError(f"an added prompt of {self.prompt_length} tokens needs --max-length above it, "
                           f"got {self.max_length}")
        if self.sigma0 <= 0 or self.bound <= 0 or self.temperature <= 0:
            raise JobError("--sigma0, --bound and --temperature must be positive")
        if self.score_noise < 0:
            raise JobError(f"--score-noise must be at least 0, got {self.score_noise}")
        if self.optimizer == "spsa" and self.popsize % 2:
            raise JobError(f"--optimizer spsa scores pairs of candidates: --popsize must be even, got {self.popsize}")
        if self.spsa_lr <= 0:
            raise JobError(f"--spsa-lr must be positive, got {self.spsa_lr}")
        if self.prototypes != "auto" and not (isinstance(self.prototypes, (int, float))
                                              and 0.0 <= self.prototypes <= 1.0):
            raise JobError(f"--prototypes is auto or a weight in [0, 1], got {self.prototypes!r}")
        if self.prototypes != "auto" and self.prototypes and self.head == "mlm":
            raise JobError("--prototypes mixes class prototypes into the similarity head: drop --head mlm")
        if self.prior_strength != "auto" and not (isinstance(self.prior_strength, (int, float))
                                                  and 0.0 <= self.prior_strength < math.inf):
            raise JobError(f"--prior-strength is auto or a number >= 0, got {self.prior_strength!r}")
        if self.prior_strength not in ("auto", 0, 0.0) and self.class_prior == "uniform":
            raise JobError("--prior-strength weighs a class prior in the decisions: give --class-prior pool or "
                           "one number per class")
        if self.score_noise and self.mode != "plaintext":
            raise JobError("--score-noise is a plaintext control for MPC's error: use it with --mode plaintext")


def model_folder(model: str, attention: str) -> Path:
    """The model folder: a packaged model (MiniLM converted to RFA for attention "rfa"; MPNet
    fetched on first use) or the user's folder."""
    if model == "minilm" and attention == "rfa":
        return converted_minilm_folder()
    try:
        folder = model_path(model)
    except ModelFolderError as exc:
        raise JobError(str(exc)) from None
    if not folder.is_dir():
        raise JobError(f"model folder {folder} does not exist (a local Hugging Face BERT/RoBERTa/MPNet "
                       f"folder, or one of {', '.join(PACKAGED)}; nothing is downloaded from a model hub)")
    return folder


def choose_attention(model: str, attention: str, tokens: int) -> tuple[str, str]:
    """(attention, why): `attention` as asked, or for "auto" the cheaper under MPC for
    sequences of `tokens` tokens among those the model has: packaged MiniLM has both (softmax,
    and RFA through its shipped conversion; `models.attention_cost` says which costs less); a
    folder converted to RFA has RFA; MPNet and any other folder have softmax."""
    if attention != "auto":
        return attention, "as asked"
    if model == "minilm":
        features = shipped_features()
        choice = cheaper_attention(tokens, features)
        return choice, (f"auto: {tokens} tokens per sequence; RFA with M = {features} is the cheaper from "
                        f"{crossover_tokens(features)} tokens")
    if (model_folder(model, "softmax") / RFA_FILE).is_file():
        return "rfa", "auto: the model folder is an RFA conversion"
    return "softmax", "auto: the model has softmax attention only"


def resolve_attention(job: TuneJob) -> tuple[TuneJob, str]:
    """The job with "auto" attention resolved for its sequences (`choose_attention`), and why."""
    tokens = job.max_length + (job.prompt_length if job.prompt_placement == "insert" else 0)
    attention, why = choose_attention(job.model, job.attention, tokens)
    return replace(job, attention=attention), why


def load_scoring_model(model: str, attention: str, head: str = "auto"):
    """(folder, config, weights, attention settings, tokenizer) of `model` ("minilm", "mpnet" or
    a folder) with `attention` ("softmax" or "rfa"), for `head`."""
    if attention not in ("softmax", "rfa"):
        raise ValueError(f"resolve the attention first (choose_attention): got {attention!r}")
    folder = model_folder(model, attention)
    try:
        config, weights = load_model(folder)
    except ModelFolderError as exc:
        raise JobError(str(exc)) from None
    settings = load_attention(folder, config) if attention == "rfa" else AttentionSettings()
    if attention == "rfa" and settings.kind != "rfa":
        raise JobError(f"{folder} has softmax attention: convert it first (secptune convert --model "
                       f"{model if model in PACKAGED else folder} --out FOLDER, then --model FOLDER) or tune "
                       f"with --attention softmax")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise JobError(f"{folder}: no tokenizer ({exc})") from None
    if head == "mlm" and not config.has_lm_head:
        # a sentence encoder (MiniLM) scored by verbalizers: the identity head of the gradient
        # baselines, so that the three methods can be compared on one head
        config, weights = with_identity_head(config, weights)
    return folder, config, weights, settings, tokenizer


def load_job_model(job: TuneJob):
    """(folder, config, weights, attention settings, tokenizer) of the job's model, with its
    attention resolved ("auto": `resolve_attention`)."""
    return load_scoring_model(job.model, resolve_attention(job)[0].attention, job.head)


def load_job_task(job: TuneJob):
    try:
        task = load_file(job.data) if job.data else load_task(job.task)
        if job.descriptions:
            task = with_descriptions(task, job.descriptions)
        split = few_shot_split(task, job.shots, seed=job.seed, test_size=job.test_size, dev_shots=job.dev_shots)
    except DataError as exc:
        raise JobError(str(exc)) from None
    return task, split


def class_prior(job: TuneJob, task, split) -> list[float] | None:
    """The job's class prior, normalised (None for "uniform"); a JobError names a bad one."""
    C = len(task.labels)
    if job.class_prior == "uniform":
        return None
    if job.class_prior == "pool":
        held = set(split.test.texts)
        counts = [0] * C
        for text, label in zip(task.texts, task.label_ids):
            if text not in held:
                counts[label] += 1
        values = [float(c) for c in counts]
    else:
        try:
            values = [float(v) for v in job.class_prior.split(",")]
        except ValueError:
            raise JobError(f"--class-prior must be uniform, pool or {C} comma-separated numbers, "
                           f"got {job.class_prior!r}") from None
        if len(values) != C:
            raise JobError(f"--class-prior has {len(values)} numbers for {C} classes ({', '.join(task.labels)})")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise JobError(f"--class-prior needs a positive weight for every class, got {values}")
    return [v / sum(values) for v in values]


def job_scoring_task(job: TuneJob, task, config):
    head = job.head
    if head == "auto":             # descriptions and a prototype weight ask for the similarity head
        asked = job.descriptions or (job.prototypes != "auto" and job.prototypes)
        head = "mlm" if config.has_lm_head and not asked else "similarity"
    if head == "mlm":
        if not config.has_lm_head:
            raise JobError("this model has no masked-LM head: use --head similarity")
        if job.descriptions:
            raise JobError("--descriptions are for the similarity head (--head similarity); the masked-LM "
                           "head scores verbalizer words")
        return MaskedLMTask(task.verbalizers), 1.0
    return SentenceTask(task.descriptions), 1.0 / job.temperature


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Meter:
    """Cumulative (Cost, {category: Cost}) of a SecureScorer's calls."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self):
        total, cats = Cost(), {c: Cost() for c in COST_CATEGORIES}
        for _, cost, labels in self.scorer.costs:
            total = total + cost
            for k, v in group_costs(labels, cost_category).items():
                cats[k] = cats[k] + v
        return total, cats


def _test_scores(scorer, texts, prompt_length, prompt, chunk, placement="add", label_sets=None) -> list[torch.Tensor]:
    """The scores (B, C) of every text under one prompt (or none), scored in chunks: one
    block, or one per named class set of a sentence head (one pass for all)."""
    sets = 1 if label_sets is None else len(label_sets)
    blocks = [[] for _ in range(sets)]
    for part in _chunks(texts, chunk):
        handle = scorer.add_texts(part, prompt_length, placement)
        scores = scorer.scores(handle, prompt, label_sets)[0]
        for i, block in enumerate(scores.chunk(sets, -1)):
            blocks[i].append(block)
    return [torch.cat(b) for b in blocks]


def versions() -> dict:
    return {"secptune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "cma": cma.__version__, "python": platform.python_version()}


@locks_run_folder("out")             # one run per folder; the folder and its files the owner's alone
def run_job(job: TuneJob, out: str | Path, resume: bool = False, progress=None, session=None,
            open_session=None) -> dict:
    """Tune, evaluate, write results.json and the plots into `out`; returns the results.

    `progress(record, tuner)` is called after every generation.  `session` (MPC mode) is a
    LocalSession or a networked session (one with `request_model`, the developer's
    deployment) to use; else `open_session()`, called once the job and its data are checked,
    opens one (a networked session: `parties.run_networked`) that is closed here; by default a
    LocalSession is opened and closed here."""
    job.check()
    out = Path(out)
    checkpoint = out / CHECKPOINT_FILE
    if checkpoint.exists() and not resume:
        raise JobError(f"{out} holds a run already: pass --resume to continue it, or choose another --out")
    if resume and not checkpoint.exists():
        raise JobError(f"nothing to resume: {checkpoint} does not exist")
    if open_session is not None and (session is not None or job.mode != "mpc"):
        raise JobError("a networked session runs under MPC, and one session at a time")
    out.mkdir(parents=True, exist_ok=True)
    task, split = load_job_task(job)
    prior = class_prior(job, task, split)
    if open_session is not None or hasattr(session, "request_model"):
        with (open_session() if session is None else nullcontext(session)) as session:
            return _run_remote(job, out, resume, progress, task, split, session, prior)
    job, _ = resolve_attention(job)
    folder, config, weights, attention, tokenizer = load_job_model(job)
    scoring_task, scale = job_scoring_task(job, task, config)
    if job.mode == "mpc" and session is None:
        context = LocalSession(Config(device=job.device), timeout=600.0)      # opened and closed here
    else:
        context = nullcontext(session if job.mode == "mpc" else None)
    with context as session:
        return _run(job, out, resume, progress, split, folder, config, weights, attention, tokenizer,
                    scoring_task, scale, session, prior=prior)


def deployment_request(job: TuneJob, verbalizers=()) -> DeploymentRequest:
    """The job's public settings that the developer calibrates and deploys for (`verbalizers`:
    the task's words, which a masked-LM head needs), and the packaged task to leave out of
    its calibration texts (None for the owner's own file)."""
    return DeploymentRequest(task=None if job.data else job.task, max_length=job.max_length,
                             prompt_length=job.prompt_length, prompt_placement=job.prompt_placement,
                             prompt_depth=job.prompt_depth, dim=job.dim, sigma0=job.sigma0, bound=job.bound,
                             projection=job.projection, head=job.head, verbalizers=tuple(verbalizers),
                             template=MaskedLMTask.template, embedding=job.embedding)


def _run_remote(job, out, resume, progress, task, split, session, prior=None):
    """The owner's side of a networked run: the developer deploys for the job's public
    settings and sends the model card; the owner holds no weight."""
    card, ranges = session.request_model(deployment_request(job, task.verbalizers))
    if job.attention == "auto":                # the developer chose: it serves one attention
        job = replace(job, attention=card.attention)
    if card.attention != job.attention:
        raise JobError(f"the developer serves a model with {card.attention} attention; this job asks for "
                       f"--attention {job.attention}")
    tokenizer = card.tokenizer(out / "tokenizer")
    scoring_task, scale = job_scoring_task(job, task, card.config)
    def network(results):
        results["network"] = {"model_fingerprint": card.fingerprint, "encrypted": session.parties.encrypt,
                              "wire_bytes": session.wire_bytes()}

    return _run(job, out, resume, progress, split, f"developer's model {card.fingerprint}", card.config, None,
                AttentionSettings(card.attention), tokenizer, scoring_task, scale, session, card, ranges, network,
                prior)


def job_scorer(job: TuneJob, config, weights, attention, tokenizer, scoring_task, session, card=None):
    """(prompt space, scorer, meter, calibration) of a job: a PlainScorer with the developer's
    calibration without a session (the exact reference of an MPC run with the same seeds), a
    SecureScorer deployed here in one process, or one on a networked developer's `card`."""
    scales = (card.embedding_std, card.deep_scales) if card is not None else prompt_scales(weights)
    space = space_for(job.dim, job.prompt_length, config.hidden_size, scales, job.sigma0, job.projection, job.seed,
                      job.prompt_depth, config.num_layers)
    calibration = None
    request = deployment_request(job, getattr(scoring_task, "verbalizers", ()))
    if session is None:
        # the reference computes the servers' function: the same calibrated ranges, clamped alike
        calibration = developer_calibration(request, config, weights, attention, tokenizer, scoring_task, space)
        scorer = PlainScorer(config, weights, tokenizer, scoring_task, attention, job.max_length, job.device,
                             calibration)
        if job.score_noise:
            scorer = NoisyScorer(scorer, job.score_noise, job.seed)
        meter = None
    elif card is not None:                 # networked: the developer calibrated and deployed
        scorer = SecureScorer(session, config, None, tokenizer, scoring_task, None, job.max_length, job.embedding,
                              public_words=card.public_words)
        meter = _Meter(scorer)
    else:
        calibration = developer_calibration(request, config, weights, attention, tokenizer, scoring_task, space)
        scorer = SecureScorer(session, config, weights, tokenizer, scoring_task, attention, job.max_length,
                              job.embedding, calibration)
        meter = _Meter(scorer)
    return space, scorer, meter, calibration


def _eval_chunk(scorer) -> int:
    """Texts per pass when scoring a whole set: EVAL_CHUNK under MPC, 200 in plaintext."""
    return EVAL_CHUNK if isinstance(scorer, SecureScorer) else 200


def job_tuner(job: TuneJob, scorer, space: PromptSpace, split, scale: float, prior=None, checkpoint=None,
              meter=None) -> Tuner:
    """The job's Tuner: its training texts in minibatches and its dev texts added to `scorer`."""
    n, placement = job.prompt_length, job.prompt_placement
    train = split.train
    batches = [(scorer.add_texts([train.texts[i] for i in part], n, placement),
                torch.tensor([train.label_ids[i] for i in part])) for part in _chunks(list(range(len(train))), job.batch)]
    dev = ([scorer.add_texts(part, n, placement) for part in _chunks(split.dev.texts, _eval_chunk(scorer))],
           torch.tensor(split.dev.label_ids))
    tconf = TuningConfig(job.popsize, job.sigma0, job.bound, job.generations, job.eval_every, job.patience,
                         job.loss, scale, job.seed, None if prior is None else tuple(prior), job.optimizer,
                         job.spsa_lr, job.selection)
    # how the computation is spread (device, passes per generation) is not what it computes
    settings = {k: v for k, v in asdict(job).items() if k not in ("device", "pass_sequences")}
    if isinstance(scorer.task, SentenceTask):       # what a --descriptions file held, not its path
        settings["label_descriptions"] = scorer.task.descriptions
    return Tuner(scorer, space, tconf, batches, dev, checkpoint, settings, meter, job.pass_sequences)


#: the class set the test set is scored by: prototypes from the training and dev texts
FINAL_PROTOTYPES = "prototypes of all texts"


def _set_prototypes(job: TuneJob, scorer, tuner: Tuner, split) -> tuple[dict, tuple | None]:
    """The similarity head's class prototypes, before the search starts.

    The search runs against prototypes of the training texts (its start is that head without
    a prompt), so that the dev texts stay out of what they select.  The test set is scored
    against prototypes of the training and dev texts together at the same weight
    (`FINAL_PROTOTYPES`): once a prompt is chosen, the dev texts serve as more shots.

    With "auto" the weight is chosen by two-fold cross-fitting on all 2 x 16 shots per class:
    each weight of PROTOTYPE_WEIGHTS makes a class set from the training texts and one from
    the dev texts; the dev texts are scored by the first and the training texts by the second
    (from the embeddings the servers keep: no further pass), so every weight is judged on
    every labelled text, each scored by prototypes it is not in; the most accurate is kept
    (ties: the smaller weight), whatever `--selection`.  Requiring it to beat the descriptions
    alone significantly (`choose_weight(..., "significant")`) loses fewer splits but gains
    less on average, and costs the main job (TREC, seed 0: p = 0.055) its gain
    (benchmarks/prototype_rules.py).  Returns the record (the weight and each weight's dev and
    cross-fitted accuracies and its p against weight 0) and, with "auto", the kept weight's
    cross-fitted scores and labels (every shot scored by prototypes it is not in)."""
    if not isinstance(scorer.task, SentenceTask):
        raise JobError("--prototypes mixes class prototypes into the similarity head's descriptions: "
                       "use it with --head similarity")
    if job.prompt_placement == "add":        # the training batches' texts, shared once already
        handles = [handle for handle, _ in tuner.train_batches]
        labels = torch.cat([y for _, y in tuner.train_batches])
        dev = tuner.dev[0]
    else:                                    # inserted prompts: the same texts, added without
        handles = [scorer.add_texts(part, 0) for part in _chunks(split.train.texts, EVAL_CHUNK)]
        labels = torch.tensor(split.train.label_ids)
        dev = [scorer.add_texts(part, 0) for part in _chunks(split.dev.texts, _eval_chunk(scorer))]
    dev_labels = tuner.dev[1]
    start_scores = held_out = None
    if job.prototypes == "auto":
        record, start_scores, held_out = _cross_fit_weight(scorer, tuner, handles, labels, dev, dev_labels)
    else:
        record = {"weight": float(job.prototypes)}
        scorer.set_prototypes(handles, labels, {_search_head(record["weight"]): record["weight"]})
    weight = record["weight"]
    scorer.set_prototypes(handles + dev, torch.cat([labels, dev_labels]), {FINAL_PROTOTYPES: weight})
    scorer.choose_labels(_search_head(weight))
    if start_scores is not None and job.prompt_placement == "add":   # the start (z = 0): this head, no prompt
        tuner.start_scores = start_scores
    return record, held_out


def _set_prior_offsets(job: TuneJob, tuner: Tuner, prior, held_out) -> dict | None:
    """With a class prior, the owner's offsets (tuning.prior) on `tuner`, before the search:
    at `--prior-strength auto` the strength most accurate on `held_out` (the cross-fitted
    scores of every shot, where the prototype weight was cross-fitted) or else on the start's
    dev scores (which generation 0 then takes).  The record for results.json (None without a
    prior)."""
    if prior is None:
        return None
    scale = tuner.config.score_scale
    if job.prior_strength != "auto":
        record = {"strength": float(job.prior_strength)}
    else:
        if held_out is None:
            tuner.start_scores = start = tuner.dev_scores(np.zeros(tuner.space.latent_size))
            held_out = (start[0], tuner.dev[1])
        record = choose_prior_strength(*held_out, prior, scale)
    tuner.score_offsets = prior_offsets(prior, record["strength"], scale)
    return record


def _search_head(weight: float) -> str:
    """The name of the training texts' class set at `weight`, the search's head."""
    return f"prototypes {weight}"


def _cross_fit_weight(scorer, tuner: Tuner, handles, labels, dev, dev_labels) -> tuple[dict, torch.Tensor, tuple]:
    """Every weight's class sets from the training texts (`_search_head`) and from the dev
    texts, each scoring the other's texts from the kept embeddings: the most accurate weight
    (`choose_weight`, "best") with the record of them all, its dev scores (the start's), and
    its cross-fitted scores of the dev then the training texts with their labels."""
    names = {w: _search_head(w) for w in PROTOTYPE_WEIGHTS}
    dev_names = {w: f"dev prototypes {w}" for w in PROTOTYPE_WEIGHTS}
    scorer.set_prototypes(handles, labels, {names[w]: w for w in PROTOTYPE_WEIGHTS})
    scorer.set_prototypes(dev, dev_labels, {dev_names[w]: w for w in PROTOTYPE_WEIGHTS})
    dev_blocks = dict(zip(PROTOTYPE_WEIGHTS, scorer.prototype_scores(dev, list(names.values())).chunk(len(names), -1)))
    train_blocks = dict(zip(PROTOTYPE_WEIGHTS,
                            scorer.prototype_scores(handles, list(dev_names.values())).chunk(len(names), -1)))
    both_labels = torch.cat([dev_labels, labels])
    right = {w: torch.cat([right_answers(dev_blocks[w], dev_labels), right_answers(t, labels)])
             for w, t in train_blocks.items()}
    weights = tuner.config.class_weights
    cross = {w: float(share_right(right[w], both_labels, weights)) for w in PROTOTYPE_WEIGHTS}
    p_values = {w: gain_p(right[0.0], right[w]) for w in PROTOTYPE_WEIGHTS[1:]}
    weight = choose_weight(cross, p_values, "best")
    return {"weight": weight,
            "dev_accuracy": {str(w): float(accuracy(b, dev_labels, weights)[0]) for w, b in dev_blocks.items()},
            "cross_accuracy": {str(w): a for w, a in cross.items()},
            "cross_p": {str(w): p for w, p in p_values.items()}}, dev_blocks[weight][None], \
        (torch.cat([dev_blocks[weight], train_blocks[weight]]), both_labels)


#: a JSON array of numbers only (no string, object or nested array inside)
_NUMBER_ARRAY = re.compile(r"\[(\s*-?[0-9][-+.eE0-9]*(?:,\s*-?[0-9][-+.eE0-9]*)*\s*)\]")


def results_json(results: dict) -> str:
    """results.json's text: indented, with each array of numbers on one line (the
    calibration's per-channel GeLU bounds are thousands of numbers)."""
    return _NUMBER_ARRAY.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
                             json.dumps(results, indent=2))


def choose_weight(accuracies: dict[float, float], p_values: dict[float, float], selection: str) -> float:
    """The prototype weight kept: the most accurate (ties: the smaller), under "significant"
    among the weights whose p against weight 0 is below SELECTION_P (weight 0 if none)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    allowed = [w for w in accuracies if w == 0 or selection == "best" or p_values[w] < SELECTION_P]
    return max(allowed, key=lambda w: (accuracies[w], -w))


def _run(job, out, resume, progress, split, folder, config, weights, attention, tokenizer, scoring_task,
         scale, session, card=None, card_ranges=None, annotate=None, prior=None):
    t_start = time.perf_counter()
    space, scorer, meter, calibration = job_scorer(job, config, weights, attention, tokenizer, scoring_task,
                                                   session, card)
    setup = meter() if meter else None
    n, placement = job.prompt_length, job.prompt_placement
    train = split.train
    tuner = job_tuner(job, scorer, space, split, scale, prior, out / CHECKPOINT_FILE, meter)
    with_prototypes = bool(job.prototypes) and isinstance(scoring_task, SentenceTask)
    prototypes, held_out = _set_prototypes(job, scorer, tuner, split) if with_prototypes else (None, None)
    prompted = with_prototypes and job.search_prototypes == "prompted" and prototypes["weight"] > 0
    if prompted:             # at weight 0 the prototypes are the descriptions, the fixed head
        tuner.head = PromptedPrototypes(scorer, tuner.train_batches, prototypes["weight"], len(split.labels),
                                        _eval_chunk(scorer))
    prior_strength = _set_prior_offsets(job, tuner, prior, held_out)
    try:
        tuner.start(resume)
    except CheckpointMismatch as exc:
        raise JobError(str(exc)) from None
    t_tune = time.perf_counter()
    while not tuner.done:
        record = tuner.step()
        if progress:
            progress(record, tuner)
    tune_seconds = time.perf_counter() - t_tune
    state = tuner.state
    best = tuner.prompts(state.best_latent[None])
    before_test = meter() if meter else None
    t_test = time.perf_counter()
    chunk = _eval_chunk(scorer)
    labels = split.test.label_ids
    # the model without a prompt, scored once: by the descriptions (zero-shot), and by the
    # prototypes too when the head has them (now those of the training and dev texts)
    if with_prototypes:
        scorer.choose_labels(FINAL_PROTOTYPES)
    sets = ["descriptions", "prototypes"] if with_prototypes else None
    unprompted = _test_scores(scorer, split.test.texts, 0, None, chunk, label_sets=sets)
    predicted = {"zero_shot": unprompted[0].argmax(-1)}          # the model's own decisions
    # the model without a prompt as the owner decides by it (its prior's offsets, if any)
    start = tuner.shifted(unprompted[-1]).argmax(-1)
    if with_prototypes:
        predicted["prototypes"] = start
    if state.kept_start and placement == "add":       # the start is the model without a prompt
        predicted["tuned"] = start
    else:
        if prompted:
            scorer.choose_labels(tuner.head.set_test_head(tuner.dev, best))
        predicted["tuned"] = tuner.shifted(_test_scores(scorer, split.test.texts, n, best, chunk,
                                                        placement)[0]).argmax(-1)
    truth = torch.as_tensor(labels, dtype=torch.long)
    test_accuracy = {}
    for name, p in predicted.items():
        test_accuracy[f"{name}_test"] = float((p == truth).to(torch.float64).mean())
        test_accuracy[f"{name}_test_balanced"] = balanced_accuracy(p, truth)
    comparison = compare_predictions(predicted["zero_shot"], predicted["tuned"], truth, seed=job.seed)
    test_seconds = time.perf_counter() - t_test
    results = {
        "job": asdict(job), "calibration": calibration.ranges if calibration else card_ranges, "model_folder": str(folder), "versions": versions(),
        "attention": attention.kind, "hidden_size": config.hidden_size, "layers": config.num_layers,
        "split": {"train": len(train), "dev": len(split.dev), "test": len(split.test), "labels": split.labels},
        "accuracy": {**test_accuracy, "best_dev": state.best_dev_accuracy, "best_generation": state.best_generation,
                     "start_dev": state.start_dev_accuracy},
        "kept_start": state.kept_start,
        "prototypes": prototypes,
        "comparison": comparison,
        "class_prior": prior,
        "prior_strength": prior_strength,
        "descriptions": scoring_task.descriptions if isinstance(scoring_task, SentenceTask) else None,
        "test_predictions": {name: p.tolist() for name, p in predicted.items()},
        "stopped_early": state.stopped_early,
        "generations": [asdict(r) for r in state.history],
        "seconds": {"total": time.perf_counter() - t_start, "tuning": tune_seconds, "test": test_seconds},
    }
    if meter:
        total, _ = meter()
        test_cost = total - before_test[0]
        setup_cost = setup[0]
        results["cost"] = {"setup": setup_cost.as_dict(), "test": test_cost.as_dict(),
                           "per_generation": per_generation_summary(state.history)}
    if annotate is not None:              # a networked run's wire traffic
        annotate(results)
    write_private(out / "results.json", results_json(results))
    plot_learning_curve(results, out / "learning-curve.png")
    if meter:
        plot_costs(results, out / "cost-breakdown.png")
    return results


def per_generation_summary(history) -> dict:
    """Median per generation: seconds, bytes, rounds, and projected network time."""
    costs = [r.cost for r in history if r.cost]
    if not costs:
        return {}
    med = {k: statistics.median(c[k] for c in costs) for k in costs[0]}
    seconds = statistics.median(r.seconds for r in history)
    med["wall_seconds"] = seconds
    cost = Cost(online_bytes=med["online_bytes"], rounds=med["rounds"], seconds=med["seconds"])
    med["projected_seconds"] = {net.name: net.project(cost) for net in NETWORKS}
    return med


def summarize_seeds(results: list[dict]) -> dict:
    """Mean and spread (min, max, std) of the test accuracies over seeds."""
    out = {}
    for key in ("zero_shot_test", "tuned_test", "zero_shot_test_balanced", "tuned_test_balanced", "best_dev"):
        values = [r["accuracy"][key] for r in results]
        out[key] = {"mean": statistics.mean(values), "min": min(values), "max": max(values),
                    "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "values": values}
    return out


__all__ = ["ATTENTIONS", "HEADS", "JobError", "MODES", "TuneJob", "choose_attention", "resolve_attention", "run_job",
           "summarize_seeds"]
