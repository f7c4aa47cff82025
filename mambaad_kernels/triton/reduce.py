"""Deterministic fixed-order sums: the merges of per-direction / per-block partial buffers.

``dst[o, m] = sum_{j = 0 .. J-1} src[o, j, m]``, j always in increasing order, one program per
block of m: bit-identical from run to run (no atomics), cast to dst's dtype on the store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cast_for_store

BLOCK = 1024


@triton.jit
def sum_partials_kernel(src_ptr, dst_ptr, J, M, s_o, s_j, d_o, BLOCK_M: tl.constexpr):
    """Grid ``(cdiv(M, BLOCK_M), O)``; src ``[o, j, m]`` at ``o s_o + j s_j + m``, dst ``[o, m]`` at
    ``o d_o + m``."""
    pid_m = tl.program_id(0)
    o = tl.program_id(1).to(tl.int64)
    offs = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = offs < M
    src = src_ptr + o * s_o + offs
    total = tl.load(src, mask=mask, other=0.0)
    for _ in range(1, J):
        src += s_j  # pointer steps: 64-bit however large j s_j gets
        total += tl.load(src, mask=mask, other=0.0)
    tl.store(dst_ptr + o * d_o + offs, cast_for_store(total, dst_ptr.dtype.element_ty), mask=mask)


def sum_partials(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Sum ``src (O, J, M)`` over J into ``dst (O, M)`` in fixed order; returns dst.

    src must have a contiguous last dim (its other strides are free); dst must be contiguous.
    """
    o, j, m = src.shape
    if src.stride(2) != 1 or not dst.is_contiguous() or dst.shape != (o, m):
        raise ValueError(f"sum_partials: src {tuple(src.shape)} / {src.stride()} and dst "
                         f"{tuple(dst.shape)} do not fit")
    if m == 0 or o == 0:
        return dst
    grid = (triton.cdiv(m, BLOCK), o)
    sum_partials_kernel[grid](src, dst, j, m, src.stride(0), src.stride(1), m, BLOCK_M=BLOCK)
    return dst
