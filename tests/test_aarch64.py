"""The CPU kernels' NEON variant, executed: the extension's CPU sources and flags built for aarch64
(tests/aarch64: the harness, with a shim for the few torch headers the drivers include) and run
under qemu-aarch64, against the float64 reference computed here.

Two aarch64 builds: GCC's cross compiler with OpenMP (what ``pip install`` builds on Linux aarch64;
run on 2 threads, and on 1 and 3 for the bits) and clang without OpenMP (what Apple clang builds
on macOS). For each, every case's forward output, checkpoints and six gradients (dx, dx_dbl,
d_dt_w, d_dt_b, d_A_logs, d_Ds) are compared with the reference: HSS and GSS, K = 1, 2, 4, 8,
float32, float16 and bfloat16 inputs (parameters float32 or x's dtype) and float64, N = 16 (the
unrolled loops) and 5, a 9 x 15 grid (L = 135: two whole checkpoint chunks of 64 and a partial
one; neither L nor the channels a multiple of the 4 lanes), contiguous and channels-last inputs.
The tolerances are those the x86 variants
meet in tests/test_cpu_isa.py. Speed under emulation means nothing: nothing here is timed.

The tools come from Debian (``make test-tools``). Without them the tests skip with the install
command, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import cuda as ext
from mambaad_kernels import fused, reference

from . import kernel_contract
from .aarch64 import build, tensorfile
from .parity import make_params, make_x, rel_err

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
GRADS = ["dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"]
# tests/test_cpu_isa.py's tolerances (relative to the largest reference value): the output and the
# checkpoints 1e-5 and the gradients 1e-4 in float32 arithmetic, 1e-9 in float64; an output
# rounded to float16 / bfloat16 1e-2 (the gradients stay float32).
OUT_TOL = {F32: 1e-5, F16: 1e-2, BF16: 1e-2, F64: 1e-9}
CHUNK = 64  # the CPU kernels' checkpoint interval (hss_math.h kCpuStateChunk)
THREADS = 2


@dataclass(frozen=True)
class Case:
    k: int
    grouped: bool
    dtype: torch.dtype
    d: int  # channels: Dk = d (HSS) or d / k (GSS)
    h: int = 9
    w: int = 15
    b: int = 2
    n: int = 16
    r: int = 3
    method: str = "hilbert"
    param_dtype: torch.dtype = F32
    channels_last: bool = False

    @property
    def id(self) -> str:
        dt = {F32: "f32", F64: "f64", F16: "f16", BF16: "bf16"}[self.dtype]
        parts = ["gss" if self.grouped else "hss", f"k{self.k}", dt, f"n{self.n}", f"{self.h}x{self.w}"]
        if self.param_dtype != F32:
            parts.append("params-" + dt)
        if self.channels_last:
            parts.append("channels_last")
        return "-".join(parts)


def _grid_cases() -> list[Case]:
    methods = {1: "hilbert", 2: "scan", 4: "zorder", 8: "zigzag"}
    cases = []
    for grouped in (False, True):
        for k in (1, 2, 4, 8):
            for dtype in (F32, F16, BF16):
                # GSS: 5 channels per direction (a vector and one lane); HSS: 21 (5 vectors and one lane).
                # Half inputs take x's dtype for the parameters in GSS, float32 in HSS (both allowed).
                pdt = dtype if grouped and dtype != F32 else F32
                d = 5 * k if grouped else 21
                cases.append(Case(k, grouped, dtype, d=d, method=methods[k], param_dtype=pdt))
    return cases


CASES = _grid_cases() + [
    Case(4, False, F64, d=19, param_dtype=F64),  # the float64 loops
    Case(8, True, F64, d=24, method="sweep", param_dtype=F64),
    Case(2, False, F32, d=13, n=5, method="sweep"),  # N unknown at compile time: the general loops
    Case(4, True, BF16, d=28, n=5, r=2),
    Case(4, False, F32, d=20, channels_last=True),  # rows copied into the lane layout
    Case(2, True, F16, d=14, method="zigzag", channels_last=True),  # converted one value at a time
    Case(8, False, F32, d=6, h=1, w=3, b=1),  # L (3) under the lane count
]


def _require(compiler: str) -> None:
    missing = build.missing_tools(compiler)
    if missing:
        msg = f"{', '.join(missing)} not found: {build.INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {msg}")
        pytest.skip(msg)


def _inputs(case: Case, seed: int) -> list[torch.Tensor]:
    """[x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, dout] of the op mambaad::scan_fwd / scan_bwd."""
    gen = torch.Generator().manual_seed(seed)
    layout = "channels_last" if case.channels_last else "contiguous"
    x = make_x(case.b, case.d, case.h, case.w, "cpu", case.dtype, layout, gen).flatten(2)  # (b, d, l)
    xpw, dt_w, dt_b, A_logs, Ds = make_params(case.d, case.n, case.r, case.k, case.grouped, "cpu",
                                              case.param_dtype, gen)
    x_dbl = fused.project(x, xpw.to(F64 if case.dtype == F64 else F32), case.grouped)  # (b, k, r + 2n, l)
    paths = mk.scan_paths(case.h, case.w, case.method, case.k, dtype=torch.int32)  # (k, l)
    dout = make_x(case.b, case.d, case.h, case.w, "cpu", case.dtype, layout, gen).flatten(2)
    return [x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, dout]


def reference_op(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, dout, grouped):
    """The op's results in float64 from mambaad_kernels.reference: out (B, D, L) and the six
    gradients by autograd through reference.selective_scan; the checkpoints (B, K, Dk, J, N) from
    the contract's recurrence (tests/kernel_contract.py) at the kernels' interval."""
    ins = [t.detach().double().requires_grad_() for t in (x, x_dbl, dt_w, dt_b, A_logs, Ds)]
    x64, xd64, w64, b64, al64, ds64 = ins
    b, d, l = x.shape
    k, dk, r = dt_w.shape
    n = A_logs.shape[1]
    idx = paths.long()  # (k, l)
    first = torch.arange(k)[:, None] * dk if grouped else torch.zeros(k, 1, dtype=torch.long)
    chans = first + torch.arange(dk)  # (k, dk): the channel of (k, d)
    u = x64[:, chans[:, :, None], idx[:, None, :]]  # (b, k, dk, l)
    rows = torch.gather(xd64, 3, idx[None, :, None, :].expand(b, k, r + 2 * n, l))  # (b, k, r + 2n, l)
    dts, bs, cs = rows.split([r, n, n], 2)  # (b, k, r | n | n, l)
    delta = torch.einsum("kdr,bkrl->bkdl", w64, dts)  # (b, k, dk, l)
    y = reference.selective_scan(u.flatten(1, 2), delta.flatten(1, 2), -torch.exp(al64), bs, cs, ds64,
                                 delta_bias=b64.flatten(), delta_softplus=True)  # (b, k dk, l)
    y = y.view(b, k, dk, l)
    out = x64.new_zeros(b, d, l)
    for kk in range(k):  # each direction's steps back to their grid positions, summed over k
        where = (torch.arange(b)[:, None, None], chans[kk][None, :, None], idx[kk][None, None, :])
        out = out.index_put(where, y[:, kk], accumulate=True)  # (b, d, l)
    grads = torch.autograd.grad(out, ins, dout.double())
    with torch.no_grad():
        old = kernel_contract.CHUNK
        kernel_contract.CHUNK = CHUNK
        try:
            _, states = kernel_contract.scan_fwd(*(t.double() for t in (x, x_dbl, dt_w, dt_b, A_logs, Ds)),
                                                 paths, grouped, True)
        finally:
            kernel_contract.CHUNK = old
    return {"out": out.detach(), "states": states, **dict(zip(GRADS, grads, strict=True))}


_REFERENCES: dict[str, dict[str, torch.Tensor]] = {}


def _reference(case: Case, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    if case.id not in _REFERENCES:
        _REFERENCES[case.id] = reference_op(*inputs, case.grouped)
    return _REFERENCES[case.id]


@pytest.fixture(scope="module")
def seed() -> int:
    """Fresh inputs each run; MAMBAAD_AARCH64_SEED repeats a run (the seed is in every failure)."""
    return int(os.environ.get("MAMBAAD_AARCH64_SEED") or int.from_bytes(os.urandom(4), "little") % 2**31)


@pytest.fixture(scope="module")
def inputs(seed) -> dict[str, list[torch.Tensor]]:
    return {c.id: _inputs(c, seed + i) for i, c in enumerate(CASES)}


def _run(compiler: str, cases: list[Case], inputs, tmp: Path, threads: int):
    binary = build.build_harness(compiler)
    cases_file, results_file = tmp / f"{compiler}-{threads}.cases", tmp / f"{compiler}-{threads}.results"
    tensorfile.write_cases(cases_file, [(c.grouped, inputs[c.id]) for c in cases])
    stdout = build.run_harness(binary, cases_file, results_file, threads)
    return stdout, dict(zip([c.id for c in cases], tensorfile.read_results(results_file), strict=True))


@pytest.fixture(scope="module", params=["gcc", "clang"])
def neon(request, inputs, tmp_path_factory):
    """(compiler, harness stdout, results per case id) of every case, built by that compiler."""
    _require(request.param)
    stdout, results = _run(request.param, CASES, inputs, tmp_path_factory.mktemp("aarch64"), THREADS)
    return request.param, stdout, results


def test_runs_the_neon_variant(neon):
    """The harness ran the variant an aarch64 CPU gets: 'neon', 4 float lanes."""
    _, stdout, _ = neon
    assert stdout.splitlines()[0] == "isa neon 4", stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_float64_reference(neon, inputs, seed, case):
    """Output, checkpoints and the six gradients against reference_op, outputs NaN-poisoned."""
    compiler, _, results = neon
    got = results[case.id]
    assert not isinstance(got, str), f"the op raised: {got}"
    want = _reference(case, inputs[case.id])
    ct = F64 if case.dtype == F64 else F32
    assert got["out"].dtype == case.dtype and got["out"].shape == want["out"].shape
    err = rel_err(got["out"], want["out"])
    assert err <= OUT_TOL[case.dtype], (compiler, "out", err, seed)
    for name in ["states", *GRADS]:
        tol = 1e-9 if ct == F64 else (1e-5 if name == "states" else 1e-4)
        assert got[name].dtype == ct and got[name].shape == want[name].shape, name
        err = rel_err(got[name], want[name])
        assert err <= tol, (compiler, name, err, seed)


def test_bits_independent_of_threads(inputs, tmp_path):
    """The GCC build (OpenMP) on 1 and 3 threads gives the bits of its 2-thread run (the float32
    grid cases: HSS and GSS, every K)."""
    _require("gcc")
    subset = [c for c in _grid_cases() if c.dtype == F32]
    runs = [_run("gcc", subset, inputs, tmp_path, t)[1] for t in (2, 1, 3)]
    for case in subset:
        for other in runs[1:]:
            for name in tensorfile.RESULTS:
                assert torch.equal(runs[0][case.id][name], other[case.id][name]), (case.id, name)


def test_agrees_with_this_machines_variant(neon, inputs):
    """The NEON results and those of the extension's automatic variant on this machine (avx512 or
    avx2 on x86-64 CI) agree to float32 rounding, 1e-5 of the largest value, as the x86 variants
    agree among themselves (tests/test_cpu_isa.py); outputs rounded to half types excepted."""
    if ext.load_error() is not None:
        pytest.skip(f"the extension is not built: {ext.load_error()}")
    _, _, results = neon
    for case in CASES:
        a = inputs[case.id]
        out, states = ext.scan_fwd(*a[:7], case.grouped, True)
        grads = ext.scan_bwd(a[7], a[0], a[1], states, *a[2:7], case.grouped, True)
        host = dict(zip(tensorfile.RESULTS, (out, states, *grads), strict=True))
        tol = 1e-12 if case.dtype == F64 else 1e-5
        for name in tensorfile.RESULTS:
            if name == "out" and case.dtype in (F16, BF16):
                continue
            assert rel_err(results[case.id][name], host[name]) <= tol, (case.id, name, ext.cpu_isa())


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_neon_code_and_no_x86_code(compiler):
    """The harness's objects are the extension's sources and flags for aarch64: the baseline loops
    are NEON code (fmla on 4 float lanes), the x86 variants compile to nothing."""
    _require(compiler)
    objs = build.build_harness(compiler).parent
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(objs / "isa_baseline.o")],
                         capture_output=True, text=True, check=True).stdout
    assert "fmla" in dis and ".4s" in dis
    for name in ("isa_avx2", "isa_avx512", "isa_avx2_16"):
        syms = subprocess.run(["aarch64-linux-gnu-nm", str(objs / f"{name}.o")],
                              capture_output=True, text=True, check=True).stdout
        assert syms.strip() == "", name
