"""``python -m mambaad_kernels``: what this machine can run, and why each missing backend is missing.

Prints the versions (Python, torch and its CUDA, Triton), the compiled extension (its file, whether it
imports, with the whole error when it does not, the CPU kernel variant in use and those compiled in,
and the CUDA architectures built into it), the GPUs
(compute capability, covered by the build or not), and for CPU and CUDA tensors which backend
``backend=None`` takes and the reason for every backend that cannot run. Exit status 0: it reports.
"""

from __future__ import annotations

import os
import platform
import sys

import torch

from . import __version__
from . import cuda as ext
from .backends import BACKENDS, ENV_VAR, available_backends, unavailable_reason


def _triton_version() -> str:
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - any import failure is what we report
        return f"not importable ({type(exc).__name__}: {exc})"
    return triton.__version__


def _extension_lines() -> list[str]:
    path = ext.extension_path()
    lines = [f"compiled extension: {path or 'not built'}"]
    err = ext.load_error()
    if err is None:
        lines.append("  imports: yes")
        archs = ext.cuda_archs()
        if archs is None:
            built = "unknown (built before the architectures were recorded: rebuild it)"
        else:
            built = ", ".join(archs) if archs else "none (no CUDA kernels)"
        lines.append(f"  CUDA code built: {built}")
        lines.extend(_cpu_isa_lines())
    else:
        lines.append(f"  imports: no: {err}")
        details = ext.load_error_details()
        if details:
            lines.append("  the import error in full:")
            lines.extend("    " + line for line in details.rstrip().splitlines())
    return lines


def _cpu_isa_lines() -> list[str]:
    try:
        active = ext.cpu_isa()
    except (ValueError, RuntimeError) as exc:  # a bad MAMBAAD_CPU_ISA / ATEN_CPU_CAPABILITY
        active = f"none: {exc}"
    else:
        lanes = next((v["lanes"] for v in ext.cpu_isas() if v["name"] == active), "?")
        active = f"{active} ({lanes} float lanes)"
    forced = [f"{v}={os.environ[v]}" for v in ("MAMBAAD_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(v)]
    compiled = ", ".join(
        f"{v['name']} ({'runs here' if v['supported'] else 'not on this CPU'}"
        f"{'' if v['automatic'] else ', testing only'})" for v in ext.cpu_isas())
    return [f"  CPU kernels in use: {active}" + (f" ({', '.join(forced)})" if forced else ""),
            f"  CPU kernels compiled: {compiled}"]


def _gpu_lines() -> list[str]:
    if not torch.cuda.is_available():
        return ["GPUs: none visible"]
    lines = ["GPUs:"]
    archs = ext.cuda_archs()
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        if archs:
            reason = ext.arch_reason(archs, (major, minor))
            covered = "covered by the build" if reason is None else f"not covered: {reason}"
        else:
            covered = "no CUDA kernels built"
        lines.append(f"  cuda:{i} {torch.cuda.get_device_name(i)}, sm_{major}{minor}: {covered}")
    return lines


def _backend_lines(device: str) -> list[str]:
    chosen = available_backends(device)[0]
    env = os.environ.get(ENV_VAR)
    note = f" ({ENV_VAR}={env} overrides it)" if env else ""
    lines = [f"{device} tensors: backend=None takes {chosen!r}{note}"]
    for name in BACKENDS:
        reason = unavailable_reason(name, device)
        lines.append(f"  {name:<10} {'available' if reason is None else 'missing: ' + reason}")
    return lines


def report() -> str:
    """The whole report, as printed by ``python -m mambaad_kernels``."""
    cuda = torch.version.cuda or "none (a CPU-only torch)"
    lines = [
        f"mambaad_kernels {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {cuda}), "
        f"triton {_triton_version()}",
        *_extension_lines(),
        *_gpu_lines(),
        *_backend_lines("cpu"),
        *_backend_lines("cuda"),
    ]
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
