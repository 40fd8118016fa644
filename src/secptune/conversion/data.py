"""The distillation's data: unlabelled text that is no task's test set (or the user's), the
held-out evaluation sets, and each step's batch (a pure function of the seed and step)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from ..data import few_shot_split, list_tasks, load_file, load_task
from .settings import ConversionError


def distillation_texts(test_size: int = 500, seeds=(0, 1, 2, 42), shots: int = 16) -> list[str]:
    """The packaged corpora's texts minus every task's test portion: the official test split
    where there is one, and the test set of `few_shot_split(task, shots, seed, test_size)`
    for each seed (evaluation uses these seeds; 42 is the default).  Deterministic order."""
    texts = []
    for name in list_tasks():
        task = load_task(name)
        held = set()
        for seed in seeds:
            held.update(few_shot_split(task, shots, seed=seed, test_size=test_size).test.texts)
        if task.official_test is not None:
            held.update(t for t, flag in zip(task.texts, task.official_test) if flag)
        texts.extend(t for t in task.texts if t not in held)
    return texts


def read_texts(path: str | Path) -> list[str]:
    """A user's distillation texts: one per line (.txt, optionally .gz), or the text column
    of a file `secptune.data.load_file` reads (labels ignored)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    if Path(name).suffix.lower() in (".txt", ""):
        raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
        texts = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines()]
        texts = [t for t in texts if t]
    else:
        texts = list(load_file(path).texts)
    if len(texts) < 2:
        raise ConversionError(f"{path}: needs at least 2 non-empty texts, found {len(texts)}")
    return texts


def held_out_sets(test_size: int, tasks=None):
    """[(task, test examples)]: the evaluation sets (few_shot_split(task, 16, seed=0,
    test_size).test), which `distillation_texts` excludes."""
    out = []
    for name in tasks or list_tasks():
        task = load_task(name)
        out.append((task, few_shot_split(task, 16, seed=0, test_size=test_size).test))
    return out


def batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """Step `step`'s batch: a pure function of the seed and step (so a resumed run sees the
    batches the uninterrupted one would have)."""
    return random.Random(seed * 1_000_003 + step).sample(range(n), min(batch, n))
