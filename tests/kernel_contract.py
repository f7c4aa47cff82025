"""The kernel contract of mambaad_kernels.fused, written in plain PyTorch.

This module implements ``scan_fwd`` / ``scan_bwd`` / ``states_shape`` exactly as a fused backend
must (see the docstring of :mod:`mambaad_kernels.fused`), with the backward written out by hand
instead of left to autograd: it is the executable statement of the maths every kernel implements,
and it lets the tests check the op plumbing (custom op, fake, autograd, opcheck, torch.compile)
independently of any kernel. Slow on purpose: vectorised over (b, k, d, n), a Python loop over l.

Per direction k and channel d (input/output channel ``ch = k * Dk + d`` when grouped, else ``d``;
parameter row ``k * Dk + d``), at sequence step t reading grid position ``p = paths[k, t]``::

    u_t = x[b, ch, p];  dt_t = x_dbl[b, k, :R, p];  B_t = x_dbl[b, k, R:R+N, p];  C_t = x_dbl[b, k, R+N:, p]
    z_t = dt_w[k, d] . dt_t + dt_b[k, d];  delta_t = softplus(z_t);  A = -exp(A_logs[row])
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t
    out[b, ch, p] += C_t . h_t + Ds[row] u_t

Backward, with g_t = dout[b, ch, p] and running dh (reverse over t)::

    dh_t   = g_t C_t + exp(delta_{t+1} A) * dh_{t+1}
    dC_t  += g_t h_t                      (summed over channels d -> dx_dbl[b, k, R+N:, p])
    dB_t  += dh_t delta_t u_t             (summed over d          -> dx_dbl[b, k, R:R+N, p])
    du_t   = g_t Ds + delta_t (dh_t . B_t)                 (summed over k -> dx[b, ch, p])
    ddelta = dh_t . (A exp(delta_t A) h_{t-1} + B_t u_t)
    dA    += dh_t delta_t exp(delta_t A) h_{t-1};   dA_logs = dA * A
    dz     = ddelta * sigmoid(z_t);   d_dt_b += dz;   d_dt_w += dz dt_t;
    d_dt  += dz dt_w[k, d]                                 (summed over d -> dx_dbl[b, k, :R, p])
    dDs   += g_t u_t

``states[b, k, d, j]`` is the state h before step ``j * CHUNK`` (zero for j = 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK = 4
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def states_shape(b, k, dk, l, n, device=None):
    return (b, k, dk, math.ceil(l / CHUNK), n)


def _gathered(x, x_dbl, dt_w, dt_b, A_logs, paths, grouped):
    b, d, l = x.shape
    k, dk, r = dt_w.shape
    n = A_logs.shape[1]
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    idx = paths.long()  # (k, l)
    chans = (torch.arange(k)[:, None] * dk if grouped else torch.zeros(k, 1, dtype=torch.long)) + torch.arange(dk)
    chans = chans.to(x.device)  # (k, dk)
    u = x.to(ct)[:, chans[:, :, None], idx[:, None, :]]  # (b, k, dk, l)
    xd = torch.gather(x_dbl.to(ct), 3, idx[None, :, None, :].expand(b, -1, x_dbl.shape[2], -1))
    dt, Bm, Cm = xd.split([r, n, n], 2)  # (b, k, r|n|n, l)
    z = torch.einsum("kdr,bkrl->bkdl", dt_w.to(ct), dt) + dt_b.to(ct)[None, :, :, None]
    A = -torch.exp(A_logs.to(ct)).view(k, dk, n)  # (k, dk, n)
    return ct, chans, idx, u, dt, Bm, Cm, z, A


def _merge(vals, chans, idx, shape, grouped):
    """out[b, chans[k, d], idx[k, t]] += vals[b, k, d, t], summed over k in a fixed order."""
    out = vals.new_zeros(shape)
    for kk in range(vals.shape[1]):
        out[:, chans[kk, :, None], idx[kk][None, :]] += vals[:, kk]
    return out


def scan_fwd(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic):
    ct, chans, idx, u, dt, Bm, Cm, z, A = _gathered(x, x_dbl, dt_w, dt_b, A_logs, paths, grouped)
    b, k, dk, l = u.shape
    delta = F.softplus(z)  # (b, k, dk, l)
    h = u.new_zeros(b, k, dk, A.shape[-1])
    states = u.new_zeros(states_shape(b, k, dk, l, A.shape[-1]))  # float32, float64 for float64
    ys = []
    for t in range(l):
        if t % CHUNK == 0:
            states[:, :, :, t // CHUNK] = h
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * Bm[:, :, None, :, t]
        ys.append((h * Cm[:, :, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + Ds.to(ct).view(k, dk)[None, :, :, None] * u  # (b, k, dk, l)
    return _merge(y, chans, idx, x.shape, grouped).to(x.dtype), states


def scan_bwd(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic):
    ct, chans, idx, u, dt, Bm, Cm, z, A = _gathered(x, x_dbl, dt_w, dt_b, A_logs, paths, grouped)
    b, k, dk, l = u.shape
    n = A.shape[-1]
    r = dt.shape[2]
    g = dout.to(ct)[:, chans[:, :, None], idx[:, None, :]]  # (b, k, dk, l)
    delta = F.softplus(z)
    dA_t = torch.exp(delta[..., None] * A[None, :, :, None, :])  # (b, k, dk, l, n)
    # recompute the states chunk by chunk from the checkpoints
    hs = u.new_empty(b, k, dk, l, n)
    for j in range(states.shape[3]):
        h = states[:, :, :, j].to(ct)
        for t in range(j * CHUNK, min(l, (j + 1) * CHUNK)):
            h = dA_t[..., t, :] * h + (delta[..., t] * u[..., t])[..., None] * Bm[:, :, None, :, t]
            hs[..., t, :] = h
    dh = u.new_zeros(b, k, dk, n)
    du, ddelta = torch.zeros_like(u), torch.zeros_like(u)
    dB, dC = torch.zeros_like(Bm), torch.zeros_like(Cm)
    dA = torch.zeros_like(A)
    for t in reversed(range(l)):
        if t + 1 < l:
            dh = dh * dA_t[..., t + 1, :]
        dh = dh + g[..., t, None] * Cm[:, :, None, :, t]
        h_prev = hs[..., t - 1, :] if t > 0 else torch.zeros_like(dh)
        dC[..., t] = (g[..., t, None] * hs[..., t, :]).sum(2)
        dB[..., t] = (dh * (delta[..., t] * u[..., t])[..., None]).sum(2)
        du[..., t] = delta[..., t] * (dh * Bm[:, :, None, :, t]).sum(-1)
        decay_h = dA_t[..., t, :] * h_prev
        ddelta[..., t] = (dh * (A * decay_h + Bm[:, :, None, :, t] * u[..., t, None])).sum(-1)
        dA = dA + (dh * delta[..., t, None] * decay_h).sum(0)
    Dv = Ds.to(ct).view(k, dk)
    du = du + g * Dv[None, :, :, None]
    dz = ddelta * torch.sigmoid(z)
    d_dt = torch.einsum("bkdl,kdr->bkrl", dz, dt_w.to(ct))
    d_dt_w = torch.einsum("bkdl,bkrl->kdr", dz, dt)
    d_dt_b = dz.sum((0, 3))
    d_Ds = (g * u).sum((0, 3)).reshape(-1)
    d_A_logs = (dA * A).reshape(k * dk, n)
    # back to the grid: x through u (summed over k), x_dbl at original positions
    dx = _merge(du, chans, idx, x.shape, grouped)
    d_local = torch.cat([d_dt, dB, dC], 2)  # (b, k, r + 2n, l) in sequence order
    dx_dbl = torch.zeros(b, k, r + 2 * n, l, dtype=ct, device=x.device)
    dx_dbl.scatter_(3, idx[None, :, None, :].expand(b, -1, r + 2 * n, -1), d_local)
    f = torch.float32 if ct == torch.float32 else ct
    return (dx.to(f), dx_dbl.to(f), d_dt_w.to(f), d_dt_b.to(f), d_A_logs.to(f), d_Ds.to(f))
