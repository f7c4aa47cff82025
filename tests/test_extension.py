"""The compiled extension mambaad_kernels._C: its torch ops (mambaad::scan_fwd / scan_bwd), the fused
CPU kernel beyond the shared parity grid (gradcheck, long sequences over several checkpoint chunks,
the checkpoints themselves, thread-count independence), opcheck and torch.compile, the errors for bad
arguments, the dispatcher's choice, and the CUDA part of the binary when one was built.

Skipped with the reason when the extension is not built (``pip install --no-build-isolation -e .``).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import cuda as ext
from mambaad_kernels import fused

from . import kernel_contract
from .parity import make_params, make_x, rel_err, run_case

REPO = Path(__file__).resolve().parents[1]
F32, F64 = torch.float32, torch.float64


@pytest.fixture(scope="module")
def C():
    err = ext.load_error()
    if err:
        pytest.skip(err)
    from mambaad_kernels import _C

    return _C


def _op_args(b=2, d=12, h=5, w=7, n=4, r=2, k=8, grouped=False, dtype=F32, seed=0, method="hilbert"):
    """Arguments of mambaad::scan_fwd for a random case: x (B, D, L), x_dbl, params, paths."""
    gen = torch.Generator().manual_seed(seed)
    x = make_x(b, d, h, w, "cpu", dtype, generator=gen)
    xpw, dt_w, dt_b, A_logs, Ds = make_params(d, n, r, k, grouped, "cpu", F64 if dtype == F64 else F32, gen)
    paths = mk.scan_paths(h, w, method, k, dtype=torch.int32)
    x3 = x.flatten(2)
    x_dbl = fused.project(x3, xpw, grouped)
    return x3, x_dbl, dt_w, dt_b, A_logs, Ds, paths


def test_constants(C):
    assert C.CPU_STATE_CHUNK == ext.CPU_STATE_CHUNK
    assert C.cpu_lanes() in (4, 8, 16) and C.cpu_isa() in [v[0] for v in C.cpu_isas()]
    assert isinstance(C.WITH_CUDA, bool)
    assert ext.has_kernels("cpu")
    assert ext.has_kernels("cuda") == C.WITH_CUDA


def test_backend_none_picks_cpu(C, monkeypatch):
    monkeypatch.delenv("MAMBAAD_BACKEND", raising=False)
    assert mk.resolve_backend(None, "cpu") == "cpu"
    assert mk.available_backends("cpu")[0] == "cpu"


@pytest.mark.parametrize("grouped", [False, True], ids=["hss", "gss"])
def test_gradcheck_float64(C, grouped):
    """Finite differences through mk.hss_scan(backend="cpu") in float64, every input."""
    gen = torch.Generator().manual_seed(1)
    d, k = (8, 4) if grouped else (3, 8)
    x = make_x(1, d, 2, 3, "cpu", F64, generator=gen).requires_grad_()
    params = [p.requires_grad_() for p in make_params(d, 2, 1, k, grouped, "cpu", F64, gen)]

    def f(x, *ps):
        return mk.hss_scan(x, *ps, method="hilbert", directions=k, backend="cpu", grouped=grouped)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


# L = 13 * 23 = 299: four full checkpoint chunks of 64 and a partial one; D not a multiple of the
# SIMD width (a partial vector of channels); N = 16 (the unrolled kernel) and 5 (the generic one).
LONG = [
    ("hss-n16", dict(b=2, d=20, h=13, w=23, n=16, r=3, k=8, method="hilbert", dtype=F32)),
    ("hss-n5-snake", dict(b=1, d=9, h=13, w=23, n=5, r=2, k=4, method="scan", dtype=F32)),
    ("gss-n16-dk11", dict(b=1, d=88, h=13, w=23, n=16, r=2, k=8, method="zigzag", dtype=F32,
                          grouped=True)),
    ("hss-n16-130-channels_last", dict(b=1, d=6, h=10, w=13, n=16, r=2, k=2, method="zorder",
                                       dtype=F32, layout="channels_last")),
    ("hss-n16-bf16", dict(b=1, d=12, h=13, w=23, n=16, r=2, k=8, method="hilbert", dtype=torch.bfloat16)),
    ("gss-n16-f16-sliced", dict(b=2, d=24, h=13, w=23, n=16, r=2, k=4, method="scan",
                                dtype=torch.float16, grouped=True, layout="sliced")),
]


@pytest.mark.parametrize("case", [c for _, c in LONG], ids=[i for i, _ in LONG])
def test_long_sequences(C, case, monkeypatch):
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cpu", **case, seed=3)


@pytest.mark.parametrize("grouped", [False, True], ids=["hss", "gss"])
def test_checkpoints_and_backward_match_contract(C, grouped, monkeypatch):
    """The checkpoints hold the state before every CPU_STATE_CHUNK-th step (the contract's layout),
    and scan_bwd matches the contract's hand-written backward, fed the same checkpoints."""
    monkeypatch.setattr(kernel_contract, "CHUNK", ext.CPU_STATE_CHUNK)
    args = _op_args(b=2, d=16 if grouped else 10, h=11, w=13, n=16, k=8 if not grouped else 4,
                    grouped=grouped, seed=5)
    out, states = ext.scan_fwd(*args, grouped, True)
    want_out, want_states = kernel_contract.scan_fwd(*args, grouped, True)
    assert states.shape == want_states.shape == ext.states_shape(
        *states.shape[:3], args[0].shape[2], states.shape[4], "cpu")
    assert rel_err(out, want_out) < 1e-5
    assert rel_err(states, want_states) < 1e-5
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)).mT.contiguous().mT
    x, x_dbl, *params = args
    got = ext.scan_bwd(dout, x, x_dbl, states, *params, grouped, True)
    want = kernel_contract.scan_bwd(dout, x, x_dbl, states, *params, grouped, True)
    for name, g, w in zip(["dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"], got, want):
        assert g.dtype == F32 and g.shape == w.shape, name
        assert rel_err(g, w) < 1e-4, name


@pytest.mark.parametrize("n, dtype", [(12, F32), (10, F64), (16, F64)], ids=["n12-f32", "n10-f64", "n16-f64"])
def test_backward_state_blocks(C, n, dtype, monkeypatch):
    """The backward runs the states in blocks of 8: a narrower last block (N = 12, 10) and the
    float64 kernel (N known only at run time) against the contract's backward, from fresh random
    inputs; two calls are bit-identical."""
    monkeypatch.setattr(kernel_contract, "CHUNK", ext.CPU_STATE_CHUNK)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    args = _op_args(b=2, d=11, h=9, w=17, n=n, r=3, k=4, dtype=dtype, seed=seed)
    out, states = ext.scan_fwd(*args, False, True)
    dout = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed + 1))
    x, x_dbl, *params = args
    got = ext.scan_bwd(dout, x, x_dbl, states, *params, False, True)
    again = ext.scan_bwd(dout, x, x_dbl, states, *params, False, True)
    params64 = [p.double() if p.is_floating_point() else p for p in params]
    want = kernel_contract.scan_bwd(dout.double(), x.double(), x_dbl.double(), states.double(), *params64,
                                    False, True)
    tol = 1e-4 if dtype == F32 else 1e-10
    for name, g, a, w in zip(["dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"], got, again, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        assert torch.equal(g, a), name
        assert rel_err(g, w) < tol, (name, seed, rel_err(g, w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grouped", [False, True], ids=["hss", "gss"])
def test_half_inputs_with_float32_x_dbl(C, dtype, grouped, monkeypatch):
    """Half x with the contract's float32 x_dbl: out in x's dtype, float32 states and gradients,
    matching the contract's maths in float32."""
    monkeypatch.setattr(kernel_contract, "CHUNK", ext.CPU_STATE_CHUNK)
    x, x_dbl, *params = _op_args(b=2, d=16, h=9, w=15, n=16, k=4, grouped=grouped, dtype=dtype, seed=21)
    assert x.dtype == dtype and x_dbl.dtype == F32
    out, states = ext.scan_fwd(x, x_dbl, *params, grouped, True)
    assert out.dtype == dtype and states.dtype == F32
    want_out, want_states = kernel_contract.scan_fwd(x, x_dbl, *params, grouped, True)
    assert rel_err(out, want_out) < 1e-2 and rel_err(states, want_states) < 1e-5
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(22)).to(dtype)
    got = ext.scan_bwd(dout, x, x_dbl, states, *params, grouped, True)
    want = kernel_contract.scan_bwd(dout, x, x_dbl, states, *params, grouped, True)
    for name, g, w in zip(["dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"], got, want):
        assert g.dtype == F32 and g.shape == w.shape, name
        assert rel_err(g, w) < 1e-4, name
    # x_dbl in x's half dtype is refused (dt, B and C rounded to half would change the results)
    with pytest.raises(TypeError, match="x_dbl must be Float"):
        ext.scan_fwd(x, x_dbl.to(dtype), *params, grouped, True)


def _strided(t, kind):
    """The same values as t (B, D, L) in another layout: channels innermost, or a strided slice."""
    if kind == "channels_last":
        return t.mT.contiguous().mT  # strides (D L, 1, D)
    big = torch.full((t.shape[0], 2 * t.shape[1], 2 * t.shape[2] + 1), float("nan"))
    big[:, ::2, 1::2] = t
    return big[:, ::2, 1::2]


@pytest.mark.parametrize("kind", ["channels_last", "sliced"])
def test_strided_inputs_give_identical_results(C, kind):
    """x and dout in any strides give bit-identical results to contiguous ones."""
    x, x_dbl, *params, paths = _op_args(seed=7)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    ref = ext.scan_fwd(x, x_dbl, *params, paths, False, True)
    ref_b = ext.scan_bwd(dout, x, x_dbl, ref[1], *params, paths, False, True)
    xs, gs = _strided(x, kind), _strided(dout, kind)
    assert not xs.is_contiguous() and torch.equal(xs, x)
    got = ext.scan_fwd(xs, x_dbl, *params, paths, False, True)
    got_b = ext.scan_bwd(gs, xs, x_dbl, got[1], *params, paths, False, True)
    for a, b in zip((*got, *got_b), (*ref, *ref_b)):
        assert torch.equal(a, b)


def test_deterministic_across_thread_counts(C):
    """Every sum has a fixed order: 1, 2 and 3 threads give bit-identical results."""
    args = _op_args(b=1, d=40, h=9, w=15, n=16, k=8, seed=9)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(10))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, states = ext.scan_fwd(*args, False, True)
            grads = ext.scan_bwd(dout, args[0], args[1], states, *args[2:], False, True)
            results.append((out, states, *grads))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_nan_propagates(C):
    x, x_dbl, *rest = _op_args(b=1, d=8, h=4, w=4, seed=11)
    x = x.clone()
    x[0, 3, 5] = float("nan")
    out, _ = ext.scan_fwd(x, x_dbl, *rest, False, True)
    assert out[0, 3].isnan().any() and not out[0, :3].isnan().any()
    x_dbl = x_dbl.clone()
    x_dbl[0, 2, 0, 7] = float("nan")  # a dt row: NaN delta at one step of direction 2
    out, _ = ext.scan_fwd(x.nan_to_num(), x_dbl, *rest, False, True)
    assert out.isnan().any()


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16, F64])
@pytest.mark.parametrize("grouped", [False, True], ids=["hss", "gss"])
def test_opcheck(C, dtype, grouped):
    args = _op_args(b=1, d=8, h=3, w=5, n=4, k=4, grouped=grouped, dtype=dtype, seed=12)
    torch.library.opcheck(torch.ops.mambaad.scan_fwd.default, (*args, grouped, True))
    out, states = ext.scan_fwd(*args, grouped, True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(13)).to(dtype)
    x, x_dbl, *params = args
    torch.library.opcheck(torch.ops.mambaad.scan_bwd.default,
                          (dout, x, x_dbl, states, *params, grouped, True))


def test_torch_compile(C):
    """The C++ ops trace through their Python fakes; the fused op on the "cpu" backend compiles as one
    graph with its gradients."""
    args = _op_args(b=1, d=8, h=4, w=6, n=4, k=8, seed=14)

    def raw(*a):
        out, states = torch.ops.mambaad.scan_fwd(*a, False, True)
        return out.square().sum() + states.sum()

    torch.testing.assert_close(torch.compile(raw, backend="aot_eager", fullgraph=True)(*args), raw(*args))
    gen = torch.Generator().manual_seed(15)
    x = make_x(1, 8, 4, 6, "cpu", F32, generator=gen)
    params = [p.requires_grad_() for p in make_params(8, 4, 2, 8, False, "cpu", F32, gen)]

    paths = mk.scan_paths(4, 6, "hilbert", 8, dtype=torch.int32)

    def f(x, *ps):
        return fused.hss_scan_op(x, *ps, paths, "cpu", False, True)[0].square().sum()

    loss = torch.compile(f, backend="aot_eager", fullgraph=True)(x, *params)
    grads = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(f(x, *params), params)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def test_errors_from_the_op(C):
    x, x_dbl, dt_w, dt_b, A_logs, Ds, paths = _op_args(b=1, d=8, h=3, w=5, n=4, k=4, seed=16)
    fwd = torch.ops.mambaad.scan_fwd

    def call(**kw):
        a = dict(x=x, x_dbl=x_dbl, dt_w=dt_w, dt_b=dt_b, A_logs=A_logs, Ds=Ds, paths=paths)
        a.update(kw)
        return fwd(*a.values(), False, True)

    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64"):
        call(x=x.to(torch.int32))
    with pytest.raises(TypeError, match=r"x_dbl must be Float \(the compute dtype.*\) for Float x, got Double"):
        call(x_dbl=x_dbl.double())
    with pytest.raises(TypeError, match="x_dbl must be Float .* for BFloat16 x, got Half"):
        call(x=x.bfloat16(), x_dbl=x_dbl.half())
    with pytest.raises(TypeError, match="A_logs must be float32 or x's dtype"):
        call(A_logs=A_logs.half())
    with pytest.raises(TypeError, match="paths must be int32"):
        call(paths=paths.long())
    with pytest.raises(ValueError, match=r"x must be \(B, D, L\)"):
        call(x=x[0])
    with pytest.raises(ValueError, match=r"dt_b has shape \[4, 7\], expected \[4, 8\]"):
        call(dt_b=dt_b[:, :7])
    with pytest.raises(ValueError, match=r"x_dbl has shape"):
        call(x_dbl=x_dbl[:, :, 1:])
    with pytest.raises(ValueError, match="not a permutation"):
        call(paths=torch.zeros_like(paths))
    with pytest.raises(ValueError, match="Ds is on meta but x is on cpu"):
        call(Ds=Ds.to("meta"))  # mixed devices dispatch to the fake, which says so
    out, states = call()
    bwd = torch.ops.mambaad.scan_bwd
    with pytest.raises(ValueError, match="states has shape .*checkpoints every 64 steps"):
        bwd(out, x, x_dbl, states[:, :, :, :0], dt_w, dt_b, A_logs, Ds, paths, False, True)
    with pytest.raises(TypeError, match="states must be Float"):
        bwd(out, x, x_dbl, states.double(), dt_w, dt_b, A_logs, Ds, paths, False, True)
    with pytest.raises(TypeError, match="dout must have x's dtype"):
        bwd(out.double(), x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, False, True)


def test_meta_tensors_give_shapes(C):
    args = [t.to("meta") for t in _op_args(b=2, d=8, h=3, w=50, n=4, k=4, seed=17)]
    out, states = torch.ops.mambaad.scan_fwd(*args, False, True)
    assert out.shape == (2, 8, 150) and states.shape == (2, 4, 8, 3, 4) and states.dtype == F32


def _run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter from the repository root; it must exit 0."""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("first", ["_C", "fused"])
def test_library_and_python_fragment_coexist(C, first):
    """TORCH_LIBRARY(mambaad) in C++ and the Python custom ops of the same namespace, either first."""
    order = ["mambaad_kernels._C", "mambaad_kernels.fused"]
    if first == "fused":
        order.reverse()
    code = (f"import importlib, torch\nfor m in {order!r}: importlib.import_module(m)\n"
            "assert hasattr(torch.ops.mambaad, 'hss_scan') and hasattr(torch.ops.mambaad, 'scan_fwd')\n"
            "import mambaad_kernels as mk\nx = torch.randn(1, 4, 3, 3)\n"
            "from tests.parity import make_params\np = make_params(4, 4, 1, 8, False, 'cpu')\n"
            "mk.hss_scan(x, *p, backend='cpu').sum()\n")
    _run_python(code)


def test_fakes_registered_by_the_extension(C):
    """Importing _C alone registers the fake kernels (the extension imports mambaad_kernels.cuda)."""
    code = ("import sys, torch\nfrom mambaad_kernels import _C\n"
            "assert 'mambaad_kernels.cuda' in sys.modules\n"
            "from torch._subclasses.fake_tensor import FakeTensorMode\n"
            "with FakeTensorMode():\n"
            "    x = torch.empty(1, 8, 130); xd = torch.empty(1, 2, 10, 130)\n"
            "    out, st = torch.ops.mambaad.scan_fwd(x, xd, torch.empty(2, 8, 2), torch.empty(2, 8),\n"
            "        torch.empty(16, 4), torch.empty(16), torch.empty(2, 130, dtype=torch.int32),\n"
            "        False, True)\n"
            "assert tuple(st.shape) == (1, 2, 8, 3, 4), st.shape\n")
    _run_python(code)


def _cuobjdump() -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else shutil.which("cuobjdump")


def test_cuda_part_has_sm90(C):
    if not C.WITH_CUDA:
        pytest.skip("the extension was built without CUDA kernels (no CUDA toolkit, or MAMBAAD_BUILD_CUDA=0)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (neither triton's bundled copy nor on PATH)")
    res = subprocess.run([tool, "--list-elf", C.__file__], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "sm_90" in res.stdout, res.stdout


def test_public_op_under_autocast(C):
    """AMP training: under torch.autocast the fused op still gets fp32 x_dbl and computes in fp32,
    so the result is the one without autocast (it used to fail the kernel's x_dbl dtype check)."""
    gen = torch.Generator().manual_seed(31)
    x = make_x(1, 8, 4, 5, "cpu", torch.float32, generator=gen).requires_grad_()
    params = [p.requires_grad_() for p in make_params(8, 4, 2, 8, False, "cpu", torch.float32, gen)]
    want = mk.hss_scan(x, *params, backend="cpu")
    want_grads = torch.autograd.grad(want.square().sum(), (x, *params))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mk.hss_scan(x, *params, backend="cpu")
        assert got.dtype == torch.float32
        got_grads = torch.autograd.grad(got.square().sum(), (x, *params))
    assert torch.equal(got, want)
    for a, b in zip(got_grads, want_grads):
        assert torch.equal(a, b)
