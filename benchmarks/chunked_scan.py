"""A vectorised chunked PyTorch HSS scan: the fast pure-PyTorch baseline the fused kernels must beat.

The sequential reference (:mod:`mambaad_kernels.reference`) runs one Python step per sequence
position, L steps of small tensor ops. This baseline computes the same op (gather along the K
paths, x_proj / dt_proj projections, selective scan, merge) with the scan split into chunks of
``T`` steps, so the Python loops run ``T + L / T`` times over large tensors instead of L times over
small ones. Per (b, k, d, n), with the log-decay ``a_t = delta_t A <= 0`` and the input
``v_t = delta_t B_t u_t``, over chunks ``j`` of T steps:

1. **Local scan, all chunks at once** (T Python steps, each over every chunk):
   ``h^loc_t = exp(a_t) h^loc_{t-1} + v_t`` from ``h^loc = 0`` at each chunk start, and its output
   part ``y^loc_t = C_t . h^loc_t``.
2. **Carries between chunks** (one step per chunk): the state entering chunk j is
   ``H_j = exp(S_j) H_{j-1} + h^loc_end(j-1)``, ``H_0 = 0``, with ``S_j`` the chunk's summed
   log-decay.
3. **Correction, vectorised over everything**: with ``S_t`` the cumulative sum of log-decays
   inside the chunk up to step t, ``h_t = h^loc_t + exp(S_t) H_j``, so
   ``y_t = y^loc_t + sum_n C_t[n] exp(S_t[n]) H_j[n]``. Every exponent is <= 0, so nothing
   overflows, unlike the one-pass ``exp(S_t) cumsum(exp(-S_s) v_s)`` form, which overflows
   float32 once a chunk's decay passes ``exp(-88)``. Exponents are floored just above the
   subnormal range (torch's exp is about 80x slower on subnormal results): a change below
   ``exp(-79)`` relative, far under rounding.

Cost: 2 B K D L N exponentials (the step decays and the cumulative ones), and O(B K D L N) memory
for the decays and inputs. Gradients come from autograd through these tensor ops, so the
forward + backward saves O(B K D L N) activations: a baseline, not a production path.
Everything runs in float32 (float64 for float64 inputs), the output in x's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mambaad_kernels.reference import merge_sequences, project_sequences


def default_chunk(length: int) -> int:
    """The chunk length T: the power of two nearest the cube root of L (4, 8, 8, 16 for L = 64,
    256, 1024, 4096: the fastest of 4 .. 128 at MambaAD's four stages on a 2-core x86 CPU)."""
    return 1 << max(0, round(math.log2(max(1, length)) / 3))


def chunked_selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, Ds: Tensor,
                           chunk: int | None = None) -> Tensor:
    """Chunked selective scan over K directions with per-direction B and C.

    Args:
        u: ``(B, K, D, L)`` gathered inputs (compute dtype).
        delta: ``(B, K, D, L)`` step sizes, already biased and softplus-ed.
        A: ``(K, D, N)``, negative.
        Bm, Cm: ``(B, K, N, L)``: direction k's B and C, shared by its D channels.
        Ds: ``(K, D)`` skip.
        chunk: T, the chunk length (default :func:`default_chunk`).

    Returns:
        ``(B, K, D, L)`` outputs ``y_t = C_t . h_t + Ds u_t``.
    """
    b, k, d, length = u.shape
    t_len = chunk or default_chunk(length)
    if t_len < 1:
        raise ValueError(f"chunk must be >= 1, got {t_len}")
    nc = -(-length // t_len)  # chunks
    pad = nc * t_len - length
    if pad:  # padded steps have delta = 0: decay 1, input 0, so earlier outputs are unchanged
        u, delta = F.pad(u, (0, pad)), F.pad(delta, (0, pad))
        Bm, Cm = F.pad(Bm, (0, pad)), F.pad(Cm, (0, pad))
    # step-major layout (T, b, k, d, c, n) so that each local step reads one contiguous slice
    dl = delta.view(b, k, d, nc, t_len).permute(4, 0, 1, 2, 3)  # (t, b, k, d, c)
    ul = u.view(b, k, d, nc, t_len).permute(4, 0, 1, 2, 3)  # (t, b, k, d, c)
    bl = Bm.view(b, k, Bm.shape[2], nc, t_len).permute(4, 0, 1, 3, 2)[:, :, :, None]  # (t, b, k, 1, c, n)
    cl = Cm.view(b, k, Cm.shape[2], nc, t_len).permute(4, 0, 1, 3, 2)[:, :, :, None]  # (t, b, k, 1, c, n)
    # exponents are floored where exp() would turn subnormal (torch's exp is ~80x slower there); the
    # change is below exp(-80) relative (float32), far under rounding
    floor = math.log(torch.finfo(u.dtype).tiny) + 8.0  # -79.3 (float32), -700.4 (float64)
    log_decay = dl[..., None] * A[None, None, :, :, None, :]  # (t, b, k, d, c, n), <= 0
    decay = torch.exp(log_decay.clamp_min(floor))  # (t, b, k, d, c, n)
    inp = (dl * ul)[..., None] * bl  # (t, b, k, d, c, n)
    # 1. local scans of every chunk from a zero state (unbind, not indexing: the backward of T
    #    index ops would write T full-size gradients, unbind's writes one)
    h = torch.zeros_like(inp[0])  # (b, k, d, c, n)
    y_loc = []
    for decay_t, inp_t, c_t in zip(decay.unbind(0), inp.unbind(0), cl.unbind(0)):
        h = decay_t * h + inp_t  # (b, k, d, c, n)
        y_loc.append((h * c_t).sum(-1))  # (b, k, d, c)
    y = torch.stack(y_loc, 0)  # (t, b, k, d, c)
    # 2. the state entering each chunk
    cum = torch.exp(torch.cumsum(log_decay, 0).clamp_min(floor))  # (t, b, k, d, c, n): chunk start -> t
    carry = torch.zeros_like(h[..., 0, :])  # (b, k, d, n)
    carries = []
    for decay_j, h_j in zip(cum[-1].unbind(3), h.unbind(3)):  # (b, k, d, n) each, over chunks
        carries.append(carry)
        carry = decay_j * carry + h_j  # (b, k, d, n)
    entering = torch.stack(carries, 3)  # (b, k, d, c, n)
    # 3. add what the entering state contributes inside its chunk
    y = y + (cum * cl * entering[None]).sum(-1)  # (t, b, k, d, c)
    y = y.permute(1, 2, 3, 4, 0).reshape(b, k, d, nc * t_len)[..., :length]  # (b, k, d, l)
    return y + Ds[None, :, :, None] * u[..., :length]


def chunked_hss_scan(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
                     A_logs: Tensor, Ds: Tensor, method: str = "hilbert", directions: int = 8,
                     chunk: int | None = None, grouped: bool = False) -> Tensor:
    """The HSS scan of :func:`mambaad_kernels.ops.hss_scan` with the chunked selective scan.

    Args:
        x: ``(B, D, H, W)``.
        x_proj_weight: ``(K, R + 2N, Dk)``; dt_projs_weight: ``(K, Dk, R)``; dt_projs_bias:
            ``(K, Dk)``; A_logs: ``(K * Dk, N)``; Ds: ``(K * Dk,)``; Dk = D, or D / K when grouped.
        method, directions: scan method and K.
        chunk: chunk length T (default :func:`default_chunk`).
        grouped: GSS (MMAD): channel group k scanned along direction k only, written back to its
            own channels, no sum.

    Returns:
        ``(B, D, H, W)`` in x's dtype, differentiable by autograd.
    """
    b, _, h, w = x.shape
    k = directions
    n = A_logs.shape[1]
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs, z, bs, cs = project_sequences(x.to(ct), x_proj_weight.to(ct), dt_projs_weight.to(ct), method,
                                      k, grouped)  # (b, k, d, l) x2, (b, k, n, l) x2; d = Dk
    d = xs.shape[2]
    delta = F.softplus(z + dt_projs_bias.to(ct)[None, :, :, None])  # (b, k, d, l)
    A = -torch.exp(A_logs.to(ct)).view(k, d, n)  # (k, d, n)
    y = chunked_selective_scan(xs, delta, A, bs, cs, Ds.to(ct).view(k, d), chunk)  # (b, k, d, l)
    return merge_sequences(y, h, w, method, grouped).to(x.dtype)  # (b, D, h, w)
