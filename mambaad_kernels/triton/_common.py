"""Triton device helpers shared by the forward and backward scan kernels.

Everything here is ``@triton.jit`` code called from the kernels: the softplus of the step size and
the two combine functions of the associative scans. The maths is that of
:mod:`mambaad_kernels.reference` (see the docstring of :mod:`mambaad_kernels.triton`).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals read inside @triton.jit code must be constexpr.
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) == exp2(x LOG2E): the decay is one ex2 per element
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # torch.nn.functional.softplus's default threshold


@triton.jit
def softplus(z):
    """softplus(z) = log(1 + exp(z)), and z itself above the threshold (as torch)."""
    e = tl.exp(tl.minimum(z, SOFTPLUS_THRESHOLD))
    return tl.where(z > SOFTPLUS_THRESHOLD, z, tl.log(1.0 + e))


@triton.jit
def softplus_and_grad(z):
    """``(softplus(z), d softplus / dz)``; the derivative is sigmoid(z), 1 above the threshold."""
    e = tl.exp(tl.minimum(z, SOFTPLUS_THRESHOLD))
    over = z > SOFTPLUS_THRESHOLD
    return tl.where(over, z, tl.log(1.0 + e)), tl.where(over, 1.0, e / (1.0 + e))


@triton.jit
def linear_combine(a_early, b_early, a_late, b_late):
    """Compose two pieces of the recurrence ``h <- a h + b``: first ``early``, then ``late``.

    Used by forward (prefix) scans, whose combine receives ``(accumulated earlier, current)``.
    """
    return a_early * a_late, a_late * b_early + b_late


@triton.jit
def suffix_combine(alpha_late, p_late, s_late, alpha_early, p_early, s_early):
    """Combine two adjacent time segments of the adjoint recurrence ``dh_t = beta_t + alpha_{t+1} dh_{t+1}``.

    A segment ``[i..j]`` is summarised as ``(alpha_i, P, S)`` with ``P = prod_{m=i+1..j} alpha_m``
    (its own first alpha excluded) and ``S = sum_{s=i..j} (prod_{m=i+1..s} alpha_m) beta_s``; a
    single step t is ``(alpha_t, 1, beta_t)``. The suffix scan's result at t summarises
    ``[t..end]``, so ``S`` is ``dh_t`` without the carry from later chunks, and ``P`` is the decay
    that carry gets. This form needs no shifted ``alpha_{t+1}`` tile. Associative, not
    commutative::

        early . late = (alpha_e, P_e alpha_l P_l, S_e + P_e alpha_l S_l)

    The suffix scan is a prefix scan of the time-flipped chunk, whose combine receives
    ``(accumulated, current)`` = ``(later segment, earlier segment)``: hence the argument order.
    """
    q = p_early * alpha_late
    return alpha_early, q * p_late, s_early + q * s_late


@triton.jit
def matmul(a, b, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``a (M, K) @ b (K, N)`` accumulated in ACC.

    float64 goes through a broadcast multiply and ``tl.sum`` instead of ``tl.dot``: float64 exists
    for gradient checks, not speed, and Triton 3.6's float64 ``tl.dot`` on CUDA gave wrong
    gradients in our GPU parity run (2026-11-23).
    """
    if ACC == tl.float64:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION, out_dtype=ACC)


@triton.jit
def load_chunk(paths_ptr, x_base, x_rows, sx_l, xd_base, wt, bias, k, L, R, N, t0,
               offs_t, offs_n, offs_r, dm, nm, rm, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Gather one chunk of BT steps of direction k and compute its step sizes.

    Returns ``p (BT,)`` grid positions (0 past the end), ``tm (BT,)`` valid steps,
    ``u (BT, BD)``, ``dtr (BT, BR)`` the dt rows, ``bm, cm (BT, NP)`` B and C, ``z (BT, BD)`` the
    pre-softplus step ``dt_w . dt + dt_b``; all in ACC, zero where masked.
    """
    t = t0 + offs_t
    tm = t < L
    p = tl.load(paths_ptr + k * L + t, mask=tm, other=0)
    u = tl.load(x_base + x_rows[None, :] + p[:, None].to(tl.int64) * sx_l, mask=tm[:, None] & dm[None, :],
                other=0.0).to(ACC)
    dtr = tl.load(xd_base + offs_r[None, :] * L + p[:, None], mask=tm[:, None] & rm[None, :], other=0.0)
    dtr = dtr.to(ACC)
    tn_mask = tm[:, None] & nm[None, :]
    bm = tl.load(xd_base + (R + offs_n)[None, :] * L + p[:, None], mask=tn_mask, other=0.0).to(ACC)
    cm = tl.load(xd_base + (R + N + offs_n)[None, :] * L + p[:, None], mask=tn_mask, other=0.0).to(ACC)
    z = matmul(dtr, wt, ACC, DOT_PRECISION) + bias[None, :]
    return p, tm, u, dtr, bm, cm, z


@triton.jit
def sum_over_n(v, x, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``out[t, d] = sum_n v[t, n] x[t, n, d]`` for ``v (BT, NP)``, ``x (BT, NP, BD)``: a batched dot.

    A dot rather than ``tl.sum``: its operand staging through shared memory moves each element
    once, where a butterfly reduction across lanes costs log2(lanes) shuffles per element.
    """
    BT: tl.constexpr = x.shape[0]
    NP: tl.constexpr = x.shape[1]
    BD: tl.constexpr = x.shape[2]
    if ACC == tl.float64:  # see matmul
        return tl.sum(v[:, :, None] * x, axis=1)
    else:
        out = tl.dot(tl.reshape(v, (BT, 1, NP)), x, input_precision=DOT_PRECISION, out_dtype=ACC)
        return tl.reshape(out, (BT, BD))


@triton.jit
def sum_over_d(x, v, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``out[t, n] = sum_d x[t, n, d] v[t, d]`` for ``x (BT, NP, BD)``, ``v (BT, BD)``: a batched dot."""
    BT: tl.constexpr = x.shape[0]
    NP: tl.constexpr = x.shape[1]
    BD: tl.constexpr = x.shape[2]
    if ACC == tl.float64:  # see matmul
        return tl.sum(x * v[:, None, :], axis=2)
    else:
        out = tl.dot(x, tl.reshape(v, (BT, BD, 1)), input_precision=DOT_PRECISION, out_dtype=ACC)
        return tl.reshape(out, (BT, NP))


@triton.jit
def cast_for_store(v, OUT: tl.constexpr):
    """``v`` converted to the output dtype OUT, rounding to nearest even.

    bf16 is rounded by hand (the hardware's rule: add 0x7FFF plus the kept lowest bit, keep the top
    16 bits; NaN stays NaN) because the Triton interpreter truncates float32 -> bfloat16 casts,
    which doubles the rounding error of bf16 outputs in the CPU tests. Other dtypes use ``.to``.
    """
    if OUT == tl.bfloat16:
        u = v.to(tl.float32).to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(v != v, 0x7FC0, r)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(OUT)
