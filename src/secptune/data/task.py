"""The labelled-text container that every loader returns and every split consumes.

One type for the shipped tasks and for user files means the tuning code never needs to know
where its data came from: it gets texts, integer labels, and per class the two pieces of text
that prompt-based models need (a sentence to embed for zero-shot scoring, a word to predict at
a masked position).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from secptune.data.errors import DataError


@dataclass(frozen=True)
class Task:
    """A labelled text-classification task.

    ``labels[i]`` names class ``i``; ``descriptions[i]`` is a sentence describing a typical
    member of class ``i``, or a list of several (scored against a text's sentence embedding
    for zero-shot classification; several are averaged); ``verbalizers[i]`` is the word a
    masked language model should predict for class ``i``. ``official_test`` marks, per
    example, membership of the source's own test split; it is ``None`` when the source has
    none, and then splits draw the test set from the examples left over after the few-shot
    draw. The per-example fields stay out of ``repr``
    so that printing a task, or a failing assertion, does not dump the corpus.
    """

    name: str
    labels: list[str]
    descriptions: list[str | list[str]]
    verbalizers: list[str]
    texts: list[str] = field(repr=False)
    label_ids: list[int] = field(repr=False)
    source: str
    official_test: list[bool] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n_classes = len(self.labels)
        if len(set(self.labels)) != n_classes:
            raise DataError(f"task {self.name!r}: repeated label names in {self.labels}")
        if len(self.descriptions) != n_classes or len(self.verbalizers) != n_classes:
            raise DataError(
                f"task {self.name!r}: {n_classes} labels but {len(self.descriptions)} "
                f"descriptions and {len(self.verbalizers)} verbalizers"
            )
        for label, wording in zip(self.labels, self.descriptions):
            several = wording if isinstance(wording, list) else [wording]
            if not several or not all(isinstance(w, str) and w.strip() for w in several):
                raise DataError(
                    f"task {self.name!r}: class {label!r} needs a description (a non-empty "
                    f"string or a list of them), got {wording!r}"
                )
        if len(self.texts) != len(self.label_ids):
            raise DataError(
                f"task {self.name!r}: {len(self.texts)} texts but {len(self.label_ids)} labels"
            )
        if self.official_test is not None and len(self.official_test) != len(self.texts):
            raise DataError(
                f"task {self.name!r}: {len(self.texts)} texts but "
                f"{len(self.official_test)} test-split flags"
            )
        if any(not 0 <= label < n_classes for label in self.label_ids):
            raise DataError(f"task {self.name!r}: a label id is outside 0..{n_classes - 1}")
        present = len(set(self.label_ids))
        if present < 2:
            raise DataError(
                f"task {self.name!r}: needs at least 2 classes with examples, found {present}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> dict[str, int]:
        """Examples per class, keyed by label name, in label order (absent classes count 0)."""
        counts = Counter(self.label_ids)
        return {label: counts[i] for i, label in enumerate(self.labels)}
