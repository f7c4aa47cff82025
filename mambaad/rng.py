"""The random streams of a training run, kept apart so that a resumed run continues exactly.

A training step draws random numbers in two places:

- the data: the order of each epoch (:class:`~torch.utils.data.DistributedSampler`, seeded by
  ``(seed, epoch)``) and the base seed a DataLoader iterator draws when it is created (which seeds its
  workers). :func:`loader_generator` gives every epoch's loader its own generator, seeded by
  ``(seed, epoch, rank)``: creating an iterator, first in an epoch or mid-epoch after a resume, never
  touches torch's global generator, and the workers' seeds depend on the epoch only.
- the model: drop-path (stochastic depth) masks, drawn from torch's global generator (CPU, and the
  CUDA device's when training there) inside the forward. :class:`ModelRNG` holds a dedicated state
  of its own for each, swaps it in only around the training forward and backward (:meth:`ModelRNG.active`)
  and is checkpointed, one per process. Whatever else draws from the global generator (an evaluation's
  DataLoader, a library) cannot shift the masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

_MODEL_STREAM = 1
_LOADER_STREAM = 2


def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixed from non-negative integer ``keys`` (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of one epoch's DataLoader on one process (a function of its arguments only)."""
    return torch.Generator().manual_seed(derived_seed(seed, _LOADER_STREAM, epoch, rank))


class ModelRNG:
    """The random stream of the training forward passes of one process (drop-path masks).

    Args:
        seed: the run's seed. rank: this process's rank (each rank draws its own masks).
        device: the training device; a CUDA device gets a stream of its own too.
    """

    def __init__(self, seed: int, rank: int, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        base = derived_seed(seed, _MODEL_STREAM, rank)
        self.cpu_state = torch.Generator().manual_seed(base).get_state()
        self.cuda_state = None
        if self.cuda:
            self.cuda_state = torch.Generator(device=device).manual_seed(base).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this stream torch's global one inside the block; the global state is put back after."""
        outer_cpu = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self.cuda else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            torch.set_rng_state(outer_cpu)
            if self.cuda:
                self.cuda_state = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)

    def state_dict(self) -> dict[str, Any]:
        """``{"cpu": ByteTensor, "cuda": ByteTensor or None}`` (for the checkpoint)."""
        return {"cpu": self.cpu_state.clone(),
                "cuda": None if self.cuda_state is None else self.cuda_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore a saved stream; returns False when a CUDA stream is needed and was not saved (a run
        moved from the CPU to a GPU: its CUDA stream then starts from the seed)."""
        self.cpu_state = state["cpu"].clone()
        if self.cuda and state.get("cuda") is None:
            return False
        if self.cuda:
            self.cuda_state = state["cuda"].clone()
        return True
