"""Drop-in modules built on :func:`mambaad_kernels.ops.hss_scan`: SS2D and HSSBlock.

Parameter names and shapes follow the authors' MambaAD code, so their trained weights load
unchanged (scan indices are not parameters here: they come from the per-grid path cache).
Inputs are channels-last ``(B, H, W, C)`` of any H and W.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .ops import dt_rank_for, hss_scan
from .paths import check_directions, check_method


def _dt_proj_init(d: int, r: int, copies: int, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4):
    """dt_proj weight uniform in +-r^-0.5; bias = softplus^-1(dt), dt log-uniform in [min, max]."""
    std = r ** -0.5
    weight = torch.empty(copies, d, r).uniform_(-std, std)  # (k, d, r)
    dt = torch.exp(torch.rand(copies, d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)  # (k, d)
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus, (k, d)
    return weight, bias


class SS2D(nn.Module):
    """2-D selective scan block: in_proj, depthwise conv, multi-direction scan, gate, out_proj.

    Args:
        d_model: channels C of the input.
        d_state: N, the state size per channel.
        ssm_ratio: d_inner = int(ssm_ratio * d_model).
        dt_rank: R, or "auto" for ceil(d_model / 16).
        d_conv: depthwise convolution kernel size.
        scan_method: ``"sweep", "scan", "zorder", "zigzag", "hilbert"``.
        directions: K in 1, 2, 4, 8.
        dropout: dropout after out_proj.
        backend: scan backend for :func:`hss_scan` (None: the best available).
        grouped: GSS (MMAD): channel group k scanned along direction k only.

    Shapes: input and output ``(B, H, W, C)``.
    """

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0, dt_rank="auto",
                 d_conv: int = 3, scan_method: str = "hilbert", directions: int = 8,
                 dropout: float = 0.0, backend: str | None = None, grouped: bool = False):
        super().__init__()
        check_method(scan_method)
        check_directions(directions)
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = dt_rank_for(d_model) if dt_rank == "auto" else int(dt_rank)
        self.scan_method, self.directions, self.backend, self.grouped = (
            scan_method, directions, backend, grouped)
        k = directions
        if grouped and self.d_inner % k:
            raise ValueError(f"grouped SS2D needs d_inner = {self.d_inner} divisible by K = {k}")
        dk = self.d_inner // k if grouped else self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2,
                                groups=self.d_inner, bias=True)
        self.act = nn.SiLU()
        bound = 1.0 / math.sqrt(dk)  # nn.Linear's default init, as the authors' stacked weights
        self.x_proj_weight = nn.Parameter(
            torch.empty(k, self.dt_rank + 2 * d_state, dk).uniform_(-bound, bound))
        dt_w, dt_b = _dt_proj_init(dk, self.dt_rank, k)
        self.dt_projs_weight = nn.Parameter(dt_w)  # (k, dk, r)
        self.dt_projs_bias = nn.Parameter(dt_b)  # (k, dk)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * dk, 1)  # (k * dk, n)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * dk))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for lin in (self.in_proj, self.out_proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)  # (b, h, w, 2 d_inner)
        u, z = xz.chunk(2, dim=-1)  # (b, h, w, d_inner) x2
        u = self.act(self.conv2d(u.permute(0, 3, 1, 2).contiguous()))  # (b, d_inner, h, w)
        y = hss_scan(u, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                     self.Ds, self.scan_method, self.directions, backend=self.backend,
                     grouped=self.grouped)  # (b, d_inner, h, w)
        y = self.out_norm(y.permute(0, 2, 3, 1))  # (b, h, w, d_inner)
        y = y * F.silu(z)
        return self.dropout(self.out_proj(y))  # (b, h, w, c)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, scan={self.scan_method}x{self.directions}"
                + (", grouped" if self.grouped else ""))


class HSSBlock(nn.Module):
    """Hybrid state-space block: ``x + DropPath(SS2D(LayerNorm(x)))``, channels last.

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth rate.
        d_state: N.
        scan_method, directions, backend: as :class:`SS2D`.

    Shapes: input and output ``(B, H, W, C)``, any H and W.
    """

    grouped = False

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16,
                 scan_method: str = "hilbert", directions: int = 8, backend: str | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state, scan_method=scan_method,
                                   directions=directions, backend=backend, grouped=self.grouped)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class GSSBlock(HSSBlock):
    """Grouped state-space block (MMAD's GSS): ``x + DropPath(SS2D_grouped(LayerNorm(x)))``.

    Our interpretation of MMAD's Grouped State Space block (its paper describes it, no code is
    published): SS2D whose d_inner channels D are split into K groups (K = ``directions``, D
    divisible by K); group g is scanned only along direction g of ``scan_method`` and its result
    goes back on the grid in its own channels (no sum over directions). Parameters per group on its
    own D / K channels: x_proj_weight (K, R + 2N, D / K), dt_projs_weight (K, D / K, R),
    dt_projs_bias (K, D / K), A_logs (D, N), Ds (D). The SSM work is that of one direction over D
    channels: 1 / K of the HSS block's. With K = 1 it is the one-direction HSS block.

    Args and shapes: as :class:`HSSBlock`.
    """

    grouped = True
