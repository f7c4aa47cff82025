"""Thin wrapper over the compiled extension ``mambaad_kernels._C`` (CPU and CUDA fused kernels).

The import is guarded: importing this module never fails. :func:`load_error` says why the
extension is not usable (and how to build it); the backends ``"cpu"`` and ``"cuda"`` report that
reason when asked for. The kernels are torch ops registered by the extension under the
``mambaad::`` namespace (``mambaad::scan_fwd``, ``mambaad::scan_bwd``), dispatched by device.
"""

from __future__ import annotations

import functools

import torch

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(needs a C++ compiler and ninja; a CUDA toolkit for the CUDA kernels; MAMBAAD_BUILD_EXT=0 "
    "skips the build)"
)


@functools.lru_cache(maxsize=None)
def load_error() -> str | None:
    """None when the extension is loaded, else why not and how to build it."""
    try:
        from . import _C  # noqa: F401  (registers the mambaad:: ops)
    except ImportError as exc:
        return f"the compiled extension mambaad_kernels._C is not importable ({exc}); {BUILD_HINT}"
    return None


def has_kernels(device_type: str) -> bool:
    """Whether the loaded extension registered kernels for ``device_type`` ('cpu' or 'cuda')."""
    if load_error():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key("mambaad::scan_fwd", key)


def _require() -> None:
    err = load_error()
    if err:
        raise RuntimeError(err)


def states_shape(b: int, k: int, dk: int, l: int, n: int) -> tuple[int, ...]:
    raise NotImplementedError("the extension backends are not built yet")


def scan_fwd(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic):
    _require()
    raise NotImplementedError("the extension backends are not built yet")


def scan_bwd(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic):
    _require()
    raise NotImplementedError("the extension backends are not built yet")
