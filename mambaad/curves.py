"""Training curves as a PNG: the loss and the evaluation metrics against the epoch.

Only numpy and Pillow (no plotting library, as :mod:`mambaad.visualize`). Two panels: the training
loss (every step in grey, each epoch's mean in blue; log scale when all losses are positive) and the
mean over the categories of every metric evaluated during training, in percent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

WIDTH, PANEL_HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 118, 26, 34
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207))
GREY, BLACK, LIGHT = (190, 190, 190), (0, 0, 0), (235, 235, 235)


class _Panel:
    """One axes box: maps data ``(x, y)`` to pixels and draws lines, ticks and a title."""

    def __init__(self, draw: ImageDraw.ImageDraw, top: int, x_range: tuple[float, float],
                 y_range: tuple[float, float], title: str, log_y: bool = False):
        self.draw, self.top, self.log_y = draw, top, log_y
        self.x0, self.x1 = x_range
        self.y0, self.y1 = (math.log10(v) for v in y_range) if log_y else y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5
        self.box = (LEFT, top + TOP, WIDTH - RIGHT, top + PANEL_HEIGHT - BOTTOM)
        draw.rectangle(self.box, outline=BLACK)
        draw.text((LEFT, top + 6), title, fill=BLACK)
        self._ticks()

    def point(self, x: float, y: float) -> tuple[float, float]:
        left, upper, right, lower = self.box
        yv = math.log10(y) if self.log_y else y
        px = left + (x - self.x0) / (self.x1 - self.x0) * (right - left)
        py = lower - (yv - self.y0) / (self.y1 - self.y0) * (lower - upper)
        return px, py

    def _ticks(self) -> None:
        left, upper, right, lower = self.box
        for x in np.linspace(self.x0, self.x1, 6):
            px = self.point(x, 10 ** self.y0 if self.log_y else self.y0)[0]
            self.draw.line([(px, lower), (px, lower + 4)], fill=BLACK)
            self.draw.text((px - 10, lower + 8), f"{x:.3g}", fill=BLACK)
        for yv in np.linspace(self.y0, self.y1, 5):
            y = 10 ** yv if self.log_y else yv
            py = self.point(self.x0, y)[1]
            self.draw.line([(left, py), (right, py)], fill=LIGHT)
            self.draw.line([(left - 4, py), (left, py)], fill=BLACK)
            self.draw.text((4, py - 6), f"{y:.3g}", fill=BLACK)
        self.draw.rectangle(self.box, outline=BLACK)
        self.draw.text(((left + right) // 2 - 14, lower + 20), "epoch", fill=BLACK)

    def line(self, xs: Sequence[float], ys: Sequence[float], colour: tuple[int, int, int],
             width: int = 2) -> None:
        points = [self.point(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not self.log_y)]
        if len(points) > 1:
            self.draw.line(points, fill=colour, width=width)
        for px, py in points if len(points) < 30 else []:
            self.draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)

    def legend(self, labels: Sequence[str], colours: Sequence[tuple[int, int, int]] = COLOURS) -> None:
        x, y = WIDTH - RIGHT + 10, self.box[1]
        for i, label in enumerate(labels):
            colour = colours[i % len(colours)]
            self.draw.line([(x, y + 7 + 14 * i), (x + 16, y + 7 + 14 * i)], fill=colour, width=3)
            self.draw.text((x + 20, y + 14 * i), label, fill=BLACK)


def draw_curves(steps: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]], steps_per_epoch: int,
                keys: Sequence[str], path: str) -> None:
    """Write the two-panel figure to ``path`` (PNG).

    Args:
        steps: the training log's steps (``step``, ``epoch``, ``loss``).
        evals: the evaluations (``epoch`` as a float, ``metrics["mean"][key]`` fractions or None).
        steps_per_epoch: converts steps to epochs on the x axis.
        keys: the metrics to draw.
    """
    image = Image.new("RGB", (WIDTH, 2 * PANEL_HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x_end = max([s["step"] / steps_per_epoch for s in steps] + [e["epoch"] for e in evals] + [1.0])

    xs = [s["step"] / steps_per_epoch for s in steps]
    losses = [float(s["loss"]) for s in steps]
    finite = [v for v in losses if math.isfinite(v)]
    log_y = bool(finite) and min(finite) > 0
    y_range = (min(finite), max(finite)) if finite else (0.0, 1.0)
    loss_panel = _Panel(draw, 0, (0.0, x_end), y_range, "training loss" + (" (log scale)" if log_y else ""),
                        log_y)
    loss_panel.line(xs, losses, GREY, width=1)
    epochs = sorted({int(s["epoch"]) for s in steps})
    ends = [max(x for s, x in zip(steps, xs) if s["epoch"] == e) for e in epochs]  # the epoch's last step
    means = [float(np.mean([v for s, v in zip(steps, losses) if s["epoch"] == e])) for e in epochs]
    loss_panel.line(ends, means, COLOURS[0])
    if steps:
        loss_panel.legend(["step", "epoch mean"], [GREY, COLOURS[0]])

    panel = _Panel(draw, PANEL_HEIGHT, (0.0, x_end), (0.0, 100.0), "mean test metrics (%)")
    for i, key in enumerate(keys):
        points = [(e["epoch"], e["metrics"]["mean"].get(key)) for e in evals]
        points = [(x, 100.0 * v) for x, v in points if v is not None and math.isfinite(v)]
        panel.line([p[0] for p in points], [p[1] for p in points], COLOURS[i % len(COLOURS)])
    panel.legend(list(keys))
    image.save(path)
