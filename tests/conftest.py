"""Shared fixtures: a fresh in-process session per test and fresh random inputs.

Inputs are drawn from a generator seeded at random for each test (the seed is printed, so a
failure can be replayed with SECPTUNE_TEST_SEED=<seed>)."""

from __future__ import annotations

import os
import secrets

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
