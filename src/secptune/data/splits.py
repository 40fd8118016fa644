"""Few-shot splits in the Black-Box Tuning protocol (Sun et al., 2022).

BBT (and LM-BFF before it) trains on k examples per class, selects hyper-parameters and
early-stops on a dev set of another k per class, and reports accuracy on a held-out test
set; results are averaged over a few seeds, so a split must be a pure function of the task,
k and the seed. Train, dev and test are disjoint by text (shipped tasks and loaded files are
deduplicated, so disjoint indices are disjoint texts).

The test set is a uniformly random sample (natural class distribution, as in an official
test set), not a stratified one: drawn from the source's own test split when it has one
(``Task.official_test``), else from the examples left after the few-shot draw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from secptune.data.errors import DataError
from secptune.data.task import Task
from secptune.data.tasks import load_task

DEFAULT_SEED = 42
DEFAULT_TEST_SIZE = 500


@dataclass(frozen=True)
class Examples:
    """Parallel lists of texts and class ids: one part of a split."""

    texts: list[str]
    label_ids: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Split:
    """The train, dev and test parts of a few-shot split, and the class names they index."""

    train: Examples
    dev: Examples
    test: Examples
    labels: list[str]


def few_shot_split(
    task: Task | str,
    shots: int = 16,
    seed: int = DEFAULT_SEED,
    test_size: int = DEFAULT_TEST_SIZE,
    dev_shots: int | None = None,
) -> Split:
    """Draw ``shots`` examples per class for train and another ``dev_shots`` (default:
    ``shots``, Black-Box Tuning's protocol) per class for dev, plus a test set of
    ``test_size`` examples (or all that remain, if fewer).  The training texts of a seed do
    not depend on ``dev_shots``.

    ``task`` is a Task or the name of a shipped task. Train and dev are shuffled, so that
    batches are not sorted by class. Raises DataError when a class has fewer than
    ``2 * shots`` examples outside the official test split.
    """
    if isinstance(task, str):
        task = load_task(task)
    if shots < 1:
        raise DataError(f"shots must be at least 1, got {shots}")
    if test_size < 1:
        raise DataError(f"test_size must be at least 1, got {test_size}")
    dev_shots = shots if dev_shots is None else dev_shots
    if dev_shots < 1:
        raise DataError(f"dev_shots must be at least 1, got {dev_shots}")

    official = task.official_test
    in_test = official if official is not None else [False] * len(task)
    rng = random.Random(seed)
    train: list[int] = []
    dev: list[int] = []
    for class_id, label in enumerate(task.labels):
        members = [
            i for i, y in enumerate(task.label_ids) if y == class_id and not in_test[i]
        ]
        if len(members) < shots + dev_shots:
            where = " outside the official test split" if official is not None else ""
            raise DataError(
                f"task {task.name!r}: class {label!r} has {len(members)} examples{where}, "
                f"fewer than the {shots + dev_shots} that {shots} shots for train and {dev_shots} for dev need"
            )
        rng.shuffle(members)
        train.extend(members[:shots])
        dev.extend(members[shots : shots + dev_shots])
    rng.shuffle(train)
    rng.shuffle(dev)

    if official is not None:
        candidates = [i for i, flag in enumerate(official) if flag]
    else:
        taken = set(train) | set(dev)
        candidates = [i for i in range(len(task)) if i not in taken]
    if not candidates:
        raise DataError(f"task {task.name!r}: no examples left for a test set")
    test = rng.sample(candidates, min(test_size, len(candidates)))

    def part(indices: list[int]) -> Examples:
        return Examples(
            texts=[task.texts[i] for i in indices],
            label_ids=[task.label_ids[i] for i in indices],
        )

    return Split(train=part(train), dev=part(dev), test=part(test), labels=list(task.labels))
