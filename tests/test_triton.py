"""Triton-specific tests beyond the shared parity harness (tests/test_parity.py).

Under the interpreter (no GPU) the launcher's tile sizes are shrunk here so that short sequences
cross many chunk and checkpoint boundaries and several channel blocks (whose dx_dbl partials are
summed afterwards); the interpreter's fast scan / reduce paths are checked against the originals;
input errors and the strided-dout path are checked. GPU-only cases (marked) check the CUDA
configuration at larger shapes and offsets past 2**31.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import mambaad_kernels as mk  # noqa: E402
from mambaad_kernels.fused import project  # noqa: E402
from mambaad_kernels.triton._common import cast_for_store  # noqa: E402

from .parity import make_params, make_x, rel_err, require_backend, run_case  # noqa: E402

F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64


def _launch():
    require_backend("triton")
    from mambaad_kernels.triton import launch

    return launch


@pytest.fixture
def small_tiles(monkeypatch):
    """Chunks of 4 steps, a checkpoint every 2 chunks, 2 channels per program (interpreter only)."""
    launch = _launch()
    if torch.cuda.is_available():
        pytest.skip("tile shrinking is for the interpreter; the GPU runs its own configuration")
    monkeypatch.setitem(launch.CHUNK, "cpu", 4)
    monkeypatch.setitem(launch.CKPT_CHUNKS, "cpu", 2)
    monkeypatch.setitem(launch.BLOCK_D, "cpu", 2)
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    return launch


# L = 20 (4 x 5): 5 chunks of 4 in 3 segments of 2 (the last one short); L = 21: the last chunk is
# partial too. Dk = 5: 3 channel blocks of 2, the last one partial. N = 3 and R = 3 are not powers
# of two.
SMALL_CASES = [
    ("hss-hilbert-k4", dict(b=2, d=5, h=4, w=5, n=3, r=3, k=4, method="hilbert", dtype=F32)),
    ("hss-zigzag-k8-channels_last", dict(b=1, d=3, h=3, w=7, n=4, r=2, k=8, method="zigzag", dtype=F32,
                                         layout="channels_last")),
    ("gss-snake-k2", dict(b=1, d=10, h=3, w=7, n=4, r=1, k=2, method="scan", dtype=F32, grouped=True)),
    ("hss-sweep-k1-bf16", dict(b=2, d=5, h=4, w=5, n=2, r=2, k=1, method="sweep", dtype=BF16)),
    ("hss-zorder-k2-1x1", dict(b=2, d=3, h=1, w=1, n=4, r=2, k=2, method="zorder", dtype=F32)),
    ("hss-hilbert-k2-f64", dict(b=1, d=3, h=3, w=6, n=3, r=2, k=2, method="hilbert", dtype=F64,
                                param_dtype=F64)),
]


@pytest.mark.parametrize("case", [c for _, c in SMALL_CASES], ids=[i for i, _ in SMALL_CASES])
def test_chunks_checkpoints_and_channel_blocks(small_tiles, case):
    run_case("triton", **case)


def test_small_tiles_geometry(small_tiles):
    """The fixture's tiles really give several chunks, segments and channel blocks."""
    geo = small_tiles._Geometry(b=2, d=5, l=35, k=4, dk=5, r=3, n=3, grouped=False, kind="cpu")
    assert (geo.bt, geo.s, geo.bd) == (4, 2, 2)
    assert geo.n_ckpt == 5 and geo.n_dblocks == 3 and geo.merge
    assert small_tiles.states_shape(2, 4, 5, 35, 3, "cpu") == (2, 4, 5, 5, 3)


def _contract_inputs(b=2, d=6, h=5, w=7, n=4, r=2, k=4, grouped=False, dtype=F32, seed=0):
    """Kernel-contract arguments (x as (B, D, L)) on the device the Triton backend runs on here."""
    dev = require_backend("triton")
    gen = torch.Generator().manual_seed(seed)
    x = make_x(b, d, h, w, dev, dtype, generator=gen).flatten(2)
    xpw, dtw, dtb, alog, ds = make_params(d, n, r, k, grouped, dev, generator=gen)
    paths = mk.scan_paths(h, w, "hilbert", k, dev, dtype=torch.int32)
    return x, project(x, xpw, grouped), dtw, dtb, alog, ds, paths


def test_states_shape_and_dtype():
    launch = _launch()
    x, x_dbl, dtw, dtb, alog, ds, paths = _contract_inputs()
    out, states = launch.scan_fwd(x, x_dbl, dtw, dtb, alog, ds, paths, False, True)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    assert tuple(states.shape) == launch.states_shape(2, 4, 6, 35, 4, x.device)
    assert states.dtype == F32


def test_strided_dout_matches_contiguous():
    """dout arrives with any strides (channels-last views): the same gradients. Bit for bit under the
    interpreter; on a GPU to rounding, since Triton picks register layouts (and so the order of
    in-kernel sums) from the strides it sees."""
    launch = _launch()
    x, x_dbl, dtw, dtb, alog, ds, paths = _contract_inputs(seed=1)
    _, states = launch.scan_fwd(x, x_dbl, dtw, dtb, alog, ds, paths, False, True)
    b, d, l = x.shape
    g = torch.randn(b, l, d, generator=torch.Generator().manual_seed(2)).to(x.device).transpose(1, 2)
    assert not g.is_contiguous()
    got = launch.scan_bwd(g, x, x_dbl, states, dtw, dtb, alog, ds, paths, False, True)
    want = launch.scan_bwd(g.contiguous(), x, x_dbl, states, dtw, dtb, alog, ds, paths, False, True)
    for a, b_ in zip(got, want):
        if a.is_cuda:
            torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5 * b_.abs().max().item())
        else:
            assert torch.equal(a, b_)


@pytest.mark.parametrize("grouped", [False, True])
def test_bf16_matches_plain_pytorch_contract(grouped):
    """bf16 x, x_dbl, parameters and dout against tests/kernel_contract.py on the *same* bf16 inputs.

    Against the float64 reference, bf16 cases carry the contract's own bf16 rounding of x_dbl
    (about 1e-2 on some gradients, for any implementation); against the plain-PyTorch contract,
    which computes in fp32 from the same inputs, the kernels must agree to fp32 accuracy.
    """
    from . import kernel_contract

    launch = _launch()
    x, x_dbl, dtw, dtb, alog, ds, paths = _contract_inputs(b=2, d=8, h=4, w=5, n=4, r=2, k=4, grouped=grouped,
                                                           dtype=BF16, seed=4)
    dtw, dtb, alog, ds = (t.to(BF16) for t in (dtw, dtb, alog, ds))
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(x.device, BF16)
    out, states = launch.scan_fwd(x, x_dbl, dtw, dtb, alog, ds, paths, grouped, True)
    grads = launch.scan_bwd(g, x, x_dbl, states, dtw, dtb, alog, ds, paths, grouped, True)
    cpu = [t.cpu() for t in (x, x_dbl, dtw, dtb, alog, ds, paths)]
    want_out, want_states = kernel_contract.scan_fwd(*cpu, grouped, True)
    want = kernel_contract.scan_bwd(g.cpu(), *cpu[:2], want_states, *cpu[2:], grouped, True)
    assert out.dtype == BF16 and rel_err(out, want_out) <= 2 ** -8  # at most one bf16 ulp apart
    for name, got, ref in zip(["dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"], grads, want):
        assert got.dtype == F32 and got.shape == ref.shape, name
        assert rel_err(got, ref) <= 1e-4, f"{name}: {rel_err(got, ref):.3g}"


def test_input_errors(monkeypatch):
    launch = _launch()
    x, x_dbl, dtw, dtb, alog, ds, paths = _contract_inputs()
    args = [x, x_dbl, dtw, dtb, alog, ds, paths]

    def call(i, value):
        bad = list(args)
        bad[i] = value
        return launch.scan_fwd(*bad, False, True)

    with pytest.raises(TypeError, match="x dtype"):
        call(0, x.to(torch.int32))
    with pytest.raises(TypeError, match="paths must be int32"):
        call(6, paths.long())
    with pytest.raises(ValueError, match="x_dbl must be contiguous"):
        call(1, x_dbl.transpose(2, 3).contiguous().transpose(2, 3))
    with pytest.raises(ValueError, match="x_dbl has shape"):
        call(1, x_dbl[:, :, 1:])
    with pytest.raises(TypeError, match="x_dbl is"):
        call(1, x_dbl.double())
    with pytest.raises(ValueError, match=r"\(B, D, L\)"):
        call(0, x[0])
    with pytest.raises(ValueError, match="Ds has shape"):
        call(5, ds[:-1])
    with pytest.raises(ValueError, match="N = 80"):
        launch.scan_fwd(x, x.new_zeros(2, 4, 162, 35), dtw, dtb, x.new_zeros(24, 80), ds, paths, False, True)
    _, states = launch.scan_fwd(*args, False, True)
    with pytest.raises(ValueError, match="checkpoint"):
        launch.scan_bwd(x, *args[:2], states.double(), *args[2:], False, True)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            launch.scan_fwd(*args, False, True)


def test_deterministic_small_tiles(small_tiles):
    """Several channel blocks and partial sums: still bit-identical run to run."""
    x, x_dbl, dtw, dtb, alog, ds, paths = _contract_inputs(b=1, d=5, h=3, w=4, k=2, seed=3)
    g = torch.randn_like(x)
    runs = []
    for _ in range(2):
        out, states = small_tiles.scan_fwd(x, x_dbl, dtw, dtb, alog, ds, paths, False, True)
        runs.append([out, *small_tiles.scan_bwd(g, x, x_dbl, states, dtw, dtb, alog, ds, paths, False, True)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@triton.jit
def _cast_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(src_ptr + offs, mask=offs < n)
    tl.store(dst_ptr + offs, cast_for_store(v, dst_ptr.dtype.element_ty), mask=offs < n)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("dtype", [BF16, torch.float16, F32])
def test_output_rounding_matches_torch(dtype):
    """float32 -> output dtype as torch rounds it (to nearest even), ties, overflow, inf and NaN
    included; bf16 is rounded by hand because the interpreter truncates."""
    dev = require_backend("triton")
    gen = torch.Generator().manual_seed(7)
    one = torch.tensor(1.0).view(torch.int32).item()
    special = torch.tensor([one + 0x8000, one + 0x18000, one + 0x7FFF, one + 0x17FFF, 0x7F7FFFFF,
                            0x00008000, -(2 ** 31) + one + 0x8000],
                           dtype=torch.int32).view(F32)  # ties, just below ties, max, subnormal
    scales = 10.0 ** torch.randint(-6, 6, (1000,), generator=gen)
    edges = torch.tensor([0.0, -0.0, 65504.0, 70000.0, float("inf"), -float("inf")])
    src = torch.cat([torch.randn(1000, generator=gen) * scales, special, edges]).to(dev)
    dst = torch.empty(src.shape, dtype=dtype, device=dev)
    _cast_kernel[(triton.cdiv(src.numel(), 256),)](src, dst, src.numel(), BLOCK=256)
    assert torch.equal(dst, src.to(dtype))
    nan = torch.full((4,), float("nan"), device=dev)
    _cast_kernel[(1,)](nan, dst, 4, BLOCK=256)
    assert torch.isnan(dst[:4].float()).all()


# ---- the interpreter's fast scan and reduce against the interpreter's own element-wise folds ----

@triton.jit
def _affine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_kernel(a_ptr, b_ptr, oa_ptr, ob_ptr, M: tl.constexpr, T: tl.constexpr, AXIS: tl.constexpr,
                 REVERSE: tl.constexpr):
    offs = tl.arange(0, M)[:, None] * T + tl.arange(0, T)[None, :]
    a, b = tl.associative_scan((tl.load(a_ptr + offs), tl.load(b_ptr + offs)), AXIS, _affine, reverse=REVERSE)
    tl.store(oa_ptr + offs, a)
    tl.store(ob_ptr + offs, b)


@triton.jit
def _flip_kernel(a_ptr, o_ptr, M: tl.constexpr, T: tl.constexpr):
    offs = tl.arange(0, M)[:, None] * T + tl.arange(0, T)[None, :]
    tl.store(o_ptr + offs, tl.flip(tl.load(a_ptr + offs), 1))


@triton.jit
def _reduce_kernel(a_ptr, b_ptr, oa_ptr, ob_ptr, M: tl.constexpr, T: tl.constexpr):
    offs = tl.arange(0, M)[:, None] * T + tl.arange(0, T)[None, :]
    a, b = tl.reduce((tl.load(a_ptr + offs), tl.load(b_ptr + offs)), 1, _affine)
    tl.store(oa_ptr + tl.arange(0, M), a)
    tl.store(ob_ptr + tl.arange(0, M), b)


def _interpreter_only():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("checks the interpreter's fast paths")


def _run_with(patched: bool, fn):
    from triton.runtime import interpreter

    from mambaad_kernels.triton import interpret

    interpret.enable_fast_scan()
    fast = (interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce)
    slow = interpret.originals()
    interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce = fast if patched else slow
    try:
        return fn()
    finally:
        interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce = fast


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
def test_fast_interpreter_scan_matches_original(axis, reverse):
    """A non-commutative combine on small integers (exact arithmetic): the Hillis-Steele scan and
    the interpreter's sequential fold agree exactly, in both directions and along both axes."""
    _interpreter_only()
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-2, 3, (4, 8), generator=gen).float()
    b = torch.randint(-3, 4, (4, 8), generator=gen).float()

    def run():
        oa, ob = torch.empty_like(a), torch.empty_like(b)
        _scan_kernel[(1,)](a, b, oa, ob, M=4, T=8, AXIS=axis, REVERSE=reverse)
        return oa, ob

    fast, slow = _run_with(True, run), _run_with(False, run)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    # and both are the affine recurrence along the axis, in the right direction
    av, bv = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    if axis == 0:
        av, bv = av.T, bv.T
    if reverse:
        av, bv = av[:, ::-1], bv[:, ::-1]
    ea, eb = np.empty_like(av), np.empty_like(bv)
    ea[:, 0], eb[:, 0] = av[:, 0], bv[:, 0]
    for t in range(1, av.shape[1]):
        ea[:, t] = ea[:, t - 1] * av[:, t]
        eb[:, t] = av[:, t] * eb[:, t - 1] + bv[:, t]
    if reverse:
        ea, eb = ea[:, ::-1], eb[:, ::-1]
    if axis == 0:
        ea, eb = ea.T, eb.T
    assert np.array_equal(fast[0].numpy(), ea) and np.array_equal(fast[1].numpy(), eb)


def test_fast_interpreter_reduce_and_flip_match_original():
    _interpreter_only()
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 8, generator=gen)
    b = torch.randn(4, 8, generator=gen)

    def run():
        oa, ob, of = torch.empty(4), torch.empty(4), torch.empty_like(a)
        _reduce_kernel[(1,)](a, b, oa, ob, M=4, T=8)
        _flip_kernel[(1,)](a, of, M=4, T=8)
        return oa, ob, of

    fast, slow = _run_with(True, run), _run_with(False, run)
    for x, y in zip(fast, slow):
        assert torch.equal(x, y)
    assert torch.equal(fast[2], a.flip(1))


# ---- GPU: the CUDA configuration at larger shapes, and offsets past 2**31 ----

@pytest.mark.gpu
@pytest.mark.parametrize("grouped", [False, True])
def test_gpu_long_sequence(grouped):
    """Many chunks (64 x 64 grid) and several channel blocks at the CUDA tile sizes."""
    run_case("triton", b=1, d=48, h=64, w=64, n=16, r=3, k=8, method="hilbert", dtype=F32, grouped=grouped)


@pytest.mark.gpu
def test_gpu_small_state_and_rank():
    """N and R far below the padded tile sides (NP, BR = 16)."""
    run_case("triton", b=2, d=40, h=9, w=13, n=3, r=1, k=4, method="zigzag", dtype=F32)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_offsets_past_int32():
    """Partial buffers with more than 2**31 elements: the last batch element must equal a run of
    that element alone (programs never mix batch elements), forward and backward."""
    launch = _launch()
    b, d, h, w, k, n, r = 18, 4096, 64, 64, 8, 1, 1  # per-direction partials: 2.4e9 elements
    assert b * k * d * h * w > 2 ** 31
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(b, d, h * w, generator=gen) * 0.5).to(dev, BF16)
    xpw, dtw, dtb, alog, ds = make_params(d, n, r, k, False, dev, generator=gen)
    paths = mk.scan_paths(h, w, "hilbert", k, dev, dtype=torch.int32)
    x_dbl = project(x, xpw, False)
    out, states = launch.scan_fwd(x, x_dbl, dtw, dtb, alog, ds, paths, False, True)
    g = torch.randn(b, d, h * w, device=dev, dtype=BF16)
    grads = launch.scan_bwd(g, x, x_dbl, states, dtw, dtb, alog, ds, paths, False, True)
    del states
    out1, states1 = launch.scan_fwd(x[-1:], x_dbl[-1:], dtw, dtb, alog, ds, paths, False, True)
    grads1 = launch.scan_bwd(g[-1:], x[-1:], x_dbl[-1:], states1, dtw, dtb, alog, ds, paths, False, True)
    assert torch.equal(out[-1:], out1)
    assert torch.equal(grads[0][-1:], grads1[0]) and torch.equal(grads[1][-1:], grads1[1])


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck_with_triton_kernels(grouped):
    """torch.library.opcheck on mambaad::hss_scan running the Triton kernels: the fake op's
    shapes (states_shape) agree with what the kernels return, autograd registration included."""
    dev = require_backend("triton")
    gen = torch.Generator().manual_seed(6)
    x = make_x(1, 4, 2, 3, dev, F32, generator=gen).requires_grad_()
    params = [p.requires_grad_() for p in make_params(4, 2, 1, 2, grouped, dev, generator=gen)]
    paths = mk.scan_paths(2, 3, "hilbert", 2, dev, dtype=torch.int32)
    from mambaad_kernels import fused  # noqa: F401 - registers the op

    torch.library.opcheck(torch.ops.mambaad.hss_scan.default, (x, *params, paths, "triton", grouped, True))
