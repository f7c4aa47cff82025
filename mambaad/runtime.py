"""Device and process helpers shared by the entry points (train, evaluate, predict, export).

A leaf module: it imports nothing of the application, so ``train``, ``train_eval``, ``evaluate`` and
``predict`` can all use it without importing each other.
"""

from __future__ import annotations

import os

import torch

from .runconfig import ConfigError


def distributed_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def select_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``name`` as a device; None: CUDA (this process's GPU under torchrun) when there is one.

    Raises:
        ConfigError: CUDA asked for and torch sees no CUDA device.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
