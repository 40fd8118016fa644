"""The gradient baselines under MPC: full fine-tuning (SFT) and gradient prompt tuning.

One training step (one iteration), the same code in plaintext and under MPC:
1. forward of a batch of B texts, saving what the backward needs (baselines/gradient.py);
   the class logits are revealed to the data owner, who computes its loss (it sees its
   outputs and losses, as in forward-only tuning);
2. the loss gradient under MPC (softmax of the shared logits minus the owner's shared
   one-hot labels), the backward through the head, every layer and the embedding;
3. the optimizer step under MPC (SGD or Adam, baselines/optim.py) on the shared parameters:
   - "sft": every weight (the word table included: the lookup one-hot @ word and its
     gradient run under MPC every step, since the table changes); fresh Beaver triples for
     every product with a weight, every step;
   - "prompt": only the soft prompt, which stays shared on the servers; the weights and
     their transposes are prepared once at deployment (not part of a step's cost).
The servers never see the labels, the prompt or the weights; the owner sees the logits.

`Trainer` runs steps in plaintext (the reference) or in a `LocalSession`, and reports each
step's cost split into forward, backward (loss gradient and backward pass) and update.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..data import few_shot_split, load_task
from ..models.calibration import calibrate
from ..models.packaged import model_path
from ..models.scoring import MaskedLMTask, insert_after_first, tokenize
from ..models.transformer import AttentionSettings
from ..models.weights import (ModelConfig, ModelWeights, developer_share, load_model, shapes_only, share_weights,
                              with_identity_head)
from ..mpc import LocalSession
from ..mpc.comm import DEVELOPER, OWNER, Cost, servers_cost
from ..nn import backward as B
from ..nn import functional as F
from ..runfolder import locks_run_folder, write_private
from ..tuning.developer import calibration_texts
from ..tuning.report import _pyplot
from .gradient import GradientModel, Inputs, TrainingWeights, named_parameters
from .heap import large_frees_returned
from .optim import make_optimizer

METHODS = ("sft", "prompt")
PHASES = ("forward", "backward", "update")
#: dev texts per forward when scoring the dev set
DEV_CHUNK = 16
#: the public loss scale of the backward (see nn.backward.cross_entropy_backward)
LOSS_SCALE = 2.0 ** 10


@dataclass
class TrainBatch:
    """The owner's batch: token ids (B, L), key mask (B, L), mask-token positions (B,), labels (B,)."""

    ids: torch.Tensor
    mask: torch.Tensor
    mask_position: torch.Tensor
    labels: torch.Tensor

    def owner_tensors(self, vocab_size: int, classes: int, prompt_length: int):
        """(one-hot rows (B L, V), key mask (B, n + L), selection (B, n + L), labels (B, C))."""
        Bn = self.ids.shape[0]
        n = prompt_length
        mask = insert_after_first(self.mask, torch.ones(Bn, n, dtype=self.mask.dtype))
        select = torch.zeros(mask.shape, dtype=torch.float64)
        select[torch.arange(Bn), self.mask_position + n] = 1.0
        one_hot = torch.nn.functional.one_hot(self.ids.reshape(-1), vocab_size).to(torch.float64)
        labels = torch.nn.functional.one_hot(self.labels.long(), classes).to(torch.float64)
        return one_hot, mask.to(torch.float64), select, labels


@dataclass
class StepResult:
    """One step's loss (the owner's), logits and cost per phase (both servers combined):
    forward, backward, update, and for prompt tuning the texts' private word lookup
    ("lookup"), which forward-only tuning does once per set of texts and so is not part of
    an iteration's cost in `secptune compare`."""

    loss: float
    logits: torch.Tensor
    costs: dict = field(default_factory=dict)


def _fresh_weights(server, shapes: ModelWeights) -> ModelWeights:
    """Full fine-tuning's weights: shares of every tensor, never prepared."""
    with server.labelled("share_weights"):
        return shapes.map(lambda name, t: server.input_from(DEVELOPER, tuple(t.shape)))


class Trainer:
    """SFT or gradient prompt tuning, in plaintext (`session=None`) or under MPC."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, verbalizer_ids, method: str,
                 optimizer: str = "sgd", lr: float = 1e-2, prompt: torch.Tensor | None = None,
                 session=None, ranges: dict | None = None, embed_once: bool = True,
                 loss_scale: float = LOSS_SCALE):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if weights.lm_head is None:
            raise ValueError("gradient training scores classes with the masked-LM head: this model has none")
        if method == "prompt" and prompt is None:
            raise ValueError("gradient prompt tuning needs an initial prompt (n, H)")
        self.config, self.method, self.session = config, method, session
        self.vids = torch.as_tensor(verbalizer_ids)
        self.classes = len(self.vids)
        self.prompt_length = 0 if prompt is None else prompt.shape[0]
        self.model = GradientModel(config, ranges)
        self.optimizer_name, self.lr, self.loss_scale = optimizer, lr, loss_scale
        #: prompt tuning: the texts' word embeddings are looked up once per set of texts (as
        #: in forward-only tuning), not per step; SFT looks them up every step
        self.embed_once = embed_once
        if session is None:
            self.weights = TrainingWeights.plaintext(weights.map(lambda n, t: t.clone()), self.vids)
            self.params = dict(named_parameters(self.weights.weights)) if method == "sft" else {"prompt": prompt.clone()}
            self.optimizer = make_optimizer(optimizer, lr, loss_scale)
            return
        shapes = shapes_only(weights)

        def deploy(server):
            if method == "sft":
                tw = TrainingWeights.fresh(_fresh_weights(server, shapes), self.vids)
                params = dict(named_parameters(tw.weights))
            else:
                tw = TrainingWeights.prepared(share_weights(server, shapes), self.vids)
                params = {"prompt": server.input_from_owner(tuple(prompt.shape))}
            server.store["train"] = dict(weights=tw, params=params, optimizer=make_optimizer(optimizer, lr, loss_scale))

        def owner():
            developer_share(session.developer, weights)
            if prompt is not None:
                session.owner.share(prompt)

        self.deploy_cost = self._on_servers(deploy, owner)

    def _on_servers(self, work, owner_work=None) -> Cost:
        costs = {}

        def traced(server):
            with server.cost() as trace:
                work(server)
            costs[server.name] = trace.result

        self.session.on_servers(traced, owner_work)
        return servers_cost(costs["server0"], costs["server1"])

    # --- one step ------------------------------------------------------------------------
    def step(self, batch: TrainBatch) -> StepResult:
        one_hot, mask, select, labels = batch.owner_tensors(self.config.vocab_size, self.classes,
                                                            self.prompt_length)
        if self.session is None:
            return self._plain_step(one_hot, mask, select, labels, batch)
        return self._secure_step(one_hot, mask, select, labels, batch)

    def logits(self, batch: TrainBatch) -> torch.Tensor:
        """(B, C) class logits of a batch under the current weights and prompt, without a
        step: the forward alone (under MPC the logits are revealed to the data owner, as a
        step's are).  For dev accuracy."""
        one_hot, mask, select, labels = batch.owner_tensors(self.config.vocab_size, self.classes,
                                                            self.prompt_length)
        if self.session is None:
            inputs = self._inputs_plain(one_hot, mask, select, labels, batch)
            return self.model.forward(self.weights, inputs, self.params.get("prompt"))[0]
        batch_tensors = (one_hot, mask, select, labels)

        def work(server):
            state = server.store["train"]
            rows, inputs = _server_batch(server, *batch_tensors)
            inputs.one_hot = rows
            logits, _ = self.model.forward(state["weights"], inputs, state["params"].get("prompt"))
            server.reveal_to(OWNER, [F.settle(logits)])

        (logits,) = self.session.on_servers(work, lambda: _owner_batch(self.session, batch_tensors))
        return logits

    def _inputs_plain(self, one_hot, mask, select, labels, batch):
        if self.method == "prompt" and self.embed_once:
            words = self.weights.weights.embeddings.word[batch.ids]
            return Inputs(mask, select, labels, words=words)
        return Inputs(mask, select, labels, one_hot=one_hot)

    def _plain_step(self, one_hot, mask, select, labels, batch) -> StepResult:
        tw = self.weights
        inputs = self._inputs_plain(one_hot, mask, select, labels, batch)
        prompt = self.params.get("prompt")
        logits, tape = self.model.forward(tw, inputs, prompt)
        loss = B.cross_entropy(logits, batch.labels)
        d_logits = B.cross_entropy_backward(logits, labels, self.loss_scale)
        grads, d_prompt = self.model.backward(tw, inputs, tape, d_logits, self.method == "sft")
        if self.method == "prompt":
            grads = {"prompt": d_prompt}
        self.params = self.optimizer.step(self.params, grads)
        if self.method == "sft":
            self.weights = tw.with_params(self.params)
        return StepResult(loss, logits)

    def _secure_step(self, one_hot, mask, select, labels, batch) -> StepResult:
        session, method = self.session, self.method
        B_, L = batch.ids.shape
        H = self.config.hidden_size
        words_once = method == "prompt" and self.embed_once
        phase_costs: dict[str, dict] = {p: {} for p in PHASES}

        batch_tensors = (one_hot, mask, select, labels)

        def work(server):
            state = server.store["train"]
            tw = state["weights"]
            oh, inputs = _server_batch(server, *batch_tensors)
            if words_once:
                # the private lookup of these texts: in forward-only tuning it is done once per
                # set of texts, so it is costed apart from the step ("lookup")
                with server.cost() as lookup, server.labelled("lookup"):
                    inputs.words = F.settle(F.linear(oh, tw.weights.embeddings.word)).reshape(B_, L, H)
                phase_costs.setdefault("lookup", {})[server.name] = lookup.result
            else:
                inputs.one_hot = oh
            with server.cost() as fwd:
                logits, tape = self.model.forward(tw, inputs, state["params"].get("prompt"))
                logits = F.settle(logits)
            server.reveal_to(OWNER, [logits])
            with server.cost() as bwd:
                d_logits = B.cross_entropy_backward(logits, inputs.labels, self.loss_scale)
                grads, d_prompt = self.model.backward(tw, inputs, tape, d_logits, method == "sft")
                if method == "prompt":
                    grads = {"prompt": d_prompt}
            with server.cost() as upd:
                state["params"] = state["optimizer"].step(state["params"], grads)
                if method == "sft":
                    state["weights"] = tw.with_params(state["params"])
            for phase, trace in zip(PHASES, (fwd, bwd, upd)):
                phase_costs[phase][server.name] = trace.result

        (logits,) = session.on_servers(work, lambda: _owner_batch(session, batch_tensors))
        costs = {p: servers_cost(c["server0"], c["server1"]) for p, c in phase_costs.items()}
        return StepResult(B.cross_entropy(logits, batch.labels), logits, costs)


def _owner_batch(session, tensors):
    """The owner's side of a secure forward or step: share the batch (one-hot rows, key mask,
    selection, one-hot labels) and receive the revealed logits."""
    for t in tensors:
        session.owner.share(t, frac=0)
    return session.owner.receive()


def _server_batch(server, one_hot, mask, select, labels):
    """A server's shares of the owner's batch: (one-hot rows, Inputs without them)."""
    rows = server.input_from_owner(tuple(one_hot.shape), frac=0)
    return rows, Inputs(*(server.input_from_owner(tuple(t.shape), frac=0) for t in (mask, select, labels)))


# --- a training job (`secptune train`) -------------------------------------------------------

@dataclass(frozen=True)
class TrainJob:
    """Train on a packaged task with one of the gradient baselines, in plaintext or under MPC."""

    model: str = "minilm"                 # "minilm", "mpnet" (packaged) or a Hugging Face BERT/RoBERTa/MPNet folder
    method: str = "sft"
    task: str = "movie-reviews"
    mode: str = "mpc"
    shots: int = 8
    steps: int = 10
    batch: int = 4
    max_length: int = 24
    prompt_length: int = 4
    optimizer: str = "sgd"
    lr: float = 1e-3
    seed: int = 0
    layers: int | None = None             # keep only the first N layers (a smaller model)
    #: score the dev texts every N steps and before the first (0: never)
    eval_every: int = 0


def load_train_model(name: str, layers: int | None = None):
    """(config, weights, tokenizer) of "minilm", "mpnet" or a folder, cut to `layers` layers; a
    sentence encoder without a masked-LM head gets the identity head (`with_identity_head`)."""
    name = model_path(name)
    config, weights = with_identity_head(*load_model(name))
    if layers is not None:
        if not 1 <= layers <= config.num_layers:
            raise ValueError(f"--layers must lie in 1..{config.num_layers}")
        config = replace(config, num_layers=layers)
        weights = ModelWeights(weights.embeddings, weights.layers[:layers], weights.lm_head)
    return config, weights, AutoTokenizer.from_pretrained(name, local_files_only=True)


def developer_gelu_bounds(config: ModelConfig, weights: ModelWeights, tokenizer, task: str | None,
                          max_length: int) -> dict:
    """Each layer's GeLU bound on |x| (`ranges` of `GradientModel`), calibrated as a tuning
    job's developer calibrates (tuning/developer.py): on its own texts, the other packaged
    tasks' (none of `task`'s), in the masked-LM template (the verbalizers do not change the
    activations), without prompts; one bound per layer, as the backward's GeLU derivative
    takes it.  Without them the secure GeLU runs its fixed series, valid for |x| <= 34,
    which MiniLM's layers stay within and all-mpnet-base-v2's leave (up to 181).  The LayerNorms keep their wide default ranges: training moves the
    weights away from what a calibration saw, and a GeLU bound has a margin of 3/4 octave."""
    calibration = calibrate(config, weights, AttentionSettings(), tokenizer, calibration_texts(task), max_length,
                            task=MaskedLMTask([]), gelu_channels=False)
    return {site: bounds for site, bounds in calibration.ranges.items() if site.endswith(".gelu")}


def verbalizer_ids(config: ModelConfig, tokenizer, words: list[str]) -> list[int]:
    ids = []
    for word in words:
        spaced = " " + word if config.model_type == "roberta" else word
        pieces = tokenizer.encode(spaced, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"verbalizer {word!r} is not one token of this tokenizer")
        ids.append(pieces[0])
    return ids


@locks_run_folder("out")
def run_train_job(job: TrainJob, out, progress=None) -> dict:
    """Run `job.steps` steps on minibatches of the few-shot training split; write
    results.json (loss and cost of every step) and loss.png to `out`."""
    if job.method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}")
    if job.mode not in ("mpc", "plaintext"):
        raise ValueError("--mode must be mpc or plaintext")
    if job.eval_every < 0:
        raise ValueError("--eval-every must be 0 (never) or more")
    config, weights, tokenizer = load_train_model(job.model, job.layers)
    task = load_task(job.task)
    split = few_shot_split(task, job.shots, seed=job.seed, test_size=1)
    vids = verbalizer_ids(config, tokenizer, task.verbalizers)
    scoring_task = MaskedLMTask(task.verbalizers)
    gen = torch.Generator().manual_seed(job.seed)
    prompt = None
    if job.method == "prompt":
        # drawn at the scale of the word table (a public statistic the developer gives)
        std = float(weights.embeddings.word.std())
        prompt = torch.randn(job.prompt_length, config.hidden_size, generator=gen, dtype=torch.float64) * std
    rng = random.Random(job.seed)
    order = list(range(len(split.train.texts)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    t0 = time.time()
    session = LocalSession(timeout=3600) if job.mode == "mpc" else None
    dev_batches = []
    if job.eval_every > 0:
        for i in range(0, len(split.dev.texts), DEV_CHUNK):
            enc = tokenize(tokenizer, split.dev.texts[i:i + DEV_CHUNK], job.max_length, scoring_task)
            dev_batches.append(TrainBatch(enc.ids, enc.mask, enc.mask_position,
                                          torch.tensor(split.dev.label_ids[i:i + DEV_CHUNK])))
    dev = []

    def evaluate_dev(step):
        right = sum(int((trainer.logits(b).argmax(-1) == b.labels).sum()) for b in dev_batches)
        dev.append({"step": step, "accuracy": right / len(split.dev.texts)})

    ranges = developer_gelu_bounds(config, weights, tokenizer, job.task, job.max_length)
    # full fine-tuning under MPC frees weight-sized buffers every step: give them back
    heap = large_frees_returned() if job.method == "sft" and session is not None else nullcontext()
    try:
        with heap:
            trainer = Trainer(config, weights, vids, job.method, job.optimizer, job.lr, prompt=prompt,
                              session=session, ranges=ranges)
            if dev_batches:
                evaluate_dev(0)
            for step in range(job.steps):
                if step * job.batch % len(order) == 0:
                    rng.shuffle(order)
                start = step * job.batch % len(order)
                picked = [order[(start + i) % len(order)] for i in range(job.batch)]
                enc = tokenize(tokenizer, [split.train.texts[i] for i in picked], job.max_length, scoring_task)
                batch = TrainBatch(enc.ids, enc.mask, enc.mask_position,
                                   torch.tensor([split.train.label_ids[i] for i in picked]))
                result = trainer.step(batch)
                record = {"step": step, "loss": result.loss,
                          "costs": {p: c.as_dict() for p, c in result.costs.items()}}
                records.append(record)
                if dev_batches and ((step + 1) % job.eval_every == 0 or step + 1 == job.steps):
                    evaluate_dev(step + 1)
                    record["dev_accuracy"] = dev[-1]["accuracy"]
                if progress:
                    progress(record)
    finally:
        if session is not None:
            session.close()
    results = {"job": job.__dict__, "steps": records, "dev": dev, "seconds": time.time() - t0,
               "loss_scale": LOSS_SCALE, "frac_bits": 16,
               "gelu_bounds_log2": {site: bounds[1] for site, bounds in ranges.items()}}
    write_private(out / "results.json", json.dumps(results, indent=2))
    _plot_losses(records, out / "loss.png", f"{job.method} ({job.mode}) on {job.task}")
    return results


def _plot_losses(records: list[dict], path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] + 1 for r in records], [r["loss"] for r in records], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("training minibatch cross-entropy")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
