"""Any timm CNN as MambaAD's frozen encoder (the contract is in :mod:`mambaad.encoders`)."""

from __future__ import annotations

import torch
import torch.nn as nn

OUT_INDICES = (1, 2, 3)
REDUCTIONS = (4, 8, 16)


class TimmEncoder(nn.Module):
    """A timm model with ``features_only=True, out_indices=(1, 2, 3)``, frozen.

    Frozen means: every parameter has ``requires_grad=False`` and the module stays in eval mode
    (BatchNorm uses its running statistics) whatever ``train()`` is called with.

    Args:
        name: a timm model name whose features 1..3 are at strides 4, 8, 16 (resnet*, wide_resnet*,
            efficientnet*, convnext* ...).
        pretrained: passed to timm (ImageNet weights; needs network or timm's cache).

    Attributes:
        channels: ``(C_1, C_2, C_3)`` from timm's ``feature_info`` ((64, 128, 256) for resnet34).
        reductions: ``(4, 8, 16)``.

    Shapes: input ``(B, 3, H, W)``; output a list of ``(B, C_i, H / s_i, W / s_i)``, s = 4, 8, 16.
    """

    def __init__(self, name: str = "resnet34", pretrained: bool = False):
        super().__init__()
        import timm

        self.name = name
        self.body = timm.create_model(name, pretrained=pretrained, features_only=True,
                                      out_indices=OUT_INDICES)
        self.channels = tuple(int(c) for c in self.body.feature_info.channels())
        self.reductions = tuple(int(r) for r in self.body.feature_info.reduction())
        if self.reductions != REDUCTIONS:
            raise ValueError(f"timm model {name!r} gives features {OUT_INDICES} at strides "
                             f"{self.reductions}; MambaAD needs strides {REDUCTIONS}")
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> TimmEncoder:
        """Stay in eval mode whatever ``mode`` is (the encoder is frozen)."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(images))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, frozen"
