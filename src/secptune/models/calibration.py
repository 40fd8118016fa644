"""Calibrated input ranges for the secure inverse square roots, reciprocals and GeLUs.

The secure LayerNorm, the RFA query/key normalisation and the RFA normaliser bracket their
input among octave thresholds: one comparison per threshold and element, the largest cost
of a secure forward pass when the range is wide (RFA's per-head norms over 22 octaves cost
23 comparisons per head, query and key, token and layer).  The model developer, who
holds the weights in the clear, runs the plaintext model once on calibration text, records
each site's smallest and largest value, and publishes the ranges with a margin (2 octaves
each side by default) as part of the model's settings, as it publishes the random features.

The secure GeLU (a sine series of erf, no comparison) is valid up to a bound on |x| that its
dealer's bytes grow with (two ring elements per harmonic and element); one bound for every
model is either too tight (all-mpnet-base-v2's GeLU inputs reach 99, MiniLM's 27) or too
dear.  Each GeLU site's bound is its largest |x| on the calibration text widened by three
quarters of an octave (GELU_MARGIN: on MiniLM the owner's texts, never calibrated on, reach
1.5x the calibration's largest) and rounded up to a quarter octave; the series stays within
3e-5 of GeLU up to the bound plus 1.  A site's channels get bounds of their own
(GELU_CHANNEL_MARGIN, an octave; never above the site's): most channels' inputs stay far
below the layer's largest, and the dealer deals each channel's series only.

What the ranges reveal to the servers is a few numbers about the weights' activations on
the developer's text, not the owner's data (the owner's prompts are drawn in calibration
from the prompt space's distribution, not taken from the owner).  A value outside its range
is not an error: both the secure and the plaintext paths clamp it into the range (the same
function on both), but it changes the result, so the margin matters; the fidelity tests run
on texts that were not calibrated on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import torch

from .scoring import forward_hidden, tokenize
from .transformer import AttentionSettings, Transformer, channels_key

#: the lowest value a range may start at (2^-24): the fixed-point resolution below it
FLOOR_LOG2 = -24.0
#: a GeLU site's bound: its largest |x| widened by this many octaves, in quarter octaves
GELU_MARGIN = 0.75
#: a GeLU channel's bound: its largest |x| widened by this many octaves (one channel's
#: largest on the calibration text is a maximum over fewer values than its layer's)
GELU_CHANNEL_MARGIN = 1.0
#: the suffix of a GeLU site's per-channel bounds in the ranges (`transformer.channels_key`)
CHANNELS = channels_key("")


@dataclass
class Calibration:
    """Public ranges (log2 bounds) per site: "embed", "<i>.attention", "<i>.ffn", "head"
    (LayerNorm variances), "<i>.gelu", "head.gelu" (GeLU: the octaves of |x|; the secure series
    needs only the upper end), "<i>.norms", "<i>.normaliser" (RFA)."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    margin: float = 2.0

    def transformer_ranges(self) -> dict:
        """The ranges the Transformer takes (LayerNorm variances, GeLU bounds)."""
        return {k: v for k, v in self.ranges.items() if not k.endswith((".norms", ".normaliser"))}

    def apply(self, attention: AttentionSettings) -> AttentionSettings:
        """The RFA settings with calibrated norm and normaliser ranges (softmax: as is)."""
        if attention.kind != "rfa":
            return attention
        features = []
        for i, f in enumerate(attention.features):
            features.append(replace(f, norm_range=self.ranges.get(f"{i}.norms", f.norm_range),
                                    normaliser_range=self.ranges.get(f"{i}.normaliser", f.normaliser_range)))
        return replace(attention, features=features)

    def union(self, other: "Calibration") -> "Calibration":
        """Ranges that hold both calibrations' (each site's lowest and highest bound; per
        channel, each channel's highest bound)."""
        ranges = dict(self.ranges)
        for site, theirs in other.ranges.items():
            mine = ranges.get(site, theirs)
            if site.endswith(CHANNELS):
                ranges[site] = tuple(max(a, b) for a, b in zip(mine, theirs))
            else:
                ranges[site] = (min(mine[0], theirs[0]), max(mine[1], theirs[1]))
        return Calibration(ranges, max(self.margin, other.margin))

    def to_json(self) -> str:
        return json.dumps({"margin": self.margin, "ranges": self.ranges}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        data = json.loads(text)
        return cls({k: tuple(v) for k, v in data["ranges"].items()}, data["margin"])


def observed_extremes(config, weights, attention: AttentionSettings, tokenizer, texts: list[str], max_length: int,
                     prompts: torch.Tensor | None = None, task=None, chunk: int = 64,
                     placement: str = "insert") -> tuple[dict[str, float], dict]:
    """(smallest positive, largest) value of every site on `texts` (each with each of
    `prompts` (P, n, H) or deep (P, K, n, H), if given, placed as `placement` says; in a
    masked-LM `task`'s template, if given), plaintext; GeLU sites see |x|, and `high` also
    holds each GeLU site's largest |x| per channel (a tuple, at `channels_key(site)`)."""
    model = Transformer(config, weights, attention)
    extremes = Extremes()
    model.observe = extremes.observe
    n = 0 if prompts is None else prompts.shape[-2]
    with torch.no_grad():
        for start in range(0, len(texts), chunk):
            batch = tokenize(tokenizer, texts[start:start + chunk], max_length, task)
            key_mask, _ = batch.with_prompt(n, placement)
            words = weights.embeddings.word[batch.ids]
            forward_hidden(model, words, None if prompts is None else prompts.to(words.dtype), key_mask, placement)
    return extremes.result()


class Extremes:
    """A `Transformer.observe` that keeps every site's (smallest positive, largest) value,
    and each GeLU site's largest |x| per channel (`observed_extremes`)."""

    def __init__(self):
        self.low: dict[str, float] = {}
        self.high: dict = {}
        self.channels: dict[str, torch.Tensor] = {}

    def observe(self, site: str, values: torch.Tensor) -> None:
        values = values.detach().to(torch.float64)
        if site.endswith(".gelu"):
            largest = values.reshape(-1, values.shape[-1]).amax(0)
            seen = self.channels.get(site)
            self.channels[site] = largest if seen is None else torch.maximum(seen, largest)
        # a non-positive RFA normaliser (the trigonometric estimate's noise) is clamped to the
        # range's lower end on both paths (nn/functional.py): the range follows the positive
        # values, and stretching it down to the fixed-point floor would only let 1 / normaliser
        # (the attention output's scale) grow without bound
        positive = values[values > 0]
        lo = float(positive.min()) if positive.numel() else 2.0 ** FLOOR_LOG2
        self.low[site] = min(self.low.get(site, math.inf), lo)
        self.high[site] = max(self.high.get(site, -math.inf), float(values.max()))

    def result(self) -> tuple[dict[str, float], dict]:
        """(low, high), `high` with the GeLU sites' per-channel largest at `channels_key(site)`."""
        high = dict(self.high)
        high.update({channels_key(site): tuple(map(float, largest)) for site, largest in self.channels.items()})
        return dict(self.low), high


def gelu_bound_log2(largest: float, margin: float = GELU_MARGIN) -> float:
    """A GeLU bound (log2) for a largest |x|: widened by `margin` octaves, rounded up to a
    quarter octave."""
    return math.ceil(4 * (math.log2(max(largest, 1.0)) + margin)) / 4


def calibrate(config, weights, attention: AttentionSettings, tokenizer, texts: list[str], max_length: int,
              prompts: torch.Tensor | None = None, task=None, margin: float = 2.0, chunk: int = 64,
              skip: tuple[str, ...] = ("embed",), placement: str = "insert",
              gelu_channels: bool = True) -> Calibration:
    """Every site's range on `texts` (`observed_extremes`), widened by `margin` octaves each
    side (a GeLU's bound by GELU_MARGIN; with `gelu_channels` also one bound per channel,
    by GELU_CHANNEL_MARGIN).  Sites in `skip` keep the wide default (the embedding LayerNorm
    sees the prompts' raw scale, which the owner picks)."""
    low, high = observed_extremes(config, weights, attention, tokenizer, texts, max_length, prompts, task, chunk,
                                  placement)
    return ranges_from_extremes(low, high, margin, skip, gelu_channels)


def ranges_from_extremes(low: dict[str, float], high: dict, margin: float = 2.0, skip: tuple[str, ...] = (),
                         gelu_channels: bool = True) -> Calibration:
    """The published ranges of `observed_extremes`' (low, high), as `calibrate` says."""
    ranges = {}
    for site in low:
        if site in skip:
            continue
        if site.endswith(".gelu"):
            bound = gelu_bound_log2(high[site])
            smallest = max(math.floor(math.log2(low[site])), FLOOR_LOG2)
            ranges[site] = (float(min(smallest, bound - 1)), bound)
            if gelu_channels:
                # never above the site's own bound (what the layer-wide series covers)
                ranges[channels_key(site)] = tuple(min(gelu_bound_log2(c, GELU_CHANNEL_MARGIN), bound)
                                                   for c in high[channels_key(site)])
            continue
        lo = max(math.floor(math.log2(low[site])) - margin, FLOOR_LOG2)
        hi = math.ceil(math.log2(max(high[site], 2.0 ** FLOOR_LOG2))) + margin
        ranges[site] = (float(lo), float(max(hi, lo + 1)))
    return Calibration(ranges, margin)
