"""Image and mask loading: resize, ImageNet normalisation, binary masks.

The recipe of the authors (SPEC "Training and evaluation"): images resized to ``S x S`` with bilinear
interpolation and normalised with the ImageNet mean and std, no augmentation; masks binarised
(> 127 of 255), resized to ``S x S`` with the same bilinear filter, then thresholded > 0.5.

Decode rules (:func:`decode_image`, shared by the datasets and ``mambaad predict``): the whole file is
decoded (a truncated file fails here, not later); an EXIF orientation tag is applied; 16-bit grey
levels keep their high byte, as Pillow does for 16-bit colour PNGs; grey, grey + alpha, palette,
bilevel and CMYK images become RGB; the alpha channel of RGBA images is dropped (the colour
channels are kept as stored). A file that cannot be read or decoded raises :class:`ImageDecodeError`
naming it; floating-point images (mode ``F``) are refused the same way.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset that cannot be used as asked: the message names the file or folder at fault."""


class ImageDecodeError(DatasetError):
    """One image (or mask) file that is missing, unreadable or cannot be decoded; names the file."""


class UnreadableImageWarning(UserWarning):
    """An image that cannot be decoded was skipped (by a dataset builder or ``mambaad predict``)."""


def is_image_file(name: str) -> bool:
    """Whether ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _eight_bit(im: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey levels to 8 bits by their high byte; other modes as they are."""
    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8  # (h, w)
        return Image.fromarray(grey.astype(np.uint8), mode="L")
    if im.mode == "F":
        raise ValueError("floating-point images (mode F) are not supported: store 8- or 16-bit images")
    if im.mode == "P":
        return im.convert("RGBA")  # a palette with a transparent entry converts cleanly only this way
    return im


def decode_image(path: str) -> Image.Image:
    """Read and fully decode an image file, upright (EXIF orientation applied), 8 bits per channel.

    Args:
        path: the image file.

    Returns:
        A loaded PIL image in an 8-bit mode (``L``, ``LA``, ``RGB``, ``RGBA``, ``1``, ``CMYK``, ...).

    Raises:
        ImageDecodeError: missing file, no permission, zero bytes, not an image, truncated or
            corrupt data, floating-point pixels (the message names the file and the reason).
    """
    if not os.path.isfile(path):
        raise ImageDecodeError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
            return _eight_bit(upright)
    except MemoryError:
        raise
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        reason = str(err) or type(err).__name__
        raise ImageDecodeError(f"cannot read image file {path}: {reason}") from err


def open_image(path: str, mode: str) -> Image.Image:
    """:func:`decode_image`, converted to ``mode`` (``"RGB"`` for images, ``"L"`` for masks).

    Raises:
        ImageDecodeError: the file is missing or cannot be decoded (the message names it).
    """
    return decode_image(path).convert(mode)


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
        path: image file, read by the rules of :func:`decode_image` (any mode becomes RGB).
        size: ``S`` or ``(H, W)``.

    Returns:
        ``(3, H, W)`` float32.

    Raises:
        ImageDecodeError: the file is missing or cannot be decoded (the message names it).
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
        ImageDecodeError: the file is missing or cannot be decoded (the message names it).
    """
    grey = np.asarray(open_image(path, "L"))  # (h, w) uint8
    return binarize_mask(torch.from_numpy((grey > threshold).astype(np.float32)), size)


def empty_mask(size: int | tuple[int, int]) -> Tensor:
    """An all-normal mask: ``(1, H, W)`` zeros."""
    h, w = _size(size)
    return torch.zeros(1, h, w)
