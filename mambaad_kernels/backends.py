"""Which scan backends exist, which can run here, and which one a call gets.

Backends (named strings):

- ``"reference"``: :mod:`mambaad_kernels.reference`, plain PyTorch, any device, autograd by torch.
- ``"triton"``: :mod:`mambaad_kernels.triton`, fused Triton kernels; CUDA tensors, or CPU tensors
  under ``TRITON_INTERPRET=1`` (the interpreter, for tests).
- ``"cpu"``: the compiled extension's fused CPU kernel (``mambaad_kernels._C``).
- ``"cuda"``: the compiled extension's fused CUDA kernels.
- ``"portable"``: :mod:`mambaad_kernels.portable`, a chunked scan in standard tensor operators, any
  device, autograd by torch: what an exported ONNX / OpenVINO model computes (never chosen by
  ``backend=None``: the fused backends are faster wherever they run).

``backend=None`` takes ``MAMBAAD_BACKEND`` from the environment when set, else the first available
of ``cuda, triton, reference`` for CUDA tensors and ``cpu, reference`` for CPU tensors. A backend
that is asked for by name (argument or environment) and cannot run raises with the reason; nothing
falls back silently: when ``backend=None`` lands on ``reference`` although a fused backend exists for
the device type, or skips a compiled extension that is there but does not import or does not cover
the GPU, a :class:`BackendFallbackWarning` (once per process and device type) gives the reasons
and the fixes. ``python -m mambaad_kernels`` prints the whole picture of this machine.

The ``cuda`` backend checks the GPU's compute capability against the architectures compiled into
the extension (:func:`mambaad_kernels.cuda.cuda_archs`) before any launch.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType

import torch

BACKENDS = ("reference", "triton", "cpu", "cuda", "portable")
ENV_VAR = "MAMBAAD_BACKEND"
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_KERNEL_MODULES = {"triton": "mambaad_kernels.triton", "cpu": "mambaad_kernels.cuda",
                   "cuda": "mambaad_kernels.cuda", "portable": "mambaad_kernels.portable"}


class BackendUnavailable(RuntimeError):
    """A backend that was asked for cannot run here; the message says why."""


class BackendFallbackWarning(UserWarning):
    """``backend=None`` had to pass over a fused backend that should have run; the message says why."""


_WARNED: set[str] = set()  # device types whose fallback was reported in this process


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
def _cpu_reason(device_type: str) -> str | None:
    # cached: whether the extension loaded and which kernels it registered are fixed for the life of
    # the process, and this check runs on every call (~25 us uncached)
    if device_type != "cpu":
        return f"the 'cpu' backend runs on cpu tensors, not {device_type} tensors"
    from . import cuda as ext  # the guarded loader; importing it never raises

    reason = ext.load_error()
    if reason:
        return reason
    if not ext.has_kernels("cpu"):
        return "the compiled extension has no CPU kernels: rebuild it"
    return None


def _cuda_reason(device: torch.device) -> str | None:
    # not cached as a whole: the device (its compute capability) varies; the parts are cached
    if device.type != "cuda":
        return f"the 'cuda' backend runs on cuda tensors, not {device.type} tensors"
    from . import cuda as ext

    reason = ext.load_error()
    if reason:
        return reason
    archs = ext.cuda_archs()
    no_kernels = ("the compiled extension has no CUDA kernels: rebuild it with a CUDA toolkit (nvcc on "
                  "PATH or CUDA_HOME set): `pip install --no-build-isolation -e .` or `make ext`")
    if archs == ():
        return no_kernels
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    if archs is not None:
        reason = ext.arch_reason(archs, tuple(torch.cuda.get_device_capability(device.index)))
        if reason:
            return reason
    if not ext.has_kernels("cuda"):
        return no_kernels
    return None


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """None if ``backend`` can run tensors on ``device``, else the reason it cannot."""
    device_type = torch.device(device).type
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend in ("reference", "portable"):
        return None
    if backend == "triton":
        return _triton_reason(device_type)
    if backend == "cpu":
        return _cpu_reason(device_type)
    return _cuda_reason(torch.device(device))


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
        reasons = {}
        for name in _PREFERENCE.get(device.type, ("reference",)):
            reason = unavailable_reason(name, device)
            if reason is None:
                if reasons and device.type not in _WARNED and _should_warn(name, device):
                    _warn_fallback(name, device, reasons)
                return name
            reasons[name] = reason
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (from {source}); expected one of {BACKENDS}")
    reason = unavailable_reason(backend, device)
    if reason:
        raise BackendUnavailable(f"backend {backend!r} (from {source}) cannot run on {device}: {reason}")
    return backend


def _should_warn(chosen: str, device: torch.device) -> bool:
    """Whether landing on ``chosen`` deserves a word: always on ``reference`` (a fused backend exists
    for every device type with a preference list); on Triton (a GPU) when a compiled extension is
    there but does not import or does not cover this GPU, a build the user made and does not get."""
    if chosen == "reference":
        return True
    from . import cuda as ext

    if not ext.is_built():
        return False  # never built: Triton is the plan
    if ext.load_error():
        return True
    archs = ext.cuda_archs()
    capability = tuple(torch.cuda.get_device_capability(device.index))
    return bool(archs) and ext.arch_reason(archs, capability) is not None


def _warn_fallback(chosen: str, device: torch.device, reasons: dict[str, str]) -> None:
    _WARNED.add(device.type)
    slow = " (50-150x slower than the fused kernels on a CPU)" if chosen == "reference" else ""
    why = "; ".join(f"{name!r}: {reason}" for name, reason in reasons.items())
    warnings.warn(
        f"mambaad_kernels: backend=None runs {device.type} tensors on the {chosen!r} backend{slow}, "
        f"because {why}. Set {ENV_VAR}={chosen} (or pass backend={chosen!r}) to choose it without this "
        f"warning; `python -m mambaad_kernels` shows what this machine has.",
        BackendFallbackWarning, stacklevel=4)


@functools.lru_cache(maxsize=None)
def kernel_module(backend: str) -> ModuleType:
    """The module of a non-reference backend: a fused one's ``scan_fwd`` / ``scan_bwd`` /
    ``states_shape``, the portable one's ``hss_scan``; each has ``SUPPORTED_DTYPES``."""
    return importlib.import_module(_KERNEL_MODULES[backend])
