"""Build and install mambaad_kernels (with its compiled extension) and mambaad.

The compiled extension ``mambaad_kernels._C`` is built from ``csrc/`` with ninja through torch's
BuildExtension: the C++ sources always, the CUDA sources when a CUDA toolkit is found (nvcc on
PATH or CUDA_HOME), for ``TORCH_CUDA_ARCH_LIST`` if set, else for the GPUs visible at build time
(torch's own default), else for :data:`DEFAULT_CUDA_ARCHS` (Ampere, Hopper, Blackwell, and PTX of
the newest for later GPUs). The architectures built are compiled into the extension
(``mambaad_kernels._C.cuda_archs()``), so that a GPU they do not cover is detected before a launch.
``MAMBAAD_BUILD_EXT=0`` skips the extension and installs the pure-Python packages only. The CPU
kernels are threaded with OpenMP where the compiler has it (not Apple clang: one thread there;
``MAMBAAD_OPENMP=0`` / ``1`` decides without asking the compiler).
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

# The oldest torch the package works with: torch.library.custom_op, register_fake and
# register_autograd (mambaad_kernels/fused.py, cuda.py) are 2.4 APIs. CI tests it (Makefile test-oldtorch).
MIN_TORCH = "2.4"

# TORCH_CUDA_ARCH_LIST when none is set and no GPU is visible: SASS for Ampere (8.0, also runs on
# 8.6 / 8.7 / 8.9), Hopper (9.0), Blackwell (10.0 data centre, 12.0 consumer) and PTX of the newest,
# which the driver compiles for later GPUs.
DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0;12.0+PTX"

# The C++ flags of the extension's sources, whatever the compiler (GCC, clang, Apple clang); the
# aarch64 harness (tests/aarch64) and `make clang-check` read them from here. -ffp-contract=fast:
# fuse a * b + c into FMAs (ISO C++ mode leaves it off otherwise).
CXX_FLAGS = ["-O3", "-std=c++20", "-ffp-contract=fast", "-Wno-psabi"]
# OpenMP, for the CPU kernels' threads (at::parallel_for), where the compiler has it (_openmp_flags).
OPENMP_FLAGS = ["-fopenmp"]


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern), recursive=True))


def _cuda_home_from_nvcc():
    """Set CUDA_HOME from nvcc itself when the nvcc on PATH is a wrapper outside the toolkit.

    torch guesses CUDA_HOME as the parent of nvcc's directory; for a wrapper script such as
    /usr/local/bin/nvcc that is /usr/local, without the toolkit's headers and libcudart. nvcc
    reports its real installation (TOP) in a dry run.
    """
    nvcc = shutil.which("nvcc")
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or nvcc is None:
        return
    if os.path.exists(os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include", "cuda_runtime.h")):
        return
    try:
        res = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return
    for line in (res.stdout + res.stderr).splitlines():
        if "TOP=" in line:
            top = os.path.normpath(line.split("TOP=", 1)[1].strip().strip('"'))
            if os.path.exists(os.path.join(top, "include", "cuda_runtime.h")):
                os.environ["CUDA_HOME"] = top
            return


def _set_cuda_arch_list() -> None:
    """Fill TORCH_CUDA_ARCH_LIST when unset and no GPU is visible (torch then builds for none)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return  # torch builds for the visible GPUs
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS


def _archs_define(nvcc_flags: list[str]) -> str:
    """``-DMAMBAAD_CUDA_ARCHS=sm_80,sm_90,compute_90``: the code nvcc will embed, for _C.cuda_archs()."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags  # what BuildExtension passes to nvcc

    codes = set()
    for flag in _get_cuda_arch_flags(nvcc_flags):
        for group in re.findall(r",code=\[?([\w,]+)\]?", flag):
            codes.update(group.split(","))
    if not codes:
        raise RuntimeError("no CUDA architecture flags: set TORCH_CUDA_ARCH_LIST (e.g. 9.0)")

    def key(code: str) -> tuple[int, bool, str]:  # by number, SASS before PTX
        return int(re.sub(r"\D", "", code)), code.startswith("compute"), code

    return "-DMAMBAAD_CUDA_ARCHS=" + ",".join(sorted(codes, key=key))


def _openmp_flags() -> list[str]:
    """OPENMP_FLAGS if the C compiler torch builds the sources with (CC, else Python's) compiles and
    links an OpenMP program with them, else [] (Apple clang has no OpenMP): the CPU kernels then
    run on one thread. MAMBAAD_OPENMP=1 / 0 decides without the probe."""
    forced = os.environ.get("MAMBAAD_OPENMP")
    if forced in ("0", "1"):
        return OPENMP_FLAGS if forced == "1" else []
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            ok = subprocess.run([*cc, *OPENMP_FLAGS, src, "-o", os.path.join(tmp, "omp")],
                                capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        print(f"mambaad: {' '.join(cc)} has no OpenMP ({' '.join(OPENMP_FLAGS)}): the CPU kernels will run "
              "on one thread (MAMBAAD_OPENMP=1 forces the flags)", file=sys.stderr)
    return OPENMP_FLAGS if ok else []


def extension_args():
    if os.environ.get("MAMBAAD_BUILD_EXT", "1") == "0":
        return {}
    cpp = _sources("csrc/**/*.cpp")
    if not cpp:
        return {}
    if os.environ.get("MAMBAAD_BUILD_CUDA", "1") != "0":
        _cuda_home_from_nvcc()  # before torch.utils.cpp_extension reads CUDA_HOME
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cu = _sources("csrc/**/*.cu")
    with_cuda = bool(cu) and CUDA_HOME is not None and os.environ.get("MAMBAAD_BUILD_CUDA", "1") != "0"
    openmp = _openmp_flags()
    cxx = CXX_FLAGS + openmp
    # No -march=native: the CPU scan loops are compiled once per instruction set (csrc/cpu/isa_*.cpp)
    # and chosen at run time, so one build runs on any CPU of its architecture. MAMBAAD_NATIVE=1
    # compiles everything for the building machine only (a build that may not run elsewhere).
    if os.environ.get("MAMBAAD_NATIVE", "0") == "1":
        cxx.append("-march=native")
    kwargs = dict(name="mambaad_kernels._C", include_dirs=[os.path.join(HERE, "csrc")],
                  extra_link_args=openmp)
    if with_cuda:
        _set_cuda_arch_list()
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
                "-DMAMBAAD_WITH_CUDA"]
        cxx_cuda = cxx + ["-DMAMBAAD_WITH_CUDA", _archs_define(nvcc)]
        ext = CUDAExtension(sources=cpp + cu, extra_compile_args={"cxx": cxx_cuda, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=cpp, extra_compile_args={"cxx": cxx}, **kwargs)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(
    name="mambaad",
    version="0.1.0",
    description="Fused multi-direction state-space scan kernels for MambaAD, and a thin MambaAD model",
    packages=find_packages(include=["mambaad_kernels", "mambaad_kernels.*", "mambaad", "mambaad.*"]),
    python_requires=">=3.10",
    install_requires=[f"torch>={MIN_TORCH}", "numpy", "timm"],
    # optional: mambaad.anomalib (MambaAD as an anomalib model), hf:// checkpoints (mambaad.hub), the
    # ONNX / OpenVINO export and runtimes (deploy); requirements-extras.txt pins what CI tests
    extras_require={"anomalib": ["anomalib>=2.7,<3", "huggingface_hub>=0.24"],
                    "hub": ["huggingface_hub>=0.24"],
                    "deploy": ["onnx>=1.17", "onnxscript>=0.3", "onnxruntime>=1.20", "openvino>=2025.0"]},
    entry_points={"console_scripts": ["mambaad = mambaad.cli:main"]},
    **extension_args(),
)
