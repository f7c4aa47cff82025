"""Frozen ImageNet encoders for MambaAD: three feature maps at strides 4, 8 and 16.

The encoder contract (every encoder returned by :func:`build_encoder` follows it):

- input: RGB images ``(B, 3, H, W)`` normalised with the ImageNet mean and std (the datasets'
  transform), H and W multiples of 32;
- ``forward(images) -> list`` of three tensors ``(B, C_i, H / s_i, W / s_i)``, s = (4, 8, 16);
- attributes ``channels`` (tuple of the three C_i) and ``reductions`` ((4, 8, 16));
- frozen: parameters have ``requires_grad=False`` and the module stays in eval mode whatever
  ``train()`` is called with.

Names: any timm CNN (``features_only=True, out_indices=(1, 2, 3)``; ``pretrained`` is passed to
timm), or ``"mobilenetv2_tflite"``: MobileNetV2 converted from the TFLite file in
``../shared/weights/mobilenet_v2_tflite`` (``weights`` names another .tflite file).
"""

from __future__ import annotations

import torch.nn as nn

TFLITE_MOBILENET = "mobilenetv2_tflite"


def build_encoder(name: str = "resnet34", pretrained: bool = False, weights: str | None = None) -> nn.Module:
    """The frozen encoder called ``name`` (see the module docstring)."""
    if name == TFLITE_MOBILENET:
        from .tflite_mobilenet import MobileNetV2Encoder

        return MobileNetV2Encoder(weights)
    if weights is not None:
        raise ValueError(f"weights= is for {TFLITE_MOBILENET!r}; timm encoders take pretrained=True")
    from .timm_encoder import TimmEncoder

    return TimmEncoder(name, pretrained=pretrained)


def tflite_mobilenet_v2(path: str | None = None) -> nn.Module:
    """MobileNetV2 classifier converted from a .tflite file (default: the shared one).

    Takes RGB float images ``(B, 3, 224, 224)`` in [0, 1]; returns ``(B, 1001)`` logits
    (index 0 = background).
    """
    from .tflite_mobilenet import tflite_mobilenet_v2 as build

    return build(path)
