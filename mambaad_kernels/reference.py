"""Pure-PyTorch reference of the multi-direction scan: the oracle every kernel is tested against.

Glossary (shape letters used in every comment below):

- ``b``: batch.
- ``k``: scan direction, K of them (1, 2, 4 or 8), in the row order of :func:`paths.scan_paths`.
- ``d``: channel (d_inner of SS2D), D of them.
- ``l``: sequence position along a scan path, L = H * W of them. On the grid, ``p`` is the
  row-major flat position; direction k reads ``p = paths[k, l]`` at step ``l``.
- ``n``: state dimension, N of them (16 in MambaAD).
- ``r``: dt rank R (``ceil(C / 16)``); ``c`` indexes the R + 2 N rows of x_proj (dt, B, C).

The selective scan (Mamba's S6), per batch b, channel d, state n, step l::

    delta_l = softplus(delta_l + delta_bias)                (when asked for)
    h_l     = exp(delta_l * A[d, n]) * h_{l-1} + delta_l * B_l[n] * u_l,      h_{-1} = 0
    y_l     = sum_n C_l[n] * h_l[n] + D[d] * u_l
    out_l   = y_l * silu(z_l)                              (when z is given)

The HSS scan (:func:`hss_scan`) gathers the feature map along K paths, projects each gathered
sequence with its direction's x_proj and dt_proj, runs the scan with A = -exp(A_logs), and puts
every direction's output back on the grid, summing the K.

Everything here runs in float64 when given float64 tensors (so ``torch.autograd.gradcheck`` can
check it) and in float32 otherwise; it is slow and simple on purpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .paths import inverse_paths, scan_paths


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (the state dtype of every scan here)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def cross_scan(x: torch.Tensor, method: str = "hilbert", directions: int = 8) -> torch.Tensor:
    """Gather a feature map along the K scan paths.

    Args:
        x: ``(B, D, H, W)``.
        method: scan method (see :mod:`mambaad_kernels.paths`).
        directions: K in 1, 2, 4, 8.

    Returns:
        ``(B, K, D, L)``: ``out[b, k, d, l] = x[b, d].flatten()[paths[k, l]]``.
    """
    b, d, h, w = x.shape
    paths = scan_paths(h, w, method, directions, x.device)  # (k, l)
    flat = x.reshape(b, 1, d, h * w)  # (b, 1, d, l)
    idx = paths[None, :, None, :].expand(b, -1, d, -1)  # (b, k, d, l)
    return torch.gather(flat.expand(-1, paths.shape[0], -1, -1), 3, idx)  # (b, k, d, l)


def cross_merge(y: torch.Tensor, h: int, w: int, method: str = "hilbert") -> torch.Tensor:
    """Put each direction's sequence back on the grid and sum the K directions.

    Args:
        y: ``(B, K, D, L)`` with ``L = h * w``; K in 1, 2, 4, 8.

    Returns:
        ``(B, D, h, w)``: ``out[b, d, p] = sum_k y[b, k, d, inv_k[p]]``.
    """
    b, k, d, l = y.shape
    if l != h * w:
        raise ValueError(f"y has L = {l} but the grid is {h} x {w}")
    inv = inverse_paths(scan_paths(h, w, method, k, y.device))  # (k, l)
    back = torch.gather(y, 3, inv[None, :, None, :].expand(b, -1, d, -1))  # (b, k, d, l)
    return back.sum(1).view(b, d, h, w)  # (b, d, h, w)


def _expand_groups(m: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (b, d, n, l): from (b, n, l) or from (b, g, n, l) with d divisible by g."""
    if m.dim() == 3:
        return m[:, None]  # (b, 1, n, l): broadcasts over d
    g = m.shape[1]
    if dim % g:
        raise ValueError(f"D = {dim} is not divisible by the {g} groups of B / C")
    return m.repeat_interleave(dim // g, dim=1)  # (b, d, n, l)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan with the signature and semantics of ``mamba_ssm``'s ``selective_scan_fn``.

    Args:
        u: ``(B, D, L)`` input.
        delta: ``(B, D, L)`` step sizes (before bias and softplus).
        A: ``(D, N)`` real state matrix (diagonal per channel).
        B, C: ``(B, N, L)`` or ``(B, G, N, L)`` with D divisible by G (variable), or ``(D, N)``
            (constant over time).
        D: optional ``(D,)`` skip.
        z: optional ``(B, D, L)`` gate: the output is multiplied by ``silu(z)``.
        delta_bias: optional ``(D,)`` added to delta before the softplus.
        delta_softplus: apply softplus to delta.
        return_last_state: also return the final state ``(B, D, N)``.

    Returns:
        ``out (B, D, L)`` in u's dtype, and ``last_state (B, D, N)`` in the state dtype if asked.
        The state is float32 for float16 / bfloat16 / float32 inputs, float64 for float64.
    """
    dtype_in = u.dtype
    ct = _compute_dtype(u, delta, A, B, C)
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)  # (b, d, l), (b, d, l), (d, n)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]  # (b, d, l)
    if delta_softplus:
        delta = F.softplus(delta)  # (b, d, l)
    bsz, dim, length = u.shape
    delta_a = torch.exp(delta[..., None] * A[:, None, :])  # (b, d, l, n)
    if B.dim() == 2:
        delta_bu = delta[..., None] * B.to(ct)[:, None, :] * u[..., None]  # (b, d, l, n)
    else:
        bb = _expand_groups(B.to(ct), dim)  # (b, d|1, n, l)
        delta_bu = delta[..., None] * bb.transpose(-1, -2) * u[..., None]  # (b, d, l, n)
    cc = C.to(ct) if C.dim() == 2 else _expand_groups(C.to(ct), dim)  # (d, n) or (b, d|1, n, l)
    state = u.new_zeros(bsz, dim, A.shape[1])  # (b, d, n)
    # unbind, not indexing per step: the backward of l selects would zero-fill l full-size gradients
    da, dbu = delta_a.unbind(2), delta_bu.unbind(2)  # l x (b, d, n)
    c_steps = None if C.dim() == 2 else cc.unbind(-1)  # l x (b, d|1, n)
    ys = []
    for i in range(length):
        state = da[i] * state + dbu[i]  # (b, d, n)
        c_i = cc if c_steps is None else c_steps[i]  # (d, n) or (b, d|1, n)
        ys.append((state * c_i).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=2)  # (b, d, l)
    if D is not None:
        y = y + u * D.to(ct)[:, None]  # (b, d, l)
    if z is not None:
        y = y * F.silu(z.to(ct))  # (b, d, l)
    out = y.to(dtype_in)
    return (out, state) if return_last_state else out


def hss_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, method="hilbert",
             directions=8, grouped=False):
    """The authors' multi-direction scan core (SS2D.forward_core), in plain PyTorch.

    HSS (``grouped=False``): every direction scans all D channels and the K outputs are summed.
    GSS (``grouped=True``, MMAD's grouped state space): the D channels are split into K groups of
    D / K; group k is scanned only along direction k and written back to its own channels.
    Write ``Dk`` for the channels one direction scans: D (HSS) or D / K (GSS).

    Args:
        x: ``(B, D, H, W)`` feature map (float32, float16, bfloat16 or float64).
        x_proj_weight: ``(K, R + 2N, Dk)``.
        dt_projs_weight: ``(K, Dk, R)``.
        dt_projs_bias: ``(K, Dk)``.
        A_logs: ``(K * Dk, N)``; A = -exp(A_logs).
        Ds: ``(K * Dk,)``.
        method: scan method; directions: K in 1, 2, 4, 8.
        grouped: GSS instead of HSS.

    Returns:
        ``(B, D, H, W)`` in x's dtype (computed in float32, or float64 for float64 inputs).
    """
    b, d, h, w = x.shape
    k = directions
    ct = _compute_dtype(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    xs, dts, bs, cs = project_sequences(x.to(ct), x_proj_weight.to(ct), dt_projs_weight.to(ct), method,
                                        k, grouped)
    out = selective_scan(
        xs.flatten(1, 2),  # (b, k * dk, l)
        dts.flatten(1, 2),  # (b, k * dk, l)
        -torch.exp(A_logs.to(ct)),  # (k * dk, n)
        bs, cs,  # (b, k, n, l): group k of the k * dk channels uses direction k's B and C
        Ds.to(ct),  # (k * dk,)
        delta_bias=dt_projs_bias.to(ct).flatten(),  # (k * dk,)
        delta_softplus=True,
    ).view(b, k, -1, h * w)  # (b, k, dk, l)
    return merge_sequences(out, h, w, method, grouped).to(x.dtype)  # (b, d, h, w)


def project_sequences(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                      method: str, directions: int, grouped: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K sequences of an HSS / GSS scan and their projections, in x's dtype.

    Args:
        x: ``(B, D, H, W)``; x_proj_weight ``(K, R + 2N, Dk)``; dt_projs_weight ``(K, Dk, R)``.

    Returns:
        xs ``(B, K, Dk, L)`` (direction k's sequence; GSS: of channel group k), the delta
        pre-activation ``(B, K, Dk, L)`` (dt_proj, without bias or softplus), B and C
        ``(B, K, N, L)``.
    """
    b, d, h, w = x.shape
    k = directions
    r = dt_projs_weight.shape[2]
    n = (x_proj_weight.shape[1] - r) // 2
    xs = cross_scan(x, method, k)  # (b, k, d, l)
    if grouped:
        dk = d // k
        xs = torch.stack([xs[:, i, i * dk:(i + 1) * dk] for i in range(k)], 1)  # (b, k, dk, l)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight)  # (b, k, r + 2n, l)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)  # (b, k, r, l), (b, k, n, l) x2
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight)  # (b, k, dk, l)
    return xs, dts, bs, cs


def merge_sequences(y: torch.Tensor, h: int, w: int, method: str, grouped: bool) -> torch.Tensor:
    """Per-direction outputs ``(B, K, Dk, L)`` back on the grid, ``(B, D, H, W)``: summed over the
    K directions (HSS), or group k written to its own channels k Dk .. (k + 1) Dk (GSS)."""
    b, k, dk, _ = y.shape
    if grouped:
        inv = inverse_paths(scan_paths(h, w, method, k, y.device))  # (k, l)
        back = torch.gather(y, 3, inv[None, :, None, :].expand(b, -1, dk, -1))  # (b, k, dk, l)
        return back.reshape(b, k * dk, h, w)
    return cross_merge(y, h, w, method)  # (b, dk, h, w)
