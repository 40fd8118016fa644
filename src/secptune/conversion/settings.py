"""The distillation's settings (`ConvertSettings`: the measured recipe is its defaults) and
its error type."""

from __future__ import annotations

from dataclasses import dataclass

#: feature maps `convert` trains: both have a secure protocol (nn/attention.py).  Plaintext-only
#: maps were measured and left off (docs/conversion.md, "Options measured and left off")
CONVERT_MAPS = ("normalized", "paper")
TRAINABLE = ("temperature", "attention", "all")


class ConversionError(ValueError):
    """A conversion that cannot start: bad settings, an output folder in the way, ..."""


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
    #: the weight of `Student.normaliser_shortfall` in the loss and its margin (kernel units:
    #: the kernel of a key equal to the query is 1; exp(-2 tau^2) is the smallest)
    normaliser_weight: float = 1000.0
    normaliser_margin: float = 0.02
    pooled_weight: float = 1.0
    #: prompt-aware distillation: every `prompt_every`-th step (0: never), each text gets
    #: n random soft-prompt vectors after its first token, as forward-only tuning inserts them,
    #: n drawn per step from 1 .. `prompt_tokens` (the embedded default tunes 4, BBT 50).  Entries N(0, (r s)^2), s the word table's standard deviation and r
    #: log-uniform in `prompt_scales`: Black-Box Tuning's prompts A z are such vectors (A
    #: Gaussian), r = 1 at CMA-ES's start and about 6 for latents at the default bounds.
    #: Distilled without prompts, candidates drove hundreds of normalisers per generation <= 0
    prompt_every: int = 2
    prompt_tokens: int = 50
    prompt_scales: tuple[float, float] = (0.5, 6.0)
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
        if self.prompt_every < 0 or self.prompt_tokens < 0:
            raise ConversionError("prompt every and prompt tokens must be 0 or more")
        lo, hi = self.prompt_scales
        if not 0 < lo <= hi:
            raise ConversionError(f"prompt scales must satisfy 0 < low <= high, got {lo} and {hi}")

    def prompted(self, step: int) -> bool:
        """Whether step `step` distils with random prompts."""
        return self.prompt_every > 0 and self.prompt_tokens > 0 and step % self.prompt_every == self.prompt_every - 1
