"""Image and mask loading: resize, ImageNet normalisation, binary masks.

The recipe of the authors (SPEC "Training and evaluation"): images resized to ``S x S`` with bilinear
interpolation and normalised with the ImageNet mean and std, no augmentation; masks binarised
(> 127 of 255), resized to ``S x S`` with the same bilinear filter, then thresholded > 0.5.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset that cannot be used as asked: the message names the file or folder at fault."""


def is_image_file(name: str) -> bool:
    """Whether ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str, mode: str) -> Image.Image:
    """Open ``path`` and convert it to ``mode``, raising :class:`DatasetError` naming the file."""
    if not os.path.isfile(path):
        raise DatasetError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot read image file {path}: {err}") from err


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair; both positive."""
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return int(h), int(w)


def normalize(image: Tensor) -> Tensor:
    """ImageNet-normalise RGB values in [0, 1]: ``(..., 3, H, W) -> (..., 3, H, W)``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Undo :func:`normalize` and clamp to [0, 1]: ``(..., 3, H, W) -> (..., 3, H, W)``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)


def load_image(path: str, size: int | tuple[int, int]) -> Tensor:
    """Read an image file as RGB, resize it bilinearly and ImageNet-normalise it.

    Args:
        path: image file (grey-level and RGBA images are converted to RGB).
        size: ``S`` or ``(H, W)``.

    Returns:
        ``(3, H, W)`` float32.

    Raises:
        DatasetError: the file is missing or cannot be decoded (the message names it).
    """
    h, w = _size(size)
    im = open_image(path, "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3)
    return normalize(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())


def binarize_mask(mask: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize a binary mask bilinearly and threshold it at 0.5.

    Args:
        mask: ``(h, w)`` with values in {0, 1}.
        size: ``S`` or ``(H, W)``.

    Returns:
        ``(1, H, W)`` float32 in {0, 1}.
    """
    h, w = _size(size)
    im = Image.fromarray(mask.numpy().astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    out = torch.from_numpy(np.asarray(im, dtype=np.float32) > 0.5).float()  # (H, W)
    return out.unsqueeze(0)


def load_mask(path: str, size: int | tuple[int, int], threshold: int = 127) -> Tensor:
    """Read a ground-truth mask file: grey level > ``threshold`` is defective, then :func:`binarize_mask`.

    Args:
        path: mask image (any mode; converted to 8-bit grey).
        size: ``S`` or ``(H, W)``.
        threshold: grey levels above it are defective (127 for 0 / 255 masks; 0 for masks that
            store defect ids, like VisA's).

    Returns:
        ``(1, H, W)`` float32 in {0, 1}.

    Raises:
        DatasetError: the file is missing or cannot be decoded (the message names it).
    """
    grey = np.asarray(open_image(path, "L"))  # (h, w) uint8
    return binarize_mask(torch.from_numpy((grey > threshold).astype(np.float32)), size)


def empty_mask(size: int | tuple[int, int]) -> Tensor:
    """An all-normal mask: ``(1, H, W)`` zeros."""
    h, w = _size(size)
    return torch.zeros(1, h, w)
