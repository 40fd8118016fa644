"""What the model developer publishes when it deploys a model, and how it deploys it.

The developer holds the weights in the clear.  To deploy, it sends both servers the model's
public settings (`public_settings`: the architecture, the weights' shapes, the attention's
random features and the calibrated ranges of the secure inverse square roots and
reciprocals), then secret-shares every weight (`developer_deploy`).  The data owner gets the
public model card (`ModelCard`): the architecture, the tokenizer's files, the word
embeddings' standard deviation (to scale the prompt space) and the fingerprint; with
"public" embeddings, also the word table.  It never gets a weight share.

All of it travels as wire payloads (dicts of numbers, strings and tensors): the same in one
process and across machines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..mpc.comm import SERVERS
from ..nn.attention import PositionFactor, RandomFeatures
from .transformer import AttentionSettings
from .weights import (EmbeddingWeights, LayerWeights, LMHeadWeights, ModelConfig, ModelWeights, developer_share,
                      present_fields, prompt_scales)

#: tokenizer files a model card carries (those present in the folder)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "added_tokens.json", "config.json")


def fingerprint(config: ModelConfig, weights: ModelWeights, attention: AttentionSettings | None = None) -> str:
    """sha256 of the architecture, every weight's float64 bytes (in sharing order) and the
    attention's random features: what the handshake compares."""
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for record in weights.records():
        for name, t in present_fields(record):
            t = t.detach().to(torch.float64).contiguous()
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    attention = attention or AttentionSettings()
    h.update(attention.kind.encode())
    for rf in attention.features or []:
        h.update(rf.feature_map.encode())
        h.update(rf.frequencies.to(torch.float64).contiguous().numpy().tobytes())
        h.update(rf.key_shift.to(torch.float64).contiguous().numpy().tobytes())
    if attention.position is not None:
        h.update(b"position")
        h.update(attention.position.shift.to(torch.float64).contiguous().numpy().tobytes())
        h.update(repr(float(attention.position.floor)).encode())
    return "sha256:" + h.hexdigest()


def _shapes(record) -> dict:
    return {name: list(t.shape) for name, t in present_fields(record)}


def _meta(cls, shapes: dict):
    """A record of meta tensors of `shapes` (a weight the model does not have stays None)."""
    return cls(**{f.name: torch.empty(shapes[f.name], device="meta") for f in fields(cls) if f.name in shapes})


def attention_to_wire(attention: AttentionSettings) -> dict:
    return {"kind": attention.kind,
            "features": [{"feature_map": rf.feature_map, "frequencies": rf.frequencies, "key_shift": rf.key_shift,
                          "norm_range": list(rf.norm_range), "normaliser_range": list(rf.normaliser_range)}
                         for rf in attention.features or []],
            "position": None if attention.position is None else attention.position.to_dict()}


def attention_from_wire(data: dict) -> AttentionSettings:
    features = [RandomFeatures(f["feature_map"], f["frequencies"], f["key_shift"], tuple(f["norm_range"]),
                               tuple(f["normaliser_range"])) for f in data["features"]]
    position = data.get("position")
    return AttentionSettings(data["kind"], features or None,
                             None if position is None else PositionFactor.from_dict(position))


def public_settings(config: ModelConfig, weights: ModelWeights, attention: AttentionSettings | None,
                    calibration=None) -> dict:
    """What the servers learn of the model: architecture, shapes, attention (with calibrated
    ranges) and the LayerNorm ranges."""
    attention = attention or AttentionSettings()
    ranges = None
    if calibration is not None:
        attention, ranges = calibration.apply(attention), calibration.transformer_ranges()
    return {"config": asdict(config),
            "shapes": {"embeddings": _shapes(weights.embeddings), "layers": [_shapes(r) for r in weights.layers],
                       "lm_head": _shapes(weights.lm_head) if weights.lm_head is not None else None},
            "attention": attention_to_wire(attention),
            "ranges": {k: list(v) for k, v in (ranges or {}).items()} or None}


def settings_from_wire(data: dict):
    """(config, weights of meta tensors with the shapes, attention, LayerNorm ranges)."""
    config = ModelConfig(**data["config"])
    shapes = data["shapes"]
    like = ModelWeights(_meta(EmbeddingWeights, shapes["embeddings"]),
                        [_meta(LayerWeights, s) for s in shapes["layers"]],
                        _meta(LMHeadWeights, shapes["lm_head"]) if shapes["lm_head"] is not None else None)
    ranges = {k: tuple(v) for k, v in data["ranges"].items()} if data["ranges"] else None
    return config, like, attention_from_wire(data["attention"]), ranges


def developer_deploy(developer, config: ModelConfig, weights: ModelWeights, attention: AttentionSettings | None,
                     calibration=None) -> None:
    """The developer's side of the servers' "deploy" operation: the public settings to both
    servers, then a share of every weight."""
    settings = public_settings(config, weights, attention, calibration)
    for server in SERVERS:
        developer.channel.send(server, settings)
    developer_share(developer, weights)


@dataclass
class ModelCard:
    """What the data owner learns of the developer's model."""

    config: ModelConfig
    attention: str                          # "softmax" or "rfa"
    embedding_std: float                    # of the word table: the prompt space's scale
    fingerprint: str
    tokenizer_files: dict[str, bytes]
    public_words: torch.Tensor | None = None   # the word table, for "public" embeddings only
    deep_scales: tuple[float, ...] = ()        # of layers 1 .. N-1's inputs: deep prompts' scale

    def to_wire(self) -> dict:
        return {"config": asdict(self.config), "attention": self.attention, "embedding_std": self.embedding_std,
                "fingerprint": self.fingerprint, "tokenizer_files": self.tokenizer_files,
                "public_words": self.public_words, "deep_scales": list(self.deep_scales)}

    @classmethod
    def from_wire(cls, data: dict) -> "ModelCard":
        return cls(ModelConfig(**data["config"]), data["attention"], float(data["embedding_std"]),
                   data["fingerprint"], dict(data["tokenizer_files"]), data["public_words"],
                   tuple(float(v) for v in data["deep_scales"]))

    @classmethod
    def of(cls, folder: str | Path, config: ModelConfig, weights: ModelWeights, attention: AttentionSettings,
           public_words: bool = False, model_fingerprint: str | None = None) -> "ModelCard":
        folder = Path(folder)
        files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}
        embedding_std, deep_scales = prompt_scales(weights)
        return cls(config, attention.kind, embedding_std, model_fingerprint or fingerprint(config, weights, attention),
                   files, weights.embeddings.word if public_words else None, deep_scales)

    def tokenizer(self, folder: str | Path):
        """The tokenizer, from the card's files written into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.tokenizer_files.items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"a tokenizer file name {name!r} from the developer is not a plain name")
            (folder / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
