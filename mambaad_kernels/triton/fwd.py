"""Forward kernel of the fused HSS scan: gather + delta + chunked selective scan + D skip + scatter.

One program owns ``(b, k, BD channels)`` and walks the k-th scan path in chunks of ``BT`` steps;
see :mod:`mambaad_kernels.triton` for the design and the arithmetic. Tiles: ``(BT, BD)`` per step
and channel, ``(BT, NP)`` for B and C, ``(NP, BD)`` for the state, ``(BT, NP, BD)`` for the scan.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import LOG2E, cast_for_store, linear_combine, load_chunk, softplus, sum_over_n


@triton.jit
def hss_fwd_kernel(
    x_ptr, xdbl_ptr, dtw_ptr, dtb_ptr, alog_ptr, ds_ptr, paths_ptr,  # inputs
    y_ptr, st_ptr,  # outputs: y (direction partials or out), state checkpoints
    L, K, Dk, R, N, n_ckpt,
    sx_b, sx_d, sx_l,  # x strides (any layout)
    sy_b, sy_k, sy_d,  # y[b, k, ch, p] = y_ptr + b sy_b + k sy_k + ch sy_d + p  (sy_k = 0: no partials)
    GROUPED: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, NP: tl.constexpr, BR: tl.constexpr,
    S: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(cdiv(Dk, BD), B K)``; a checkpoint every ``S`` chunks.

    x ``(B, D, L)`` strided; xdbl ``(B, K, R + 2N, L)`` contiguous; dtw ``(K, Dk, R)``; dtb, ds
    ``(K Dk,)``; alog ``(K Dk, N)``; paths ``(K, L)`` int32; y as its strides say;
    st ``(B, K, n_ckpt, Dk, N)`` contiguous, in the accumulation dtype (fp32 or fp64).
    """
    pid_d = tl.program_id(0)
    pid_bk = tl.program_id(1)  # b K + k
    b = pid_bk // K
    k = pid_bk % K
    acc = st_ptr.dtype.element_ty
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, NP)
    offs_r = tl.arange(0, BR)
    dm = offs_d < Dk
    nm = offs_n < N
    rm = offs_r < R
    nd_mask = nm[:, None] & dm[None, :]
    row = k * Dk + offs_d  # parameter row of (k, d)
    if GROUPED:
        ch = row  # GSS: direction k scans its own channel group
    else:
        ch = offs_d

    # per-channel parameters, loaded once: W^T (BR, BD), bias and D (BD,), A log2(e) (NP, BD)
    wt = tl.load(dtw_ptr + row[None, :] * R + offs_r[:, None], mask=rm[:, None] & dm[None, :], other=0.0)
    wt = wt.to(acc)
    bias = tl.load(dtb_ptr + row, mask=dm, other=0.0).to(acc)
    d_skip = tl.load(ds_ptr + row, mask=dm, other=0.0).to(acc)
    a_log = tl.load(alog_ptr + row[None, :] * N + offs_n[:, None], mask=nd_mask, other=0.0).to(acc)
    a2 = -tl.exp(a_log) * LOG2E

    x_base = x_ptr + b.to(tl.int64) * sx_b
    xd_base = xdbl_ptr + pid_bk.to(tl.int64) * (R + 2 * N) * L
    y_base = y_ptr + b.to(tl.int64) * sy_b + k.to(tl.int64) * sy_k
    st_base = st_ptr + pid_bk.to(tl.int64) * n_ckpt * Dk * N
    x_rows = ch.to(tl.int64) * sx_d  # (BD,)
    y_rows = ch.to(tl.int64) * sy_d
    st_offs = offs_d[None, :] * N + offs_n[:, None]  # (NP, BD)
    last = (offs_t == BT - 1)[:, None, None]

    h = tl.zeros((NP, BD), dtype=acc)  # the state before the chunk
    for c in range(tl.cdiv(L, BT)):
        if c % S == 0:
            tl.store(st_base + (c // S) * Dk * N + st_offs, h, mask=nd_mask)  # h before step c BT
        p, tm, u, dtr, bm, cm, z = load_chunk(paths_ptr, x_base, x_rows, sx_l, xd_base, wt, bias, k, L, R, N,
                                              c * BT, offs_t, offs_n, offs_r, dm, nm, rm, acc, DOT_PRECISION)
        delta = tl.where(tm[:, None], softplus(z), 0.0)  # (BT, BD); padded steps: decay 1, input 0
        decay = tl.exp2(delta[:, None, :] * a2[None, :, :])  # (BT, NP, BD)
        inp = (delta * u)[:, None, :] * bm[:, :, None]  # (BT, NP, BD)
        a_pre, b_pre = tl.associative_scan((decay, inp), 0, linear_combine)
        hs = a_pre * h[None, :, :] + b_pre  # h_t for every step of the chunk
        y = sum_over_n(cm, hs, acc, DOT_PRECISION) + d_skip[None, :] * u  # (BT, BD)
        y = cast_for_store(y, y_ptr.dtype.element_ty)
        tl.store(y_base + y_rows[None, :] + p[:, None], y, mask=tm[:, None] & dm[None, :])
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)  # padded steps keep h: the last step is the carry
