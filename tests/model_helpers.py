"""Helpers shared by the model tests (tests/test_model.py, tests/test_mmad.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import mambaad_kernels as mk
from mambaad import create_model

# the fused CPU kernels when the extension is built (faster), else the reference scan
FAST_BACKEND = "cpu" if mk.backends.unavailable_reason("cpu", "cpu") is None else "reference"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes on a shared 2-core machine: one intra-op thread avoids OpenMP stalls.
    Autouse in every test module that imports it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def count_params(module: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def seeded_model(name: str, seed: int = 0, **overrides) -> nn.Module:
    """``create_model(name)`` with torch's RNG seeded and the fast backend unless overridden."""
    torch.manual_seed(seed)
    overrides.setdefault("backend", FAST_BACKEND)
    return create_model(name, **overrides)
