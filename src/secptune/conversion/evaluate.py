"""How close a converted model is to its source: `evaluate_conversion` (the conversion
report's evaluation) and the yardstick of chance it is read against (`noise_band`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..models.rfa import load_attention
from ..models.scoring import PlainScorer, SentenceTask
from ..models.weights import load_model
from .data import held_out_sets

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


def evaluate_conversion(folder: str | Path, source: str | Path, test_size: int = 500, tasks=None,
                        max_length: int = 64, chunk: int = 100) -> dict:
    """Softmax `source` against converted `folder` (float64, the plaintext path): per task,
    zero-shot accuracy by label-description similarity on few_shot_split(task, 16, seed=0,
    test_size).test, the mean cosine of the converted model's pooled output to the source's
    on those sentences (none of them distillation text) and of its label-description
    embeddings, the accuracy of either model's texts against the other's label embeddings
    (`crossed_accuracy`), and `noise_band`: the accuracy change random perturbations of
    those cosines make, the yardstick for the converted model's own change."""
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    s_config, s_weights = load_model(source)
    c_config, c_weights = load_model(folder)
    attention = load_attention(folder, c_config)
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
