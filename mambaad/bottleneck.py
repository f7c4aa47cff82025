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
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from timm.models.resnet import Bottleneck

from .registry import register_bottleneck


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
        bn=nn.BatchNorm2d(cout),
        act=nn.ReLU(inplace=True),
    ))


class HFPN(nn.Module):
    """Half-FPN bottleneck: fuse three encoder scales, embed to ``out_channels`` at stride 32.

    Args:
        in_channels: ``(C1, C2, C3)``, the encoder's ``channels``.
        out_channels: channels of the output (the decoder's first dim, divisible by 4).
        blocks: Bottleneck blocks in the one-class embedding.

    Shapes: input a list of ``(B, C_i, H / s_i, W / s_i)``, s = 4, 8, 16 (H, W multiples of 32);
    output ``(B, out_channels, H / 32, W / 32)``.
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 512, blocks: int = 3):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"HFPN fuses three encoder scales, got channels {in_channels}")
        if out_channels % Bottleneck.expansion:
            raise ValueError(f"out_channels = {out_channels} must be divisible by {Bottleneck.expansion}")
        c1, c2, c3 = in_channels
        self.in_channels, self.out_channels = tuple(in_channels), out_channels
        self.down1 = _conv_bn_relu(c1, c2, 3, 2, bias=False)
        self.lat2 = _conv_bn_relu(c2, c2, 1, 1, bias=True)
        self.down2 = _conv_bn_relu(c2, c3, 3, 2, bias=False)
        self.lat3 = _conv_bn_relu(c3, c3, 1, 1, bias=True)
        self.fuse = _conv_bn_relu(c3, c3, 1, 1, bias=True)
        planes = out_channels // Bottleneck.expansion
        shortcut = nn.Sequential(nn.Conv2d(c3, out_channels, 1, stride=2, bias=False),
                                 nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(c3, planes, stride=2, downsample=shortcut)]
        layers += [Bottleneck(out_channels, planes) for _ in range(blocks - 1)]
        self.oce = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        x = self.lat2(f2) + self.down1(f1)  # (b, c2, h/8, w/8)
        x = self.down2(x) + self.lat3(f3)  # (b, c3, h/16, w/16)
        return self.oce(self.fuse(x)).contiguous()  # (b, out, h/32, w/32)


@register_bottleneck("hfpn")
def _build_hfpn(in_channels: tuple[int, int, int], out_channels: int, config) -> HFPN:
    return HFPN(in_channels, out_channels, blocks=config.oce_blocks)
