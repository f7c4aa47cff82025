"""The CPU kernels' instruction-set variants (csrc/cpu/isa_*.cpp, chosen at run time by
csrc/cpu/dispatch.cpp): every variant this machine runs against the float64 reference, forward and
all gradients, for float32 / float16 / bfloat16 inputs and float64; bit-identical across runs and
thread counts within a variant; how the variants agree with each other; the choice from the CPU and
from MAMBAAD_CPU_ISA / ATEN_CPU_CAPABILITY, and its errors.

Variants this CPU cannot run (AVX-512 on some machines) are skipped with that reason: they are
compiled (a test below checks the binary holds 512-bit code) but cannot be executed there. The
aarch64 (NEON) variant is built and run under emulation by tests/test_aarch64.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import cuda as ext

from . import kernel_contract
from .parity import rel_err, run_case
from .test_extension import _op_args

REPO = Path(__file__).resolve().parents[1]
F32, F64 = torch.float32, torch.float64
GRADS = ["dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"]

pytestmark = pytest.mark.skipif(ext.load_error() is not None, reason=str(ext.load_error()))

VARIANTS = ext.cpu_isas() if ext.load_error() is None else []


def _variant_params():
    if not VARIANTS:
        return [pytest.param(None, marks=pytest.mark.skip(reason="extension not built"))]
    return [pytest.param(v["name"], id=v["name"],
                         marks=[] if v["supported"] else pytest.mark.skip(reason=f"this CPU cannot run {v['name']}"))
            for v in VARIANTS]


@pytest.fixture(params=_variant_params())
def isa(request):
    before = ext.set_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        ext.set_cpu_isa(before)


def _run(args, grouped, dout):
    out, states = ext.scan_fwd(*args, grouped, True)
    grads = ext.scan_bwd(dout, args[0], args[1], states, *args[2:], grouped, True)
    return (out, states, *grads)


def test_variant_in_use(isa):
    info = {v["name"]: v for v in VARIANTS}[isa]
    from mambaad_kernels import _C

    assert ext.cpu_isa() == isa and _C.cpu_lanes() == info["lanes"]


# D not a multiple of 16 (a partial vector in every variant), L over several checkpoint chunks,
# N 16 (the unrolled loops) and 5 (the general ones), HSS and GSS, every input dtype, contiguous,
# sliced and channels-last inputs.
CASES = [
    ("hss-n16-f32", dict(b=2, d=21, h=9, w=15, n=16, r=3, k=8, method="hilbert", dtype=F32)),
    ("hss-n5-f32-sliced", dict(b=1, d=9, h=13, w=11, n=5, r=2, k=4, method="scan", dtype=F32, layout="sliced")),
    ("gss-n16-f32", dict(b=1, d=88, h=9, w=15, n=16, r=2, k=8, method="zigzag", dtype=F32, grouped=True)),
    ("hss-n16-bf16", dict(b=1, d=20, h=9, w=15, n=16, r=2, k=8, method="hilbert", dtype=torch.bfloat16)),
    ("gss-n16-f16", dict(b=2, d=24, h=7, w=13, n=16, r=2, k=4, method="zorder", dtype=torch.float16,
                         grouped=True, layout="channels_last")),
    ("hss-n16-f64", dict(b=1, d=19, h=9, w=15, n=16, r=2, k=4, method="hilbert", dtype=F64, param_dtype=F64)),
    ("hss-n16-f32-channels_last", dict(b=2, d=20, h=9, w=15, n=16, r=2, k=4, method="zorder", dtype=F32,
                                       layout="channels_last")),
]


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_against_float64_reference(isa, case, monkeypatch):
    """Forward and all six gradients through mk.hss_scan(backend="cpu") against the float64
    reference, fresh random inputs, outputs poisoned with NaN."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cpu", **case)


@pytest.mark.parametrize("grouped", [False, True], ids=["hss", "gss"])
def test_gradcheck_float64(isa, grouped):
    gen = torch.Generator().manual_seed(11)
    from .parity import make_params, make_x

    d, k = (8, 4) if grouped else (19, 2)
    x = make_x(1, d, 2, 3, "cpu", F64, generator=gen).requires_grad_()
    params = [p.requires_grad_() for p in make_params(d, 2, 1, k, grouped, "cpu", F64, gen)]

    def f(x, *ps):
        return mk.hss_scan(x, *ps, method="hilbert", directions=k, backend="cpu", grouped=grouped)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("grouped", [False, True], ids=["hss", "gss"])
def test_op_matches_contract(isa, grouped, monkeypatch):
    """The raw ops: the checkpoints and every gradient against the contract's float64 maths."""
    monkeypatch.setattr(kernel_contract, "CHUNK", ext.CPU_STATE_CHUNK)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    args = _op_args(b=2, d=40 if grouped else 21, h=11, w=13, n=16, r=3, k=4, grouped=grouped, seed=seed)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(seed + 1))
    got = _run(args, grouped, dout)
    a64 = [a.double() if a.is_floating_point() else a for a in args]
    want_out, want_states = kernel_contract.scan_fwd(*a64, grouped, True)
    want = kernel_contract.scan_bwd(dout.double(), a64[0], a64[1], got[1].double(), *a64[2:], grouped, True)
    assert rel_err(got[0], want_out) < 1e-5 and rel_err(got[1], want_states) < 1e-5, seed
    for name, g, w in zip(GRADS, got[2:], want):
        assert g.dtype == F32 and g.shape == w.shape, name
        assert rel_err(g, w) < 1e-4, (name, seed, rel_err(g, w))


def test_strided_inputs_same_bits(isa):
    """x_dbl not contiguous along L (made contiguous before the gather) and a channels-last x (its
    rows copied) give the same bits as the contiguous tensors."""
    args = _op_args(b=2, d=21, h=9, w=15, n=16, r=3, k=4, seed=5)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(6))
    strided = list(args)
    strided[0] = args[0].transpose(1, 2).contiguous().transpose(1, 2)  # (B, D, L) with unit channel stride
    strided[1] = args[1].transpose(2, 3).contiguous().transpose(2, 3)
    assert strided[0].stride(1) == 1 and strided[1].stride(3) != 1
    for want, got in zip(_run(args, False, dout), _run(strided, False, dout)):
        assert torch.equal(want, got)


def test_deterministic_across_runs_and_threads(isa):
    """Within a variant: two runs and 1, 2, 3 threads give bit-identical results."""
    args = _op_args(b=1, d=40, h=9, w=15, n=16, k=8, seed=9)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(10))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 2):
            torch.set_num_threads(threads)
            results.append(_run(args, False, dout))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("d", [60, 20], ids=["one-sample-waves", "last-wave-partial"])
def test_batch_waves_match_single_samples(isa, d):
    """The backward runs a batch in waves whose du (directions x positions x channel rows) stays
    within 8 MiB (kDubBudget, csrc/cpu/scan_bwd.cpp). At 64 x 64 positions and 8 directions, d = 60
    puts one sample in each wave (three waves), d = 20 two in the first wave and one in the last for
    the 4- and 8-lane variants. Every sample's forward and dx are bit-identical to those of the
    sample run alone; its x_dbl gradient (bit-identical when the waves hold one sample) and the
    parameter gradients (summed over the samples) agree to rounding."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    args = _op_args(b=3, d=d, h=64, w=64, n=16, r=2, k=8, seed=seed)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(seed + 1))
    whole = _run(args, False, dout)
    alone = [_run((args[0][i:i + 1], args[1][i:i + 1], *args[2:]), False, dout[i:i + 1]) for i in range(3)]
    for i, one in enumerate(alone):
        for name in ["out", "states", "dx"] + (["dx_dbl"] if d == 60 else []):
            j = ["out", "states", *GRADS].index(name)
            assert torch.equal(whole[j][i:i + 1], one[j]), (name, i, seed)
        j = 2 + GRADS.index("dx_dbl")
        assert rel_err(whole[j][i:i + 1], one[j]) < 1e-5, (i, seed)
    for name in GRADS[2:]:
        j = 2 + GRADS.index(name)
        assert rel_err(whole[j], sum(one[j] for one in alone)) < 1e-5, (name, seed)


def _all_variants(args, grouped, dout, names):
    res = {}
    for name in names:
        before = ext.set_cpu_isa(name)
        try:
            res[name] = _run(args, grouped, dout)
        finally:
            ext.set_cpu_isa(before)
    return res


def _runnable(*names):
    have = {v["name"] for v in VARIANTS if v["supported"]}
    missing = [n for n in names if n not in have]
    if missing:
        pytest.skip(f"this build / CPU has no {', '.join(missing)}")


@pytest.mark.parametrize("n, dtype", [(16, F32), (5, F32), (16, torch.bfloat16), (16, F64)])
def test_same_fma_variants_agree_bit_for_bit(n, dtype):
    """AVX2 at 8 and at 16 lanes do the same per-channel arithmetic in the same order: the output,
    checkpoints and every gradient but dx_dbl (a sum over the channels, taken a vector at a time) are
    bit-identical, and dx_dbl agrees to rounding."""
    _runnable("avx2", "avx2_16")
    args = _op_args(b=2, d=21, h=9, w=15, n=n, r=3, k=4, dtype=dtype, seed=12)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(13)).to(args[0].dtype)
    res = _all_variants(args, False, dout, ["avx2", "avx2_16"])
    names = ["out", "states", *GRADS]
    for name, a, b in zip(names, res["avx2"], res["avx2_16"]):
        if name == "dx_dbl":
            assert rel_err(a, b) < (1e-12 if dtype == F64 else 1e-5), name
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("n, dtype", [(16, F32), (5, F32), (16, torch.bfloat16), (16, F64)])
def test_avx512_agrees_with_avx2_16_bit_for_bit(n, dtype):
    """AVX-512 and AVX2 at 16 lanes run the same source at the same width: every output and
    gradient, dx_dbl included, is bit-identical (only on CPUs with AVX-512)."""
    _runnable("avx512", "avx2_16")
    args = _op_args(b=2, d=37, h=7, w=13, n=n, r=3, k=8, dtype=dtype, seed=16)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(17)).to(args[0].dtype)
    res = _all_variants(args, False, dout, ["avx512", "avx2_16"])
    for name, a, b in zip(["out", "states", *GRADS], res["avx512"], res["avx2_16"]):
        assert torch.equal(a, b), name


def test_baseline_agrees_to_rounding():
    """The baseline variant (no FMA) rounds differently: the same results to float32 rounding."""
    _runnable("avx2", "baseline")
    args = _op_args(b=2, d=21, h=9, w=15, n=16, r=3, k=4, seed=14)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(15))
    res = _all_variants(args, False, dout, ["avx2", "baseline"])
    for name, a, b in zip(["out", "states", *GRADS], res["avx2"], res["baseline"]):
        assert rel_err(b, a) < 1e-5, name


def test_automatic_choice_is_the_best_supported():
    auto = [v["name"] for v in VARIANTS if v["automatic"] and v["supported"]]
    code = "from mambaad_kernels import cuda as e; print(e.cpu_isa())"
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBAAD_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == auto[0]


def _python(code, env):
    env = dict(env, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("var, value, want", [
    ("MAMBAAD_CPU_ISA", "baseline", "baseline"),
    ("MAMBAAD_CPU_ISA", "avx2_16", "avx2_16"),
    ("ATEN_CPU_CAPABILITY", "default", "baseline"),
    ("ATEN_CPU_CAPABILITY", "AVX2", "avx2"),
    ("ATEN_CPU_CAPABILITY", "avx512", "best"),  # a cap: lowered to what the CPU runs
])
def test_environment_forces_a_variant(var, value, want):
    _runnable("avx2", "baseline", "avx2_16")
    if want == "best":
        want = next(v["name"] for v in VARIANTS if v["automatic"] and v["supported"])
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBAAD_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    env[var] = value
    code = ("import torch; import mambaad_kernels as mk; from mambaad_kernels import cuda as e\n"
            "from tests.parity import make_params\n"
            "x = torch.randn(1, 8, 4, 4); p = make_params(8, 4, 2, 8, False, 'cpu')\n"
            "mk.hss_scan(x, *p, method='hilbert', directions=8, backend='cpu'); print(e.cpu_isa())")
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == want


@pytest.mark.parametrize("value, match", [
    ("sse9", "MAMBAAD_CPU_ISA=sse9 names no CPU kernel variant"),
    ("avx512", "this CPU cannot run the avx512 kernels"),
])
def test_bad_request_raises(value, match):
    if value == "avx512" and any(v["name"] == "avx512" and v["supported"] for v in VARIANTS):
        pytest.skip("this CPU runs avx512")
    if value == "avx512" and not any(v["name"] == "avx512" for v in VARIANTS):
        pytest.skip("no avx512 variant in this build")
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["MAMBAAD_CPU_ISA"] = value
    code = ("import torch, mambaad_kernels as mk\n"
            "from tests.parity import make_params\n"
            "x = torch.randn(1, 8, 4, 4); p = make_params(8, 4, 2, 8, False, 'cpu')\n"
            "try:\n    mk.hss_scan(x, *p, method='hilbert', directions=8, backend='cpu')\n"
            "except ValueError as exc:\n    print('ValueError:', exc)\n")
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert match in out.stdout


def test_set_cpu_isa_errors():
    with pytest.raises(ValueError, match="no CPU kernel variant 'mmx'"):
        ext.set_cpu_isa("mmx")
    unsupported = [v["name"] for v in VARIANTS if not v["supported"]]
    if unsupported:
        with pytest.raises(ValueError, match="this CPU cannot run"):
            ext.set_cpu_isa(unsupported[0])


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the x86-64 variants")
def test_binary_holds_every_x86_variant():
    """The extension carries the 512-bit and 256-bit loops whatever the building machine, and no
    -march=native: the code outside the variants' namespaces uses no AVX register."""
    names = {v["name"] for v in VARIANTS}
    assert {"avx512", "avx2", "baseline"} <= names
    objdump = subprocess.run(["which", "objdump"], capture_output=True, text=True).stdout.strip()
    if not objdump:
        pytest.skip("no objdump")
    so = ext.extension_path()
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", so], capture_output=True, text=True,
                         timeout=600).stdout
    zmm, ymm_outside = False, []
    func = ""
    for line in dis.splitlines():
        if line.endswith(">:"):
            func = line
            continue
        if "%zmm" in line and "mambaad::cpu::avx512::" in func:
            zmm = True
        if ("%ymm" in line or "%zmm" in line) and "mambaad::" in func and not any(
                f"mambaad::cpu::{ns}::" in func for ns in ("avx2", "avx512", "avx2_16")):
            ymm_outside.append(func)
    assert zmm, "no 512-bit code in the avx512 variant"
    assert not ymm_outside, sorted(set(ymm_outside))[:5]
