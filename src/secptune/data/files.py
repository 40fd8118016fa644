"""Load a user's labelled texts from CSV, TSV, JSON Lines or a saved Hugging Face dataset.

Users bring data in whatever shape their tooling wrote it, so the loader finds the text and
label columns by common names (``text``/``sentence``/..., ``label``/``class``/...) unless told,
reads gzip-compressed files transparently, and applies the same cleaning as the shipped tasks
(whitespace normalisation, de-duplication, dropping texts with conflicting labels) so that
few-shot splits stay disjoint by text. Every failure is a one-line DataError naming the file
and the problem.

Hugging Face folders (``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``) are Arrow
stream files plus JSON metadata; they are read with ``pyarrow`` alone (which ``datasets``
depends on), so neither package is a dependency of secptune.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from secptune.data.cleaning import clean_examples
from secptune.data.errors import DataError
from secptune.data.task import Task

TEXT_COLUMNS = (
    "text", "sentence", "review", "content", "document", "question", "tweet", "message", "sms",
)
"""Column names taken as the text, in order of preference (matched case-insensitively)."""

LABEL_COLUMNS = (
    "label", "labels", "class", "category", "sentiment", "target", "score", "coarse_label", "y",
)
"""Column names taken as the label, in order of preference (matched case-insensitively)."""

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}

Row = dict[str, object]


def decode_bytes(data: bytes, source: str) -> str:
    """The text of a file's bytes: gunzipped if gzip-compressed, decoded as UTF-8 (BOM-safe)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{source}: corrupt gzip data ({exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_jsonl(text: str, source: str) -> list[Row]:
    """One JSON object per non-blank line."""
    rows: list[Row] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: line {line_number} is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{source}: line {line_number} nests too deeply to be a row") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}: line {line_number} is not a JSON object")
        rows.append(row)
    return rows


#: the longest CSV/TSV cell read (characters); csv's own default, 131072, refused texts that
#: the same file as JSON Lines loads
MAX_FIELD = 1 << 30


def _parse_delimited(text: str, delimiter: str, source: str) -> tuple[list[str], list[Row]]:
    csv.field_size_limit(MAX_FIELD)
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    try:
        if not reader.fieldnames:
            raise DataError(f"{source}: no header row")
        # Short rows get None for missing fields; over-long rows put extras under the key None.
        rows: list[Row] = [{k: v for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise DataError(f"{source}: not valid CSV after line {reader.line_num} ({exc})") from None
    return list(reader.fieldnames), rows


def _columns_of(rows: Sequence[Row]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _pick_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str], role: str, source: str
) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{source}: no {role} column {wanted!r}; columns: {list(columns)}")
        return wanted
    by_lower = {column.lower(): column for column in reversed(columns)}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise DataError(
        f"{source}: no {role} column found (looked for {', '.join(candidates)}); "
        f"columns: {list(columns)}; name the {role} column one of those"
    )


def _read_saved_dataset(
    folder: Path,
) -> tuple[list[str], list[Row], list[bool], dict[str, list[str]]]:
    """A ``save_to_disk`` folder as columns, rows (all splits concatenated), per row whether
    it comes from the ``test`` split, and the class names of its ClassLabel columns."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        parts = [(str(split), folder / split) for split in splits]
    elif (folder / "state.json").is_file():
        parts = [("", folder)]
    else:
        raise DataError(
            f"{folder}: a folder must be a Hugging Face save_to_disk dataset "
            "(with state.json or dataset_dict.json)"
        )
    try:
        import pyarrow.ipc
    except ImportError:
        raise DataError(
            f"{folder}: reading a Hugging Face dataset folder needs pyarrow: "
            "pip install pyarrow (the datasets package also installs it)"
        ) from None

    columns: list[str] = []
    rows: list[Row] = []
    is_test: list[bool] = []
    class_names: dict[str, list[str]] = {}
    for split, part in parts:
        state = json.loads((part / "state.json").read_text())
        info_path = part / "dataset_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        for column, feature in (info.get("features") or {}).items():
            if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
                class_names[column] = [str(name) for name in feature["names"]]
        for data_file in state["_data_files"]:
            with pyarrow.ipc.open_stream(part / data_file["filename"]) as reader:
                table = reader.read_all()
            columns.extend(c for c in table.column_names if c not in columns)
            part_rows = table.to_pylist()
            rows.extend(part_rows)
            is_test.extend([split == "test"] * len(part_rows))
    return columns, rows, is_test, class_names


def _label_name(value: object, names: list[str] | None, source: str) -> str | None:
    """The class name of a label cell; None for an unlabelled row (empty, null, or -1 in a
    ClassLabel column, as in the unlabelled test splits of GLUE)."""
    if value is None or value == "":
        return None
    if names is None:
        return str(value).strip() or None
    if not isinstance(value, int) or value >= len(names):
        raise DataError(f"{source}: label {value!r} is not an index into the classes {names}")
    return names[value] if value >= 0 else None


def _label_order(labels: set[str]) -> list[str]:
    """Numeric order when every label is an integer (0, 1, 2, 10), else alphabetical."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def load_file(
    path: str | os.PathLike[str],
    text_column: str | None = None,
    label_column: str | None = None,
) -> Task:
    """Load labelled texts from a ``.csv``, ``.tsv``, ``.jsonl`` file (optionally ``.gz``) or a
    Hugging Face ``save_to_disk`` folder, as a Task named after the file.

    Rows without a label are skipped. Each class's description and verbalizer default to the
    label name with ``_``/``-`` read as spaces, as a file carries no better wording; give
    better descriptions with ``with_descriptions`` (``--descriptions``), verbalizers with
    ``dataclasses.replace(task, verbalizers=...)``. In a saved
    DatasetDict, rows of the ``test`` split become the task's official test set.
    """
    file = Path(path)
    source = str(file)
    if not file.exists():
        raise DataError(f"{source}: no such file or folder")

    class_names: dict[str, list[str]] = {}
    if file.is_dir():
        columns, rows, row_is_test, class_names = _read_saved_dataset(file)
        name = file.name
    else:
        name = file.name[:-3] if file.name.lower().endswith(".gz") else file.name
        kind = Path(name).suffix.lower()
        name = name[: len(name) - len(kind)]
        if kind not in _DELIMITERS and kind not in _JSONL_SUFFIXES:
            raise DataError(
                f"{source}: unsupported file type {kind or '(none)'!r}; use .csv, .tsv, "
                ".jsonl (each optionally .gz) or a Hugging Face save_to_disk folder"
            )
        text = decode_bytes(file.read_bytes(), source)
        if kind in _DELIMITERS:
            columns, rows = _parse_delimited(text, _DELIMITERS[kind], source)
        else:
            rows = parse_jsonl(text, source)
            columns = _columns_of(rows)
        row_is_test = [False] * len(rows)
    if not rows:
        raise DataError(f"{source}: no rows")

    text_key = _pick_column(columns, text_column, TEXT_COLUMNS, "text", source)
    label_key = _pick_column(columns, label_column, LABEL_COLUMNS, "label", source)
    names = class_names.get(label_key)
    texts: list[str] = []
    labels: list[str] = []
    test_flags: list[bool] = []
    for row, in_test in zip(rows, row_is_test, strict=True):
        label = _label_name(row.get(label_key), names, source)
        if label is None:
            continue
        value = row.get(text_key)
        texts.append("" if value is None else str(value))
        labels.append(label)
        test_flags.append(in_test)
    cleaned = clean_examples(texts, labels)
    present = set(cleaned.labels)
    if len(present) < 2:
        raise DataError(
            f"{source}: needs at least 2 classes in column {label_key!r}, "
            f"found {sorted(present) or 'none'}"
        )
    order = names if names is not None else _label_order(present)
    index = {label: i for i, label in enumerate(order)}
    wording = [label.replace("_", " ").replace("-", " ") for label in order]
    flags = [test_flags[i] for i in cleaned.kept]
    return Task(
        name=name,
        labels=list(order),
        descriptions=wording,
        verbalizers=list(wording),
        texts=cleaned.texts,
        label_ids=[index[label] for label in cleaned.labels],
        source=source,
        official_test=flags if any(flags) else None,
    )


def with_descriptions(task: Task, path: str | os.PathLike[str]) -> Task:
    """`task` with the class descriptions of a JSON file: an object mapping a label to its
    description or a list of several (``{"spam": ["an ad for a prize", "text WIN to 8007"]}``).

    A label the file leaves out keeps its description; a key that names no label is an error,
    so that a misspelt label cannot pass unnoticed."""
    file = Path(path)
    source = str(file)
    if not file.is_file():
        raise DataError(f"{source}: no such descriptions file")
    try:
        given = json.loads(decode_bytes(file.read_bytes(), source))
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(given, dict) or not given:
        raise DataError(f'{source}: expected a JSON object of label -> description(s), e.g. '
                        f'{{"{task.labels[0]}": ["...", "..."]}}')
    unknown = [key for key in given if key not in task.labels]
    if unknown:
        raise DataError(f"{source}: no class named {', '.join(map(repr, unknown))} in task "
                        f"{task.name!r} (its labels: {', '.join(task.labels)})")
    descriptions = [given.get(label, old) for label, old in zip(task.labels, task.descriptions)]
    try:
        return replace(task, descriptions=descriptions)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
