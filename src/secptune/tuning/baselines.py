"""The gradient baselines under MPC: full fine-tuning (SFT) and gradient prompt tuning.

One training step (one iteration), the same code in plaintext and under MPC:
1. forward of a batch of B texts, saving what the backward needs (tuning/gradient.py);
   the class logits are revealed to the data owner, who computes its loss (it sees its
   outputs and losses, as in forward-only tuning);
2. the loss gradient under MPC (softmax of the shared logits minus the owner's shared
   one-hot labels), the backward through the head, every layer and the embedding;
3. the optimizer step under MPC (SGD or Adam, nn/optim.py) on the shared parameters:
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

from dataclasses import dataclass, field

import torch

from ..models.weights import ModelConfig, ModelWeights, developer_share, shapes_only, share_weights
from ..mpc.comm import DEVELOPER, OWNER, Cost, servers_cost
from ..nn import backward as B
from ..nn import functional as F
from ..nn.optim import make_optimizer
from .gradient import GradientModel, Inputs, TrainingWeights, named_parameters

METHODS = ("sft", "prompt")
PHASES = ("forward", "backward", "update")


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
        mask = torch.cat([self.mask[:, :1], torch.ones(Bn, n, dtype=self.mask.dtype), self.mask[:, 1:]], 1)
        select = torch.zeros(mask.shape, dtype=torch.float64)
        select[torch.arange(Bn), self.mask_position + n] = 1.0
        one_hot = torch.nn.functional.one_hot(self.ids.reshape(-1), vocab_size).to(torch.float64)
        labels = torch.nn.functional.one_hot(self.labels.long(), classes).to(torch.float64)
        return one_hot, mask.to(torch.float64), select, labels


@dataclass
class StepResult:
    loss: float
    logits: torch.Tensor
    costs: dict = field(default_factory=dict)        # phase -> Cost (both servers combined)

    @property
    def total(self) -> Cost:
        out = Cost()
        for c in self.costs.values():
            out = out + c
        return out


def _fresh_weights(server, shapes: ModelWeights) -> ModelWeights:
    """Full fine-tuning's weights: shares of every tensor, never prepared."""
    with server.labelled("share_weights"):
        return shapes.map(lambda name, t: server.input_from(DEVELOPER, tuple(t.shape)))


class Trainer:
    """SFT or gradient prompt tuning, in plaintext (`session=None`) or under MPC."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, verbalizer_ids, method: str,
                 optimizer: str = "sgd", lr: float = 1e-2, prompt: torch.Tensor | None = None,
                 session=None, ranges: dict | None = None, embed_once: bool = True):
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
        self.optimizer_name, self.lr = optimizer, lr
        #: prompt tuning: the texts' word embeddings are looked up once per set of texts (as
        #: in forward-only tuning), not per step; SFT looks them up every step
        self.embed_once = embed_once
        if session is None:
            self.weights = TrainingWeights.plaintext(weights.map(lambda n, t: t.clone()), self.vids)
            self.params = dict(named_parameters(self.weights.weights)) if method == "sft" else {"prompt": prompt.clone()}
            self.optimizer = make_optimizer(optimizer, lr)
            return
        shapes = shapes_only(weights)

        def deploy(server):
            if method == "sft":
                tw = TrainingWeights.fresh(_fresh_weights(server, shapes), self.vids)
                params = dict(named_parameters(tw.weights))
            else:
                tw = TrainingWeights.prepared(share_weights(server, shapes), self.vids)
                params = {"prompt": server.input_from_owner(tuple(prompt.shape))}
            server.store["train"] = dict(weights=tw, params=params, optimizer=make_optimizer(optimizer, lr))

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
        d_logits = B.cross_entropy_backward(logits, labels)
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

        def owner():
            session.owner.share(one_hot, frac=0)
            session.owner.share(mask, frac=0)
            session.owner.share(select, frac=0)
            session.owner.share(labels, frac=0)
            return session.owner.receive()

        def work(server):
            state = server.store["train"]
            tw = state["weights"]
            oh = server.input_from_owner(tuple(one_hot.shape), frac=0)
            inputs = Inputs(server.input_from_owner(tuple(mask.shape), frac=0),
                            server.input_from_owner(tuple(select.shape), frac=0),
                            server.input_from_owner(tuple(labels.shape), frac=0))
            if words_once:
                # the lookup of these texts, once per set of texts (not part of the step)
                with server.labelled("lookup"):
                    inputs.words = F.settle(F.linear(oh, tw.weights.embeddings.word)).reshape(B_, L, H)
            else:
                inputs.one_hot = oh
            with server.cost() as fwd:
                logits, tape = self.model.forward(tw, inputs, state["params"].get("prompt"))
                logits = F.settle(logits)
            server.reveal_to(OWNER, [logits])
            with server.cost() as bwd:
                d_logits = B.cross_entropy_backward(logits, inputs.labels)
                grads, d_prompt = self.model.backward(tw, inputs, tape, d_logits, method == "sft")
                if method == "prompt":
                    grads = {"prompt": d_prompt}
            with server.cost() as upd:
                state["params"] = state["optimizer"].step(state["params"], grads)
                if method == "sft":
                    state["weights"] = tw.with_params(state["params"])
            for phase, trace in zip(PHASES, (fwd, bwd, upd)):
                phase_costs[phase][server.name] = trace.result

        (logits,) = session.on_servers(work, owner)
        costs = {p: servers_cost(c["server0"], c["server1"]) for p, c in phase_costs.items()}
        return StepResult(B.cross_entropy(logits, batch.labels), logits, costs)
