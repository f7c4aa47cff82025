"""The builds of the portability checks (tests/aarch64/README.md).

- The aarch64 harness: the extension's CPU sources (csrc/cpu/*.cpp) and C++ flags (setup.py's
  CXX_FLAGS, OPENMP_FLAGS) with harness.cpp, against the ATen shim in shim/, by GCC's aarch64
  cross compiler (with OpenMP: what ``pip install`` builds on Linux aarch64) or by clang for
  aarch64 (without OpenMP: what Apple clang builds on macOS), warnings as errors; run under
  qemu-aarch64. Built once per content of its inputs, under build/aarch64/.
- ``clang_check``: the extension's C++ sources compiled, not linked, by clang++ with setup.py's
  flags and torch's headers, warnings as errors in our sources, for this machine and for aarch64
  (``python -m tests.aarch64.build clang-check``, run by ``make clang-check``).
"""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CSRC = REPO / "csrc"
# What the Makefile's test-tools target installs from Debian (keep the two lists the same).
APT_PACKAGES = ["g++-aarch64-linux-gnu", "qemu-user", "clang", "libomp-dev"]
INSTALL_HINT = f"apt-get install -y {' '.join(APT_PACKAGES)} (as root; `make test-tools` runs it)"
SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's aarch64 libraries, for qemu-aarch64 -L
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
# The two aarch64 builds: compiler command, whether OpenMP is on.
COMPILERS = {
    "gcc": (["aarch64-linux-gnu-g++"], True),
    "clang": (["clang++", "--target=aarch64-linux-gnu"], False),
}
# What each needs: the aarch64 builds run under qemu; clang's aarch64 builds use the cross GCC's
# libstdc++ and linker.
TOOLS = {"gcc": ["aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump", "qemu-aarch64"],
         "clang": ["clang++", "aarch64-linux-gnu-g++", "qemu-aarch64"],
         "clang-check": ["clang++", "aarch64-linux-gnu-g++"]}


def setup_flags() -> tuple[list[str], list[str]]:
    """setup.py's CXX_FLAGS and OPENMP_FLAGS, read from its source (importing it would run setup())."""
    found = {}
    for node in ast.parse((REPO / "setup.py").read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id in ("CXX_FLAGS", "OPENMP_FLAGS"):
            found[target.id] = ast.literal_eval(node.value)
    return found["CXX_FLAGS"], found["OPENMP_FLAGS"]


def missing_tools(compiler: str) -> list[str]:
    return [t for t in TOOLS[compiler] if shutil.which(t) is None]


def harness_sources() -> list[Path]:
    return sorted(CSRC.glob("cpu/*.cpp")) + [HERE / "harness.cpp"]


def _inputs_digest(command: list[str], flags: list[str]) -> str:
    """A digest of what the build reads: the compiler's version, the flags, every source and header."""
    h = hashlib.sha256()
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60).stdout
    h.update(version.encode() + repr(flags).encode())
    files = sorted(CSRC.rglob("*.h")) + sorted(HERE.rglob("*.h")) + harness_sources()
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{res.stdout}{res.stderr}")


def build_harness(compiler: str) -> Path:
    """The harness binary built by ``compiler`` ("gcc" or "clang"); its object files lie beside it."""
    command, openmp = COMPILERS[compiler]
    cxx_flags, openmp_flags = setup_flags()
    flags = cxx_flags + (openmp_flags if openmp else []) + WARNINGS
    out = REPO / "build" / "aarch64" / f"{compiler}-{_inputs_digest(command, flags)}"
    binary = out / "harness"
    if binary.exists():
        return binary
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{compiler}-", dir=out.parent))
    includes = [f"-I{CSRC}", f"-I{HERE / 'shim'}"]
    jobs = [[*command, *flags, *includes, "-c", str(src), "-o", str(tmp / f"{src.stem}.o")]
            for src in harness_sources()]
    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(_run, jobs))
    _run([*command, *(openmp_flags if openmp else []), *sorted(str(p) for p in tmp.glob("*.o")),
          "-o", str(tmp / "harness")])
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    for old in out.parent.glob(f"{compiler}-*"):  # earlier inputs' builds
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return binary


def run_harness(binary: Path, cases: Path, results: Path, threads: int) -> str:
    """Runs the harness under qemu-aarch64 with ``threads`` OpenMP threads and the outputs
    NaN-poisoned (MAMBAAD_POISON=1); returns its standard output."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBAAD_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    env.update(OMP_NUM_THREADS=str(threads), MAMBAAD_POISON="1")
    res = subprocess.run(["qemu-aarch64", "-L", SYSROOT, str(binary), str(cases), str(results)],
                         capture_output=True, text=True, env=env, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"harness failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res.stdout


def clang_check(compiler: str = "clang++") -> None:
    """Compiles (-c, no link) each C++ source of the extension with ``compiler``: setup.py's flags,
    what torch's build adds for an extension, warnings as errors; torch's and Python's headers are
    system headers (their warnings are not ours). Twice on x86-64: for this machine with OpenMP,
    and for aarch64 without OpenMP, as Apple clang builds on macOS (against this machine's torch
    and Python headers, which serve both)."""
    import torch
    from torch.utils.cpp_extension import include_paths

    cxx_flags, openmp_flags = setup_flags()
    system = [*include_paths(), sysconfig.get_paths()["include"]]
    common = [*cxx_flags, *WARNINGS, "-fPIC", f"-I{CSRC}", *(f"-isystem{p}" for p in system),
              "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    configs = {"this machine (OpenMP)": openmp_flags}
    if os.uname().machine == "x86_64":
        configs["aarch64 (no OpenMP)"] = ["--target=aarch64-linux-gnu"]
    sources = sorted(CSRC.rglob("*.cpp"))
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [[compiler, *extra, *common, "-c", str(src), "-o", str(Path(tmp) / f"{c}-{i}.o")]
                for c, extra in enumerate(configs.values()) for i, src in enumerate(sources)]
        with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            list(pool.map(_run, jobs))
    print(f"{compiler}: {len(sources)} sources compiled with {' '.join(cxx_flags + WARNINGS)} for "
          + " and ".join(configs))


if __name__ == "__main__":
    if sys.argv[1:] != ["clang-check"]:
        sys.exit("usage: python -m tests.aarch64.build clang-check")
    if missing_tools("clang-check"):  # fatal under CI=true, a note on a developer's machine
        msg = f"clang-check: {', '.join(missing_tools('clang-check'))} not found: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            sys.exit(msg)
        print(msg + "; not checked")
        sys.exit(0)
    try:
        clang_check()
    except RuntimeError as exc:
        sys.exit(f"clang-check failed:\n{exc}")
