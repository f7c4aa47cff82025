"""Helpers shared by the model tests (tests/test_model.py, tests/test_mmad.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import mambaad_kernels as mk
from mambaad import create_model, reconstruction_loss

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


def check_train_step(model: nn.Module) -> None:
    """One training step of a test model (resnet18 encoder) on a (2, 3, 64, 64) batch: feature
    shapes at strides 4, 8, 16, a frozen encoder, a finite loss, and a finite gradient on every
    trainable parameter and none on the frozen ones."""
    model.train()
    enc, dec = model(torch.randn(2, 3, 64, 64))
    shapes = [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]  # resnet18 at strides 4, 8, 16
    assert [tuple(f.shape) for f in enc] == shapes and [tuple(f.shape) for f in dec] == shapes
    assert not any(f.requires_grad for f in enc)
    loss = reconstruction_loss(enc, dec)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
