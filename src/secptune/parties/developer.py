"""The model developer's model as `secptune serve --role developer` holds it: the weights in
the clear, on the developer's host only, and the fingerprint that names them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models import AttentionSettings, ModelConfig, ModelWeights
from ..models.deployment import fingerprint
from ..tuning.job import load_scoring_model


@dataclass
class DeveloperModel:
    folder: Path
    config: ModelConfig
    weights: ModelWeights
    attention: AttentionSettings
    tokenizer: object
    fingerprint: str
    #: GeLU bounds published per feed-forward "channel" (the dealer deals less) or per "site"
    gelu_bounds: str = "channel"


#: how the developer publishes its GeLU bounds (models/calibration.py)
GELU_BOUNDS = ("channel", "site")


def load_developer_model(model: str, attention: str, gelu_bounds: str = "channel") -> DeveloperModel:
    """`model` ("minilm", "mpnet" or a Hugging Face folder) with `attention` ("softmax" or "rfa")."""
    if gelu_bounds not in GELU_BOUNDS:
        raise ValueError(f"gelu_bounds must be one of {GELU_BOUNDS}, got {gelu_bounds!r}")
    folder, config, weights, settings, tokenizer = load_scoring_model(model, attention)
    return DeveloperModel(folder, config, weights, settings, tokenizer, fingerprint(config, weights, settings),
                          gelu_bounds)
