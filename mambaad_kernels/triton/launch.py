"""Launch wrappers of the Triton scan kernels: input checks, tile choice, allocation, merges.

The kernel contract (:mod:`mambaad_kernels.fused`) is implemented by :func:`scan_fwd`,
:func:`scan_bwd` and :func:`states_shape`; :mod:`mambaad_kernels.triton` re-exports them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton

from .. import _alloc
from .bwd import hss_bwd_kernel
from .fwd import hss_fwd_kernel
from .interpret import enable_fast_scan
from .reduce import sum_partials

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_N = 64  # state size: the (BD, BT, NP) tiles grow with it
MAX_R = 128  # dt rank
MAX_GRID_Y = 65535  # the kernels' grid is (channel blocks, B K)
DOT_PRECISION = "ieee"  # fp32 dot operands without TF32 rounding (fp64 ignores it)

# Tile sizes per device type: chunk length BT, channels per program BD, chunks per checkpoint S.
# On CUDA every dot operand side that is contracted (BT, BD, NP, BR) must be >= 16 (Triton 3.6).
# The interpreter (CPU tensors) runs whole short sequences as one chunk: its cost is per operation,
# not per element; tests/test_triton.py shrinks these to cross chunk and checkpoint boundaries.
CHUNK = {"cuda": 16, "cpu": 64}
BLOCK_D = {"cuda": 16, "cpu": 16}
CKPT_CHUNKS = {"cuda": 1, "cpu": 1}
MIN_SIDE = {"cuda": 16, "cpu": 1}
NUM_WARPS = {"fwd": 4, "bwd": 8}


def _pow2(v: int) -> int:
    return triton.next_power_of_2(max(int(v), 1))


def _device_type(device: torch.device | str) -> str:
    kind = torch.device(device).type
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"triton scan: tensors on {kind} are not supported (CUDA, or CPU under "
                         "TRITON_INTERPRET=1)")
    return kind


def chunk_len(l: int, device: torch.device | str) -> int:
    """The chunk length BT for a sequence of length ``l`` on ``device``: a power of two."""
    kind = _device_type(device)
    return max(MIN_SIDE[kind], min(CHUNK[kind], _pow2(l)))


def n_checkpoints(l: int, device: torch.device | str) -> int:
    """Checkpoints per path: one before every ``CKPT_CHUNKS`` chunks."""
    return triton.cdiv(triton.cdiv(l, chunk_len(l, device)), CKPT_CHUNKS[_device_type(device)])


def states_shape(b: int, k: int, dk: int, l: int, n: int, device: torch.device | str = "cuda"
                 ) -> tuple[int, ...]:
    """Checkpoint shape ``(B, K, n_ckpt, Dk, N)``: the state before every S-th chunk of every path."""
    return (b, k, n_checkpoints(l, device), dk, n)


@dataclass(frozen=True)
class _Geometry:
    b: int
    d: int
    l: int
    k: int
    dk: int
    r: int
    n: int
    grouped: bool
    kind: str  # "cuda" or "cpu"

    @property
    def rows(self) -> int:  # rows of x_dbl: R + 2N
        return self.r + 2 * self.n

    @property
    def bt(self) -> int:
        return chunk_len(self.l, self.kind)

    @property
    def bd(self) -> int:
        return max(MIN_SIDE[self.kind], min(BLOCK_D[self.kind], _pow2(self.dk)))

    @property
    def np_(self) -> int:
        return max(MIN_SIDE[self.kind], _pow2(self.n))

    @property
    def s(self) -> int:  # chunks per checkpoint
        return CKPT_CHUNKS[self.kind]

    @property
    def n_ckpt(self) -> int:
        return n_checkpoints(self.l, self.kind)

    @property
    def br(self) -> int:
        return max(MIN_SIDE[self.kind], _pow2(self.r))

    @property
    def n_dblocks(self) -> int:
        return triton.cdiv(self.dk, self.bd)

    @property
    def merge(self) -> bool:  # HSS with K > 1: directions write partials, summed afterwards
        return not self.grouped and self.k > 1


def _fail(msg: str) -> None:
    raise ValueError(f"triton scan: {msg}")


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped) -> _Geometry:
    """Validate the kernel-contract inputs; return the call's geometry."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        _fail(f"x must be a (B, D, L) tensor, got {getattr(x, 'shape', type(x))}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton scan: x dtype {x.dtype} is not one of {SUPPORTED_DTYPES}")
    kind = _device_type(x.device)
    if kind == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            _fail("CPU tensors run only under the Triton interpreter: set TRITON_INTERPRET=1")
        enable_fast_scan()
    b, d, l = x.shape
    if dt_w.dim() != 3 or A_logs.dim() != 2 or paths.dim() != 2:
        _fail(f"dt_w must be (K, Dk, R), A_logs (K Dk, N), paths (K, L); got {tuple(dt_w.shape)}, "
              f"{tuple(A_logs.shape)}, {tuple(paths.shape)}")
    k, dk, r = dt_w.shape
    n = A_logs.shape[1]
    if (dk * k != d) if grouped else (dk != d):
        _fail(f"dt_w {tuple(dt_w.shape)} does not fit x {tuple(x.shape)} (grouped={grouped})")
    expected = {"x_dbl": (b, k, r + 2 * n, l), "dt_b": (k, dk), "A_logs": (k * dk, n), "Ds": (k * dk,),
                "paths": (k, l)}
    tensors = {"x_dbl": x_dbl, "dt_b": dt_b, "A_logs": A_logs, "Ds": Ds, "paths": paths, "dt_w": dt_w}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            _fail(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    for name, t in tensors.items():
        if t.device != x.device:
            _fail(f"{name} is on {t.device}, x on {x.device}")
        if not t.is_contiguous():
            _fail(f"{name} must be contiguous")
    want_dbl = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x_dbl.dtype != want_dbl:
        raise TypeError(f"triton scan: x_dbl is {x_dbl.dtype}, expected {want_dbl} for {x.dtype} x")
    if paths.dtype != torch.int32:
        raise TypeError(f"triton scan: paths must be int32, got {paths.dtype}")
    for name in ("dt_w", "dt_b", "A_logs", "Ds"):
        if tensors[name].dtype not in (torch.float32, x.dtype):
            raise TypeError(f"triton scan: {name} must be float32 or x's dtype, got {tensors[name].dtype}")
    if not 1 <= n <= MAX_N or not 1 <= r <= MAX_R:
        _fail(f"N = {n} must be in 1..{MAX_N} and R = {r} in 1..{MAX_R}")
    if b == 0 or d == 0 or l == 0:
        _fail(f"empty input {tuple(x.shape)}")
    if b * k > MAX_GRID_Y:
        _fail(f"B K = {b * k} programs exceed the CUDA grid's second dimension ({MAX_GRID_Y}): "
              "split the batch")
    return _Geometry(b, d, l, k, dk, r, n, bool(grouped), kind)


def scan_fwd(x: torch.Tensor, x_dbl: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor,
             A_logs: torch.Tensor, Ds: torch.Tensor, paths: torch.Tensor, grouped: bool,
             deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward scan (kernel contract of :mod:`mambaad_kernels.fused`).

    Args:
        x: ``(B, D, L)`` any strides; x_dbl: ``(B, K, R + 2N, L)`` contiguous, fp32 (fp64 for fp64 x);
        dt_w ``(K, Dk, R)``, dt_b ``(K, Dk)``, A_logs ``(K Dk, N)``, Ds ``(K Dk,)``: contiguous;
        paths ``(K, L)`` int32. ``deterministic`` is accepted for the contract: this backend is
        always deterministic.

    Returns:
        out ``(B, D, L)`` contiguous in x's dtype; states ``(B, K, n_ckpt, Dk, N)`` fp32
        (fp64 for fp64 x).
    """
    geo = _check(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped)
    acc = _acc_dtype(x)
    dev = x.device
    out = _alloc.empty(geo.b, geo.d, geo.l, dtype=x.dtype, device=dev)
    states = _alloc.empty(states_shape(geo.b, geo.k, geo.dk, geo.l, geo.n, dev), dtype=acc, device=dev)
    if geo.merge:
        y = _alloc.empty(geo.b, geo.k, geo.d, geo.l, dtype=acc, device=dev)
        sy = (geo.k * geo.d * geo.l, geo.d * geo.l, geo.l)
    else:
        y, sy = out, (geo.d * geo.l, 0, geo.l)
    grid = (geo.n_dblocks, geo.b * geo.k)
    with torch.cuda.device(dev) if geo.kind == "cuda" else contextlib.nullcontext():
        hss_fwd_kernel[grid](
            x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, y, states,
            geo.l, geo.k, geo.dk, geo.r, geo.n, geo.n_ckpt,
            *x.stride(), *sy,
            GROUPED=geo.grouped, BD=geo.bd, BT=geo.bt, NP=geo.np_, BR=geo.br, S=geo.s,
            DOT_PRECISION=DOT_PRECISION, num_warps=NUM_WARPS["fwd"],
        )
        if geo.merge:
            sum_partials(y.view(geo.b, geo.k, geo.d * geo.l), out.view(geo.b, geo.d * geo.l))
    return out, states


def scan_bwd(dout: torch.Tensor, x: torch.Tensor, x_dbl: torch.Tensor, states: torch.Tensor,
             dt_w: torch.Tensor, dt_b: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor,
             paths: torch.Tensor, grouped: bool, deterministic: bool = True
             ) -> tuple[torch.Tensor, ...]:
    """Fused backward scan (kernel contract of :mod:`mambaad_kernels.fused`).

    Args:
        dout: ``(B, D, L)`` any strides, any float dtype; the others as :func:`scan_fwd`, and
        states as it returned them.

    Returns:
        ``(dx (B, D, L), dx_dbl (B, K, R + 2N, L), d_dt_w (K, Dk, R), d_dt_b (K, Dk),
        d_A_logs (K Dk, N), d_Ds (K Dk,))``, all fp32 (fp64 for fp64 x); dx is the gradient
        through the scan input u only.
    """
    geo = _check(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped)
    acc = _acc_dtype(x)
    dev = x.device
    if tuple(dout.shape) != (geo.b, geo.d, geo.l) or dout.device != dev:
        _fail(f"dout {tuple(dout.shape)} on {dout.device} does not match x {tuple(x.shape)} on {dev}")
    if not dout.is_floating_point():
        raise TypeError(f"triton scan: dout must be floating point, got {dout.dtype}")
    want = states_shape(geo.b, geo.k, geo.dk, geo.l, geo.n, dev)
    if tuple(states.shape) != want or states.dtype != acc or not states.is_contiguous():
        _fail(f"states {tuple(states.shape)} {states.dtype} is not this backend's checkpoint "
              f"{want} {acc} (contiguous)")
    b, k, dk, l = geo.b, geo.k, geo.dk, geo.l
    dx = _alloc.empty(b, geo.d, l, dtype=acc, device=dev)
    dx_dbl = _alloc.empty(b, k, geo.rows, l, dtype=acc, device=dev)
    if geo.merge:
        du = _alloc.empty(b, k, geo.d, l, dtype=acc, device=dev)
        su = (k * geo.d * l, geo.d * l, l)
    else:
        du, su = dx, (geo.d * l, 0, l)
    n_db = geo.n_dblocks
    if n_db > 1:
        dxd = _alloc.empty(b, k, n_db, geo.rows, l, dtype=acc, device=dev)
        sq = (n_db * geo.rows * l, geo.rows * l)
    else:
        dxd, sq = dx_dbl, (geo.rows * l, 0)
    p_dtw = _alloc.empty(b, k * dk, geo.r, dtype=acc, device=dev)
    p_dtb = _alloc.empty(b, k * dk, dtype=acc, device=dev)
    p_alog = _alloc.empty(b, k * dk, geo.n, dtype=acc, device=dev)
    p_ds = _alloc.empty(b, k * dk, dtype=acc, device=dev)
    grid = (n_db, b * k)
    # per-program scratch: the states before the chunks of one checkpoint segment (S > 1 only)
    n_scratch = n_db * b * k * geo.s * geo.np_ * geo.bd if geo.s > 1 else 1
    scratch = torch.empty(n_scratch, dtype=acc, device=dev)
    with torch.cuda.device(dev) if geo.kind == "cuda" else contextlib.nullcontext():
        hss_bwd_kernel[grid](
            dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths,
            du, dxd, p_dtw, p_dtb, p_alog, p_ds, scratch,
            l, k, dk, geo.r, geo.n, geo.n_ckpt,
            *dout.stride(), *x.stride(), *su, *sq,
            GROUPED=geo.grouped, BD=geo.bd, BT=geo.bt, NP=geo.np_, BR=geo.br, S=geo.s,
            DOT_PRECISION=DOT_PRECISION,
            num_warps=NUM_WARPS["bwd"],
        )
        if geo.merge:
            sum_partials(du.view(b, k, geo.d * l), dx.view(b, geo.d * l))
        if n_db > 1:
            sum_partials(dxd.view(b * k, n_db, geo.rows * l), dx_dbl.view(b * k, geo.rows * l))
        grads = []
        for part, shape in ((p_dtw, (k, dk, geo.r)), (p_dtb, (k, dk)), (p_alog, (k * dk, geo.n)),
                            (p_ds, (k * dk,))):
            if b == 1:
                grads.append(part.view(shape))
                continue
            total = _alloc.empty(*shape, dtype=acc, device=dev)
            sum_partials(part.view(1, b, -1), total.view(1, -1))
            grads.append(total)
    return (dx, dx_dbl, *grads)

