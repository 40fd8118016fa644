"""The shipped tasks load offline and clean, few-shot splits follow the BBT protocol, and user
files load (or fail with a one-line DataError that names the problem)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from secptune.data import (
    TASKS,
    DataError,
    Split,
    Task,
    few_shot_split,
    list_tasks,
    load_file,
    load_task,
    with_descriptions,
)

# Lower bounds on the cleaned counts (see src/secptune/data/corpora/PROVENANCE.md).
MIN_EXAMPLES = {
    "movie-reviews": 12_000,
    "trec": 5_300,
    "sms-spam": 4_400,
    "tweets": 3_300,
    "amazon-food": 4_900,
}


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: load_task(name) for name in list_tasks()}


def split_texts(split: Split) -> tuple[set[str], set[str], set[str]]:
    return set(split.train.texts), set(split.dev.texts), set(split.test.texts)


# ------------------------------------------------------------------------------ shipped tasks

def test_registry_lists_the_five_tasks() -> None:
    assert list_tasks() == list(MIN_EXAMPLES)


@pytest.mark.parametrize("name", list(MIN_EXAMPLES))
def test_task_loads_clean(tasks: dict[str, Task], name: str) -> None:
    task = tasks[name]
    assert task.name == name
    assert len(task) >= MIN_EXAMPLES[name]
    assert len(set(task.texts)) == len(task.texts), "duplicate texts"
    assert all(text and text == " ".join(text.split()) for text in task.texts)
    counts = task.class_counts()
    assert len(counts) >= 2 and min(counts.values()) > 0
    assert len(task.descriptions) == len(task.verbalizers) == len(task.labels)
    assert all(task.descriptions) and all(" " not in word for word in task.verbalizers)
    assert task.labels == TASKS[name].labels and task.source


def test_several_descriptions_are_not_corpus_texts(tasks: dict[str, Task]) -> None:
    """A class may carry example texts beside its description: written for the registry, so
    none may be a text of its task (that would score a test text against itself)."""
    several = 0
    for task in tasks.values():
        corpus = {text.lower() for text in task.texts}
        for wording in task.descriptions:
            group = [wording] if isinstance(wording, str) else wording
            several += len(group) > 1
            assert all(text.lower() not in corpus for text in group)
    assert several >= 2


def test_a_class_needs_a_description() -> None:
    base = dict(name="t", labels=["a", "b"], verbalizers=["a", "b"], texts=["x", "y"], label_ids=[0, 1],
                source="test")
    assert Task(descriptions=["one", ["two", "three"]], **base).descriptions[1] == ["two", "three"]
    for bad in (["one", []], ["one", ["two", " "]], ["one", 3]):
        with pytest.raises(DataError, match="class 'b' needs a description"):
            Task(descriptions=bad, **base)


def test_class_sets(tasks: dict[str, Task]) -> None:
    assert tasks["trec"].labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert tasks["sms-spam"].class_counts()["spam"] > 500
    assert tasks["movie-reviews"].class_counts()["negative"] > 5_000


def test_only_amazon_has_an_official_test_split(tasks: dict[str, Task]) -> None:
    for name, task in tasks.items():
        if name == "amazon-food":
            assert task.official_test is not None and sum(task.official_test) == 1_000
        else:
            assert task.official_test is None


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="unknown task 'sst2'.*movie-reviews.*amazon-food"):
        load_task("sst2")


# ------------------------------------------------------------------------------ splits

@pytest.mark.parametrize("name", ["movie-reviews", "trec", "sms-spam"])
@pytest.mark.parametrize("seed", [13, 42, 100])
def test_split_sizes_and_disjointness(tasks: dict[str, Task], name: str, seed: int) -> None:
    task = tasks[name]
    shots = 8
    split = few_shot_split(task, shots=shots, seed=seed)
    n_classes = len(task.labels)
    assert len(split.train) == len(split.dev) == shots * n_classes
    for part in (split.train, split.dev):
        assert sorted(part.label_ids) == sorted(list(range(n_classes)) * shots)
    assert len(split.test) == 500
    train, dev, test = split_texts(split)
    assert len(train) + len(dev) + len(test) == len(train | dev | test) == 16 * n_classes + 500
    assert split.labels == task.labels


def test_split_takes_the_whole_rest_when_it_is_small(tasks: dict[str, Task]) -> None:
    task = tasks["tweets"]
    split = few_shot_split(task, shots=16, seed=1, test_size=10**6)
    assert len(split.test) == len(task) - 2 * 16 * 2


def test_amazon_tests_on_its_official_test_split(tasks: dict[str, Task]) -> None:
    task = tasks["amazon-food"]
    assert task.official_test is not None
    official = {t for t, flag in zip(task.texts, task.official_test, strict=True) if flag}
    for seed in (13, 42):
        split = few_shot_split(task, shots=16, seed=seed)
        train, dev, test = split_texts(split)
        assert len(test) == 500 and test <= official
        assert not (train | dev) & official


def test_split_is_deterministic(tasks: dict[str, Task]) -> None:
    task = tasks["trec"]
    first = few_shot_split(task, shots=4, seed=7)
    assert few_shot_split(task, shots=4, seed=7) == first
    assert few_shot_split("trec", shots=4, seed=7) == first
    assert few_shot_split(task, shots=4, seed=8).train != first.train


def test_too_many_shots_for_a_class(tasks: dict[str, Task]) -> None:
    # TREC has 86 ABBR questions: 43 shots fit (train + dev), 44 do not.
    few_shot_split(tasks["trec"], shots=43, seed=0)
    with pytest.raises(DataError, match="class 'ABBR' has 86 examples, fewer than the 88"):
        few_shot_split(tasks["trec"], shots=44, seed=0)


def test_a_larger_dev_split_keeps_the_training_texts(tasks: dict[str, Task]) -> None:
    task = tasks["movie-reviews"]
    base = few_shot_split(task, shots=16, seed=3, test_size=200)
    wide = few_shot_split(task, shots=16, seed=3, test_size=200, dev_shots=64)
    assert wide.train == base.train
    assert len(wide.dev) == 128 and set(base.dev.texts) < set(wide.dev.texts)
    assert sorted(wide.dev.label_ids) == [0] * 64 + [1] * 64
    train, dev, test = split_texts(wide)
    assert not train & dev and not (train | dev) & test
    assert few_shot_split(task, shots=16, seed=3, test_size=200, dev_shots=16) == base
    # TREC's 86 ABBR questions: 16 for train leave 70 for dev
    few_shot_split(tasks["trec"], shots=16, seed=0, dev_shots=70)
    with pytest.raises(DataError, match="fewer than the 87 that 16 shots for train and 71 for dev need"):
        few_shot_split(tasks["trec"], shots=16, seed=0, dev_shots=71)
    with pytest.raises(DataError, match="dev_shots"):
        few_shot_split(task, shots=16, dev_shots=0)


def test_bad_split_arguments(tasks: dict[str, Task]) -> None:
    with pytest.raises(DataError, match="shots"):
        few_shot_split(tasks["tweets"], shots=0)
    with pytest.raises(DataError, match="test_size"):
        few_shot_split(tasks["tweets"], test_size=0)


# ------------------------------------------------------------------------------ user files

ROWS = [("good film", "pos"), ("bad film", "neg"), ("great  film ", "pos"),
        ("awful film", "neg"), ("good film", "pos"), ("", "pos"), ("fine film", "pos"),
        ("odd film", "pos"), ("odd film", "neg")]
"""One repeat, one empty text, one text with conflicting labels: 5 examples survive."""


def check_loaded(task: Task, name: str) -> None:
    assert task.name == name
    assert task.labels == ["neg", "pos"]
    assert task.texts == ["good film", "bad film", "great film", "awful film", "fine film"]
    assert task.label_ids == [1, 0, 1, 0, 1]
    assert task.verbalizers == ["neg", "pos"] and task.official_test is None


def write_delimited(path: Path, delimiter: str, header: tuple[str, str]) -> None:
    lines = [delimiter.join(header)]
    lines += [delimiter.join(f'"{value}"' for value in row) for row in ROWS]
    path.write_text("\n".join(lines) + "\n")


def test_csv_with_detected_columns(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    write_delimited(path, ",", ("Sentence", "label"))
    check_loaded(load_file(path), "reviews")


def test_tsv_with_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "reviews.tsv"
    write_delimited(path, "\t", ("body", "stars"))
    check_loaded(load_file(path, text_column="body", label_column="stars"), "reviews")


def test_jsonl_gz_with_integer_labels(tmp_path: Path) -> None:
    path = tmp_path / "numbers.jsonl.gz"
    rows = [{"text": f"text {i}", "label": i % 3 * 5, "id": i} for i in range(12)]
    rows.append({"text": "unlabelled", "label": None})
    with gzip.open(path, "wt") as out:
        out.write("\n".join(json.dumps(row) for row in rows) + "\n\n")
    task = load_file(path)
    assert task.labels == ["0", "5", "10"]  # numeric order, not "10" < "5"
    assert len(task) == 12 and task.class_counts() == {"0": 4, "5": 4, "10": 4}
    split = few_shot_split(task, shots=1, seed=3)
    assert len(split.train) == len(split.dev) == 3 and len(split.test) == 6


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_file(tmp_path / "absent.csv")


def test_no_label_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("text,author\nhello,ann\nbye,bob\n")
    with pytest.raises(DataError, match=r"no label column found.*\['text', 'author'\]"):
        load_file(path)
    with pytest.raises(DataError, match="no label column 'kind'"):
        load_file(path, label_column="kind")


def test_one_class_is_not_a_task(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(DataError, match="at least 2 classes"):
        load_file(path)


def test_k_too_large_for_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    write_delimited(path, ",", ("text", "label"))
    with pytest.raises(DataError, match="class 'neg' has 2 examples"):
        few_shot_split(load_file(path), shots=2)


def test_a_descriptions_file_rewords_the_classes_it_names(tmp_path: Path) -> None:
    """--descriptions: a JSON object of label -> description or list of them; a class it leaves
    out keeps its wording, and a key naming no class, a wording that is empty and a file that
    is not such an object are refused, naming the file."""
    data = tmp_path / "reviews.csv"
    write_delimited(data, ",", ("text", "label"))
    task = load_file(data)
    wording = tmp_path / "wording.json"
    wording.write_text(json.dumps({"pos": ["a glowing review", "loved every minute"]}))
    reworded = with_descriptions(task, wording)
    assert reworded.descriptions == ["neg", ["a glowing review", "loved every minute"]]
    assert reworded.texts == task.texts and reworded.label_ids == task.label_ids
    bad = {
        '{"neg": "x", "positive": "y"}': r"no class named 'positive' in task 'reviews' \(its labels: neg, pos\)",
        '{"neg": []}': "class 'neg' needs a description",
        '{"neg": ["fine", " "]}': "class 'neg' needs a description",
        '["neg", "pos"]': "expected a JSON object of label -> description",
        '{"neg": "x",}': "not JSON",
    }
    for text, message in bad.items():
        wording.write_text(text)
        with pytest.raises(DataError, match=message) as raised:
            with_descriptions(task, wording)
        assert str(raised.value).startswith(str(wording))
    with pytest.raises(DataError, match="no such descriptions file"):
        with_descriptions(task, tmp_path / "absent.json")


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        load_file(tmp_path / "data.xlsx")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2 is not a JSON object"):
        load_file(tmp_path / "bad.jsonl")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no header row"):
        load_file(tmp_path / "empty.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_file(tmp_path / "folder")


def write_saved_dataset(folder: Path) -> None:
    """The layout ``DatasetDict.save_to_disk`` writes (checked against datasets 3.6): per
    split an Arrow stream file, state.json naming it, and dataset_info.json with features."""
    pa = pytest.importorskip("pyarrow")
    splits = {
        "train": (["good film", "bad film", "great film", "awful film"], [1, 0, 1, 0]),
        "test": (["fine film", "poor film", "unlabelled film"], [1, 0, -1]),
    }
    (folder / "dataset_dict.json").parent.mkdir(parents=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split, (texts, labels) in splits.items():
        part = folder / split
        part.mkdir()
        table = pa.table({"sentence": texts, "label": pa.array(labels, pa.int64())})
        with pa.ipc.new_stream(part / "data-00000-of-00001.arrow", table.schema) as writer:
            writer.write_table(table)
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None}
        (part / "state.json").write_text(json.dumps(state))
        features = {
            "sentence": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["neg", "pos"], "_type": "ClassLabel"},
        }
        (part / "dataset_info.json").write_text(json.dumps({"features": features}))


def test_saved_hugging_face_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "films"
    write_saved_dataset(folder)
    task = load_file(folder)
    assert task.name == "films" and task.labels == ["neg", "pos"]
    assert task.texts == ["good film", "bad film", "great film", "awful film",
                          "fine film", "poor film"]
    assert task.official_test == [False] * 4 + [True] * 2
    split = few_shot_split(task, shots=1, seed=0)
    assert set(split.test.texts) == {"fine film", "poor film"}


def test_saved_dataset_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.ipc", None)
    with pytest.raises(DataError, match="needs pyarrow: pip install pyarrow"):
        load_file(tmp_path)
