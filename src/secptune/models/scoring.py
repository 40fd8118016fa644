"""Scoring texts, with or without soft prompts, in plaintext or under MPC: the data owner's
view of a model it may not see.

    scorer = SecureScorer(session, config, weights, tokenizer, SentenceTask(descriptions))
    texts = scorer.add_texts(sentences, prompt_length=n)    # shared and cached once
    scores = scorer.scores(texts, prompts)                  # (P, B, C), to the owner only

A population of P prompts (P, n, H) is scored on B texts in one batched pass of P x B
sequences, so rounds do not grow with P (a caller may split a large population into several
such passes, each a pass's rounds, to bound a pass's memory and time).  Prompts are
word-level embeddings placed after the first token ([CLS] / <s>) in one of two ways
(`PLACEMENTS`):
- "insert": n new tokens, as Black-Box Tuning's; the position and type embeddings and the
  embedding LayerNorm apply to them as to any token.  Sequences grow to n + L.
- "add": added to the word embeddings of the text's tokens 1 .. n.  A zero prompt (CMA-ES's
  starting mean) is then exactly the model without a prompt, and sequences stay L long.

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

from ..mpc.comm import DEVELOPER, OWNER, SERVERS, Cost, servers_cost
from ..mpc.session import server_op
from ..nn import functional as F
from .deployment import developer_deploy, settings_from_wire
from .heads import MaskedLMHead, SentenceSimilarityHead
from .transformer import AttentionSettings, Tape, Transformer
from .weights import ModelConfig, ModelWeights, share_weights

EMBEDDING_MODES = ("private", "public")
PLACEMENTS = ("insert", "add")
ONE_HOT_CHUNK = 256          # tokens per one-hot block in the private lookup (bounds memory)


@dataclass
class SentenceTask:
    """Score classes by cosine similarity of the sentence embedding to label descriptions.
    ``descriptions[c]`` is class c's description, or a list of several: the class's embedding
    is then their mean direction (the normalised sum of their normalised embeddings), which
    averages out what any one wording, or a model's approximation of it, adds."""
    descriptions: list

    @property
    def texts(self) -> list[str]:
        """Every description, class by class."""
        return [text for group in self.descriptions for text in _as_list(group)]

    @property
    def groups(self) -> list[int]:
        """How many of `texts` describe each class."""
        return [len(_as_list(group)) for group in self.descriptions]


def _as_list(group) -> list[str]:
    return [group] if isinstance(group, str) else list(group)


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

    def with_prompt(self, prompt_length: int, placement: str = "insert"):
        """(key mask, pooling or selection weights), both (B, n + L), for n prompt tokens
        inserted after the first token.  A sentence task pools the text's own tokens only: the
        prompt acts through attention (as a masked-LM task reads its mask position), and a
        prompt of zero vectors (CMA-ES's starting mean) does not dilute the sentence
        embedding.  An added prompt (placement "add") leaves both as without one, (B, L)."""
        if placement == "add":
            return self.with_prompt(0)
        B = len(self)
        mask = insert_after_first(self.mask, torch.ones(B, prompt_length, dtype=self.mask.dtype)).to(torch.float64)
        if self.mask_position is None:
            text = mask.clone()
            text[:, 1:1 + prompt_length] = 0
            weights = text / text.sum(1, keepdim=True)
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
        # cut by the tokenizer (the same ids as cutting after: a long text no longer warns
        # that it exceeds the model's length)
        cut = tokenizer(text, add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
        row = first + head + cut + tail + last
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    position = (ids == tokenizer.mask_token_id).int().argmax(1)
    return Batch(ids, mask, position)


def _assemble(words, prompts, placement: str = "insert"):
    """(B, L, H) texts and (P, n, H) prompts -> (P * B, n + L, H), prompts inserted after
    token 0; or (P * B, L, H), prompts added to tokens 1 .. n (placement "add")."""
    if prompts is None:
        return words
    B, L, H = words.shape
    P, n, _ = prompts.shape
    if placement == "add":
        if n + 1 > L:
            raise ValueError(f"an added prompt of {n} tokens needs texts of at least {n + 1} positions, got {L}")
        return add_at_prompt_positions(words.unsqueeze(0).expand(P, B, L, H).reshape(P * B, L, H), prompts)
    texts = words.unsqueeze(0).expand(P, B, L, H)
    return insert_after_first(texts, prompts.unsqueeze(1).expand(P, B, n, H), 2).reshape(P * B, n + L, H)


def insert_after_first(x, inserted, dim: int = 1):
    """x with `inserted` placed after its first token along the token dimension `dim`: where
    prompts enter a sequence (texts' embeddings, or their key masks)."""
    before = (slice(None),) * dim
    return F.cat([x[before + (slice(0, 1),)], inserted, x[before + (slice(1, None),)]], dim)


def add_at_prompt_positions(x, prompts):
    """x (P * B, L, H) plus prompts (P, n, H) at positions 1 .. n of every sequence: a local
    addition on shares, so a deep prompt costs no round."""
    N, L, H = x.shape
    P, n, _ = prompts.shape
    B = N // P
    head = x[:, 1:n + 1] + prompts.unsqueeze(1).expand(P, B, n, H).reshape(N, n, H)
    return F.cat([x[:, :1], head, x[:, n + 1:]], 1)


def prompt_blocks(prompts):
    """(P, n, H) input prompts or (P, K, n, H) deep ones -> (input block, [deep blocks])."""
    if prompts is None:
        return None, []
    if prompts.ndim == 3:
        return prompts, []
    return prompts[:, 0], [prompts[:, k] for k in range(1, prompts.shape[1])]


def forward_hidden(model: Transformer, words, prompts, key_mask, placement: str = "insert",
                   tape: Tape | None = None):
    """The encoder's output (P * B, n + L or L, H) for texts (B, L, H) under P prompts: (P, n, H)
    word-level prompts, or (P, K, n, H) deep ones whose block k >= 1 is added to layer k's
    input at the prompt positions (Black-Box Tuning v2's prompt at every layer, added rather
    than prepended, so that a zero prompt is the model without one).  With a `tape`, the pass
    keeps what the gradient baselines' backward needs (models.transformer)."""
    populations = 1 if prompts is None else prompts.shape[0]
    first, deep = prompt_blocks(prompts)
    if deep and len(deep) >= model.config.num_layers:
        raise ValueError(f"a deep prompt of {len(deep) + 1} blocks for a model of {model.config.num_layers} layers")
    x = model.embed(_assemble(words, first, placement), tape)
    before = None
    if deep:
        before = lambda i, h: add_at_prompt_positions(h, deep[i - 1]) if i <= len(deep) else h  # noqa: E731
    return model.encode(x, key_mask.repeat(populations, 1), before, tape)


def forward_scores(model: Transformer, head, words, prompts, key_mask, head_weights, placement: str = "insert",
                   label_sets=None):
    """The forward pass itself, the same for plaintext and shared tensors: the texts' word
    embeddings (B, L, H), prompts (P, n, H), (P, K, n, H) or None, key mask and head weights
    (B, n + L), or (B, L) for added prompts.  `label_sets`: score against each of these named
    class sets of a sentence head (see SentenceSimilarityHead)."""
    populations = 1 if prompts is None else prompts.shape[0]
    h = forward_hidden(model, words, prompts, key_mask, placement)
    if label_sets is None:
        return head(model, h, head_weights, populations)
    return head(model, h, head_weights, populations, label_sets)


def prototype_mixing(labels, classes: int, weight: float) -> torch.Tensor:
    """The owner's (C, B + C) mixing matrix for `SentenceSimilarityHead.set_prototypes`: row c
    averages class c's texts with weight `weight` and keeps 1 - weight of its description."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels, minlength=classes).to(torch.float64)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the prototype weight is in [0, 1], got {weight}")
    if (counts == 0).any() and weight > 0:
        raise ValueError("every class needs labelled texts for its prototype")
    member = torch.nn.functional.one_hot(labels, classes).T.to(torch.float64)
    return torch.cat([weight * member / counts.clamp(min=1)[:, None],
                      (1.0 - weight) * torch.eye(classes, dtype=torch.float64)], 1)


def leave_one_out_mixing(labels, classes: int, weight: float) -> torch.Tensor:
    """The owner's (B C, B + C) mixing for `SentenceSimilarityHead.leave_one_out_scores`: row
    i C + c averages the batch's texts of class c other than text i with weight `weight` and
    keeps 1 - weight of description c; where text i is its class's only text in the batch,
    its own class's row is description c alone."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the prototype weight is in [0, 1], got {weight}")
    B = len(labels)
    member = torch.nn.functional.one_hot(labels, classes).T.to(torch.float64)     # (C, B)
    rows = member.unsqueeze(0).repeat(B, 1, 1)                                      # (B, C, B)
    rows[torch.arange(B), :, torch.arange(B)] = 0.0                                 # text i out of its rows
    counts = rows.sum(-1, keepdim=True)
    w = torch.where(counts > 0, torch.tensor(weight, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    texts = w * rows / counts.clamp(min=1)
    descriptions = (1.0 - w) * torch.eye(classes, dtype=torch.float64).unsqueeze(0).expand(B, classes, classes)
    return torch.cat([texts, descriptions], -1).reshape(B * classes, B + classes)


def forward_prompted_embeddings(model: Transformer, head, words, prompts, key_mask, pool_weights,
                                placement: str = "insert"):
    """A sentence task's normalised pooled outputs (P, B, H) for texts under P prompts (the
    pass of `forward_scores` without the class scores)."""
    if not isinstance(head, SentenceSimilarityHead):
        raise ValueError("sentence embeddings come from a sentence task's head")
    populations = 1 if prompts is None else prompts.shape[0]
    return head.embed(forward_hidden(model, words, prompts, key_mask, placement), pool_weights, populations)


def forward_embeddings(model: Transformer, head, words, key_mask, pool_weights):
    """A sentence task's normalised pooled outputs (B, H) for texts without prompts."""
    return forward_prompted_embeddings(model, head, words, None, key_mask, pool_weights)[0]


def head_spec(task, tokenizer, config) -> dict:
    """What the servers need to build the head: its kind, and a masked-LM task's verbalizer
    token ids (public to the servers: they say which words score the classes)."""
    if not isinstance(task, MaskedLMTask):
        return {"kind": "similarity"}
    ids = []
    for word in task.verbalizers:
        spaced = " " + word if config.model_type == "roberta" else word
        pieces = tokenizer.encode(spaced, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"verbalizer {word!r} is not one token of this tokenizer")
        ids.append(pieces[0])
    return {"kind": "mlm", "ids": ids}


def build_head(model: Transformer, spec: dict):
    if spec["kind"] == "mlm":
        if model.weights.lm_head is None:
            raise ValueError("this model has no masked-LM head: score it with a SentenceTask")
        return MaskedLMHead(model, spec["ids"])
    return SentenceSimilarityHead()


def _make_head(model: Transformer, task, tokenizer):
    return build_head(model, head_spec(task, tokenizer, model.config))


def _check_placement(placement: str):
    if placement not in PLACEMENTS:
        raise ValueError(f"prompt placement must be one of {PLACEMENTS}, got {placement!r}")


def _check_unprompted(n: int, placement: str):
    """Texts scored without prompts: added for none, or for added ones (the same tensors)."""
    if n and placement != "add":
        raise ValueError(f"these texts were added for {n} inserted prompt tokens: add them again without")


def _check_prompts(shape, n: int, placement: str = "insert"):
    """Prompts (of `shape`, or None) of the length the texts were added for; none at all for
    added ones too (a zero prompt: the same tensors)."""
    got = 0 if shape is None else shape[-2]
    if got != n and not (shape is None and placement == "add"):
        raise ValueError(f"these texts were added for prompts of {n} tokens, got {got}")


class PlainScorer:
    """The reference: the same model code on float64 tensors, in one process, in the clear.
    With the developer's `calibration`, it computes the servers' function exactly (their
    inverse roots clamp their inputs into the calibrated ranges, and so does this)."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, tokenizer, task,
                 attention: AttentionSettings | None = None, max_length: int = 64, device: str = "cpu",
                 calibration=None):
        self.device = torch.device(device)
        weights = weights.map(lambda name, t: t.to(self.device))
        ranges = None
        if calibration is not None:
            attention, ranges = calibration.apply(attention or AttentionSettings()), calibration.transformer_ranges()
        self.model = Transformer(config, weights, attention, ranges)
        self.tokenizer, self.task, self.max_length = tokenizer, task, max_length
        self.head = _make_head(self.model, task, tokenizer)
        self._embedded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if isinstance(task, SentenceTask):
            self.head.set_labels(self.embeddings(self.add_texts(task.texts)).to(self.device), task.groups)

    def add_texts(self, texts: list[str], prompt_length: int = 0, placement: str = "insert"):
        _check_placement(placement)
        batch = tokenize(self.tokenizer, texts, self.max_length, self.task)
        words = self.model.weights.embeddings.word[batch.ids.to(self.device)]
        return (words, *(t.to(self.device) for t in batch.with_prompt(prompt_length, placement)), prompt_length,
                placement)

    def scores(self, texts, prompts: torch.Tensor | None = None, label_sets=None) -> torch.Tensor:
        words, key_mask, weights, n, placement = texts
        _check_prompts(None if prompts is None else prompts.shape, n, placement)
        prompts = None if prompts is None else prompts.to(self.device, torch.float64)
        return forward_scores(self.model, self.head, words, prompts, key_mask, weights, placement, label_sets).cpu()

    def embeddings(self, texts) -> torch.Tensor:
        """A sentence task's normalised sentence embeddings (B, H), without prompts."""
        words, key_mask, weights, n, placement = texts
        _check_unprompted(n, placement)
        return forward_embeddings(self.model, self.head, words, key_mask, weights).cpu()

    def _pooled(self, texts) -> torch.Tensor:
        """`embeddings(texts)`, computed once per handle (kept with the handle's tensors)."""
        key = id(texts[0])
        if key not in self._embedded:
            self._embedded[key] = (texts[0], self.embeddings(texts).to(self.device))
        return self._embedded[key][1]

    def set_prototypes(self, texts: list, labels, weights: dict[str, float]) -> None:
        """Mix each class's description with the mean embedding of its texts among `texts`
        (handles from `add_texts`), `labels` their classes in order (prototype_mixing), once
        per {name: weight}: named class sets, the last one active from now on.  Each handle's
        texts are embedded once, for `prototype_scores` too."""
        self._set_class_sets(torch.cat([self._pooled(t) for t in texts]), labels, weights)

    def _set_class_sets(self, embeddings: torch.Tensor, labels, weights: dict[str, float]) -> None:
        """One class set per {name: weight} from the texts' `embeddings` (prototype_mixing)."""
        for name, weight in weights.items():
            mixing = prototype_mixing(labels, len(self.task.descriptions), weight).to(self.device)
            self.head.set_prototypes(embeddings, mixing, name)

    def prototype_scores(self, texts: list, label_sets: list[str]) -> torch.Tensor:
        """(B, k C): the texts of `texts` (handles already given to `set_prototypes`), without
        a prompt, scored against each of the k named class sets in turn, from their stored
        embeddings (no pass)."""
        return self.head.score(torch.cat([self._pooled(t) for t in texts]), label_sets).cpu()

    def leave_one_out_scores(self, texts, prompts: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        """(P, B, C): each text under each prompt scored against class vectors made from the
        other texts of `texts` under the same prompt (`SentenceSimilarityHead.
        leave_one_out_scores`; `mixing` from `leave_one_out_mixing`)."""
        words, key_mask, weights, n, placement = texts
        _check_prompts(prompts.shape, n, placement)
        e = forward_prompted_embeddings(self.model, self.head, words, prompts.to(self.device, torch.float64),
                                        key_mask, weights, placement)
        return self.head.leave_one_out_scores(e, mixing.to(self.device, torch.float64)).cpu()

    def set_prompted_prototypes(self, texts: list, prompt: torch.Tensor, labels, weights: dict[str, float],
                                texts_per_pass: int | None = None) -> None:
        """`set_prototypes` from the texts' embeddings under `prompt` (one prompt: (1, n, H)
        or (1, K, n, H)), computed anew on every call (text by text the same function however
        the texts are grouped into passes: `texts_per_pass` is the secure scorer's)."""
        embeddings = []
        for words, key_mask, pool, n, placement in texts:
            _check_prompts(prompt.shape, n, placement)
            embeddings.append(forward_prompted_embeddings(self.model, self.head, words,
                                                          prompt.to(self.device, torch.float64), key_mask, pool,
                                                          placement)[0])
        self._set_class_sets(torch.cat(embeddings), labels, weights)

    def choose_labels(self, name: str) -> None:
        self.head.choose(name)


# --- the servers' side of SecureScorer: operations a session runs on both servers ----------

@server_op("deploy")
def _deploy(server, head: dict):
    """Receive the developer's public settings and weight shares; prepare the weights."""
    config, shapes, attention, ranges = settings_from_wire(server.channel.recv(DEVELOPER))
    model = Transformer(config, share_weights(server, shapes), attention, ranges)
    server.store["model"] = model
    server.store["head"] = build_head(model, head)


@server_op("embed_labels")
def _embed_labels(server, handle: int, groups: list[int] | None = None):
    model, head = server.store["model"], server.store["head"]
    head.set_labels(forward_embeddings(model, head, *server.store["texts"][handle]), groups)


def _add_texts_key(server, handle: int, **params) -> tuple:
    """What storing texts asks the dealer for (the private word lookup's products) depends on
    their shapes and the embedding mode, not on the handle; and it changes nothing another
    operation's requests depend on beyond that operation's own key (a later pass over the
    new handle names its shapes in `_texts_key`)."""
    return tuple(sorted(params.items()))


@server_op("add_texts", plan_key=_add_texts_key)
def _add_texts(server, handle: int, embedding: str, batch: int, length: int, chunks: list, key_shape: tuple,
               weights_shape: tuple, weight_frac, prompt_length: int, placement: str = "insert"):
    config = server.store["model"].config
    if embedding == "public":
        words = server.input_from_owner((batch, length, config.hidden_size))
    else:
        table = server.store["model"].weights.embeddings.word
        with server.labelled("embedding"):
            blocks = [F.linear(server.input_from_owner((rows, config.vocab_size), frac=0), table) for rows in chunks]
        words = F.cat(blocks, 0).reshape(batch, length, config.hidden_size)
    key = server.input_from_owner(tuple(key_shape), frac=0)
    w = server.input_from_owner(tuple(weights_shape), frac=weight_frac)
    server.store.setdefault("texts", {})[handle] = (words, key, w)
    server.store.setdefault("prompts", {})[handle] = (prompt_length, placement)


def _pooled(server, handle: int):
    """The shared embeddings of stored texts without a prompt, computed once per handle."""
    pooled = server.store.setdefault("pooled", {})
    if handle not in pooled:
        pooled[handle] = forward_embeddings(server.store["model"], server.store["head"], *server.store["texts"][handle])
    return pooled[handle]


@server_op("prototypes")
def _prototypes(server, handles: list[int], classes: int, names: list[str]):
    """Class prototypes from the owner's texts `handles` (each embedded once, and kept shared;
    its labels arrive in the shared mixing matrices, one per name): the head's class sets
    `names`, the last active from now on."""
    _set_class_sets(server, F.cat([_pooled(server, h) for h in handles], 0), classes, names)


def _set_class_sets(server, embeddings, classes: int, names: list[str]):
    """One class set per name from the texts' shared `embeddings` and the owner's next
    shared mixing matrix."""
    for name in names:
        mixing = server.input_from_owner((classes, embeddings.shape[0] + classes))
        server.store["head"].set_prototypes(embeddings, mixing, name)


@server_op("prototype_scores")
def _prototype_scores(server, handles: list[int], names: list[str]):
    """The kept embeddings of `handles` (`_pooled`) scored against the class sets `names`,
    revealed to the owner: one product of shares, no pass for texts embedded already."""
    e = F.cat([_pooled(server, h) for h in handles], 0)
    server.reveal_to(OWNER, [F.settle(server.store["head"].score(e, names))])


@server_op("choose_labels")
def _choose_labels(server, name: str):
    server.store["head"].choose(name)


def _texts_key(server, handle: int, **params) -> tuple:
    """What a pass over stored texts asks the dealer for depends on: their shapes and
    fixed-point scales (not which texts), their prompts' settings and the other parameters."""
    shapes = tuple((tuple(t.shape), t.frac) for t in server.store["texts"][handle])
    return shapes, server.store["prompts"][handle], tuple(sorted(params.items()))


@server_op("scores", plan_key=_texts_key)
def _scores(server, handle: int, prompts_shape, label_sets=None):
    words, key_mask, weights = server.store["texts"][handle]
    expected, placement = server.store["prompts"][handle]
    _check_prompts(prompts_shape, expected, placement)
    shared_prompts = None if prompts_shape is None else server.input_from_owner(tuple(prompts_shape))
    out = forward_scores(server.store["model"], server.store["head"], words, shared_prompts, key_mask, weights,
                         placement, label_sets)
    server.reveal_to(OWNER, [F.settle(out)])


@server_op("embeddings", plan_key=_texts_key)
def _embeddings(server, handle: int):
    head = server.store["head"]
    out = forward_embeddings(server.store["model"], head, *server.store["texts"][handle])
    with F.labelled(out, "head"):
        scores = F.linear(out, head.labels)
    server.reveal_to(OWNER, [F.settle(out), F.settle(scores)])


def pass_groups(sizes: list[int], texts_per_pass: int | None) -> list[list[int]]:
    """Consecutive indices of handles of `sizes` texts, grouped into passes of at most
    `texts_per_pass` texts (a larger handle alone; None: one pass)."""
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if groups and (texts_per_pass is None or total + size <= texts_per_pass):
            groups[-1].append(i)
            total += size
        else:
            groups.append([i])
            total = size
    return groups


@server_op("prompted_prototypes")
def _prompted_prototypes(server, handles: list[int], prompts_shape, classes: int, names: list[str],
                         texts_per_pass: int | None = None):
    """Class prototypes from the owner's texts `handles` embedded under one prompt the owner
    shares (`SecureScorer.set_prompted_prototypes`; the handles' texts in passes of up to
    `texts_per_pass`), then its mixing matrices, one per name."""
    model, head = server.store["model"], server.store["head"]
    prompt = server.input_from_owner(tuple(prompts_shape))
    stored = [server.store["texts"][handle] for handle in handles]
    for handle in handles:
        _check_prompts(prompts_shape, *server.store["prompts"][handle])
    placement = server.store["prompts"][handles[0]][1]
    parts = []
    for group in pass_groups([texts[0].shape[0] for texts in stored], texts_per_pass):
        words, key_mask, weights = (F.cat([stored[i][k] for i in group], 0) for k in range(3))
        parts.append(forward_prompted_embeddings(model, head, words, prompt, key_mask, weights, placement)[0])
    _set_class_sets(server, F.cat(parts, 0), classes, names)


@server_op("leave_one_out_scores", plan_key=_texts_key)
def _leave_one_out_scores(server, handle: int, prompts_shape, mixing_shape):
    """Each stored text under each of the owner's prompts scored against class vectors from
    the other texts of the handle under the same prompt, revealed to the owner."""
    words, key_mask, weights = server.store["texts"][handle]
    expected, placement = server.store["prompts"][handle]
    _check_prompts(prompts_shape, expected, placement)
    prompts = server.input_from_owner(tuple(prompts_shape))
    mixing = server.input_from_owner(tuple(mixing_shape))
    head = server.store["head"]
    e = forward_prompted_embeddings(server.store["model"], head, words, prompts, key_mask, weights, placement)
    server.reveal_to(OWNER, [F.settle(head.leave_one_out_scores(e, mixing))])


class SecureScorer:
    """The owner's handle on a model the servers hold in shares.

    Construction is the deployment: the developer sends the servers the model's public
    settings (attention, calibrated ranges: `calibration`) and shares the weights once (the
    servers prepare them), and for a sentence task the owner's label descriptions are
    embedded under MPC, once, and kept shared (how many describe each class is public to the
    servers, as the number of classes is).  In one process (a LocalSession) the
    developer's side runs here from `weights`; in a networked session (`weights=None`) the
    developer is its own process and deploys when the session asks it (`parties/serve.py`);
    "public" embeddings then take the word table from the model card (`public_words`).
    The servers' side is the operations above, run by `session.call`.  `costs` lists each
    call's (name, cost, cost per label): server 0's online bytes and rounds, both servers'
    dealer and io traffic.
    """

    def __init__(self, session, config: ModelConfig, weights: ModelWeights | None, tokenizer, task,
                 attention: AttentionSettings | None = None, max_length: int = 64,
                 embedding: str = "private", calibration=None, public_words: torch.Tensor | None = None):
        if embedding not in EMBEDDING_MODES:
            raise ValueError(f"embedding mode must be one of {EMBEDDING_MODES}, got {embedding!r}")
        self.session, self.config, self.tokenizer, self.task = session, config, tokenizer, task
        self.max_length, self.embedding = max_length, embedding
        #: the owner's copy of the word table in "public" mode (what that mode reveals to it)
        self._public_words = None
        if embedding == "public":
            self._public_words = weights.embeddings.word if weights is not None else public_words
            if self._public_words is None:
                raise ValueError("public embeddings need the developer's word table")
        self.costs: list[tuple[str, Cost, dict[str, Cost]]] = []
        self._prompt_lengths: list[tuple[int, str]] = []     # (n, placement) per handle
        developer = None
        if weights is not None:
            developer = lambda: developer_deploy(session.developer, config, weights, attention, calibration)  # noqa: E731
        self._call("deploy", {"head": head_spec(task, tokenizer, config)}, developer)
        if isinstance(task, SentenceTask):
            labels = self.add_texts(task.texts, 0)
            self._call("embed_labels", {"handle": labels, "groups": task.groups}, name="labels")

    def _call(self, op: str, params: dict, owner_work=None, name: str | None = None):
        """Run server operation `op` on both servers (and `owner_work` here); record its cost,
        in all and per label (attention/cosine, ffn/gelu/..., see `group_costs`)."""
        out, costs = self.session.call(op, params, owner_work)
        (total0, diff0), (total1, diff1) = costs[SERVERS[0]], costs[SERVERS[1]]
        labels = {label: servers_cost(diff0.get(label, Cost()), diff1.get(label, Cost()))
                  for label in set(diff0) | set(diff1)}
        self.costs.append((name or op, servers_cost(total0, total1), labels))
        return out

    def add_texts(self, texts: list[str], prompt_length: int = 0, placement: str = "insert") -> int:
        """Tokenise, share and cache texts on the servers, for prompts of `prompt_length`
        tokens placed as `placement` says (public to the servers, as n is); returns a handle
        for `scores`."""
        _check_placement(placement)
        batch = tokenize(self.tokenizer, texts, self.max_length, self.task)
        key_mask, weights = batch.with_prompt(prompt_length, placement)
        weight_frac = 0 if batch.mask_position is not None else None   # a one-hot selection is exact
        handle = len(self._prompt_lengths)
        self._prompt_lengths.append((prompt_length, placement))
        B, L = batch.ids.shape
        V = self.config.vocab_size
        owner = self.session.owner
        chunks = [len(rows) for rows in batch.ids.reshape(-1).split(ONE_HOT_CHUNK)]

        def share():
            if self.embedding == "public":
                owner.share(self._public_words[batch.ids])
            else:
                for rows in batch.ids.reshape(-1).split(ONE_HOT_CHUNK):
                    owner.share(torch.nn.functional.one_hot(rows, V), frac=0)
            owner.share(key_mask, frac=0)
            owner.share(weights, frac=weight_frac)

        params = {"handle": handle, "embedding": self.embedding, "batch": B, "length": L, "chunks": chunks,
                  "key_shape": tuple(key_mask.shape), "weights_shape": tuple(weights.shape),
                  "weight_frac": weight_frac, "prompt_length": prompt_length, "placement": placement}
        self._call("add_texts", params, share)
        return handle

    def scores(self, handle: int, prompts: torch.Tensor | None = None, label_sets=None) -> torch.Tensor:
        """Scores (P, B, C) of every prompt on every text, revealed to the owner only; with
        `label_sets` (names of a sentence head's class sets), (P, B, k C), set after set."""
        _check_prompts(None if prompts is None else prompts.shape, *self._prompt_lengths[handle])
        shape = None if prompts is None else tuple(prompts.shape)

        def owner_side():
            if prompts is not None:
                self.session.owner.share(prompts)
            return self.session.owner.receive()

        params = {"handle": handle, "prompts_shape": shape}
        if label_sets is not None:
            params["label_sets"] = list(label_sets)
        (scores,) = self._call("scores", params, owner_side)
        return scores

    def set_prototypes(self, handles: list[int], labels, weights: dict[str, float]) -> None:
        """Class prototypes from the owner's texts (handles of `add_texts`, `labels` their
        classes in order) mixed into the descriptions (prototype_mixing), one class set per
        {name: weight}, computed and kept on the servers (the texts embedded once): the owner
        shares only the mixing matrices, and receives nothing.  The names are public to the
        servers; the weights and labels are in the shared matrices."""
        for handle in handles:
            _check_unprompted(*self._prompt_lengths[handle])
        classes = len(self.task.descriptions)
        mixings = [prototype_mixing(labels, classes, w) for w in weights.values()]

        def share():
            for mixing in mixings:
                self.session.owner.share(mixing)

        self._call("prototypes", {"handles": list(handles), "classes": classes, "names": list(weights)}, share,
                   name="prototypes")

    def prototype_scores(self, handles: list[int], label_sets: list[str]) -> torch.Tensor:
        """(B, k C): the texts of `handles` (already given to `set_prototypes`, whose shared
        embeddings the servers keep), without a prompt, scored against each of the k named
        class sets in turn, revealed to the owner only: one product of shares, no pass."""
        for handle in handles:
            _check_unprompted(*self._prompt_lengths[handle])
        (scores,) = self._call("prototype_scores", {"handles": list(handles), "names": list(label_sets)},
                               self.session.owner.receive)
        return scores

    def leave_one_out_scores(self, handle: int, prompts: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        """(P, B, C): each text of `handle` under each prompt scored against class vectors
        made from the other texts of the handle under the same prompt, revealed to the owner
        only.  The owner shares the prompts and `mixing` (`leave_one_out_mixing`: its labels
        and the weight stay secret)."""
        _check_prompts(prompts.shape, *self._prompt_lengths[handle])

        def owner_side():
            self.session.owner.share(prompts)
            self.session.owner.share(mixing)
            return self.session.owner.receive()

        (scores,) = self._call("leave_one_out_scores", {"handle": handle, "prompts_shape": tuple(prompts.shape),
                                                        "mixing_shape": tuple(mixing.shape)}, owner_side)
        return scores

    def set_prompted_prototypes(self, handles: list[int], prompt: torch.Tensor, labels,
                                weights: dict[str, float], texts_per_pass: int | None = None) -> None:
        """`set_prototypes` from the texts' embeddings under `prompt` (one prompt), which the
        owner shares: passes over the texts (consecutive handles together, up to
        `texts_per_pass` texts a pass; None: one pass), computed anew on every call; the owner
        receives nothing."""
        for handle in handles:
            _check_prompts(prompt.shape, *self._prompt_lengths[handle])
        if len({self._prompt_lengths[handle] for handle in handles}) > 1:
            raise ValueError("prompted prototypes take texts added for one prompt length and placement")
        classes = len(self.task.descriptions)
        mixings = [prototype_mixing(labels, classes, w) for w in weights.values()]

        def share():
            self.session.owner.share(prompt)
            for mixing in mixings:
                self.session.owner.share(mixing)

        self._call("prompted_prototypes", {"handles": list(handles), "prompts_shape": tuple(prompt.shape),
                                           "classes": classes, "names": list(weights),
                                           "texts_per_pass": texts_per_pass}, share, name="prototypes")

    def choose_labels(self, name: str) -> None:
        """Make the class set `name` the head's "prototypes" and active (no traffic)."""
        self._call("choose_labels", {"name": name})

    def embeddings(self, handle: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A sentence task's normalised sentence embeddings (B, H) and class scores (B, C) of
        texts added without prompts, from one pass, revealed to the owner only."""
        _check_unprompted(*self._prompt_lengths[handle])
        embeddings, scores = self._call("embeddings", {"handle": handle}, self.session.owner.receive)
        return embeddings, scores

    @property
    def last_cost(self) -> Cost:
        return self.costs[-1][1]
