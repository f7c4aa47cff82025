"""CUDA-specific tests of the fused scan kernels in csrc/cuda/, beyond the shared parity harness.

Three groups:

- Emulated (run everywhere): the CUDA kernel source, compiled with ``-DMAMBAAD_EMU`` for the CPU
  emulator of csrc/cuda/emu.h (threads as fibers, real barriers and warp shuffles, shared memory
  poisoned with NaN, cp.async completing only at its wait), checked against the kernel contract
  (tests/kernel_contract.py) in float64: every configuration, partial and multiple chunks,
  several channel groups, every method, K in 1, 2, 4, 8, GSS, strided and channels-last inputs,
  all dtypes, deterministic and atomic reductions, and thread orders (a missing barrier changes
  the result with the order).
- Build (run where the extension was built with CUDA): the library holds the kernels for sm_90.
- GPU (``@pytest.mark.gpu``, skipped without a device): L = 16384, lengths around the chunk
  sizes, channels-last x and dout, bit-for-bit determinism, and a backward whose peak memory
  stays O(B K D L) (no (B, K, D, L, N) tensor).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import fused

from . import kernel_contract
from .parity import TOL, make_params, make_x, rel_err, require_backend, run_case

ROOT = Path(__file__).resolve().parents[1]
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
GRADS = ("dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds")


# ---------------------------------------------------------------------------------------------
# The emulated kernels
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def emu():
    """The CUDA kernels built for the CPU emulator (about a minute the first time; cached)."""
    if shutil.which(os.environ.get("CXX", "c++")) is None or shutil.which("ninja") is None:
        pytest.skip("the emulated CUDA kernels need a C++ compiler and ninja")
    from torch.utils.cpp_extension import load

    build = Path(os.environ.get("MAMBAAD_EMU_BUILD_DIR", ROOT / "build" / "cuda_emu"))
    build.mkdir(parents=True, exist_ok=True)
    return load(name="mambaad_cuda_emu", sources=[str(ROOT / "csrc" / "cuda" / "emulate.cc")],
                extra_cflags=["-O1", "-std=c++20", "-DMAMBAAD_EMU"],
                extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "csrc" / "cuda")],
                build_directory=str(build), verbose=False)


def _inputs(b, d, h, w, n, r, k, method, dtype, grouped, layout, seed, param_dtype=F32):
    gen = torch.Generator().manual_seed(seed)
    x = make_x(b, d, h, w, "cpu", dtype, layout, gen).flatten(2)  # (b, d, l), a view when it can be
    params = make_params(d, n, r, k, grouped, "cpu", param_dtype, gen)
    paths = mk.scan_paths(h, w, method, k, dtype=torch.int32)
    x_dbl = fused.project(x, params[0], grouped)
    dout = make_x(b, d, h, w, "cpu", dtype, layout, gen).flatten(2)
    return x, x_dbl, params[1:], paths, dout


def _contract(x, x_dbl, params, paths, dout, grouped, monkeypatch):
    """The contract in float64 with the CUDA checkpoint interval: (out, states, grads)."""
    monkeypatch.setattr(kernel_contract, "CHUNK", mk.backends.kernel_module("cuda").CUDA_STATE_CHUNK)
    p64 = [p.double() for p in params]
    out, states = kernel_contract.scan_fwd(x.double(), x_dbl.double(), *p64, paths, grouped, True)
    grads = kernel_contract.scan_bwd(dout.double(), x.double(), x_dbl.double(), states, *p64, paths,
                                     grouped, True)
    return out, states, grads


def emu_case(emu, monkeypatch, *, b, d, h, w, n, r, k, method="hilbert", dtype=F32, grouped=False,
             layout="contiguous", config=-1, deterministic=True, order=0, seed=0, param_dtype=F32):
    """Run the emulated kernels on one case and compare everything with the float64 contract."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    x, x_dbl, params, paths, dout = _inputs(b, d, h, w, n, r, k, method, dtype, grouped, layout, seed,
                                            param_dtype)
    out, states = emu.scan_fwd(x, x_dbl, *params, paths, grouped, deterministic, config, order, seed)
    grads = emu.scan_bwd(dout, x, x_dbl, states, *params, paths, grouped, deterministic, config,
                         order, seed)
    ref_out, ref_states, ref_grads = _contract(x, x_dbl, params, paths, dout, grouped, monkeypatch)
    tol = TOL[dtype]
    what = f"emulated b={b} d={d} {h}x{w} n={n} r={r} k={k} {method} {dtype} grouped={grouped} " \
           f"{layout} config={config}"
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous(), what
    assert states.shape == ref_states.shape, f"{what}: states {tuple(states.shape)}"
    assert states.dtype == (F64 if dtype == F64 else F32), f"{what}: states {states.dtype}"
    assert rel_err(out, ref_out) <= tol, f"{what}: out rel err {rel_err(out, ref_out):.3g} > {tol}"
    # inputs are rounded to x's dtype before both runs: the state is compared at fp32 precision
    stol = TOL[F64 if dtype == F64 else F32] * 10
    assert rel_err(states, ref_states) <= stol, f"{what}: states rel err {rel_err(states, ref_states):.3g}"
    for name, got, want in zip(GRADS, grads, ref_grads):
        assert got.shape == want.shape, f"{what}: {name} shape {tuple(got.shape)}"
        err = rel_err(got, want)
        assert err <= stol, f"{what}: {name} rel err {err:.3g} > {stol}"
    return out, states, grads


# (id, case). config 1 is the small fallback (4 warps), config 0 the main one for the length
# (16 warps): both run the same code with different lane / chunk geometry.
EMU_CASES = [
    *[(f"{m}-k8-5x7", dict(b=2, d=4, h=5, w=7, n=4, r=2, k=8, method=m, config=1))
      for m in ("sweep", "scan", "zorder", "zigzag", "hilbert")],
    *[(f"hilbert-k{k}-4x4-n16", dict(b=1, d=6, h=4, w=4, n=16, r=3, k=k, config=1)) for k in (1, 2, 4)],
    ("L1", dict(b=2, d=4, h=1, w=1, n=4, r=2, k=8, config=1)),
    ("L143-chunks", dict(b=1, d=5, h=13, w=11, n=4, r=2, k=2, config=1)),
    ("d40-groups", dict(b=1, d=40, h=6, w=5, n=4, r=2, k=2, method="zorder", config=1)),
    ("gss", dict(b=2, d=8, h=5, w=6, n=4, r=2, k=8, grouped=True, config=1)),
    ("channels_last", dict(b=2, d=4, h=5, w=5, n=4, r=2, k=8, layout="channels_last", config=1)),
    ("sliced", dict(b=2, d=3, h=4, w=5, n=4, r=2, k=4, method="sweep", layout="sliced", config=1)),
    ("bf16", dict(b=2, d=4, h=6, w=5, n=4, r=2, k=8, dtype=BF16, config=1)),
    ("f16-params-f16", dict(b=1, d=4, h=4, w=6, n=4, r=2, k=4, dtype=F16, param_dtype=F16, config=1)),
    ("f64", dict(b=1, d=4, h=3, w=5, n=4, r=2, k=8, dtype=F64, param_dtype=F64, config=1)),
    ("atomic", dict(b=1, d=40, h=6, w=5, n=4, r=2, k=2, config=1, deterministic=False)),
    ("r1", dict(b=1, d=3, h=3, w=8, n=4, r=1, k=4, method="zigzag", config=1)),
    ("main-L35", dict(b=2, d=4, h=5, w=7, n=4, r=2, k=8, method="sweep", config=0)),
    ("main-L99", dict(b=1, d=6, h=9, w=11, n=16, r=3, k=4, config=0)),
    ("main-L323-d70", dict(b=1, d=70, h=17, w=19, n=4, r=2, k=2, config=0)),
    ("main-d130-r9", dict(b=1, d=130, h=8, w=8, n=16, r=9, k=2, config=0)),
    ("main-gss-bf16", dict(b=2, d=16, h=12, w=12, n=4, r=2, k=8, dtype=BF16, grouped=True, config=0)),
    # L > 128 with enough blocks for the emulator's 4 SMs: 16 lanes x 16 steps per channel (the
    # accumulator in shared memory); past L = 1024 the 32 x 8 one accumulates in out itself
    ("main-lanes16-L323", dict(b=4, d=6, h=17, w=19, n=4, r=2, k=4, config=0)),
    ("main-global-acc-L1089", dict(b=1, d=3, h=33, w=33, n=16, r=2, k=2, config=0)),
    # half x with float32 parameters and x_dbl (the contract: x_dbl is float32 for half x)
    ("f16", dict(b=2, d=4, h=5, w=6, n=4, r=2, k=8, dtype=F16, config=1)),
    ("main-k1-f16-L200", dict(b=1, d=5, h=10, w=20, n=4, r=2, k=1, dtype=F16, config=0)),
    ("main-gss-k2-L130-channels_last", dict(b=1, d=6, h=10, w=13, n=4, r=2, k=2, grouped=True,
                                            layout="channels_last", config=0)),
    # G L > 64 KB: the forward accumulates in out itself (fp32) or in an fp32 workspace (bf16)
    ("global-acc-L1089", dict(b=1, d=3, h=33, w=33, n=4, r=2, k=2, config=1)),
    ("global-acc-L1089-bf16", dict(b=1, d=3, h=33, w=33, n=4, r=2, k=2, dtype=BF16, config=1)),
    ("gss-k4-sliced-f16", dict(b=1, d=8, h=5, w=5, n=4, r=2, k=4, dtype=F16, grouped=True,
                               layout="sliced", config=1)),
    # config 2: the lane-sequential forward (N = 16), with the fallback backward on its states
    ("lanes-k8-L63", dict(b=2, d=5, h=7, w=9, n=16, r=3, k=8, config=2)),
    ("lanes-L323-bf16", dict(b=1, d=3, h=17, w=19, n=16, r=2, k=4, dtype=BF16, config=2)),
    ("lanes-gss-f16-sliced", dict(b=1, d=16, h=5, w=6, n=16, r=2, k=8, dtype=F16, grouped=True,
                                  layout="sliced", config=2)),
    ("lanes-k1-r33-channels_last", dict(b=2, d=6, h=9, w=7, n=16, r=33, k=1, layout="channels_last",
                                        config=2)),
    ("lanes-d130-groups", dict(b=1, d=130, h=4, w=4, n=16, r=2, k=2, method="zigzag", config=2)),
    ("lanes-L1", dict(b=2, d=4, h=1, w=1, n=16, r=2, k=8, config=2)),
]


@pytest.mark.parametrize("case", [c for _, c in EMU_CASES], ids=[i for i, _ in EMU_CASES])
def test_emulated_kernels_match_contract(emu, monkeypatch, case):
    emu_case(emu, monkeypatch, **case)


@pytest.mark.parametrize("config,b,h,w,n", [(1, 1, 13, 11, 4), (0, 1, 13, 11, 4), (0, 1, 7, 9, 4),
                                              (0, 4, 13, 11, 4), (2, 1, 13, 11, 16)],
                         ids=["fallback", "main", "main-L63", "main-lanes16", "lane-sequential"])
def test_emulated_thread_order_does_not_matter(emu, monkeypatch, config, b, h, w, n):
    """Threads run forward, reversed and shuffled between barriers: bit-identical results, so no
    thread reads shared data another writes without a barrier in between. (L <= 64 has its own
    backward configuration, a 64-step chunk; with B = 4 the forward takes 16 lanes per channel.)"""
    case = dict(b=b, d=9, h=h, w=w, n=n, r=2, k=4, config=config, layout="channels_last")
    runs = [emu_case(emu, monkeypatch, **case, order=o, seed=3) for o in (0, 1, 2)]
    for other in runs[1:]:
        for a, b in zip([runs[0][0], runs[0][1], *runs[0][2]], [other[0], other[1], *other[2]]):
            assert torch.equal(a, b)


def test_emulated_lane_sequential_selection(emu, monkeypatch):
    """MAMBAAD_CUDA_FWD=lanes gives calls with config -1 the lane-sequential forward (the same bits
    as forcing it) where N = 16, the segment kernels elsewhere; a wrong value is an error."""
    x, x_dbl, params, paths, _ = _inputs(1, 6, 5, 7, 16, 2, 4, "hilbert", F32, False, "contiguous", 7)
    forced = emu.scan_fwd(x, x_dbl, *params, paths, False, True, 2, 0, 0)
    segments = emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)
    monkeypatch.setenv("MAMBAAD_CUDA_FWD", "lanes")
    chosen = emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)
    assert all(torch.equal(u, v) for u, v in zip(forced, chosen))
    assert not torch.equal(forced[0], segments[0])  # a different summation order: not the same bits
    x4, xd4, p4, paths4, _ = _inputs(1, 6, 5, 7, 4, 2, 4, "hilbert", F32, False, "contiguous", 7)
    monkeypatch.setenv("MAMBAAD_CUDA_FWD", "segments")
    want = emu.scan_fwd(x4, xd4, *p4, paths4, False, True, -1, 0, 0)
    monkeypatch.setenv("MAMBAAD_CUDA_FWD", "lanes")  # N = 4: the segment kernels
    assert all(torch.equal(u, v) for u, v in zip(want, emu.scan_fwd(x4, xd4, *p4, paths4, False, True,
                                                                    -1, 0, 0)))
    with pytest.raises(RuntimeError, match="needs N = 16"):
        emu.scan_fwd(x4, xd4, *p4, paths4, False, True, 2, 0, 0)
    monkeypatch.setenv("MAMBAAD_CUDA_FWD", "fastest")
    with pytest.raises(ValueError, match="MAMBAAD_CUDA_FWD must be"):
        emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)


def test_emulated_layouts_agree_bitwise(emu, monkeypatch):
    """Channels-last x and dout are staged channels-fastest instead: same numbers, bit for bit."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    x, x_dbl, params, paths, dout = _inputs(2, 6, 7, 9, 4, 2, 8, "hilbert", F32, False, "contiguous", 5)
    cl = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731 - stride_d == 1
    a = emu.scan_fwd(x, x_dbl, *params, paths, False, True, 1, 0, 0)
    b = emu.scan_fwd(cl(x), x_dbl, *params, paths, False, True, 1, 0, 0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    ga = emu.scan_bwd(dout, x, x_dbl, a[1], *params, paths, False, True, 1, 0, 0)
    gb = emu.scan_bwd(cl(dout), cl(x), x_dbl, a[1], *params, paths, False, True, 1, 0, 0)
    assert all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_emulated_shared_memory_fallback(emu, monkeypatch):
    """A device with little shared memory gets the small configuration; none at all, an error."""
    case = dict(b=1, d=6, h=9, w=11, n=16, r=3, k=4, config=0)
    monkeypatch.setenv("MAMBAAD_EMU_SMEM_LIMIT", str(70 * 1024))
    emu_case(emu, monkeypatch, **case)
    monkeypatch.setenv("MAMBAAD_EMU_SMEM_LIMIT", "2048")
    x, x_dbl, params, paths, _ = _inputs(1, 4, 4, 4, 16, 2, 8, "hilbert", F32, False, "contiguous", 0)
    with pytest.raises(RuntimeError, match="shared memory"):
        emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)


def test_emulated_argument_errors(emu):
    x, x_dbl, params, paths, dout = _inputs(1, 4, 3, 5, 4, 2, 8, "hilbert", F32, False, "contiguous", 0)
    with pytest.raises(TypeError, match="x must be float32"):
        emu.scan_fwd(x.int(), x_dbl, *params, paths, False, True, -1, 0, 0)
    with pytest.raises(ValueError, match="x_dbl has shape"):
        emu.scan_fwd(x, x_dbl[:, :, 1:], *params, paths, False, True, -1, 0, 0)
    with pytest.raises(TypeError, match="x_dbl must be Float"):
        emu.scan_fwd(x, x_dbl.double(), *params, paths, False, True, -1, 0, 0)
    # half x takes x_dbl in float32 (the contract); a half x_dbl is refused, not silently upcast
    with pytest.raises(TypeError, match="x_dbl must be Float"):
        emu.scan_fwd(x.half(), x_dbl.half(), *params, paths, False, True, -1, 0, 0)

    with pytest.raises(TypeError, match="paths must be int32"):
        emu.scan_fwd(x, x_dbl, *params, paths.long(), False, True, -1, 0, 0)
    with pytest.raises(ValueError, match="D = 4 channels|grouped"):
        emu.scan_fwd(x, x_dbl, *params, paths, True, True, -1, 0, 0)
    _, states = emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)
    with pytest.raises(ValueError, match="states has shape"):
        emu.scan_bwd(dout, x, x_dbl, states[:, :, :, :, 1:], *params, paths, False, True, -1, 0, 0)
    with pytest.raises(TypeError, match="states must be"):
        emu.scan_bwd(dout, x, x_dbl, states.double(), *params, paths, False, True, -1, 0, 0)
    with pytest.raises(TypeError, match="x_dbl must be Float"):
        emu.scan_bwd(dout.bfloat16(), x.bfloat16(), x_dbl.bfloat16(), states, *params, paths, False,
                     True, -1, 0, 0)


def _tiny(b=1, l=1, k=1, dk=1, r=1, n=1, dtype=F32):
    """Minimal well-formed arguments for the host checks: x (b, dk, l), K directions, HSS."""
    x = torch.zeros(b, dk, l, dtype=dtype)
    x_dbl = torch.zeros(b, k, r + 2 * n, l, dtype=F64 if dtype == F64 else F32)
    params = [torch.zeros(k, dk, r), torch.zeros(k, dk), torch.zeros(k * dk, n), torch.zeros(k * dk)]
    paths = torch.arange(l, dtype=torch.int32).repeat(k, 1)
    return x, x_dbl, params, paths


def test_emulated_host_limits(emu, monkeypatch):
    """The limits the host checks: L = 16384 (MambaAD at 128 x 128) runs and matches the contract;
    B above the grid limit and R + 2N above 4096 are refused with a clear error."""
    emu_case(emu, monkeypatch, b=1, d=1, h=128, w=128, n=2, r=1, k=1, method="hilbert", config=1)
    x, x_dbl, params, paths = _tiny(b=65536)
    with pytest.raises(ValueError, match="B and K must be at most 65535"):
        emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)
    x, x_dbl, params, paths = _tiny(r=4000, n=49)
    with pytest.raises(ValueError, match="R \\+ 2N at most 4096"):
        emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)
    x, x_dbl, params, paths = _tiny(r=4000, n=48)  # R + 2N = 4096 passes the checks, not the smem
    with pytest.raises(RuntimeError, match="needs more shared memory"):
        emu.scan_fwd(x, x_dbl, *params, paths, False, True, -1, 0, 0)


# MambaAD's four decoder stages (D, L, R) at N = 16, and the opt-in shared memory per block of the
# GPUs the kernels are built for, less the 1 KB scan_host.h keeps for static shared memory.
STAGES = [(1024, 64, 32), (512, 256, 16), (256, 1024, 8), (128, 4096, 4)]
H100_SMEM, A100_SMEM = 232448 - 1024, 166912 - 1024


@pytest.mark.parametrize("stage", range(4))
def test_emulated_stage_configs_fit_shared_memory(emu, stage):
    """At every MambaAD stage the main (16-warp) configurations fit the H100's shared memory, and
    on an A100 the forward still runs a 16-warp configuration (accumulating in global memory where
    needed: for L > 128 <16, 32, 8> where <16, 16, 16> does not fit) while the backward may fall
    back to the 4-warp one, which fits. The lane-sequential forward fits both."""
    _, L, R = STAGES[stage]
    fwd_cfgs = [0] if L <= 64 else [1] if L <= 128 else [4, 2]  # scan_host.h run_fwd's choices
    for cfg in fwd_cfgs:
        fwd = emu.fwd_smem(cfg, R, 16, L, False)
        assert fwd <= H100_SMEM, f"stage {stage}: forward config {cfg} needs {fwd} B > H100 {H100_SMEM}"
    fwd = emu.fwd_smem(fwd_cfgs[-1], R, 16, L, False)
    assert fwd <= A100_SMEM, f"stage {stage}: forward config {fwd_cfgs[-1]} needs {fwd} B > A100"
    bwd = emu.bwd_smem(2 if L <= 64 else 0, R, 16)
    bwd_small = emu.bwd_smem(1, R, 16)
    assert bwd <= H100_SMEM, f"stage {stage}: backward needs {bwd} B > H100 {H100_SMEM}"
    assert bwd_small <= A100_SMEM, f"stage {stage}: backward fallback needs {bwd_small} B"
    assert emu.lanes_smem(R) <= A100_SMEM


def test_emulated_state_chunk_matches_python(emu):
    """The checkpoint interval compiled into the kernels is the one the fake op assumes."""
    from mambaad_kernels import cuda as ext

    assert emu.STATE_CHUNK == ext.CUDA_STATE_CHUNK
    assert ext.states_shape(2, 8, 4, 300, 16, "cuda") == (2, 8, 4, math.ceil(300 / emu.STATE_CHUNK), 16)


# ---------------------------------------------------------------------------------------------
# The built library
# ---------------------------------------------------------------------------------------------


def _cuobjdump() -> str | None:
    cands = [shutil.which("cuobjdump")]
    if os.environ.get("CUDA_HOME"):
        cands.append(str(Path(os.environ["CUDA_HOME"]) / "bin" / "cuobjdump"))
    try:
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)


def _fatbin_archs(so: str) -> list[tuple[int, int]]:
    """(kind, sm) of every entry of the .nv_fatbin section of an ELF64 shared library, read from
    the fatbin headers (kind 1 PTX, 2 cubin; sm 90 for sm_90 / sm_90a), without the CUDA tools."""
    data = Path(so).read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return []
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = secs[shstrndx][4]

    def name(off):
        return data[names + off:data.index(b"\0", names + off)]

    found = []
    for sec in secs:
        if name(sec[0]) != b".nv_fatbin":
            continue
        blob = data[sec[4]:sec[4] + sec[5]]
        pos = 0
        while pos + 16 <= len(blob):
            magic, _, hsize, fsize = struct.unpack_from("<IHHQ", blob, pos)
            if magic != 0xBA55ED50:  # containers are 8-byte aligned
                pos += 8
                continue
            entry, end = pos + hsize, pos + hsize + fsize
            while entry + 32 <= end:
                kind, _, ehsize, psize = struct.unpack_from("<HHIQ", blob, entry)
                found.append((kind, struct.unpack_from("<I", blob, entry + 28)[0]))
                entry += ehsize + psize
            pos = end
    return found


def test_built_library_has_sm90_kernels():
    """The CUDA build is the CI test of csrc/cuda: the library must hold cubins for the requested
    architectures (sm_90 by default) with the three kernels, registered for the CUDA key."""
    from mambaad_kernels import cuda as ext

    if ext.load_error():
        pytest.skip(ext.load_error())
    from mambaad_kernels import _C

    if not getattr(_C, "WITH_CUDA", False):
        pytest.skip("the extension was built without a CUDA toolkit (no nvcc found at build time)")
    so = _C.__file__
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    want = []
    for a in archs.replace(",", ";").replace(" ", ";").split(";"):
        try:
            want.append(round(float(a.strip().rstrip("a+PTX")) * 10))
        except ValueError:  # an empty entry or an architecture name: not checked
            pass
    # which architectures have cubins: cuobjdump's listing where it is (the CUDA toolkit, or
    # triton's copy), else the .nv_fatbin headers (no CUDA tools needed)
    tool = _cuobjdump()
    if tool is not None:
        elfs = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True, check=True).stdout
        cubins = {int(m) for m in re.findall(r"\.sm_(\d+)a?\.cubin", elfs)}
        listing = subprocess.run([tool, "--dump-resource-usage", so], capture_output=True, text=True,
                                 check=True).stdout
    else:
        elfs = "(no cuobjdump: read from the .nv_fatbin headers)"
        cubins = {sm for kind, sm in _fatbin_archs(so) if kind == 2}
        listing = Path(so).read_bytes().decode("latin-1")  # kernel names of the host stubs
    assert cubins, f"no cubin in {so}: {elfs}"
    for sm in want:
        assert sm in cubins, f"no sm_{sm} cubin in {so} (TORCH_CUDA_ARCH_LIST={archs}): {sorted(cubins)}"
    if 90 not in want:
        pytest.skip(f"TORCH_CUDA_ARCH_LIST={archs} asks for no sm_90 (cubins: {sorted(cubins)})")
    for kernel in ("hss_fwd_kernel", "hss_bwd_kernel", "sum_slices_kernel"):
        assert kernel in listing, f"{kernel} missing from {so}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mambaad::scan_fwd", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mambaad::scan_bwd", "CUDA")


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------


def _gpu_inputs(b, d, h, w, n, r, k, dtype=F32, seed=0, grouped=False):
    device = require_backend("cuda")
    gen = torch.Generator().manual_seed(seed)
    x = make_x(b, d, h, w, device, dtype, generator=gen)
    params = make_params(d, n, r, k, grouped, device, F32, gen)
    paths = mk.scan_paths(h, w, "hilbert", k, device, dtype=torch.int32)
    x_dbl = fused.project(x.flatten(2), params[0], grouped)
    return x, params, paths, x_dbl


@pytest.mark.gpu
def test_gpu_long_sequence_16384(monkeypatch):
    """L = 16384 (128 x 128): 128 backward chunks, 64 forward chunks, against float64."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cuda", b=1, d=4, h=128, w=128, n=16, r=2, k=8, method="hilbert", dtype=F32, seed=1)


@pytest.mark.gpu
@pytest.mark.parametrize("hw", [(1, 1), (1, 127), (8, 16), (1, 129), (16, 16), (15, 17), (17, 31),
                                (33, 32)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_gpu_lengths_around_chunks(monkeypatch, hw):
    """L = 1, just under / at / over the 64, 128, 256 chunk sizes, and several chunks."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cuda", b=2, d=24, h=hw[0], w=hw[1], n=16, r=2, k=8, method="hilbert", dtype=F32)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 2, 4])
def test_gpu_directions(monkeypatch, k):
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cuda", b=2, d=80, h=20, w=20, n=16, r=5, k=k, method="zorder", dtype=F32)


@pytest.mark.gpu
def test_gpu_channels_last_x_and_dout_bitwise():
    """Channels-last x and dout (stride_d = 1) give the same bits as contiguous ones."""
    x, params, paths, x_dbl = _gpu_inputs(2, 64, 16, 16, 16, 4, 8)
    x3 = x.flatten(2)
    xcl = x3.transpose(1, 2).contiguous().transpose(1, 2)
    assert xcl.stride(1) == 1
    ops = torch.ops.mambaad
    out, states = ops.scan_fwd(x3, x_dbl, *params[1:], paths, False, True)
    out_cl, states_cl = ops.scan_fwd(xcl, x_dbl, *params[1:], paths, False, True)
    assert torch.equal(out, out_cl), f"out differs: max {(out - out_cl).abs().max().item():.3g}"
    assert torch.equal(states, states_cl), "states differ between x layouts"
    dout = torch.randn_like(x3)
    dout_cl = dout.transpose(1, 2).contiguous().transpose(1, 2)
    g = ops.scan_bwd(dout, x3, x_dbl, states, *params[1:], paths, False, True)
    g_cl = ops.scan_bwd(dout_cl, xcl, x_dbl, states, *params[1:], paths, False, True)
    for name, a, b in zip(GRADS, g, g_cl):
        assert torch.equal(a, b), f"{name} differs between layouts: max {(a - b).abs().max().item():.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("grouped", [False, True])
def test_gpu_deterministic_bitwise(grouped):
    """Two runs, forward and every gradient, bit for bit; the atomic path agrees to rounding."""
    x, params, paths, _ = _gpu_inputs(2, 256, 32, 32, 16, 8, 8, grouped=grouped)

    def run(deterministic):
        xs = x.clone().requires_grad_()
        ps = [p.clone().requires_grad_() for p in params]
        out = mk.hss_scan(xs, *ps, backend="cuda", grouped=grouped, deterministic=deterministic)
        out.square().sum().backward()
        return [out.detach(), xs.grad, *[p.grad for p in ps]]

    names = ["out", "x.grad", "x_proj_weight.grad", "dt_projs_weight.grad", "dt_projs_bias.grad",
             "A_logs.grad", "Ds.grad"]
    first, second = run(True), run(True)
    for name, a, b in zip(names, first, second):
        assert torch.equal(a, b), f"grouped={grouped}: {name} differs between two deterministic runs"
    for name, a, b in zip(names, first, run(False)):
        assert rel_err(b, a) < 1e-5, f"grouped={grouped}: {name} atomic vs deterministic {rel_err(b, a):.3g}"


@pytest.mark.gpu
def test_gpu_backward_memory_is_o_bkdl():
    """Peak memory of forward + backward stays a few (B, K, D, L) fp32 tensors: the states are
    checkpointed every 128 steps and recomputed, never stored for every step (that would be
    B K D L N floats, 16x more)."""
    b, d, h, w, n, k = 2, 128, 64, 64, 16, 8
    x, params, paths, _ = _gpu_inputs(b, d, h, w, n, 4, k)
    x.requires_grad_()
    for p in params:
        p.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = mk.hss_scan(x, *params, backend="cuda")
    out.sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    bkdl = b * k * d * h * w * 4
    assert peak < 4 * bkdl, f"peak {peak / 2**20:.1f} MiB vs B K D L fp32 {bkdl / 2**20:.1f} MiB"
    assert peak < bkdl * n / 4


@pytest.mark.gpu
def test_gpu_states_shape_and_opcheck():
    from mambaad_kernels import cuda as ext

    x, params, paths, x_dbl = _gpu_inputs(1, 8, 12, 13, 4, 2, 4)
    out, states = torch.ops.mambaad.scan_fwd(x.flatten(2), x_dbl, *params[1:], paths, False, True)
    assert tuple(states.shape) == ext.states_shape(1, 4, 8, 156, 4, x.device)
    torch.library.opcheck(torch.ops.mambaad.scan_fwd.default,
                          (x.flatten(2), x_dbl, *params[1:], paths, False, True))
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.mambaad.scan_bwd.default,
                          (dout, x.flatten(2), x_dbl, states, *params[1:], paths, False, True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
def test_gpu_half_gss_stage1(monkeypatch, dtype):
    """Half x (x_dbl float32 from the half GEMM), GSS at stage 1's shape."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cuda", b=2, d=512, h=16, w=16, n=16, r=16, k=8, method="hilbert", dtype=dtype,
             grouped=True, seed=3)


@pytest.mark.gpu
def test_gpu_op_refuses_half_x_dbl():
    """The op takes x_dbl in float32 for half x (the kernel contract), and says so otherwise."""
    x, params, paths, x_dbl = _gpu_inputs(1, 8, 4, 4, 4, 2, 4, dtype=F16)
    assert x_dbl.dtype == F32, "fused.project gives float32 x_dbl for half x"
    with pytest.raises(TypeError, match="x_dbl must be Float"):
        torch.ops.mambaad.scan_fwd(x.flatten(2), x_dbl.half(), *params[1:], paths, False, True)


@pytest.mark.gpu
def test_gpu_matches_reference_at_stage_shape_bf16_channels_last(monkeypatch):
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case("cuda", b=2, d=128, h=64, w=64, n=16, r=4, k=8, method="hilbert", dtype=BF16,
             layout="channels_last")


LANES_GPU_CASES = [
    ("k8-15x17", dict(b=2, d=24, h=15, w=17, n=16, r=2, k=8, method="hilbert", dtype=F32)),
    ("d130-bf16-33x32", dict(b=2, d=130, h=33, w=32, n=16, r=5, k=4, method="zorder", dtype=BF16)),
    ("gss-f16-37x53", dict(b=1, d=96, h=37, w=53, n=16, r=6, k=8, method="hilbert", dtype=F16,
                           grouped=True)),
    ("k1-1x129", dict(b=2, d=8, h=1, w=129, n=16, r=2, k=1, method="sweep", dtype=F32)),
    ("stage0", dict(b=2, d=1024, h=8, w=8, n=16, r=32, k=8, method="hilbert", dtype=F32)),
    ("stage3-channels_last", dict(b=2, d=128, h=64, w=64, n=16, r=4, k=8, method="hilbert",
                                  dtype=F32, layout="channels_last")),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for _, c in LANES_GPU_CASES], ids=[i for i, _ in LANES_GPU_CASES])
def test_gpu_lane_sequential_forward(monkeypatch, case):
    """MAMBAAD_CUDA_FWD=lanes: the lane-sequential forward (and the usual backward on its
    checkpoints) against float64, outputs poisoned."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    monkeypatch.setenv("MAMBAAD_CUDA_FWD", "lanes")
    run_case("cuda", seed=11, **case)
