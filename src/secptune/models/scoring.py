"""Scoring texts, with or without soft prompts, in plaintext or under MPC: the data owner's
view of a model it may not see.

    scorer = SecureScorer(session, config, weights, tokenizer, SentenceTask(descriptions))
    texts = scorer.add_texts(sentences, prompt_length=n)    # shared and cached once
    scores = scorer.scores(texts, prompts)                  # (P, B, C), to the owner only

A population of P prompts (P, n, H) is scored on B texts in one batched pass of P x B
sequences, so rounds do not grow with P.  Prompts are word-level embeddings inserted after
the first token ([CLS] / <s>), as Black-Box Tuning's; the position and type embeddings and
the embedding LayerNorm apply to them as to any token.

Embedding modes (how the texts' word embeddings, cached on the servers, are obtained):
- "private": the owner shares its token ids as one-hot rows, and the servers multiply them by
  the developer's shared embedding table, once per set of texts.  Reveals nothing; costs
  16 bytes per vocabulary entry per token online (the one-hot rows are opened masked), and
  the owner sends server 1 8 bytes per vocabulary entry per token, once.
- "public": the developer hands the owner its word-embedding table, and the owner looks its
  tokens up locally and shares the embeddings.  Reveals the word-embedding table to the data
  owner; costs nothing online.
Either way the servers see shares only.  Public to them: the padded length L, the numbers B
and P, the prompt length n.  Shared, not public: where each sentence ends and where its mask
token sits (the key mask and the pooling or selection weights are the owner's inputs).

`PlainScorer` runs the same model code on float64 tensors: the reference for fidelity tests,
and the plaintext tuning mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..mpc.comm import OWNER, SERVERS, Cost, cost_difference, servers_cost
from ..nn import functional as F
from .heads import MaskedLMHead, SentenceSimilarityHead
from .transformer import AttentionSettings, Transformer
from .weights import ModelConfig, ModelWeights, developer_share, shapes_only, share_weights

EMBEDDING_MODES = ("private", "public")
ONE_HOT_CHUNK = 256          # tokens per one-hot block in the private lookup (bounds memory)


@dataclass
class SentenceTask:
    """Score classes by cosine similarity of the sentence embedding to label descriptions."""
    descriptions: list[str]


@dataclass
class MaskedLMTask:
    """Score classes by the masked-LM logits of one verbalizer word per class; the template's
    "{text}" is replaced by the text and "{mask}" by the mask token."""
    verbalizers: list[str]
    template: str = "{text} It was {mask} ."


@dataclass
class Batch:
    """The owner's tokenised texts (its secret; the padded length L is public)."""
    ids: torch.Tensor                           # (B, L)
    mask: torch.Tensor                          # (B, L), 1 for tokens
    mask_position: torch.Tensor | None = None   # (B,) for a masked-LM task

    def __len__(self) -> int:
        return self.ids.shape[0]

    def with_prompt(self, prompt_length: int):
        """(key mask, pooling or selection weights), both (B, n + L), for n prompt tokens
        after the first token."""
        B = len(self)
        mask = torch.cat([self.mask[:, :1], torch.ones(B, prompt_length, dtype=self.mask.dtype),
                          self.mask[:, 1:]], 1).to(torch.float64)
        if self.mask_position is None:
            weights = mask / mask.sum(1, keepdim=True)
        else:
            weights = torch.zeros_like(mask)
            weights[torch.arange(B), self.mask_position + prompt_length] = 1.0
        return mask, weights


def tokenize(tokenizer, texts: list[str], max_length: int, task) -> Batch:
    """Token ids and masks (B, max_length).  A masked-LM task's template is kept whole and
    the text is cut to fit, so that the mask token is never truncated away."""
    if isinstance(task, MaskedLMTask):
        return _tokenize_template(tokenizer, texts, max_length, task)
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    return Batch(enc["input_ids"], enc["attention_mask"])


def _tokenize_template(tokenizer, texts: list[str], max_length: int, task: MaskedLMTask) -> Batch:
    before, after = task.template.split("{text}")
    encode = lambda part: tokenizer(part.format(mask=tokenizer.mask_token), add_special_tokens=False)["input_ids"]
    head, tail = encode(before) if before.strip() else [], encode(after)
    first, last = [tokenizer.cls_token_id], [tokenizer.sep_token_id]
    room = max_length - len(first) - len(head) - len(tail) - len(last)
    if room < 1:
        raise ValueError(f"the template {task.template!r} does not fit in max_length {max_length}")
    ids = torch.full((len(texts), max_length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for i, text in enumerate(texts):
        row = first + head + tokenizer(text, add_special_tokens=False)["input_ids"][:room] + tail + last
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    position = (ids == tokenizer.mask_token_id).int().argmax(1)
    return Batch(ids, mask, position)


def _assemble(words, prompts):
    """(B, L, H) texts and (P, n, H) prompts -> (P * B, n + L, H), prompts after token 0."""
    if prompts is None:
        return words
    B, L, H = words.shape
    P, n, _ = prompts.shape
    first = words[:, :1].unsqueeze(0).expand(P, B, 1, H)
    rest = words[:, 1:].unsqueeze(0).expand(P, B, L - 1, H)
    inserted = prompts.unsqueeze(1).expand(P, B, n, H)
    return F.cat([first, inserted, rest], 2).reshape(P * B, n + L, H)


def forward_scores(model: Transformer, head, words, prompts, key_mask, head_weights):
    """The forward pass itself, the same for plaintext and shared tensors: the texts' word
    embeddings (B, L, H), prompts (P, n, H) or None, key mask and head weights (B, n + L)."""
    populations = 1 if prompts is None else prompts.shape[0]
    x = model.embed(_assemble(words, prompts))
    h = model.encode(x, key_mask.repeat(populations, 1))
    return head(model, h, head_weights, populations)


def forward_embeddings(model: Transformer, head, words, key_mask, pool_weights):
    """A sentence task's normalised pooled outputs (B, H) for texts without prompts."""
    if not isinstance(head, SentenceSimilarityHead):
        raise ValueError("sentence embeddings come from a sentence task's head")
    h = model.encode(model.embed(words), key_mask)
    return head.embed(h, pool_weights)[0]


def _make_head(model: Transformer, task, tokenizer):
    if isinstance(task, MaskedLMTask):
        if model.weights.lm_head is None:
            raise ValueError("this model has no masked-LM head: score it with a SentenceTask")
        ids = []
        for word in task.verbalizers:
            spaced = " " + word if model.config.model_type == "roberta" else word
            pieces = tokenizer.encode(spaced, add_special_tokens=False)
            if len(pieces) != 1:
                raise ValueError(f"verbalizer {word!r} is not one token of this tokenizer")
            ids.append(pieces[0])
        return MaskedLMHead(model, ids)
    return SentenceSimilarityHead()


def _check_prompts(prompts, n: int):
    got = 0 if prompts is None else prompts.shape[1]
    if got != n:
        raise ValueError(f"these texts were added for prompts of {n} tokens, got {got}")


class PlainScorer:
    """The reference: the same model code on float64 tensors, in one process, in the clear."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, tokenizer, task,
                 attention: AttentionSettings | None = None, max_length: int = 64, device: str = "cpu"):
        self.device = torch.device(device)
        weights = weights.map(lambda name, t: t.to(self.device))
        self.model = Transformer(config, weights, attention)
        self.tokenizer, self.task, self.max_length = tokenizer, task, max_length
        self.head = _make_head(self.model, task, tokenizer)
        if isinstance(task, SentenceTask):
            self.head.set_labels(self.embeddings(self.add_texts(task.descriptions)).to(self.device))

    def add_texts(self, texts: list[str], prompt_length: int = 0):
        batch = tokenize(self.tokenizer, texts, self.max_length, self.task)
        words = self.model.weights.embeddings.word[batch.ids.to(self.device)]
        return (words, *(t.to(self.device) for t in batch.with_prompt(prompt_length)), prompt_length)

    def scores(self, texts, prompts: torch.Tensor | None = None) -> torch.Tensor:
        words, key_mask, weights, n = texts
        _check_prompts(prompts, n)
        prompts = None if prompts is None else prompts.to(self.device, torch.float64)
        return forward_scores(self.model, self.head, words, prompts, key_mask, weights).cpu()

    def embeddings(self, texts) -> torch.Tensor:
        """A sentence task's normalised sentence embeddings (B, H), without prompts."""
        words, key_mask, weights, n = texts
        _check_prompts(None, n)
        return forward_embeddings(self.model, self.head, words, key_mask, weights).cpu()


class SecureScorer:
    """The owner's handle on a model the servers hold in shares (in one LocalSession).

    Construction is the deployment: the developer shares the weights once (the servers
    prepare them) with its public settings (attention, calibrated ranges: `calibration`),
    and for a sentence task the owner's label descriptions are embedded under MPC, once,
    and kept shared.  `costs` lists each call's (name, cost, cost per label):
    server 0's online bytes and rounds, both servers' dealer and io traffic.
    """

    def __init__(self, session, config: ModelConfig, weights: ModelWeights, tokenizer, task,
                 attention: AttentionSettings | None = None, max_length: int = 64,
                 embedding: str = "private", calibration=None):
        if embedding not in EMBEDDING_MODES:
            raise ValueError(f"embedding mode must be one of {EMBEDDING_MODES}, got {embedding!r}")
        self.session, self.config, self.tokenizer, self.task = session, config, tokenizer, task
        self.max_length, self.embedding = max_length, embedding
        #: the owner's copy of the word table in "public" mode (what that mode reveals to it)
        self._public_words = weights.embeddings.word if embedding == "public" else None
        self.costs: list[tuple[str, Cost, dict[str, Cost]]] = []
        self._prompt_lengths: list[int] = []
        shapes = shapes_only(weights)
        attention = attention or AttentionSettings()
        ranges = None
        if calibration is not None:          # public settings: see models/calibration.py
            attention, ranges = calibration.apply(attention), calibration.layer_norm_ranges()

        def deploy(server):
            model = Transformer(config, share_weights(server, shapes), attention, ranges)
            server.store["model"] = model
            server.store["head"] = _make_head(model, task, tokenizer)

        self._call("deploy", deploy, lambda: developer_share(session.developer, weights))
        if isinstance(task, SentenceTask):
            labels = self.add_texts(task.descriptions, 0)

            def embed_labels(server):
                model, head = server.store["model"], server.store["head"]
                head.set_labels(forward_embeddings(model, head, *server.store["texts"][labels]))

            self._call("labels", embed_labels)

    def _call(self, name: str, work, owner_work=None):
        """Run `work(server)` on both servers (and `owner_work` here); record its cost, in
        all and per label (attention/cosine, ffn/gelu/..., see `group_costs`)."""
        servers = self.session.servers
        before = [s.channel.meter.snapshot() for s in servers]
        totals = {}

        def traced(server):
            with server.cost() as trace:
                work(server)
            totals[server.name] = trace.result

        out = self.session.on_servers(traced, owner_work)
        diffs = [cost_difference(s.channel.meter.snapshot(), b) for s, b in zip(servers, before)]
        labels = {label: servers_cost(diffs[0].get(label, Cost()), diffs[1].get(label, Cost()))
                  for label in set(diffs[0]) | set(diffs[1])}
        self.costs.append((name, servers_cost(totals[SERVERS[0]], totals[SERVERS[1]]), labels))
        return out

    def add_texts(self, texts: list[str], prompt_length: int = 0) -> int:
        """Tokenise, share and cache texts on the servers, for prompts of `prompt_length`
        tokens; returns a handle for `scores`."""
        batch = tokenize(self.tokenizer, texts, self.max_length, self.task)
        key_mask, weights = batch.with_prompt(prompt_length)
        weight_frac = 0 if batch.mask_position is not None else None   # a one-hot selection is exact
        handle = len(self._prompt_lengths)
        self._prompt_lengths.append(prompt_length)
        B, L = batch.ids.shape
        H, V = self.config.hidden_size, self.config.vocab_size
        owner = self.session.owner

        def share():
            if self.embedding == "public":
                owner.share(self._public_words[batch.ids])
            else:
                for rows in batch.ids.reshape(-1).split(ONE_HOT_CHUNK):
                    owner.share(torch.nn.functional.one_hot(rows, V), frac=0)
            owner.share(key_mask, frac=0)
            owner.share(weights, frac=weight_frac)

        def cache(server):
            if self.embedding == "public":
                words = server.input_from_owner((B, L, H))
            else:
                table = server.store["model"].weights.embeddings.word
                with server.labelled("embedding"):
                    blocks = [F.linear(server.input_from_owner((len(rows), V), frac=0), table)
                              for rows in torch.arange(B * L).split(ONE_HOT_CHUNK)]
                words = F.cat(blocks, 0).reshape(B, L, H)
            key = server.input_from_owner(tuple(key_mask.shape), frac=0)
            w = server.input_from_owner(tuple(weights.shape), frac=weight_frac)
            server.store.setdefault("texts", {})[handle] = (words, key, w)
            server.store.setdefault("prompt_length", {})[handle] = prompt_length

        self._call("add_texts", cache, share)
        return handle

    def scores(self, handle: int, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (P, B, C) of every prompt on every text, revealed to the owner only."""
        _check_prompts(prompts, self._prompt_lengths[handle])
        shape = None if prompts is None else tuple(prompts.shape)

        def owner_side():
            if prompts is not None:
                self.session.owner.share(prompts)
            return self.session.owner.receive()

        def score(server):
            words, key_mask, weights = server.store["texts"][handle]
            _check_prompts(prompts, server.store["prompt_length"][handle])
            shared_prompts = None if shape is None else server.input_from_owner(shape)
            out = forward_scores(server.store["model"], server.store["head"], words, shared_prompts,
                                 key_mask, weights)
            server.reveal_to(OWNER, [F.settle(out)])

        (scores,) = self._call("scores", score, owner_side)
        return scores

    def embeddings(self, handle: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A sentence task's normalised sentence embeddings (B, H) and class scores (B, C) of
        texts added without prompts, from one pass, revealed to the owner only."""
        _check_prompts(None, self._prompt_lengths[handle])

        def embed(server):
            head = server.store["head"]
            out = forward_embeddings(server.store["model"], head, *server.store["texts"][handle])
            with F.labelled(out, "head"):
                scores = F.linear(out, head.labels)
            server.reveal_to(OWNER, [F.settle(out), F.settle(scores)])

        embeddings, scores = self._call("embeddings", embed, self.session.owner.receive)
        return embeddings, scores

    @property
    def last_cost(self) -> Cost:
        return self.costs[-1][1]

