"""Text normalisation and de-duplication shared by the shipped tasks and user files.

Few-shot splits are only meaningful when train, dev and test are disjoint, and the public
corpora we ship repeat texts (TREC lists most questions three times). Deduplicating on the
whitespace-normalised text makes "disjoint by index" imply "disjoint by text". A text that
occurs with two different labels is dropped entirely: keeping either copy would put a label
into the data that the source itself contradicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines and tabs included) to one space and strip.

    Line breaks inside a review carry no label information but would make otherwise equal
    texts compare unequal, and they break the one-example-per-line file formats.
    """
    return " ".join(text.split())


@dataclass(frozen=True)
class Cleaned:
    """The examples that survive cleaning, plus what was dropped and why.

    ``kept`` holds the input positions of the surviving examples, in input order, so that a
    caller can carry along fields that cleaning does not look at (e.g. a source split).
    """

    texts: list[str]
    labels: list[str]
    kept: list[int]
    empty: int
    duplicates: int
    conflicting: int


def clean_examples(texts: Sequence[str], labels: Sequence[str]) -> Cleaned:
    """Normalise whitespace, drop empty texts, keep the first copy of each repeated text,
    and drop every copy of a text that appears with more than one label.

    ``duplicates`` counts the repeated copies dropped (same text, same label);
    ``conflicting`` counts the distinct texts dropped because their labels disagree.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    normalised = [normalise_whitespace(text) for text in texts]
    labels_of: dict[str, set[str]] = {}
    for text, label in zip(normalised, labels, strict=True):
        if text:
            labels_of.setdefault(text, set()).add(label)
    conflicting = {text for text, seen in labels_of.items() if len(seen) > 1}

    kept: list[int] = []
    seen_texts: set[str] = set()
    empty = duplicates = 0
    for position, text in enumerate(normalised):
        if not text:
            empty += 1
        elif text in conflicting:
            continue
        elif text in seen_texts:
            duplicates += 1
        else:
            seen_texts.add(text)
            kept.append(position)
    return Cleaned(
        texts=[normalised[i] for i in kept],
        labels=[labels[i] for i in kept],
        kept=kept,
        empty=empty,
        duplicates=duplicates,
        conflicting=len(conflicting),
    )
