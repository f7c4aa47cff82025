"""A plain-PyTorch transcription of VMamba's documented SS2D algorithm, for tests (our own code).

It shares nothing with the path machinery of :mod:`mambaad_kernels`: the four sequences are built
with transposes and flips as VMamba's CrossScan describes them (row-major, column-major, both
reversed), each scanned by a step-by-step selective scan, and put back with the inverse flips and
transposes (CrossMerge). Runs in the dtype of its inputs (float64 in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_loop(u, delta, A, B, C, D, delta_bias):
    """Mamba's S6 with softplus(delta + bias): u, delta ``(b, d, l)``; A ``(d, n)``;
    B, C ``(b, n, l)``; D, delta_bias ``(d,)``. Returns ``(b, d, l)``."""
    delta = F.softplus(delta + delta_bias[:, None])  # (b, d, l)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, d, n)
    ys = []
    for t in range(u.shape[2]):
        du = (delta[:, :, t] * u[:, :, t])[..., None]  # (b, d, 1)
        h = torch.exp(delta[:, :, t, None] * A) * h + du * B[:, None, :, t]  # (b, d, n)
        ys.append((h * C[:, None, :, t]).sum(-1))  # (b, d)
    return torch.stack(ys, -1) + D[:, None] * u


def cross_sequences(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """VMamba's four sequences of ``x (B, D, H, W)``, each ``(B, D, L)``."""
    rows = x.flatten(2)  # row-major
    cols = x.transpose(2, 3).flatten(2)  # column-major
    if mode == "cross2d":
        return [rows, cols, rows.flip(-1), cols.flip(-1)]
    if mode == "unidi":
        return [rows, rows, rows, rows]
    return [rows, rows, rows.flip(-1), rows.flip(-1)]  # bidi


def cross_merge(ys: list[torch.Tensor], h: int, w: int, mode: str) -> torch.Tensor:
    """Undo :func:`cross_sequences` and sum: four ``(B, D, L)`` -> ``(B, D, H, W)``."""
    b, d, _ = ys[0].shape

    def from_cols(s):
        return s.view(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)

    if mode == "cross2d":
        out = ys[0] + from_cols(ys[1]) + ys[2].flip(-1) + from_cols(ys[3].flip(-1))
    elif mode == "unidi":
        out = ys[0] + ys[1] + ys[2] + ys[3]
    else:
        out = ys[0] + ys[1] + ys[2].flip(-1) + ys[3].flip(-1)
    return out.view(b, d, h, w)


def vmamba_scan(m, x: torch.Tensor) -> torch.Tensor:
    """The scan core of VMamba's SS2D with the parameters of our module ``m``: ``(B, D, H, W)``."""
    b, d, h, w = x.shape
    n, r = m.d_state, m.dt_rank
    A = -torch.exp(m.A_logs).view(4, d, n)
    ys = []
    for k, seq in enumerate(cross_sequences(x, m.forward_type.scan)):
        dbl = torch.einsum("bdl,cd->bcl", seq, m.x_proj_weight[k])  # (b, r + 2n, l)
        dts, bs, cs = dbl.split([r, n, n], dim=1)
        delta = torch.einsum("brl,dr->bdl", dts, m.dt_projs_weight[k])  # (b, d, l)
        ys.append(selective_scan_loop(seq, delta, A[k], bs, cs, m.Ds.view(4, d)[k], m.dt_projs_bias[k]))
    return cross_merge(ys, h, w, m.forward_type.scan)


def vmamba_ss2d(m, x: torch.Tensor) -> torch.Tensor:
    """VMamba's SS2D forward (v0 / v2 family) with the parameters and sub-layers of our module."""
    cf, ft = m.channel_first, m.forward_type
    x = m.in_proj(x)
    z = None
    if not ft.no_z:
        x, z = x.chunk(2, dim=1 if cf else -1)
        if not ft.no_z_act:
            z = m.act(z)
    if not cf:
        x = x.permute(0, 3, 1, 2)
    if m.conv2d is not None:
        x = m.conv2d(x)
    y = vmamba_scan(m, m.act(x))
    if not cf:
        y = y.permute(0, 2, 3, 1)
    y = m.out_act(m.out_norm(y))
    if z is not None:
        y = y * z
    return m.out_proj(y)
