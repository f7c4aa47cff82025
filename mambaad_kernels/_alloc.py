"""Output allocation for the fused backends, with optional poisoning for the parity tests.

With ``MAMBAAD_POISON=1`` in the environment, every output buffer a backend allocates is filled
with NaN (integer buffers with -1) instead of left uninitialised, so an element a kernel forgets to
write shows up as NaN in the parity tests. The compiled extension reads the same variable.
Outputs must never be pre-zeroed by the caller: a kernel that accumulates initialises its own
buffer, so that poisoning keeps its meaning.
"""

from __future__ import annotations

import os

import torch

POISON_ENV = "MAMBAAD_POISON"


def poisoning() -> bool:
    return os.environ.get(POISON_ENV) == "1"


def empty(*shape, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty``, or a poisoned buffer when ``MAMBAAD_POISON=1``."""
    if not poisoning():
        return torch.empty(*shape, dtype=dtype, device=device)
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(shape if len(shape) != 1 or not isinstance(shape[0], (tuple, list)) else shape[0],
                      fill, dtype=dtype, device=device)
