"""`convert`: distil a pretrained BERT/RoBERTa/MPNet into random-feature attention and write the
converted folder (the model developer's one-off step, in plaintext, before deployment).

Random-feature attention dropped into a pretrained model destroys it (benchmarks/
rfa_features.py: pooled-output cosine 0.03 to softmax's on MiniLM), so the developer, who
holds the weights in the clear, trains a `Student` against the original (student.py) on
unlabelled text (data.py).  `convert` writes a normal Hugging Face folder plus `rfa.json`,
which `models.rfa.load_attention` reads, `report.json` (settings, per-step loss, the
evaluation of evaluate.py) and `loss.png`; it checkpoints, and `resume` continues.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import AutoTokenizer

from ..models.rfa import RETIRED_OPTIONS, RFA_FILE, RFA_VERSION, WEIGHT_FILES, layer_seed, read_state, weights_digest
from ..models.weights import ModelConfig, ModelFolderError, attention_names, load_model
from ..runfolder import hold_run_folder
from .data import batch_indices, distillation_texts
from .evaluate import evaluate_conversion
from .settings import ConversionError, ConvertSettings
from .student import Student

REPORT_FILE = "report.json"
CURVE_FILE = "loss.png"
CHECKPOINT_FILE = "checkpoint.pt"


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
    source_print = weights_digest(source)
    student = Student(config, weights, settings, device)
    attention_params = [p for name, p in student.params.items() if student.is_attention(name)]
    other_params = [p for name, p in student.params.items() if not student.is_attention(name)]
    groups = []
    if attention_params:
        groups.append({"params": attention_params, "lr": settings.lr, "base_lr": settings.lr})
    if other_params:
        groups.append({"params": other_params, "lr": settings.other_lr, "base_lr": settings.other_lr})
    kernel = [student.log_tau] if student.log_tau.requires_grad else []
    if kernel:
        groups.append({"params": kernel, "lr": settings.temperature_lr, "base_lr": settings.temperature_lr})
    if not groups:
        raise ConversionError(f"nothing to train: feature map {settings.feature_map!r} with trainable "
                              f"{settings.trainable!r}")
    optimizer = torch.optim.Adam(groups)

    def encode(step):
        idx = batch_indices(len(texts), settings.batch_size, settings.seed, step)
        batch = [texts[i] for i in idx]
        enc = tokenizer(batch, padding="longest", truncation=True, max_length=settings.max_length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    state = {"step": 0, "losses": [], "seconds": 0.0, "init_temperature": None, "running": None,
             "running_grad": None, "skipped": []}
    if resume and ckpt_path.is_file():
        saved = _load_checkpoint(ckpt_path, student.device)
        # a checkpoint from before the retired options were removed has them at their off values
        # (and the fragments' span lengths, which did nothing with fragments off)
        theirs = {k: v for k, v in saved["settings"].items() if k not in ("steps", "fragment_words")
                  and not (k in RETIRED_OPTIONS and v == RETIRED_OPTIONS[k])}
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
    write_converted(source, out, student, texts, tokenizer, state["step"],
                    state["losses"][-1] if state["losses"] else None)
    report = {"source": str(source), "source_fingerprint": source_print, "settings": asdict(settings),
              "device": str(student.device), "threads": torch.get_num_threads(),
              "distillation_texts": len(texts), "train_seconds": state["seconds"],
              "init_temperature": state["init_temperature"], "temperatures": student.temperatures.tolist(),
              "skipped_steps": state["skipped"],
              "losses": state["losses"]}
    if eval_size > 0:
        t0 = time.perf_counter()
        report["evaluation"] = evaluate_conversion(out, source, eval_size, tasks=eval_tasks, max_length=64)
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
    config, settings, source_print = student.config, student.settings, weights_digest(source)
    for item in source.iterdir():
        if item.is_file() and item.name not in WEIGHT_FILES and item.name not in (RFA_FILE, REPORT_FILE, CURVE_FILE,
                                                                                 CHECKPOINT_FILE):
            shutil.copy2(item, out / item.name)
        elif item.is_dir() and not (out / item.name).exists():
            shutil.copytree(item, out / item.name)
    state_dict = read_state(source)
    trained = {name: p.detach().double().cpu() for name, p in student.params.items()}
    state_dict = with_weights(state_dict, config, trained)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    # calibrate the secure ranges on distillation text, with the trained weights
    idx = batch_indices(len(texts), 64, settings.seed, -2)
    enc = tokenizer([texts[i] for i in idx], padding="longest", truncation=True, max_length=settings.max_length,
                    return_tensors="pt")
    mask = enc["attention_mask"].to(student.device, student.dtype)
    _, shifts, ranges = student.query_key_stats(student.words(enc["input_ids"]), mask)
    meta = {"version": RFA_VERSION, "feature_map": settings.feature_map, "num_features": settings.num_features,
            "seed": settings.seed, "layer_seeds": [layer_seed(settings.seed, i) for i in range(config.num_layers)],
            "temperatures": student.temperatures.tolist() if settings.feature_map == "normalized" else None,
            # the paper map's c_h: the largest |k|^2 / 2 seen, plus a margin of 2
            "key_shift": (shifts + 2).tolist() if settings.feature_map == "paper" else None,
            # log2 range of |q|^2, |k|^2 for the secure rsqrt: what was seen, 4 octaves each way
            "norm_range": [[math.floor(lo) - 4, math.ceil(hi) + 4] for lo, hi in ranges],
            # MPNet: the position factor's public settings (nn.attention.PositionFactor)
            "position": None if student.position is None else student.position.to_dict(),
            "source_fingerprint": source_print, "source": source.name,
            "distillation": {**asdict(settings), "texts": len(texts), "steps_done": steps_done,
                             "final_loss": final_loss}}
    (out / RFA_FILE).write_text(json.dumps(meta, indent=1))


def _hf_tensors(config: ModelConfig, name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """A layer tensor in our layout -> Hugging Face's tensors (suffixes after encoder.layer.i.)."""
    H = config.hidden_size
    s = config.head_dim ** -0.25
    query, key, value, out, norm1 = attention_names(config.model_type)
    if name == "qkv":
        return {query + ".weight": (t[:, :H] / s).T, key + ".weight": (t[:, H:2 * H] / s).T,
                value + ".weight": t[:, 2 * H:].T}
    if name == "qkv_bias":
        return {query + ".bias": t[:H] / s, key + ".bias": t[H:2 * H] / s, value + ".bias": t[2 * H:]}
    simple = {"out": out + ".weight", "out_bias": out + ".bias",
              "norm1_weight": norm1 + ".weight", "norm1_bias": norm1 + ".bias",
              "up": "intermediate.dense.weight", "up_bias": "intermediate.dense.bias",
              "down": "output.dense.weight", "down_bias": "output.dense.bias",
              "norm2_weight": "output.LayerNorm.weight", "norm2_bias": "output.LayerNorm.bias"}
    return {simple[name]: t.T if t.dim() == 2 else t}


def with_weights(state_dict: dict, config: ModelConfig, trained: dict[str, torch.Tensor]) -> dict:
    """A copy of a Hugging Face state dict with our-layout layer tensors ("layers.i.name")
    written in, each cast to the dtype it replaces."""
    anchor = f"encoder.layer.0.{attention_names(config.model_type)[0]}.weight"
    prefix = next((k[:-len(anchor)] for k in state_dict if k.endswith(anchor)), None)
    if prefix is None:
        raise ModelFolderError(f"weights without {anchor}")
    out = dict(state_dict)
    for key, t in trained.items():
        _, i, name = key.split(".", 2)
        for suffix, value in _hf_tensors(config, name, t).items():
            full = f"{prefix}encoder.layer.{i}.{suffix}"
            out[full] = value.to(state_dict[full].dtype).contiguous()
    return out


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
