"""Backward kernel of the fused HSS scan: recompute each chunk from its checkpoint, reverse scan.

One program owns ``(b, k, BD channels)`` and walks its path's chunks from last to first. Per chunk
it recomputes the states from the saved checkpoint (forward scan), runs the adjoint recurrence
(reverse scan, carried across chunks) and emits every gradient; see :mod:`mambaad_kernels.triton`
for the maths and for what goes to which partial buffer.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (LOG2E, linear_combine, load_chunk, matmul, softplus, softplus_and_grad,
                      suffix_combine, sum_over_d, sum_over_n)


@triton.jit
def chunk_grads(c, h0, q, da_acc, dwt_acc, db_acc, dd_acc,  # chunk index, its state before, carries
                paths_ptr, x_base, x_rows, sx_l, xd_base, g_base, g_rows, sg_l, du_base, du_rows, dq_base,
                wt, w, bias, d_skip, a, a2, ones, ones3, k, L, R, N, offs_t, offs_n, offs_r, dm, nm, rm,
                BT: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One chunk of the backward: store its du, dx_dbl partials; return the updated carries
    ``(q, da_acc, dwt_acc, db_acc, dd_acc)``. ``h0 (NP, BD)`` is the state before the chunk and ``q``
    the adjoint carry ``decay dh`` at the first step of the next chunk."""
    p, tm, u, dtr, bm, cm, z = load_chunk(paths_ptr, x_base, x_rows, sx_l, xd_base, wt, bias, k, L, R, N,
                                          c * BT, offs_t, offs_n, offs_r, dm, nm, rm, ACC, DOT_PRECISION)
    td_mask = tm[:, None] & dm[None, :]
    g = tl.load(g_base + g_rows[None, :] + p[:, None].to(tl.int64) * sg_l, mask=td_mask, other=0.0).to(ACC)
    delta, dsp = softplus_and_grad(z)
    delta = tl.where(tm[:, None], delta, 0.0)
    du_in = delta * u  # (BT, BD)

    # recompute the chunk's states from the state before it
    decay = tl.exp2(delta[:, None, :] * a2[None, :, :])  # (BT, NP, BD)
    inp = du_in[:, None, :] * bm[:, :, None]
    a_pre, b_pre = tl.associative_scan((decay, inp), 0, linear_combine)
    hs = a_pre * h0[None, :, :] + b_pre  # h_t
    hd = hs - inp  # decay_t h_{t-1}

    # adjoint dh_t = g_t C_t + decay_{t+1} dh_{t+1}: a suffix scan (a prefix scan of the time-flipped
    # chunk; the flips are register renames when t is thread-local) plus the carry q
    gc = g[:, None, :] * cm[:, :, None]
    _, p_suf, s_suf = tl.associative_scan((tl.flip(decay, 0), ones3, tl.flip(gc, 0)), 0, suffix_combine)
    dh = tl.flip(s_suf, 0) + tl.flip(p_suf, 0) * q[None, :, :]  # (BT, NP, BD)
    first = (offs_t == 0)[:, None, None]
    q = tl.sum(tl.where(first, decay * dh, 0.0), axis=0)

    # gradients
    dc = sum_over_d(hs, g, ACC, DOT_PRECISION)  # (BT, NP), summed over this block's channels
    dbm = sum_over_d(dh, du_in, ACC, DOT_PRECISION)  # (BT, NP)
    s_b = sum_over_n(bm, dh, ACC, DOT_PRECISION)  # (BT, BD): dh . B
    dh_hd = dh * hd
    s_a = sum_over_n(ones, dh_hd * a[None, :, :], ACC, DOT_PRECISION)  # (BT, BD): dh . A decay h_prev
    da_acc += tl.sum(dh_hd * delta[:, None, :], axis=0)
    du = delta * s_b + g * d_skip[None, :]
    dz = tl.where(td_mask, (s_a + u * s_b) * dsp, 0.0)  # d delta -> d z
    db_acc += tl.sum(dz, axis=0)
    dd_acc += tl.sum(g * u, axis=0)
    dwt_acc += matmul(tl.trans(dtr), dz, ACC, DOT_PRECISION)  # (BR, BD)
    ddt = matmul(dz, w, ACC, DOT_PRECISION)  # (BT, BR)

    tl.store(du_base + du_rows[None, :] + p[:, None], du, mask=td_mask)
    tl.store(dq_base + offs_r[None, :] * L + p[:, None], ddt, mask=tm[:, None] & rm[None, :])
    tn_mask = tm[:, None] & nm[None, :]
    tl.store(dq_base + (R + offs_n)[None, :] * L + p[:, None], dbm, mask=tn_mask)
    tl.store(dq_base + (R + N + offs_n)[None, :] * L + p[:, None], dc, mask=tn_mask)
    return q, da_acc, dwt_acc, db_acc, dd_acc


@triton.jit
def hss_bwd_kernel(
    g_ptr, x_ptr, xdbl_ptr, st_ptr, dtw_ptr, dtb_ptr, alog_ptr, ds_ptr, paths_ptr,  # inputs
    du_ptr, dxd_ptr, ddtw_ptr, ddtb_ptr, dalog_ptr, dds_ptr, scr_ptr,  # outputs (partials), scratch
    L, K, Dk, R, N, n_ckpt,
    sg_b, sg_d, sg_l,  # dout strides (any layout)
    sx_b, sx_d, sx_l,  # x strides (any layout)
    su_b, su_k, su_d,  # du[b, k, ch, p] = du_ptr + b su_b + k su_k + ch su_d + p  (su_k = 0: no partials)
    sq_bk, sq_j,  # dxd[b, k, j, row, p] = dxd_ptr + (b K + k) sq_bk + j sq_j + row L + p  (j: channel block)
    GROUPED: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, NP: tl.constexpr, BR: tl.constexpr,
    S: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(cdiv(Dk, BD), B K)``; the checkpoints are ``S`` chunks apart.

    Inputs as :func:`mambaad_kernels.triton.fwd.hss_fwd_kernel`, plus g = dout ``(B, D, L)``
    strided. Outputs, in the accumulation dtype: du as its strides say; dxd the per-channel-block
    partials of dx_dbl; ddtw ``(B, K Dk, R)``, ddtb ``(B, K Dk)``, dalog ``(B, K Dk, N)``, dds
    ``(B, K Dk)``: per-batch partials of the parameter gradients. scr: ``S (NP, BD)`` states per
    program, the chunk starts of one checkpoint segment (unused when S == 1).
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
    rd_mask = rm[:, None] & dm[None, :]
    row = k * Dk + offs_d
    if GROUPED:
        ch = row
    else:
        ch = offs_d

    wt = tl.load(dtw_ptr + row[None, :] * R + offs_r[:, None], mask=rd_mask, other=0.0).to(acc)  # (BR, BD)
    w = tl.trans(wt)  # (BD, BR)
    bias = tl.load(dtb_ptr + row, mask=dm, other=0.0).to(acc)
    d_skip = tl.load(ds_ptr + row, mask=dm, other=0.0).to(acc)
    a_log = tl.load(alog_ptr + row[None, :] * N + offs_n[:, None], mask=nd_mask, other=0.0).to(acc)
    a = -tl.exp(a_log)  # (NP, BD)
    a2 = a * LOG2E

    g_base = g_ptr + b.to(tl.int64) * sg_b
    x_base = x_ptr + b.to(tl.int64) * sx_b
    xd_base = xdbl_ptr + pid_bk.to(tl.int64) * (R + 2 * N) * L
    st_base = st_ptr + pid_bk.to(tl.int64) * n_ckpt * Dk * N
    du_base = du_ptr + b.to(tl.int64) * su_b + k.to(tl.int64) * su_k
    dq_base = dxd_ptr + pid_bk.to(tl.int64) * sq_bk + pid_d.to(tl.int64) * sq_j
    scr_base = scr_ptr + (pid_bk.to(tl.int64) * tl.num_programs(0) + pid_d) * S * NP * BD
    g_rows = ch.to(tl.int64) * sg_d
    x_rows = ch.to(tl.int64) * sx_d
    du_rows = ch.to(tl.int64) * su_d
    st_offs = offs_d[None, :] * N + offs_n[:, None]  # (NP, BD)
    scr_offs = offs_n[:, None] * BD + tl.arange(0, BD)[None, :]
    last = (offs_t == BT - 1)[:, None, None]
    ones = tl.full((BT, NP), 1.0, acc)
    ones3 = tl.full((BT, NP, BD), 1.0, acc)

    q = tl.zeros((NP, BD), dtype=acc)  # carry: decay_t1 dh_t1 at the first step t1 of the next chunk
    da_acc = tl.zeros((NP, BD), dtype=acc)  # dL/dA
    dwt_acc = tl.zeros((BR, BD), dtype=acc)  # dL/d dt_projs_weight, transposed
    db_acc = tl.zeros((BD,), dtype=acc)  # dL/d dt_projs_bias
    dd_acc = tl.zeros((BD,), dtype=acc)  # dL/dDs
    n_chunks = tl.cdiv(L, BT)
    if S == 1:  # a checkpoint before every chunk: one loop, which Triton can software-pipeline
        for ci in range(n_chunks):
            c = n_chunks - 1 - ci
            h0 = tl.load(st_base + c * Dk * N + st_offs, mask=nd_mask, other=0.0)  # (NP, BD)
            q, da_acc, dwt_acc, db_acc, dd_acc = chunk_grads(
                c, h0, q, da_acc, dwt_acc, db_acc, dd_acc, paths_ptr, x_base, x_rows, sx_l, xd_base, g_base,
                g_rows, sg_l, du_base, du_rows, dq_base, wt, w, bias, d_skip, a, a2, ones, ones3, k, L, R, N,
                offs_t, offs_n, offs_r, dm, nm, rm, BT, acc, DOT_PRECISION)
    else:
        for si in range(n_ckpt):
            seg = n_ckpt - 1 - si
            c0 = seg * S
            n_here = tl.minimum(n_chunks - c0, S)  # chunks in this segment
            h = tl.load(st_base + seg * Dk * N + st_offs, mask=nd_mask, other=0.0)  # (NP, BD)
            # re-run the segment forward to get the state before each of its chunks
            for j in range(n_here):
                tl.store(scr_base + j * NP * BD + scr_offs, h)
                p, tm, u, dtr, bm, cm, z = load_chunk(paths_ptr, x_base, x_rows, sx_l, xd_base, wt, bias, k,
                                                      L, R, N, (c0 + j) * BT, offs_t, offs_n, offs_r, dm, nm,
                                                      rm, acc, DOT_PRECISION)
                delta = tl.where(tm[:, None], softplus(z), 0.0)
                decay = tl.exp2(delta[:, None, :] * a2[None, :, :])
                inp = (delta * u)[:, None, :] * bm[:, :, None]
                a_pre, b_pre = tl.associative_scan((decay, inp), 0, linear_combine)
                h = tl.sum(tl.where(last, a_pre * h[None, :, :] + b_pre, 0.0), axis=0)
            tl.debug_barrier()
            for jj in range(n_here):
                j = n_here - 1 - jj
                h0 = tl.load(scr_base + j * NP * BD + scr_offs)
                q, da_acc, dwt_acc, db_acc, dd_acc = chunk_grads(
                    c0 + j, h0, q, da_acc, dwt_acc, db_acc, dd_acc, paths_ptr, x_base, x_rows, sx_l, xd_base,
                    g_base, g_rows, sg_l, du_base, du_rows, dq_base, wt, w, bias, d_skip, a, a2, ones, ones3,
                    k, L, R, N, offs_t, offs_n, offs_r, dm, nm, rm, BT, acc, DOT_PRECISION)
            tl.debug_barrier()  # the next segment overwrites the scratch

    prow = b.to(tl.int64) * K * Dk + row  # (BD,) row of the per-batch parameter partials
    tl.store(dalog_ptr + prow[None, :] * N + offs_n[:, None], da_acc * a, mask=nd_mask)
    tl.store(ddtw_ptr + prow[None, :] * R + offs_r[:, None], dwt_acc, mask=rd_mask)
    tl.store(ddtb_ptr + prow, db_acc, mask=dm)
    tl.store(dds_ptr + prow, dd_acc, mask=dm)
