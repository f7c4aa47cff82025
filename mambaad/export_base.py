"""What every file of ``mambaad export`` shares: its metadata record, the module it holds, the check
images and tolerances, and the error type (:mod:`mambaad.export` writes ``.pt2`` programs,
:mod:`mambaad.deploy` ONNX and OpenVINO files)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .data import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "mambaad-export"
VERSION = 1
META_NAME = "mambaad.json"
BACKEND = "cpu"  # the exported graph calls the scan op with this backend name
EXAMPLE_BATCH = 2  # the batch size traced (the batch dimension stays symbolic)
CHECK_BATCHES = (1, 3)  # batch sizes the export is checked on, against the eager model
MAX_REL_ERR = 1e-5  # max |exported - eager| / max |eager| of the anomaly map, fp32
MAX_REL_ERR_PORTABLE = 1e-4  # the same for ONNX / OpenVINO (another scan formulation: mambaad.deploy)


class ExportError(ValueError):
    """A model that cannot be exported as asked, or a file that is not a usable export."""


class AnomalyProgram(nn.Module):
    """The eval-mode model with a plain-tuple output (no package types in the exported program).

    Args:
        model: a MambaAD model (any registered one), in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, S, S)`` -> ``(anomaly_map (B, 1, S, S), pred_score (B,))``."""
        out = self.model(images)
        return out.anomaly_map, out.pred_score


def check_images(image_size: int, batches: tuple[int, ...] = CHECK_BATCHES, seed: int = 0) -> list[Tensor]:
    """The random images ``(b, 3, S, S)`` an export is checked on, one batch per size."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, image_size, image_size, generator=gen) for b in batches]


def _finite(value: Any) -> Any:
    """NaN and infinities to None, in nested dicts and lists (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_metadata(ckpt: dict[str, Any], image_size: int, rel_err: float | None) -> dict[str, Any]:
    """The metadata record of an exported file (``mambaad.json`` of a ``.pt2``, the ``mambaad`` entry
    of an ONNX / OpenVINO file): image size, normalisation, model, stored thresholds and map range."""
    return _finite({
        "format": FORMAT, "version": VERSION, "model_name": ckpt["model_name"], "image_size": image_size,
        "input": {"shape": ["B", 3, image_size, image_size], "dtype": "float32", "device": "cpu",
                  "channels": "RGB", "scale": "[0, 1]", "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD)},
        "outputs": [f"anomaly_map (B, 1, {image_size}, {image_size})", "pred_score (B,)"],
        "thresholds": ckpt.get("thresholds", {}), "map_range": ckpt.get("map_range", {}),
        "categories": ckpt.get("categories"), "dataset": ckpt.get("dataset"), "backend": BACKEND,
        "torch": torch.__version__, "checked_batches": list(CHECK_BATCHES), "checked_rel_err": rel_err,
    })
