"""A BERT/RoBERTa/MPNet model's weights and settings, loaded from a local Hugging Face folder.

The developer's side: weights load in the clear (float64), in the layout the model code
uses: linear weights as (in, out); the query, key and value projections concatenated into
one matrix (one product, one opening under MPC); the attention scale 1 / sqrt(head_dim) split
as head_dim^(-1/4) into both the query and the key weights (the scores are unchanged, and
random-feature attention sees queries and keys of balanced norms).  MPNet's relative
position bias (a table of 32 distance buckets by head, shared by all layers) is kept as
`EmbeddingWeights.relative_bias`; BERT and RoBERTa have none (None, and no share of it).

`share_weights` is the servers' side of the developer sharing them: every matrix and every
LayerNorm scale becomes a prepared operand (opened once under a fixed mask, so that every
later product opens only the activations), every bias a shared tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from ..mpc.comm import DEVELOPER
from ..mpc.protocols import prepare


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or of an unsupported architecture."""


@dataclass(frozen=True)
class ModelConfig:
    model_type: str                 # "bert", "roberta" or "mpnet"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float
    pad_token_id: int
    position_offset: int            # RoBERTa and MPNet number positions from pad_token_id + 1
    has_lm_head: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


#: Hugging Face's MPNet buckets relative distances into 32 (up to 128 apart)
RELATIVE_BUCKETS = 32
#: where MPNet's position numbers start: after its padding index, fixed at 1 whatever its
#: config's pad_token_id (RoBERTa's start after pad_token_id)
MPNET_POSITION_OFFSET = 2

# Fields of the weight records that are matrices or LayerNorm scales (prepared under MPC).
PREPARED = {"word", "norm_weight", "qkv", "out", "norm1_weight", "up", "down", "norm2_weight",
            "dense"}


@dataclass
class EmbeddingWeights:
    word: object            # (vocab, hidden)
    position: object        # (max_positions, hidden)
    token_type: object      # (hidden,): the type-0 row (every token is type 0 here; zeros for MPNet)
    norm_weight: object
    norm_bias: object
    relative_bias: object = None    # (buckets, heads): MPNet's relative position bias, else None


@dataclass
class LayerWeights:
    qkv: object             # (hidden, 3 hidden)
    qkv_bias: object
    out: object             # (hidden, hidden)
    out_bias: object
    norm1_weight: object
    norm1_bias: object
    up: object              # (hidden, intermediate)
    up_bias: object
    down: object            # (intermediate, hidden)
    down_bias: object
    norm2_weight: object
    norm2_bias: object


@dataclass
class LMHeadWeights:
    dense: object           # (hidden, hidden)
    dense_bias: object
    norm_weight: object
    norm_bias: object
    decoder_bias: object    # (vocab,); the decoder matrix is the word embedding table (tied)


@dataclass
class ModelWeights:
    embeddings: EmbeddingWeights
    layers: list[LayerWeights]
    lm_head: LMHeadWeights | None = None

    def records(self):
        """Every weight record, in a fixed order (the order the developer shares them in)."""
        yield self.embeddings
        yield from self.layers
        if self.lm_head is not None:
            yield self.lm_head

    def map(self, fn) -> "ModelWeights":
        """A copy with fn(name, tensor) applied to every tensor, in `records` order (a weight
        the model does not have stays None)."""
        def convert(record):
            values = {f.name: getattr(record, f.name) for f in fields(record)}
            return type(record)(**{name: None if t is None else fn(name, t) for name, t in values.items()})

        return ModelWeights(convert(self.embeddings), [convert(r) for r in self.layers],
                            convert(self.lm_head) if self.lm_head is not None else None)


def present_fields(record):
    """(name, tensor) of a weight record's tensors, in field order, skipping those the model
    does not have (None)."""
    for f in fields(record):
        value = getattr(record, f.name)
        if value is not None:
            yield f.name, value


def _split_scale(weight: torch.Tensor, bias: torch.Tensor, head_dim: int):
    s = head_dim ** -0.25
    return weight * s, bias * s


def load_model(folder: str | Path) -> tuple[ModelConfig, ModelWeights]:
    """Config and float64 weights of a local BERT, RoBERTa or MPNet folder (never downloads)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"no model at {folder}: config.json not found (a local Hugging Face "
                               f"BERT/RoBERTa/MPNet folder is expected; nothing is downloaded)")
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if hf_config.model_type not in ("bert", "roberta", "mpnet"):
        raise ModelFolderError(f"{folder}: model type {hf_config.model_type!r} is not supported "
                               f"(BERT, RoBERTa or MPNet)")
    if hf_config.model_type == "mpnet" and hf_config.relative_attention_num_buckets != RELATIVE_BUCKETS:
        # Hugging Face's MPNet buckets distances into 32 whatever its config says
        raise ModelFolderError(f"{folder}: an MPNet with {hf_config.relative_attention_num_buckets} relative "
                               f"position buckets is not supported ({RELATIVE_BUCKETS})")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ModelFolderError(f"{folder}: only absolute position embeddings are supported")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()       # a folder without an LM head is expected, not an error
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(folder, local_files_only=True,
                                                           output_loading_info=True)
    except OSError as exc:
        raise ModelFolderError(f"{folder}: cannot load weights ({exc})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    has_head = not any(k.startswith(("lm_head.", "cls.")) for k in info["missing_keys"])
    encoder = getattr(model, hf_config.model_type)
    sd = {k: v.detach().to(torch.float64) for k, v in encoder.state_dict().items()}
    config = ModelConfig(
        model_type=hf_config.model_type, vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads, intermediate_size=hf_config.intermediate_size,
        max_positions=hf_config.max_position_embeddings, layer_norm_eps=hf_config.layer_norm_eps,
        pad_token_id=hf_config.pad_token_id,
        position_offset={"roberta": hf_config.pad_token_id + 1, "mpnet": MPNET_POSITION_OFFSET}.get(
            hf_config.model_type, 0),
        has_lm_head=has_head)
    if hf_config.hidden_act not in ("gelu", "gelu_new", "gelu_python"):
        raise ModelFolderError(f"{folder}: activation {hf_config.hidden_act!r} is not supported (GeLU)")
    return config, _rearrange(config, sd, model, has_head)


def attention_names(model_type: str) -> tuple[str, str, str, str, str]:
    """Hugging Face's names (under encoder.layer.i.) of a layer's query, key, value, output
    projection and attention LayerNorm: MPNet names them attn.q/k/v/o and attention.LayerNorm."""
    if model_type == "mpnet":
        return "attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "attention.LayerNorm"
    return ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "attention.output.LayerNorm")


def _rearrange(config: ModelConfig, sd: dict, model, has_head: bool) -> ModelWeights:
    e = "embeddings."
    mpnet = config.model_type == "mpnet"
    embeddings = EmbeddingWeights(
        word=sd[e + "word_embeddings.weight"], position=sd[e + "position_embeddings.weight"],
        token_type=(torch.zeros(config.hidden_size, dtype=torch.float64) if mpnet
                    else sd[e + "token_type_embeddings.weight"][0]),
        norm_weight=sd[e + "LayerNorm.weight"], norm_bias=sd[e + "LayerNorm.bias"],
        relative_bias=sd["encoder.relative_attention_bias.weight"] if mpnet else None)
    query, key, value, out, norm1 = attention_names(config.model_type)
    layers = []
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}."
        wq, bq = _split_scale(sd[p + query + ".weight"].T, sd[p + query + ".bias"], config.head_dim)
        wk, bk = _split_scale(sd[p + key + ".weight"].T, sd[p + key + ".bias"], config.head_dim)
        layers.append(LayerWeights(
            qkv=torch.cat([wq, wk, sd[p + value + ".weight"].T], 1).contiguous(),
            qkv_bias=torch.cat([bq, bk, sd[p + value + ".bias"]]),
            out=sd[p + out + ".weight"].T.contiguous(),
            out_bias=sd[p + out + ".bias"],
            norm1_weight=sd[p + norm1 + ".weight"],
            norm1_bias=sd[p + norm1 + ".bias"],
            up=sd[p + "intermediate.dense.weight"].T.contiguous(), up_bias=sd[p + "intermediate.dense.bias"],
            down=sd[p + "output.dense.weight"].T.contiguous(), down_bias=sd[p + "output.dense.bias"],
            norm2_weight=sd[p + "output.LayerNorm.weight"], norm2_bias=sd[p + "output.LayerNorm.bias"]))
    lm_head = None
    if has_head:
        head = {k: v.detach().to(torch.float64) for k, v in
                (model.cls.predictions if config.model_type == "bert" else model.lm_head).state_dict().items()}
        if config.model_type != "bert":             # RoBERTa's and MPNet's head
            dense, norm, bias = "dense", "layer_norm", "bias"
        else:
            dense, norm, bias = "transform.dense", "transform.LayerNorm", "bias"
        lm_head = LMHeadWeights(dense=head[dense + ".weight"].T.contiguous(), dense_bias=head[dense + ".bias"],
                                norm_weight=head[norm + ".weight"], norm_bias=head[norm + ".bias"],
                                decoder_bias=head[bias])
    return ModelWeights(embeddings, layers, lm_head)


def with_identity_head(config: ModelConfig, weights: ModelWeights) -> tuple[ModelConfig, ModelWeights]:
    """A model without a masked-LM head (a sentence encoder such as MiniLM) gets one that
    starts as the identity: logits = LayerNorm(GeLU(h)) . word rows of the verbalizers (the
    decoder is tied to the word table, as in BERT); its dense layer and LayerNorm are then
    trained like any weight."""
    if weights.lm_head is not None:
        return config, weights
    H = config.hidden_size
    head = LMHeadWeights(torch.eye(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64),
                         torch.ones(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64),
                         torch.zeros(config.vocab_size, dtype=torch.float64))
    return replace(config, has_lm_head=True), ModelWeights(weights.embeddings, weights.layers, head)


def prompt_scales(weights: ModelWeights) -> tuple[float, tuple[float, ...]]:
    """What the developer publishes of its weights for the owner's prompt space: the word
    table's entry std, and the entry rms of each later layer's input (the LayerNorm gain of
    the layer before it), the scale of a deep prompt's blocks."""
    deep = tuple(float((layer.norm2_weight ** 2).mean().sqrt()) for layer in weights.layers[:-1])
    return float(weights.embeddings.word.std()), deep


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.02) -> ModelWeights:
    """Random weights of a given shape (BERT-base, RoBERTa-large, ... for cost benchmarks)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    H, I = config.hidden_size, config.intermediate_size
    one = torch.ones(H, dtype=torch.float64)
    embeddings = EmbeddingWeights(rand(config.vocab_size, H), rand(config.max_positions, H),
                                  rand(H), one.clone(), rand(H))
    layers = [LayerWeights(rand(H, 3 * H), rand(3 * H), rand(H, H), rand(H), one.clone(), rand(H),
                           rand(H, I), rand(I), rand(I, H), rand(H), one.clone(), rand(H))
              for _ in range(config.num_layers)]
    head = (LMHeadWeights(rand(H, H), rand(H), one.clone(), rand(H), rand(config.vocab_size))
            if config.has_lm_head else None)
    return ModelWeights(embeddings, layers, head)


def save_tiny_model(folder: str | Path, tokenizer, max_positions: int = 64, seed: int = 0) -> Path:
    """A random-weight BERT with a masked-LM head (hidden 32, 2 layers, 4 heads) and
    `tokenizer`, saved as a Hugging Face folder: the tests' and the device checks' model."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=max_positions)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def share_weights(server, like: ModelWeights) -> ModelWeights:
    """The servers' side of the developer's sharing: receive a share of every tensor (of the
    shapes in `like`), then prepare the matrices and LayerNorm scales."""
    def receive(name, tensor):
        shared = server.input_from(DEVELOPER, tuple(tensor.shape))
        return prepare(shared) if name in PREPARED else shared

    with server.labelled("share_weights"):
        return like.map(receive)


def shapes_only(weights: ModelWeights) -> ModelWeights:
    """The weights' shapes (as empty meta tensors): what the servers know of the model."""
    return weights.map(lambda name, t: torch.empty(t.shape, device="meta"))


def developer_share(developer, weights: ModelWeights) -> None:
    """The developer's side of `share_weights`."""
    for record in weights.records():
        for _, tensor in present_fields(record):
            developer.share(tensor)
