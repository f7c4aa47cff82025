"""What MambaAD computes from encoder and decoder features: the anomaly map and the loss.

Anomaly map, on the authors' scale (ADer's ``cal_anomaly_map``, mode ``add``): per scale
``1 - cos(f_enc, f_dec)`` over channels, bilinear upsample (align_corners=True) to the input size,
the weighted sum over the scales divided by ``len(scales) * sum(weights)`` (9 for MambaAD's three
scales with unit weights), Gaussian blur with sigma 4; so a map value, an image score or a
threshold from the authors' evaluation means the same here. The blur reproduces
``scipy.ndimage.gaussian_filter``: kernel radius ``int(4 * sigma + 0.5)`` (size 33 for sigma 4),
half-sample symmetric borders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

BLUR_TRUNCATE = 4.0  # kernel radius = int(BLUR_TRUNCATE * sigma + 0.5), as scipy.ndimage


class AnomalyOutput(NamedTuple):
    """MambaAD's eval-mode output.

    Attributes:
        anomaly_map: ``(B, 1, H, W)`` per-pixel anomaly at the input resolution.
        pred_score: ``(B,)`` image score, the maximum of the map.
    """

    anomaly_map: Tensor
    pred_score: Tensor


def gaussian_kernel1d(sigma: float, truncate: float = BLUR_TRUNCATE, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian ``(2 r + 1,)`` with ``r = int(truncate * sigma + 0.5)``."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _symmetric_index(n: int, r: int, device: torch.device) -> Tensor:
    """Indices of a length-n axis padded by r on each side, mirrored about the edges (``d c b a |
    a b c d | d c b a``, scipy's "reflect"); valid for any r, also r > n."""
    i = torch.arange(-r, n + r, device=device)
    i = torch.remainder(i, 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = BLUR_TRUNCATE) -> Tensor:
    """Separable Gaussian blur of every channel, as ``scipy.ndimage.gaussian_filter`` per 2-D map.

    Args:
        x: ``(B, C, H, W)`` floating point.
        sigma: standard deviation in pixels (> 0).
        truncate: kernel radius in sigmas (``int(truncate * sigma + 0.5)`` pixels).

    Returns:
        ``(B, C, H, W)``, x's dtype.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"gaussian_blur needs a floating (B, C, H, W) tensor, got {x.dtype} "
                         f"{tuple(x.shape)}")
    b, c, h, w = x.shape
    k = gaussian_kernel1d(sigma, truncate, x.dtype, x.device)  # (2r + 1,)
    r = (k.numel() - 1) // 2
    y = x.reshape(b * c, 1, h, w)
    y = y.index_select(2, _symmetric_index(h, r, x.device))  # (bc, 1, h + 2r, w)
    y = F.conv2d(y, k.view(1, 1, -1, 1))  # (bc, 1, h, w)
    y = y.index_select(3, _symmetric_index(w, r, x.device))  # (bc, 1, h, w + 2r)
    y = F.conv2d(y, k.view(1, 1, 1, -1))  # (bc, 1, h, w)
    return y.view(b, c, h, w)


def _check_pairs(enc_feats: list[Tensor], dec_feats: list[Tensor], what: str) -> None:
    if len(enc_feats) != len(dec_feats) or not enc_feats:
        raise ValueError(f"{what}: need as many encoder as decoder features (>= 1), got "
                         f"{len(enc_feats)} and {len(dec_feats)}")
    for i, (fe, fd) in enumerate(zip(enc_feats, dec_feats)):
        if fe.shape != fd.shape or fe.dim() != 4:
            raise ValueError(f"{what}: scale {i}: encoder {tuple(fe.shape)} and decoder {tuple(fd.shape)} "
                             "features must both be (B, C, H, W) of the same shape")


def anomaly_map(enc_feats: list[Tensor], dec_feats: list[Tensor], size: tuple[int, int],
                sigma: float = 4.0, weights: Sequence[float] | None = None) -> Tensor:
    """Per-pixel anomaly from the disagreement of encoder and decoder features (the authors' scale).

    Args:
        enc_feats: encoder features, a list of ``(B, C_i, H_i, W_i)``.
        dec_feats: decoder reconstructions, same shapes.
        size: ``(H, W)`` of the output (the input image's).
        sigma: Gaussian blur sigma (0: no blur).
        weights: one weight per scale (default: all 1, as MambaAD).

    Returns:
        ``(B, 1, H, W)`` float32 (float64 for float64 features): ``sum_i w_i a_i / (S * sum_i w_i)``
        over the S scales, ``a_i`` the upsampled ``1 - cos``, then blurred.
    """
    _check_pairs(enc_feats, dec_feats, "anomaly_map")
    weights = [1.0] * len(enc_feats) if weights is None else [float(w) for w in weights]
    if len(weights) != len(enc_feats) or sum(weights) <= 0:
        raise ValueError(f"anomaly_map: need one weight per scale ({len(enc_feats)}) with a positive sum, "
                         f"got {weights}")
    size = (int(size[0]), int(size[1]))
    dtype = torch.float64 if enc_feats[0].dtype == torch.float64 else torch.float32
    amap = None
    for w, fe, fd in zip(weights, enc_feats, dec_feats):
        a = 1 - F.cosine_similarity(fe.to(dtype), fd.to(dtype), dim=1)  # (b, h_i, w_i)
        a = F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=True) * w  # (b, 1, h, w)
        amap = a if amap is None else amap + a
    amap = amap / (len(weights) * sum(weights))  # (b, 1, h, w)
    return gaussian_blur(amap, sigma) if sigma > 0 else amap


def reconstruction_loss(enc_feats: list[Tensor], dec_feats: list[Tensor], weight: float = 5.0) -> Tensor:
    """The training loss: ``weight * MSE(dec_i, enc_i)`` summed over the scales (mean per scale).

    Args:
        enc_feats: encoder features (targets), a list of ``(B, C_i, H_i, W_i)``.
        dec_feats: decoder reconstructions, same shapes.
        weight: the authors' 5.0.

    Returns:
        A scalar tensor.
    """
    _check_pairs(enc_feats, dec_feats, "reconstruction_loss")
    return sum(F.mse_loss(fd, fe) * weight for fe, fd in zip(enc_feats, dec_feats))
