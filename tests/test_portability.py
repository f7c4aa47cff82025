"""Portability: the CUDA architectures built against the GPU's, the warning when ``backend=None`` falls
back, ``python -m mambaad_kernels``, and (under CI's wheel step) that the installed wheel is what runs.

No GPU is needed: a GPU is faked by patching ``torch.cuda.is_available`` and
``torch.cuda.get_device_capability``, a failed extension import by a file that is not a library.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import backends
from mambaad_kernels import cuda as ext

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch):
    """No MAMBAAD_BACKEND, no cached reasons, no warning given yet; all restored afterwards."""
    monkeypatch.delenv("MAMBAAD_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_WARNED", set())
    backends._cpu_reason.cache_clear()
    yield
    backends._cpu_reason.cache_clear()


def _fake_gpu(monkeypatch, capability, archs):
    """A GPU of ``capability`` and an extension that loaded with CUDA code ``archs``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(ext, "load_error", lambda: None)
    monkeypatch.setattr(ext, "is_built", lambda: True)
    monkeypatch.setattr(ext, "cuda_archs", lambda: archs)
    monkeypatch.setattr(ext, "has_kernels", lambda device_type: True)


@pytest.mark.parametrize("code,capability,runs", [
    ("sm_80", (8, 0), True), ("sm_80", (8, 6), True), ("sm_80", (8, 9), True),
    ("sm_86", (8, 0), False), ("sm_80", (9, 0), False), ("sm_90", (12, 0), False),
    ("sm_120", (12, 1), True), ("sm_100", (10, 3), True), ("sm_100", (12, 0), False),
    ("compute_90", (9, 0), True), ("compute_90", (12, 0), True), ("compute_120", (13, 0), True),
    ("compute_120", (10, 0), False), ("compute_90", (8, 9), False),
    ("sm_90a", (9, 0), True), ("sm_90a", (9, 1), False), ("compute_90a", (10, 0), False),
    ("sm_100f", (10, 3), True), ("sm_100f", (12, 0), False),
])
def test_arch_runs_on(code, capability, runs):
    assert ext.arch_runs_on(code, capability) is runs


def test_arch_reason_names_the_rebuild():
    assert ext.arch_reason(("sm_80", "sm_90"), (9, 0)) is None
    assert ext.arch_reason(("sm_80", "sm_90"), (8, 6)) is None
    reason = ext.arch_reason(("sm_80", "sm_90"), (12, 0))
    assert reason.startswith("built for sm_80, sm_90; this GPU is sm_120; rebuild with "
                             "TORCH_CUDA_ARCH_LIST=12.0")
    assert "capability 8.0" in ext.arch_reason(("sm_80", "compute_80"), (7, 5))
    with pytest.raises(ValueError, match="sm_9x"):
        ext.arch_runs_on("sm_9x", (9, 0))


def test_faked_sm120_picks_triton_and_names_the_rebuild(fresh, monkeypatch):
    pytest.importorskip("triton")
    if backends._triton_reason("cuda") not in (None, "no CUDA device is available"):
        pytest.skip(backends._triton_reason("cuda"))
    _fake_gpu(monkeypatch, (12, 0), ("sm_80", "sm_90"))
    reason = backends.unavailable_reason("cuda", "cuda")
    assert "built for sm_80, sm_90; this GPU is sm_120; rebuild with TORCH_CUDA_ARCH_LIST=12.0" in reason
    with pytest.raises(mk.BackendUnavailable, match="TORCH_CUDA_ARCH_LIST=12.0"):
        mk.resolve_backend("cuda", "cuda")
    with pytest.warns(mk.BackendFallbackWarning, match="TORCH_CUDA_ARCH_LIST=12.0") as record:
        assert mk.resolve_backend(None, "cuda:0") == "triton"
    assert len(record) == 1
    assert mk.available_backends("cuda")[0] == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mk.resolve_backend(None, "cuda") == "triton"  # once per process


def test_faked_covered_gpu_picks_cuda(fresh, monkeypatch):
    _fake_gpu(monkeypatch, (9, 0), ("sm_80", "sm_90"))
    assert backends.unavailable_reason("cuda", "cuda") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mk.resolve_backend(None, "cuda") == "cuda"
    _fake_gpu(monkeypatch, (12, 1), ("sm_80", "sm_90", "sm_100", "sm_120", "compute_120"))
    assert backends.unavailable_reason("cuda", "cuda") is None


def test_no_cuda_kernels_is_not_an_arch_problem(fresh, monkeypatch):
    _fake_gpu(monkeypatch, (9, 0), ())
    assert "no CUDA kernels" in backends.unavailable_reason("cuda", "cuda")


def test_cpu_fallback_to_reference_warns_once_with_the_fix(fresh, monkeypatch):
    broken = ("the compiled extension mambaad_kernels._C does not import (ImportError: undefined "
              f"symbol: _ZN3c10); {ext.REBUILD_HINT}")
    monkeypatch.setattr(ext, "load_error", lambda: broken)
    with pytest.warns(mk.BackendFallbackWarning) as record:
        assert mk.resolve_backend(None, "cpu") == "reference"
    assert len(record) == 1
    message = str(record[0].message)
    for fix in ("make ext", "pip install --no-build-isolation -e .", "undefined symbol", "MAMBAAD_BACKEND"):
        assert fix in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mk.resolve_backend(None, "cpu") == "reference"


def test_reference_asked_for_is_silent(fresh, monkeypatch):
    monkeypatch.setattr(ext, "load_error", lambda: "the compiled extension mambaad_kernels._C is not built")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mk.resolve_backend("reference", "cpu") == "reference"
        monkeypatch.setenv("MAMBAAD_BACKEND", "reference")
        assert mk.resolve_backend(None, "cpu") == "reference"
        assert mk.resolve_backend(None, "meta") == "reference"  # no fused backend for meta tensors


def test_cuda_archs_binding():
    if ext.load_error():
        pytest.skip(ext.load_error())
    from mambaad_kernels import _C

    archs = _C.cuda_archs()
    assert isinstance(archs, list)
    assert tuple(archs) == ext.cuda_archs()
    if not _C.WITH_CUDA:
        assert archs == []
        return
    assert archs, "a CUDA build records its architectures"
    for code in archs:
        ext.arch_runs_on(code, (9, 0))  # parses
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        assert {"sm_80", "sm_90", "sm_100", "sm_120", "compute_120"} <= set(archs)  # the default


def _broken_copy(tmp_path: Path) -> Path:
    """A copy of the package whose compiled extension is a file that is not a library."""
    pkg = tmp_path / "mambaad_kernels"
    for src in (REPO / "mambaad_kernels").rglob("*.py"):
        dst = pkg / src.relative_to(REPO / "mambaad_kernels")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    import sysconfig

    (pkg / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))).write_bytes(b"not a shared library\n")
    return tmp_path


def _run(code: list[str], path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAMBAAD_BACKEND"}
    env.update(PYTHONPATH=str(path), **extra)
    return subprocess.run([sys.executable, *code], cwd=path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_extension_that_does_not_import_warns_once(tmp_path):
    path = _broken_copy(tmp_path)
    script = (
        "import torch, mambaad_kernels as mk\n"
        "assert mk.__file__.startswith(%r), mk.__file__\n"
        "x = torch.randn(1, 4, 3, 5)\n"
        "p = [torch.randn(8, 2 + 2 * 4, 4), torch.randn(8, 4, 2), torch.randn(8, 4),\n"
        "     torch.randn(32, 4), torch.randn(32)]\n"
        "for _ in range(3):\n"
        "    mk.hss_scan(x, *p)\n" % str(path)
    )
    res = _run(["-W", "always", "-c", script], path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("BackendFallbackWarning") == 1, res.stderr
    for fix in ("does not import", "make ext", "pip install --no-build-isolation -e .", "reference"):
        assert fix in res.stderr
    silent = _run(["-W", "error", "-c", script], path, MAMBAAD_BACKEND="reference")
    assert silent.returncode == 0, silent.stderr


def test_main_reports_the_import_error_in_full(tmp_path):
    res = _run(["-m", "mambaad_kernels"], _broken_copy(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for part in ("torch " + torch.__version__, "triton", "compiled extension:", "imports: no",
                 "the import error in full", "Traceback", "ImportError",
                 "cpu tensors: backend=None takes 'reference'", "cuda tensors:", "GPUs:"):
        assert part in out, out


def test_main_on_this_checkout():
    res = _run(["-m", "mambaad_kernels"], REPO)
    assert res.returncode == 0, res.stderr
    assert "cpu tensors: backend=None takes" in res.stdout
    if ext.load_error() is None and Path(mk.__file__).parent == REPO / "mambaad_kernels":
        assert "imports: yes" in res.stdout and "CUDA code built:" in res.stdout


@pytest.mark.skipif(os.environ.get("MAMBAAD_TEST_INSTALLED") != "1",
                    reason="CI's wheel step sets MAMBAAD_TEST_INSTALLED=1")
def test_the_installed_wheel_runs():
    """Under CI's wheel step the package and its extension come from the installed wheel."""
    here = Path(mk.__file__).resolve().parent
    assert here != REPO / "mambaad_kernels" and here.parent.name == "site-packages", here
    assert ext.load_error() is None
    assert "site-packages" in ext.extension_path()
    assert mk.resolve_backend(None, "cpu") == "cpu"


def test_arch_check_reads_the_binding(fresh, monkeypatch):
    """The archs come from _C.cuda_archs() at each check: a faked binding is seen at once."""
    if ext.load_error():
        pytest.skip(ext.load_error())
    from mambaad_kernels import _C

    monkeypatch.setattr(_C, "cuda_archs", lambda: ["sm_80", "sm_90"], raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    reason = backends.unavailable_reason("cuda", "cuda")
    assert "built for sm_80, sm_90; this GPU is sm_120; rebuild with TORCH_CUDA_ARCH_LIST=12.0" in reason
