"""`make_delta`: the package's shipped conversion, as the difference of a converted folder
from its source (`models.rfa.apply_delta` adds it back)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.rfa import RFA_FILE, read_state, weights_digest
from .settings import ConversionError


def make_delta(converted: str | Path, source: str | Path, path: str | Path) -> dict:
    """The tensors of `converted` that differ from `source`, as fp16 differences (converted -
    source), with rfa.json in the metadata: what the package ships."""
    converted, source = Path(converted), Path(source)
    new, old = read_state(converted), read_state(source)
    delta = {k: (new[k].double() - old[k].double()).half() for k in new if not torch.equal(new[k], old[k])}
    meta = json.loads((converted / RFA_FILE).read_text())
    if meta["source_fingerprint"] != weights_digest(source):
        raise ConversionError(f"{converted} was not converted from {source}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(path), metadata={"rfa": json.dumps(meta)})
    os.chmod(path, 0o644)
    return {"tensors": len(delta), "parameters": sum(t.numel() for t in delta.values()),
            "bytes": Path(path).stat().st_size}
