"""Thin wrapper over the compiled extension ``mambaad_kernels._C`` (CPU and CUDA fused kernels).

The import is guarded: importing this module never fails. :func:`load_error` says why the
extension is not usable (and how to build it); the backends ``"cpu"`` and ``"cuda"`` report that
reason when asked for. The kernels are torch ops registered by the extension under the
``mambaad::`` namespace (``mambaad::scan_fwd``, ``mambaad::scan_bwd``), dispatched by device;
their fake (meta) implementations are registered here, so ``torch.compile`` traces them too. The
autograd is not here: it lives once, in :mod:`mambaad_kernels.fused`, for every fused backend.

This module implements the kernel contract of :mod:`mambaad_kernels.fused` (``scan_fwd``,
``scan_bwd``, ``states_shape``) for both backends ``"cpu"`` and ``"cuda"``.
"""

from __future__ import annotations

import functools
import math
import sys

import torch
from torch import Tensor

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(needs a C++ compiler and ninja; a CUDA toolkit for the CUDA kernels; MAMBAAD_BUILD_EXT=0 "
    "skips the build)"
)

# State checkpoint interval (steps) of each device's kernels: the CPU kernel's must equal
# csrc/common.h kCpuStateChunk (exported as _C.CPU_STATE_CHUNK; tests compare them).
CPU_STATE_CHUNK = 64
CUDA_STATE_CHUNK = 128  # csrc/cuda/scan_common.cuh kStateChunk (the CUDA backward chunk)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_EXT = "mambaad_kernels._C"


# Both are constants of the process: torch.compile evaluates them once instead of tracing them.
@torch.compiler.assume_constant_result
@functools.lru_cache(maxsize=None)
def load_error() -> str | None:
    """None when the extension is loaded, else why not and how to build it."""
    try:
        from . import _C  # noqa: F401  (registers the mambaad:: ops)
    except ImportError as exc:
        return f"the compiled extension mambaad_kernels._C is not importable ({exc}); {BUILD_HINT}"
    _register_fakes()
    return None


@torch.compiler.assume_constant_result
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


def states_shape(b: int, k: int, dk: int, l: int, n: int, device) -> tuple[int, ...]:
    """The checkpoint shape ``(B, K, Dk, ceil(L / chunk), N)`` the kernels of ``device`` use.

    ``chunk`` is :data:`CUDA_STATE_CHUNK` for CUDA tensors, :data:`CPU_STATE_CHUNK` otherwise (CPU
    tensors, and meta tensors used for shape inference).
    """
    chunk = CUDA_STATE_CHUNK if torch.device(device).type == "cuda" else CPU_STATE_CHUNK
    return (b, k, dk, math.ceil(l / chunk), n)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def scan_fwd(x: Tensor, x_dbl: Tensor, dt_w: Tensor, dt_b: Tensor, A_logs: Tensor, Ds: Tensor,
             paths: Tensor, grouped: bool, deterministic: bool) -> tuple[Tensor, Tensor]:
    """Fused forward: ``(out (B, D, L) in x's dtype, states)`` (see :mod:`mambaad_kernels.fused`).

    Args:
        x: ``(B, D, L)`` any strides, fp32 / fp16 / bf16 / fp64; x_dbl: ``(B, K, R + 2N, L)``
            float32 whatever x's dtype (float64 for float64 x; x's own dtype is accepted too);
            dt_w ``(K, Dk, R)``, dt_b ``(K, Dk)``, A_logs ``(K * Dk, N)``, Ds ``(K * Dk,)`` float32
            or x's dtype;
            paths ``(K, L)`` int32, each row a permutation of ``0 .. L - 1``.
        grouped: GSS (direction k scans channels ``k * Dk .. (k + 1) * Dk``) instead of HSS.
        deterministic: accepted for every backend; the CPU kernel is always deterministic.

    Returns:
        out ``(B, D, L)`` contiguous, and the checkpoints ``states_shape(B, K, Dk, L, N, x.device)``
        in float32 (float64 for float64 inputs).
    """
    _require()
    out, states = torch.ops.mambaad.scan_fwd(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped,
                                             deterministic)
    return out, states


def scan_bwd(dout: Tensor, x: Tensor, x_dbl: Tensor, states: Tensor, dt_w: Tensor, dt_b: Tensor,
             A_logs: Tensor, Ds: Tensor, paths: Tensor, grouped: bool,
             deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: ``(dx (B, D, L), dx_dbl (B, K, R + 2N, L), d_dt_w, d_dt_b, d_A_logs, d_Ds)``.

    ``dout`` ``(B, D, L)`` any strides, in x's dtype; ``states`` from :func:`scan_fwd`. Every
    gradient is float32 (float64 for float64 inputs); dx is the gradient through u only.
    """
    _require()
    return tuple(torch.ops.mambaad.scan_bwd(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths,
                                            grouped, deterministic))


def _check_devices(op: str, tensors: dict[str, Tensor]) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"mambaad::{op}: {name} is on {dev} but x is on {first}")


def _fake_scan_fwd(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic):
    _check_devices("scan_fwd", dict(x=x, x_dbl=x_dbl, dt_w=dt_w, dt_b=dt_b, A_logs=A_logs, Ds=Ds,
                                    paths=paths))
    b, d, l = x.shape
    k, dk, _ = dt_w.shape
    shape = states_shape(b, k, dk, l, A_logs.shape[1], x.device)
    return x.new_empty(b, d, l), x.new_empty(shape, dtype=_state_dtype(x.dtype))


def _fake_scan_bwd(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic):
    _check_devices("scan_bwd", dict(x=x, dout=dout, x_dbl=x_dbl, states=states, dt_w=dt_w, dt_b=dt_b,
                                    A_logs=A_logs, Ds=Ds, paths=paths))
    ct = _state_dtype(x.dtype)
    return tuple(t.new_empty(t.shape, dtype=ct) for t in (x, x_dbl, dt_w, dt_b, A_logs, Ds))


_FAKES_REGISTERED = False


def _register_fakes() -> None:
    """Register the fake (meta) kernels of mambaad::scan_fwd / scan_bwd, once, after _C loaded."""
    global _FAKES_REGISTERED
    if _FAKES_REGISTERED:
        return
    torch.library.register_fake("mambaad::scan_fwd", _fake_scan_fwd)
    torch.library.register_fake("mambaad::scan_bwd", _fake_scan_bwd)
    _FAKES_REGISTERED = True


# The extension imports this module and calls _register_fakes() when it loads; this covers an
# import of this module after the extension was loaded some other way.
if _EXT in sys.modules:
    _register_fakes()
