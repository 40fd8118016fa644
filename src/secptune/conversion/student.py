"""The student and its teacher on the model code path, and the distillation loss.

- student: exactly the model the plaintext and secure paths compute (the same `Transformer`
  and `nn.attention` code, run on float32 torch tensors with autograd), with RFA in every
  layer: fixed random frequencies W from a seed (orthogonal Gaussian, `RandomFeatures.draw`)
  and, for the "normalized" map, a learned per-layer, per-head temperature tau (the kernel
  exp(tau^2 (q^.k^ - 1)) on l2-normalised queries and keys); the trainable weights are the
  temperatures plus `trainable` ("attention": the Q/K/V and output projections; "all": every
  layer weight, the FFN and LayerNorms at a smaller lr; "temperature": nothing else);
- teacher: the original softmax model, on the same code path;
- loss (MPCFormer style): the mean over layers of the per-token hidden-state MSE, plus
  `pooled_weight` x (1 - cosine) of the mean-pooled final output, plus `normaliser_weight` x
  the shortfall of each attention row's estimated normaliser below a margin
  (`Student.normaliser_shortfall`).
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch

from ..models.rfa import layer_seed, position_factor
from ..models.scoring import insert_after_first
from ..models.transformer import AttentionSettings, Transformer
from ..models.weights import ModelConfig, ModelWeights
from ..nn.attention import RandomFeatures, normaliser_range
from .settings import ConvertSettings

ATTENTION_FIELDS = ("qkv", "qkv_bias", "out", "out_bias")

def sentence_pool(h, mask):
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
                                   requires_grad=fm == "normalized")
        self.key_shift = torch.zeros(config.num_layers, config.num_heads, dtype=torch.float64)
        # MPNet: its relative position bias (not trained) multiplies the kernel (quadratic RFA)
        table = base.embeddings.relative_bias
        self.position = None if table is None else position_factor(table)

    def trainable(self) -> dict[str, torch.Tensor]:
        out = dict(self.params)
        if self.log_tau.requires_grad:
            out["log_tau"] = self.log_tau
        return out

    def is_attention(self, name: str) -> bool:
        return name.rsplit(".", 1)[-1] in ATTENTION_FIELDS

    @property
    def temperatures(self) -> torch.Tensor:
        return self.log_tau.detach().double().exp().cpu()

    def clamp(self) -> None:
        """Keep tau <= max_temperature (after each update)."""
        with torch.no_grad():
            self.log_tau.clamp_(max=math.log(self.settings.max_temperature))

    def attention(self):
        """The student's attention, with the normaliser ranges the written folder loads with
        (models.rfa): a normaliser the estimator drives below its range is clamped as when deployed."""
        fm, M, n = self.settings.feature_map, self.settings.num_features, self.config.max_positions
        if fm == "normalized":
            tau, top = self.log_tau.exp(), self.temperatures.amax(-1)
            return AttentionSettings("rfa", [
                RandomFeatures(fm, w * tau[i].view(-1, 1, 1), self.key_shift[i],
                               normaliser_range=normaliser_range(fm, M, n, float(top[i]), self.position))
                for i, w in enumerate(self.frequencies)], self.position)
        return AttentionSettings("rfa", [RandomFeatures(fm, w, self.key_shift[i],
                                                        normaliser_range=normaliser_range(fm, M, n, None, self.position))
                                         for i, w in enumerate(self.frequencies)], self.position)

    def words(self, ids):
        return self.weights.embeddings.word[ids.to(self.device)]

    @staticmethod
    def hidden_states(model: Transformer, words, mask) -> list:
        """The embedding output and every layer's output."""
        x = model.embed(words)
        out = [x]

        def kept(i, h):                     # each layer's input is the previous one's output
            out.append(h)
            return h

        out.append(model.encode(x, mask, kept))
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
        ones = torch.ones(N, n, dtype=mask.dtype, device=mask.device)
        return insert_after_first(words, prompts), insert_after_first(mask, ones)

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
        pooled_s, pooled_t = sentence_pool(student[-1], mask), sentence_pool(teacher[-1], mask)
        cos = torch.nn.functional.cosine_similarity(pooled_s, pooled_t, dim=-1)
        loss = hidden + self.settings.pooled_weight * (1 - cos).mean()
        if normalisers:
            mass = None
            if self.position is not None:
                with torch.no_grad():
                    mass = (model.position_bias(mask.shape[1]) @ mask.view(mask.shape[0], 1, -1, 1)).squeeze(-1)
            loss = loss + self.settings.normaliser_weight * self.normaliser_shortfall(normalisers, mask, mass)
        return loss

    def normaliser_shortfall(self, normalisers: list[torch.Tensor], mask, mass=None) -> torch.Tensor:
        """Mean over layers, heads and query tokens of max(0, margin - the row's mean
        estimated kernel value), the normaliser divided by M n (n real keys; with a position
        factor, by M sum_j P_ij m_j, `mass`): the trigonometric estimate is not constrained
        to be positive, and distillation learns to use negative kernel values (a
        sign-indefinite attention) unless this term holds each row's sum above the margin,
        where the secure reciprocal can follow it.  Padding queries count too: their rows are
        never pooled, but the secure reciprocal sees them."""
        n = mask.sum(1).view(-1, 1, 1) if mass is None else mass
        margin, M = self.settings.normaliser_margin, self.settings.num_features
        return torch.stack([torch.relu(margin - den / (M * n)).mean() for den in normalisers]).mean()
