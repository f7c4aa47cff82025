"""``mambaad predict``: score images with a checkpoint, write heat maps, say normal or anomalous.

Each image is resized to the checkpoint's training size and ImageNet-normalised as in training; its
score is the maximum of the anomaly map. It is called anomalous when the score reaches the threshold:
``--threshold``, else the image F1-max threshold ``mambaad eval`` stored in the checkpoint (of
``--category`` when given, else of all evaluated categories pooled). Without either, the scores are
written and the verdict is left empty (null).

Outputs in ``output``: ``<stem>_heatmap.png`` per image (the input beside the heat-map overlay, at the
input's own size; colours scaled by the evaluation's map range), ``predictions.json`` (a list of
``{image, score, threshold, anomalous, heatmap}``) and ``predictions.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

import numpy as np
import torch

from .checkpoint import build_model, load_checkpoint
from .data import DatasetError, load_image
from .data.transforms import is_image_file, open_image
from .evaluate import stored_threshold
from .runconfig import PredictConfig
from .train import select_device
from .visualize import heatmap_image


def expand_images(paths: list[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted); missing paths raise."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if is_image_file(f))
            if not found:
                raise DatasetError(f"no image files in folder {p}")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise DatasetError(f"image not found: {p}")
    return out


def _heatmap_names(images: list[str]) -> list[str]:
    """``<stem>_heatmap.png``, numbered where two inputs share a stem."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in images]
    seen: dict[str, int] = {}
    names = []
    for s in stems:
        n = seen.get(s, 0)
        seen[s] = n + 1
        names.append(f"{s}_heatmap.png" if n == 0 else f"{s}_{n}_heatmap.png")
    return names


@torch.no_grad()
def predict(cfg: PredictConfig) -> list[dict[str, Any]]:
    """Score ``cfg.images`` (see the module docstring).

    Returns:
        One dict per image: ``image``, ``score``, ``threshold``, ``anomalous`` (None without a
        threshold), ``heatmap`` (path of the PNG).
    """
    cfg.check_required()
    ckpt = load_checkpoint(cfg.checkpoint)
    images = expand_images(cfg.images)
    threshold = cfg.threshold if cfg.threshold is not None else stored_threshold(ckpt, cfg.category)
    if threshold is None:
        print("note: no threshold (the checkpoint has not been evaluated; run mambaad eval or pass "
              "--threshold): writing scores without a verdict", file=sys.stderr)
    ranges = ckpt.get("map_range", {})
    size = cfg.image_size or int(ckpt["image_size"])
    device = select_device(cfg.device)
    model = build_model(ckpt, cfg.backend, device)
    os.makedirs(cfg.output, exist_ok=True)
    names = _heatmap_names(images)
    rows: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    for start in range(0, len(images), cfg.batch_size):
        chunk = images[start:start + cfg.batch_size]
        batch = torch.stack([load_image(p, size) for p in chunk]).to(device)  # (b, 3, s, s)
        out = model(batch)
        for i, path in enumerate(chunk):
            score = float(out.pred_score[i])
            rows.append({"image": path, "score": score, "threshold": threshold,
                         "anomalous": None if threshold is None else bool(score >= threshold),
                         "heatmap": os.path.join(cfg.output, names[start + i])})
            maps.append(out.anomaly_map[i, 0].float().cpu().numpy())
    lo, hi = ranges.get(cfg.category or "all") or ranges.get("all") or \
        [float(min(m.min() for m in maps)), float(max(m.max() for m in maps))]
    for row, amap in zip(rows, maps):
        heatmap_image(open_image(row["image"], "RGB"), amap, lo, hi).save(row["heatmap"])
        verdict = "-" if row["anomalous"] is None else ("anomalous" if row["anomalous"] else "normal")
        print(f"{row['score']:.5f}  {verdict:<9}  {row['image']}")
    with open(os.path.join(cfg.output, "predictions.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(cfg.output, "predictions.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "score", "threshold", "anomalous", "heatmap"])
        w.writeheader()
        w.writerows(rows)
    return rows
