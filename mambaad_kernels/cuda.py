"""Thin wrapper over the compiled extension ``mambaad_kernels._C`` (CPU and CUDA fused kernels).

The import is guarded: importing this module never fails. :func:`load_error` says why the
extension is not usable (and how to build it); the backends ``"cpu"`` and ``"cuda"`` report that
reason when asked for. The kernels are torch ops registered by the extension under the
``mambaad::`` namespace (``mambaad::scan_fwd``, ``mambaad::scan_bwd``), dispatched by device;
their fake (meta) implementations are registered here, so ``torch.compile`` traces them too. The
autograd is not here: it lives once, in :mod:`mambaad_kernels.fused`, for every fused backend.

This module implements the kernel contract of :mod:`mambaad_kernels.fused` (``scan_fwd``,
``scan_bwd``, ``states_shape``) for both backends ``"cpu"`` and ``"cuda"``.

:func:`cpu_isa` names the instruction-set variant the CPU kernels run (chosen at run time, see
:func:`cpu_isas`); :func:`cuda_archs` lists the CUDA code the binary carries and :func:`arch_reason` says whether it
runs on a GPU of a given compute capability (checked before a launch, not by CUDA's "no kernel image
is available").
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import sys
import traceback

import torch
from torch import Tensor

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(needs a C++ compiler and ninja; a CUDA toolkit for the CUDA kernels; MAMBAAD_BUILD_EXT=0 "
    "skips the build)"
)
REBUILD_HINT = (
    "it was probably built against another torch (a `pip install .` without --no-build-isolation "
    "builds against the torch its isolated build environment downloads): rebuild it against this "
    "torch with `make ext` or `pip install --no-build-isolation -e .` from the repository root; "
    "`python -m mambaad_kernels` shows the whole error"
)

# The CUDA kernels use bf16 arithmetic and instructions of compute capability 8.0 (Ampere) and later.
MIN_CUDA_CAPABILITY = (8, 0)

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
    """None when the extension is loaded, else why not and how to build (or rebuild) it."""
    global _LOAD_TRACEBACK
    if not is_built():
        return f"the compiled extension mambaad_kernels._C is not built; {BUILD_HINT}"
    try:
        from . import _C  # noqa: F401  (registers the mambaad:: ops)
    except Exception as exc:  # noqa: BLE001 - an ImportError, or an error while registering the ops
        _LOAD_TRACEBACK = "".join(traceback.format_exception(exc))
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (f"the compiled extension mambaad_kernels._C does not import ({type(exc).__name__}: "
                f"{first}); {REBUILD_HINT}")
    _register_fakes()
    return None


_LOAD_TRACEBACK: str | None = None


def load_error_details() -> str | None:
    """The full traceback of the extension's failed import (None when it imported or is not built)."""
    load_error()
    return _LOAD_TRACEBACK


def is_built() -> bool:
    """Whether a compiled ``mambaad_kernels._C`` file is there to import (loaded or not)."""
    return _EXT in sys.modules or importlib.util.find_spec(_EXT) is not None


def extension_path() -> str | None:
    """The file of the compiled extension, or None when it is not built."""
    spec = importlib.util.find_spec(_EXT)
    return spec.origin if spec is not None else None


def cuda_archs() -> tuple[str, ...] | None:
    """The CUDA code compiled into the extension: ``("sm_80", "sm_90", "compute_90")``.

    ``sm_XY`` is machine code for compute capability X.Y, ``compute_XY`` PTX that the driver compiles
    for X.Y and later. ``()`` when the extension has no CUDA kernels (or does not load); None when
    it has CUDA kernels but predates this record (then no GPU can be checked against it).
    """
    if load_error():
        return ()
    from . import _C

    if not hasattr(_C, "cuda_archs"):
        return None if getattr(_C, "WITH_CUDA", False) else ()
    return tuple(_C.cuda_archs())


def cpu_isa() -> str | None:
    """The instruction-set variant of the CPU kernels in use: ``"avx512"``, ``"avx2"``,
    ``"baseline"`` (any x86-64), ``"neon"`` (aarch64) ...; None when the extension does not load.

    The extension carries the CPU scan compiled once per instruction set and takes the best this CPU
    supports at the first call, unless ``MAMBAAD_CPU_ISA`` names one (an error if this CPU cannot
    run it) or ``ATEN_CPU_CAPABILITY`` caps it (``default``, ``avx2``, ``avx512``, as torch reads it).
    Raises ValueError when one of those variables names no variant.
    """
    if load_error():
        return None
    from . import _C

    return _C.cpu_isa()


def cpu_isas() -> list[dict]:
    """The CPU kernel variants compiled in, best first: name, float lanes per vector, whether this
    CPU runs it, whether it is chosen automatically (``avx2_16`` is a testing variant: AVX2 code at
    AVX-512's 16 lanes). [] when the extension does not load."""
    if load_error():
        return []
    from . import _C

    return [dict(name=n, lanes=w, supported=s, automatic=a) for n, w, s, a in _C.cpu_isas()]


def set_cpu_isa(name: str) -> str:
    """Run the CPU kernels as the named variant from now on (``""``: back to the automatic or
    environment choice). Returns the name in use before (``""`` when none was chosen yet). Raises
    ValueError for a variant not compiled in or one this CPU cannot run."""
    _require()
    from . import _C

    return _C.set_cpu_isa(name)


def _parse_arch(code: str) -> tuple[str, int, int, str]:
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", code)
    if m is None:
        raise ValueError(f"unrecognised CUDA architecture {code!r} (expected e.g. sm_90 or compute_90)")
    return m[1], int(m[2]), int(m[3]), m[4]


def arch_runs_on(code: str, capability: tuple[int, int]) -> bool:
    """Whether CUDA code ``code`` (``sm_86``, ``compute_90``, ``sm_90a``) runs on a GPU of ``capability``.

    Machine code runs on the same major version with an equal or higher minor (CUDA's binary
    compatibility); PTX on any equal or later capability (compiled by the driver). Architecture-
    specific code (``sm_90a``) runs only on its own capability, family code (``sm_100f``) on its
    major version from its minor on.
    """
    kind, major, minor, suffix = _parse_arch(code)
    if suffix == "a":
        return (major, minor) == tuple(capability)
    if kind == "sm" or suffix == "f":
        return major == capability[0] and minor <= capability[1]
    return (major, minor) <= tuple(capability)


def arch_reason(archs: tuple[str, ...], capability: tuple[int, int]) -> str | None:
    """None if the CUDA code ``archs`` runs on a GPU of ``capability``, else why not and the fix.

    Args:
        archs: what :func:`cuda_archs` returns (non-empty).
        capability: the GPU's ``(major, minor)``, as ``torch.cuda.get_device_capability`` gives it.
    """
    major, minor = capability
    gpu = f"sm_{major}{minor}"
    if tuple(capability) < MIN_CUDA_CAPABILITY:
        need = ".".join(map(str, MIN_CUDA_CAPABILITY))
        return f"this GPU is {gpu}; the CUDA kernels need compute capability {need} or newer"
    if any(arch_runs_on(code, capability) for code in archs):
        return None
    return (f"built for {', '.join(archs)}; this GPU is {gpu}; rebuild with "
            f"TORCH_CUDA_ARCH_LIST={major}.{minor} (`TORCH_CUDA_ARCH_LIST={major}.{minor} "
            f"pip install --no-build-isolation -e .`, or `make ext`)")


@torch.compiler.assume_constant_result
@functools.lru_cache(maxsize=None)
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
