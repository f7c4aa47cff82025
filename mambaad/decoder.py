"""MambaAD's decoder: LSS modules (state-space blocks + local conv branches) and patch-expand.

Layout (paper config): 4 stages, dims (512, 256, 128, 64) at H/32 .. H/4, depths (3, 4, 6, 3)
split into LSS modules by :func:`mambaad.config.split_depth` (1 x 3, 2 x 2, 2 x 3, 1 x 3).
Stages 1..3 start with a :class:`PatchExpand`; their outputs are the three reconstructions.
Everything inside runs channels last ``(B, H, W, C)``; scan paths come from the HSS blocks'
per-grid cache, so any grid works (no size argument anywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from mambaad_kernels.modules import HSSBlock

from .config import MambaADConfig
from .registry import get_block, register_block

BlockFn = Callable[[int, float], nn.Module]


class LocalBranch(nn.Module):
    """Local branch of an LSS module: conv1x1 -> IN -> SiLU -> depthwise kxk -> IN -> SiLU -> conv1x1
    -> IN -> SiLU (1x1 convs with bias, the depthwise one without; InstanceNorm without affine).

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.pw_in = nn.Conv2d(dim, dim, 1)
        self.dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=False)
        self.pw_out = nn.Conv2d(dim, dim, 1)
        self.norm = nn.InstanceNorm2d(dim)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.pw_in(x)))
        x = self.act(self.norm(self.dw(x)))
        return self.act(self.norm(self.pw_out(x)))


class LSSModule(nn.Module):
    """Locality-enhanced state-space module.

    ``x + fuse(cat(blocks(x), local5(x), local7(x)))``: the state-space blocks in cascade (global
    branch), two :class:`LocalBranch` (k = 5, 7) on the input, a conv1x1 3C -> C, a residual.

    Args:
        dim: channels C.
        depth: state-space blocks in the cascade.
        block_fn: ``(dim, drop_path) -> nn.Module`` on ``(B, H, W, C)`` (an HSS block by default).
        drop_path: stochastic-depth rate of every block of this module.

    Init (the authors'): every Conv2d inside, the blocks' depthwise convs included, gets
    ``normal(0, sqrt(2 / fan_out))`` with ``fan_out = k * k * out / groups`` and zero bias.

    Shapes: ``(B, H, W, C)`` -> ``(B, H, W, C)``.
    """

    def __init__(self, dim: int, depth: int, block_fn: BlockFn, drop_path: float = 0.0):
        super().__init__()
        self.ssm = nn.ModuleList(block_fn(dim, drop_path) for _ in range(depth))
        self.local5 = LocalBranch(dim, 5)
        self.local7 = LocalBranch(dim, 7)
        self.fuse = nn.Conv2d(3 * dim, dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x
        for blk in self.ssm:
            g = blk(g)  # (b, h, w, c)
        xc = x.permute(0, 3, 1, 2)  # (b, c, h, w), channels-last memory
        y = torch.cat((g.permute(0, 3, 1, 2), self.local5(xc), self.local7(xc)), dim=1)  # (b, 3c, h, w)
        return self.fuse(y).permute(0, 2, 3, 1) + x  # (b, h, w, c)


class PatchExpand(nn.Module):
    """Double the grid, halve the channels: Linear C -> 2C (no bias), 2x2 pixel shuffle, LayerNorm.

    Channel ``(p1 * 2 + p2) * C / 2 + c`` of the expanded vector goes to sub-pixel ``(p1, p2)``,
    channel ``c`` (the authors' ``b h w (p1 p2 c) -> b (h p1) (w p2) c``).

    Shapes: ``(B, H, W, C)`` -> ``(B, 2H, 2W, C / 2)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchExpand needs an even channel count, got {dim}")
        self.dim = dim
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, c // 2)  # (b, h, w, p1, p2, c/2)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 2)  # (b, 2h, 2w, c/2)
        return self.norm(x)


class DecoderStage(nn.Module):
    """One decoder stage: optional :class:`PatchExpand`, then LSS modules.

    Shapes: ``(B, H, W, 2C)`` (with upsample) or ``(B, H, W, C)`` -> ``(B, H', W', C)``.
    """

    def __init__(self, dim: int, modules: int, blocks: int, drop_paths: tuple[float, ...],
                 block_fn: BlockFn, upsample: bool):
        super().__init__()
        self.upsample = PatchExpand(2 * dim) if upsample else None
        self.lss = nn.ModuleList(LSSModule(dim, blocks, block_fn, drop_paths[j]) for j in range(modules))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for module in self.lss:
            x = module(x)
        return x


class MambaDecoder(nn.Module):
    """The four-stage state-space decoder.

    Args:
        config: dims, stage_layout, drop_path_rates and the block settings.
        block_fn: ``(dim, drop_path) -> nn.Module``; default: the builder registered under
            ``config.block`` called with the config.

    Init (the authors'): every Linear trunc-normal(std 0.02) with zero bias, every LayerNorm
    weight 1 and bias 0 (on top of the LSS modules' conv init).

    Shapes: input ``(B, dims[0], H / 32, W / 32)``; output a list of three ``(B, C, h, w)``,
    shallow first: ``(B, dims[3], H / 4, W / 4), (B, dims[2], H / 8, W / 8),
    (B, dims[1], H / 16, W / 16)`` (views in channels-last memory).
    """

    def __init__(self, config: MambaADConfig, block_fn: BlockFn | None = None):
        super().__init__()
        if block_fn is None:
            block_fn = _registered_block_fn(config)
        self.dims = config.dims
        self.stages = nn.ModuleList(
            DecoderStage(dim, modules, blocks, config.drop_path_rates[i], block_fn, upsample=i > 0)
            for i, (dim, (modules, blocks)) in enumerate(zip(config.dims, config.stage_layout, strict=True)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the outputs, shallow first: ``(dims[3], dims[2], dims[1])``."""
        return tuple(reversed(self.dims[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.permute(0, 2, 3, 1)  # (b, h, w, c)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (b, h_i, w_i, dims[i])
            if i > 0:
                outs.insert(0, x.permute(0, 3, 1, 2))  # (b, dims[i], h_i, w_i)
        return outs


def _registered_block_fn(config: MambaADConfig) -> BlockFn:
    """``(dim, drop_path) -> block`` from the builder registered as ``config.block``."""
    build = get_block(config.block)

    def block_fn(dim: int, drop_path: float) -> nn.Module:
        return build(dim, drop_path, config)

    return block_fn


@register_block("hss")
def _build_hss(dim: int, drop_path: float, config: MambaADConfig) -> nn.Module:
    return HSSBlock(dim, drop_path=drop_path, d_state=config.d_state, scan_method=config.scan_method,
                    directions=config.directions, backend=config.backend)
