"""Anomaly-map pictures: a jet colour map, heat-map overlays and the three-panel evaluation figure.

Only numpy and Pillow: no plotting library. Colours are scaled by a fixed ``(lo, hi)`` range (from
the evaluation's score percentiles), so that heat maps of one category compare with each other.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from .data import denormalize

TITLE_HEIGHT = 16
MIN_PANEL = 192


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map: ``(...)`` values in [0, 1] (clipped) to ``(..., 3)`` uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks on a 0..4 scale
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def scale(amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(amap - lo) / (hi - lo)`` clipped to [0, 1] (all 0 when ``hi <= lo``)."""
    if not hi > lo:
        return np.zeros_like(amap, dtype=np.float64)
    return np.clip((amap - lo) / (hi - lo), 0.0, 1.0)


def overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float, alpha: float = 0.5) -> np.ndarray:
    """Blend the jet-coloured map over an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB. amap: ``(H, W)`` anomaly values.
        lo, hi: the values shown as the coldest and the hottest colour.
        alpha: weight of the heat map.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if image.shape[:2] != amap.shape:
        raise ValueError(f"image {image.shape[:2]} and map {amap.shape} differ in size")
    heat = jet(scale(amap, lo, hi)).astype(np.float64)
    return (alpha * heat + (1 - alpha) * image.astype(np.float64) + 0.5).astype(np.uint8)


def tensor_to_rgb(image: Tensor) -> np.ndarray:
    """An ImageNet-normalised ``(3, H, W)`` tensor back to ``(H, W, 3)`` uint8."""
    rgb = denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy()
    return (rgb * 255 + 0.5).astype(np.uint8)


def panels(images: list[tuple[str, np.ndarray]], footer: str = "", min_side: int = MIN_PANEL) -> Image.Image:
    """Side-by-side panels with a title above each and an optional footer line.

    Args:
        images: ``(title, (H, W, 3) uint8)`` pairs of one height.
        footer: a line of text under the panels.
        min_side: panels lower than this are enlarged by an integer factor (nearest neighbour), so
            that small test images stay readable.
    """
    height = images[0][1].shape[0]
    if any(a.shape[0] != height for _, a in images):
        raise ValueError("panels need images of one height")
    factor = max(1, -(-min_side // height))  # ceil
    tiles = [(t, Image.fromarray(a).resize((a.shape[1] * factor, height * factor), Image.NEAREST))
             for t, a in images]
    height *= factor
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(sum(t.width for _, t in tiles), int(probe.textlength(footer)) + 6 if footer else 0)
    foot = TITLE_HEIGHT if footer else 0
    canvas = Image.new("RGB", (width, height + TITLE_HEIGHT + foot), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, tile in tiles:
        canvas.paste(tile, (x, TITLE_HEIGHT))
        draw.text((x + 3, 2), title, fill="black")
        x += tile.width
    if footer:
        draw.text((3, height + TITLE_HEIGHT + 2), footer, fill="black")
    return canvas


def evaluation_figure(image: Tensor, mask: Tensor, amap: Tensor, lo: float, hi: float,
                      footer: str = "") -> Image.Image:
    """Input, ground truth and heat-map overlay of one test image.

    Args:
        image: ``(3, H, W)`` ImageNet-normalised. mask: ``(1, H, W)`` in {0, 1}. amap: ``(H, W)``
            or ``(1, H, W)``. lo, hi: colour range of the map. footer: a caption.
    """
    rgb = tensor_to_rgb(image)
    gt = np.repeat((mask.detach().cpu().numpy().reshape(rgb.shape[:2]) > 0.5)[..., None] * 255, 3, axis=2)
    heat = overlay(rgb, amap.detach().float().cpu().numpy().reshape(rgb.shape[:2]), lo, hi)
    return panels([("input", rgb), ("ground truth", gt.astype(np.uint8)), ("anomaly map", heat)], footer)


def heatmap_image(original: Image.Image, amap: np.ndarray, lo: float, hi: float) -> Image.Image:
    """The original image beside its heat-map overlay, the map resized to the image's size.

    Args:
        original: the image as read (any size). amap: ``(h, w)`` at the model's resolution.
        lo, hi: colour range of the map.
    """
    rgb = np.asarray(original.convert("RGB"))
    h, w = rgb.shape[:2]
    resized = np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    return panels([("input", rgb), ("anomaly map", overlay(rgb, resized, lo, hi))])
