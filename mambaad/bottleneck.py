"""The HFPN bottleneck (the authors' ``MFF_OCE``): multi-scale fusion, then one-class embedding.

Given encoder features f1, f2, f3 with channels C1, C2, C3 at strides 4, 8, 16::

    a = ReLU(BN(conv3x3 stride 2, C1 -> C2)(f1))                 down1   (no conv bias)
    b = ReLU(BN(conv1x1, C2 -> C2)(f2)) + a                       lat2    (conv bias)
    c = ReLU(BN(conv3x3 stride 2, C2 -> C3)(b))                   down2   (no conv bias)
        + ReLU(BN(conv1x1, C3 -> C3)(f3))                         lat3    (conv bias)
    e = ReLU(BN(conv1x1, C3 -> C3)(c))                            fuse    (conv bias)
    out = OCE(e): ``oce_blocks`` timm ResNet Bottlenecks (planes out / 4, expansion 4), the first
          with stride 2 and a conv1x1 stride 2 + BN shortcut -> ``out`` channels at stride 32.

With resnet34 (64, 128, 256) and out = 512 this is exactly the authors' module (1,458,304
parameters). Init as theirs: every conv Kaiming-normal (fan_out, ReLU), every BN weight 1, bias 0
(conv biases keep PyTorch's default init).

The fusion half (``down1`` .. ``fuse``) is :class:`ScaleFusion`, which MMAD's Dilated Mamba Fuser
(:mod:`mambaad.mmad`) starts with too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
import torch.nn as nn
from timm.models.resnet import Bottleneck

from .registry import register_bottleneck


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, bias: bool,
                  dilation: int = 1) -> nn.Sequential:
    """conv (same padding) -> BN -> ReLU, as ``conv``, ``bn``, ``act``."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                       bias=bias),
        bn=nn.BatchNorm2d(cout),
        act=nn.ReLU(inplace=True),
    ))


class ScaleFusion(nn.Module):
    """The HFPN's multi-scale fusion (its first half, shared by the bottlenecks that start with it).

    ``e = fuse(down2(lat2(f2) + down1(f1)) + lat3(f3))`` as in the module docstring: three encoder
    scales added into one map of C3 channels at stride 16. Init: :meth:`_init_weights`.

    Args:
        in_channels: ``(C1, C2, C3)``, the encoder's ``channels``.

    Shapes: :meth:`fuse_scales` takes a list of ``(B, C_i, H / s_i, W / s_i)``, s = 4, 8, 16, and
    returns ``(B, C3, H / 16, W / 16)``.
    """

    def __init__(self, in_channels: tuple[int, int, int]):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"{type(self).__name__} fuses three encoder scales, got channels {in_channels}")
        c1, c2, c3 = in_channels
        self.in_channels = tuple(in_channels)
        self.down1 = _conv_bn_relu(c1, c2, 3, 2, bias=False)
        self.lat2 = _conv_bn_relu(c2, c2, 1, 1, bias=True)
        self.down2 = _conv_bn_relu(c2, c3, 3, 2, bias=False)
        self.lat3 = _conv_bn_relu(c3, c3, 1, 1, bias=True)
        self.fuse = _conv_bn_relu(c3, c3, 1, 1, bias=True)

    def _init_weights(self, modules: Iterable[nn.Module] | None = None) -> None:
        """Every conv of ``modules`` (default: all) Kaiming-normal (fan_out, ReLU); BN weight 1, bias 0."""
        for m in self.modules() if modules is None else modules:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def fuse_scales(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        x = self.lat2(f2) + self.down1(f1)  # (b, c2, h/8, w/8)
        x = self.down2(x) + self.lat3(f3)  # (b, c3, h/16, w/16)
        return self.fuse(x)  # (b, c3, h/16, w/16)


class HFPN(ScaleFusion):
    """Half-FPN bottleneck: fuse three encoder scales, embed to ``out_channels`` at stride 32.

    Args:
        in_channels: ``(C1, C2, C3)``, the encoder's ``channels``.
        out_channels: channels of the output (the decoder's first dim, divisible by 4).
        blocks: Bottleneck blocks in the one-class embedding.

    Shapes: input a list of ``(B, C_i, H / s_i, W / s_i)``, s = 4, 8, 16 (H, W multiples of 32);
    output ``(B, out_channels, H / 32, W / 32)``.
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 512, blocks: int = 3):
        if out_channels % Bottleneck.expansion:
            raise ValueError(f"out_channels = {out_channels} must be divisible by {Bottleneck.expansion}")
        super().__init__(in_channels)
        c3 = in_channels[2]
        self.out_channels = out_channels
        planes = out_channels // Bottleneck.expansion
        shortcut = nn.Sequential(nn.Conv2d(c3, out_channels, 1, stride=2, bias=False),
                                 nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(c3, planes, stride=2, downsample=shortcut)]
        layers += [Bottleneck(out_channels, planes) for _ in range(blocks - 1)]
        self.oce = nn.Sequential(*layers)
        self._init_weights()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.oce(self.fuse_scales(feats)).contiguous()  # (b, out, h/32, w/32)


@register_bottleneck("hfpn")
def _build_hfpn(in_channels: tuple[int, int, int], out_channels: int, config) -> HFPN:
    return HFPN(in_channels, out_channels, blocks=config.oce_blocks)
