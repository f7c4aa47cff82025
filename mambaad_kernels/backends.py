"""Which scan backends exist, which can run here, and which one a call gets.

Backends (named strings):

- ``"reference"``: :mod:`mambaad_kernels.reference`, plain PyTorch, any device, autograd by torch.
- ``"triton"``: :mod:`mambaad_kernels.triton`, fused Triton kernels; CUDA tensors, or CPU tensors
  under ``TRITON_INTERPRET=1`` (the interpreter, for tests).
- ``"cpu"``: the compiled extension's fused CPU kernel (``mambaad_kernels._C``).
- ``"cuda"``: the compiled extension's fused CUDA kernels.

``backend=None`` takes ``MAMBAAD_BACKEND`` from the environment when set, else the first available
of ``cuda, triton, reference`` for CUDA tensors and ``cpu, reference`` for CPU tensors. A backend
that is asked for by name (argument or environment) and cannot run raises with the reason; nothing
falls back silently.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("reference", "triton", "cpu", "cuda")
ENV_VAR = "MAMBAAD_BACKEND"
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_KERNEL_MODULES = {"triton": "mambaad_kernels.triton", "cpu": "mambaad_kernels.cuda",
                   "cuda": "mambaad_kernels.cuda"}


class BackendUnavailable(RuntimeError):
    """A backend that was asked for cannot run here; the message says why."""


@functools.lru_cache(maxsize=None)
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is the reason we report
        return f"{type(exc).__name__}: {exc}"
    return None


def _triton_reason(device_type: str) -> str | None:
    err = _import_error("triton")
    if err:
        return f"triton does not import ({err}); pip install triton"
    err = _import_error("mambaad_kernels.triton")
    if err:
        return f"the Triton kernels do not import ({err})"
    if not hasattr(kernel_module("triton"), "scan_fwd"):
        return "the Triton kernels are not built into this checkout (mambaad_kernels.triton has no scan_fwd)"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "Triton runs CPU tensors only under the interpreter: set TRITON_INTERPRET=1"
    return f"Triton does not run on {device_type} tensors"


@functools.lru_cache(maxsize=None)
def _extension_reason(device_type: str, backend: str) -> str | None:
    # cached: whether the extension loaded, which kernels it registered and whether a CUDA device
    # exists are fixed for the life of the process, and this check ran on every call (~25 us)
    if device_type != backend:
        return f"the {backend!r} backend runs on {backend} tensors, not {device_type} tensors"
    from . import cuda as ext  # the guarded loader; importing it never raises

    reason = ext.load_error()
    if reason:
        return reason
    if not ext.has_kernels(backend):
        return (f"the compiled extension has no {backend.upper()} kernels: rebuild it"
                + (" with a CUDA toolkit (nvcc on PATH or CUDA_HOME set)" if backend == "cuda" else ""))
    if backend == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """None if ``backend`` can run tensors on ``device``, else the reason it cannot."""
    device_type = torch.device(device).type
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "reference":
        return None
    if backend == "triton":
        return _triton_reason(device_type)
    return _extension_reason(device_type, backend)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run tensors on ``device``, in the order ``backend=None`` tries them."""
    device_type = torch.device(device).type
    order = _PREFERENCE.get(device_type, ("reference",))
    extra = [b for b in BACKENDS if b not in order]
    return [b for b in (*order, *extra) if unavailable_reason(b, device) is None]


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """The backend a call runs on: the one named, else ``MAMBAAD_BACKEND``, else the best here."""
    device = torch.device(device)
    source = "argument"
    if backend is None and os.environ.get(ENV_VAR):
        backend, source = os.environ[ENV_VAR], f"environment variable {ENV_VAR}"
    if backend is None:
        for name in _PREFERENCE.get(device.type, ("reference",)):
            if unavailable_reason(name, device) is None:
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (from {source}); expected one of {BACKENDS}")
    reason = unavailable_reason(backend, device)
    if reason:
        raise BackendUnavailable(f"backend {backend!r} (from {source}) cannot run on {device}: {reason}")
    return backend


@functools.lru_cache(maxsize=None)
def kernel_module(backend: str) -> ModuleType:
    """The module that implements a fused backend's ``scan_fwd`` / ``scan_bwd`` / ``states_shape``."""
    return importlib.import_module(_KERNEL_MODULES[backend])
