"""MMAD: MambaAD with a Dilated Mamba Fuser bottleneck and a Hybrid Mamba Decoder of GSS blocks.

MMAD (the later model of the MambaAD line) is described in its paper with no code published; this
module is our documented interpretation (project issue 11). It keeps MambaAD's frozen encoder,
decoder skeleton, anomaly map and torch-model contract (:class:`mambaad.model.MambaAD`, whose
bottleneck and decoder block are chosen by name from the config) and changes two parts:

- **Hybrid Mamba Decoder (HMD)**: the MambaAD decoder (:class:`mambaad.decoder.MambaDecoder`) with
  every HSS block replaced by a Grouped State Space block
  (:class:`mambaad_kernels.modules.GSSBlock`, registered here as the decoder block ``"gss"``)
  inside the same locality-enhanced modules (5x5 and 7x7 local branches, conv1x1 fusion,
  residual). A GSS block is SS2D whose d_inner channels D are split into K groups (K =
  ``config.directions`` = 8 by default; D = 2 x the stage's dim must be divisible by K); group g
  is scanned only along direction g of ``config.scan_method`` (Hilbert) and its result goes back
  on the grid in its own channels, with no sum over directions. Per group, on its own D / K
  channels: x_proj_weight (K, R + 2N, D / K), dt_projs_weight (K, D / K, R), dt_projs_bias
  (K, D / K), A_logs (D, N), Ds (D). The SSM work is that of one direction over D channels, 1 / K
  of the HSS block's, and a GSS block has exactly the parameters of a one-direction HSS block.
- **Dilated Mamba Fuser (DMF)**, the bottleneck ``"dmf"`` (:class:`DMF`): the HFPN's multi-scale
  fusion before its ResNet layer (:class:`mambaad.bottleneck.ScaleFusion`, C3 channels at stride
  16) goes through parallel 3x3 convolutions with dilations ``config.fuser_dilations`` = (1, 2, 4)
  (conv-BN-ReLU each, C3 -> C3), concatenated and fused by a 1x1 conv (conv-BN-ReLU, 3 C3 -> C3),
  downsampled to the decoder's first grid (stride 32) by a 3x3 stride-2 conv (conv-BN-ReLU,
  C3 -> dims[0], like the HFPN's own stride-2 convs), then one plain Mamba block for receptive
  field: an :class:`~mambaad_kernels.modules.HSSBlock` over the sweep path with one direction
  (``x + SS2D(LN(x))``, not grouped). Its purpose is to break the identity shortcut that lets a
  reconstruction decoder copy anomalies through, so there is no skip from its input to its output
  around the dilated branch: everything reaching the decoder went through the dilated
  convolutions.

Choices of ours where the description is silent: the dilated branches keep C3 channels, the
convolutions followed by BN have no bias, the downsampling is a strided 3x3 convolution, the
Mamba block has the decoder's d_state and no drop path, its SS2D keeps its own init while every
conv of the fuser gets the HFPN's (Kaiming-normal fan_out, BN 1 / 0).

Registered models: ``mmad`` (resnet34, the MambaAD paper's dims and depths) and ``mmad_test``
(the tiny ``mambaad_test`` sizes, for CI).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from mambaad_kernels.modules import GSSBlock, HSSBlock

from .bottleneck import ScaleFusion, _conv_bn_relu
from .config import MambaADConfig
from .model import TEST_CONFIG, MambaAD
from .registry import register_block, register_bottleneck, register_model


class DMF(ScaleFusion):
    """Dilated Mamba Fuser: multi-scale fusion, parallel dilated convs, downsample, one Mamba block.

    Args:
        in_channels: ``(C1, C2, C3)``, the encoder's ``channels``.
        out_channels: channels of the output (the decoder's first dim).
        dilations: dilation rate of each parallel 3x3 branch.
        d_state: N of the Mamba block.
        scan_method: scan path of the Mamba block (``"sweep"``: row by row).
        directions: scan directions of the Mamba block (1: a plain Mamba scan).
        backend: scan backend (None: the dispatcher's choice per call).

    Modules: ``down1 .. fuse`` (:class:`~mambaad.bottleneck.ScaleFusion`), ``dilated`` (one
    conv-BN-ReLU per rate), ``merge`` (conv1x1-BN-ReLU), ``down`` (conv3x3 stride 2-BN-ReLU),
    ``mamba`` (:class:`~mambaad_kernels.modules.HSSBlock`).

    Shapes: input a list of ``(B, C_i, H / s_i, W / s_i)``, s = 4, 8, 16 (H, W multiples of 32);
    output ``(B, out_channels, H / 32, W / 32)`` (a view in channels-last memory).
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 512,
                 dilations: tuple[int, ...] = (1, 2, 4), d_state: int = 16, scan_method: str = "sweep",
                 directions: int = 1, backend: str | None = None):
        super().__init__(in_channels)
        if not dilations or any(int(d) <= 0 for d in dilations):
            raise ValueError(f"DMF needs one or more positive dilation rates, got {dilations}")
        c3 = self.in_channels[2]
        self.out_channels, self.dilations = out_channels, tuple(int(d) for d in dilations)
        self.dilated = nn.ModuleList(_conv_bn_relu(c3, c3, 3, 1, bias=False, dilation=d)
                                     for d in self.dilations)
        self.merge = _conv_bn_relu(len(self.dilations) * c3, c3, 1, 1, bias=False)
        self.down = _conv_bn_relu(c3, out_channels, 3, 2, bias=False)
        self._init_weights()  # the convs and BNs above; the Mamba block below keeps SS2D's init
        self.mamba = HSSBlock(out_channels, d_state=d_state, scan_method=scan_method, directions=directions,
                              backend=backend)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.fuse_scales(feats)  # (b, c3, h/16, w/16)
        x = torch.cat([branch(x) for branch in self.dilated], dim=1)  # (b, len(dilations) c3, h/16, w/16)
        x = self.down(self.merge(x))  # (b, out, h/32, w/32)
        x = self.mamba(x.permute(0, 2, 3, 1))  # (b, h/32, w/32, out)
        return x.permute(0, 3, 1, 2)  # (b, out, h/32, w/32)


@register_bottleneck("dmf")
def _build_dmf(in_channels: tuple[int, int, int], out_channels: int, config: MambaADConfig) -> DMF:
    return DMF(in_channels, out_channels, dilations=config.fuser_dilations, d_state=config.d_state,
               backend=config.backend)


@register_block("gss")
def _build_gss(dim: int, drop_path: float, config: MambaADConfig) -> GSSBlock:
    d_inner = 2 * dim
    if d_inner % config.directions:
        raise ValueError(f"a GSS block on {dim} channels splits d_inner = {d_inner} into K = "
                         f"{config.directions} groups: every decoder dim x 2 must be divisible by K")
    return GSSBlock(dim, drop_path=drop_path, d_state=config.d_state, scan_method=config.scan_method,
                    directions=config.directions, backend=config.backend)


MMAD_CONFIG = {"bottleneck": "dmf", "block": "gss"}


@register_model
def mmad(pretrained: bool = False, **overrides: Any) -> MambaAD:
    """MMAD at MambaAD's paper size: resnet34, DMF, HMD with GSS blocks (Hilbert, K = 8), dims
    512/256/128/64, depths 3/4/6/3.

    11,494,080 (decoder) + 5,370,496 (DMF) trainable and 8,170,304 frozen parameters (derivation in
    tests/test_mmad.py). ``pretrained``: the encoder's ImageNet weights through timm.
    """
    return MambaAD(MambaADConfig(**MMAD_CONFIG).replace(pretrained=pretrained, **overrides), "mmad")


@register_model
def mmad_test(pretrained: bool = False, **overrides: Any) -> MambaAD:
    """A tiny MMAD for CI: ``mambaad_test``'s sizes (resnet18, dims 64/32/16/8, depths 1/1/1/1,
    d_state 8) with the DMF bottleneck and GSS blocks (K = 8: D / K = 2 channels per group at dim 8)."""
    config = MambaADConfig(**TEST_CONFIG, **MMAD_CONFIG).replace(pretrained=pretrained, **overrides)
    return MambaAD(config, "mmad_test")
