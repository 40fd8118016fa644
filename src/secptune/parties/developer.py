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


def load_developer_model(model: str, attention: str) -> DeveloperModel:
    """`model` ("minilm", "mpnet" or a Hugging Face folder) with `attention` ("softmax" or "rfa")."""
    folder, config, weights, settings, tokenizer = load_scoring_model(model, attention)
    return DeveloperModel(folder, config, weights, settings, tokenizer, fingerprint(config, weights, settings))
