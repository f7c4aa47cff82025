"""``mambaad predict``: score images with a checkpoint or an exported model, write heat maps, say
normal or anomalous.

Each image is decoded by the rules of :func:`mambaad.data.decode_image` (EXIF orientation, 16-bit,
grey, RGBA and palette images to RGB), resized to the model's training size and ImageNet-normalised
as in training; its score is the maximum of the anomaly map. It is called anomalous when the score
reaches the threshold: ``--threshold``, else the image F1-max threshold ``mambaad eval`` stored in
the checkpoint (and ``mambaad export`` copied into the exported model) of ``--category`` when given,
else of all evaluated categories pooled. Without either, the scores are written and the verdict is
left empty (null).

The model is a checkpoint (``--checkpoint``) or a file of ``mambaad export`` (``--model``, on the
CPU, at its trained size: ``model.pt2`` runs without this package's model code, ``model.onnx`` with
onnxruntime and ``model.xml`` with OpenVINO, without torch's scan kernels: :mod:`mambaad.deploy`).

A file that cannot be read (missing, no permission, zero bytes, not an image, truncated) is skipped
with a warning and listed with its ``error``; every other image is scored. :func:`predict` raises
:class:`~mambaad.data.DatasetError` after writing the results when no image could be read, or with
``strict`` when any could not.

Outputs in ``output``: ``<stem>_heatmap.png`` per scored image (the input beside the heat-map
overlay, at the input's own size; colours scaled by the evaluation's map range),
``predictions.json`` (a list of ``{image, score, threshold, anomalous, heatmap, error}``, in the
order of the inputs; ``error`` is null for scored images, and score, verdict and heat map are null
for the others) and ``predictions.csv`` (the same columns; empty cells for null).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import build_model, load_checkpoint
from .data import DatasetError, ImageDecodeError, UnreadableImageWarning, load_image
from .data.transforms import is_image_file, open_image
from .evaluate import stored_threshold
from .runconfig import ConfigError, PredictConfig
from .runtime import select_device
from .visualize import heatmap_image

COLUMNS = ("image", "score", "threshold", "anomalous", "heatmap", "error")


def expand_images(paths: list[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted).

    A path that does not exist is kept (it is reported as unreadable, like a bad file); a folder
    without image files is warned about. Raises :class:`DatasetError` when nothing is left.
    """
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if is_image_file(f) and not os.path.isdir(os.path.join(p, f)))
            if not found:
                warnings.warn(f"no image files in folder {p}", UnreadableImageWarning, stacklevel=2)
            out += found
        else:
            out.append(p)
    if not out:
        raise DatasetError(f"no image files in {', '.join(paths)}")
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


@dataclass
class Scorer:
    """What predict runs: images ``(b, 3, S, S)`` -> ``(anomaly_map (b, 1, S, S), score (b,))``.

    Attributes:
        run: the model call. image_size: S. device: where the images go.
        info: the checkpoint, or the exported model's metadata: ``thresholds`` and ``map_range``.
    """

    run: Callable[[Tensor], tuple[Tensor, Tensor]]
    image_size: int
    device: torch.device
    info: dict[str, Any]


def _checkpoint_scorer(cfg: PredictConfig) -> Scorer:
    ckpt = load_checkpoint(cfg.checkpoint)
    device = select_device(cfg.device)
    model = build_model(ckpt, cfg.backend, device)

    def run(images: Tensor) -> tuple[Tensor, Tensor]:
        out = model(images)
        return out.anomaly_map, out.pred_score

    return Scorer(run, cfg.image_size or int(ckpt["image_size"]), device, ckpt)


def _exported_scorer(cfg: PredictConfig) -> Scorer:
    if cfg.model.lower().endswith((".onnx", ".xml")):
        from .deploy import load_deployed

        run_file, meta = load_deployed(cfg.model)

        def run(images: Tensor) -> tuple[Tensor, Tensor]:
            amap, score = run_file(images.numpy())
            return torch.from_numpy(amap), torch.from_numpy(score)
    else:
        from .export import load_exported

        program, meta = load_exported(cfg.model)
        module = program.module()

        def run(images: Tensor) -> tuple[Tensor, Tensor]:
            return tuple(module(images))
    size = int(meta["image_size"])
    if cfg.image_size not in (None, size):
        raise ConfigError(f"{cfg.model} runs {size} x {size} images only (exported at that size), "
                          f"not --image-size {cfg.image_size}")
    if cfg.device not in (None, "cpu"):
        raise ConfigError(f"{cfg.model} runs on the CPU only (exported there), not --device {cfg.device}")
    if cfg.backend not in (None, meta.get("backend")):
        raise ConfigError(f"{cfg.model} runs the {meta.get('backend')!r} scan backend it was exported "
                          f"with, not --backend {cfg.backend}")
    return Scorer(run, size, torch.device("cpu"), meta)


def _row(path: str, **values: Any) -> dict[str, Any]:
    return {"image": path, "score": None, "threshold": None, "anomalous": None, "heatmap": None,
            "error": None, **values}


def _skip(row: dict[str, Any], err: Exception) -> None:
    row.update(score=None, anomalous=None, heatmap=None, error=str(err))
    warnings.warn(f"skipping an image: {err}", UnreadableImageWarning, stacklevel=3)


def write_predictions(rows: list[dict[str, Any]], output: str) -> tuple[str, str]:
    """``predictions.json`` and ``predictions.csv`` (columns :data:`COLUMNS`) in ``output``."""
    json_path = os.path.join(output, "predictions.json")
    csv_path = os.path.join(output, "predictions.csv")
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=1)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    return json_path, csv_path


@torch.no_grad()
def predict(cfg: PredictConfig) -> list[dict[str, Any]]:
    """Score ``cfg.images`` (see the module docstring).

    Returns:
        One dict per image, in input order: ``image``, ``score``, ``threshold``, ``anomalous``
        (None without a threshold), ``heatmap`` (path of the PNG), ``error`` (None, or why the
        image was skipped; then score, verdict and heat map are None).

    Raises:
        DatasetError: after writing the results, when no image could be read, or with
            ``cfg.strict`` when any could not.
    """
    cfg.check_required()
    scorer = _exported_scorer(cfg) if cfg.model else _checkpoint_scorer(cfg)
    images = expand_images(cfg.images)
    threshold = cfg.threshold if cfg.threshold is not None else stored_threshold(scorer.info, cfg.category)
    if threshold is None:
        print("note: no threshold (the model has not been evaluated; run mambaad eval or pass "
              "--threshold): writing scores without a verdict", file=sys.stderr)
    os.makedirs(cfg.output, exist_ok=True)
    names = _heatmap_names(images)
    rows = [_row(p, threshold=threshold) for p in images]
    maps: dict[int, np.ndarray] = {}
    for start in range(0, len(images), cfg.batch_size):
        tensors, indices = [], []
        for i in range(start, min(start + cfg.batch_size, len(images))):
            try:
                tensors.append(load_image(images[i], scorer.image_size))  # (3, s, s)
                indices.append(i)
            except ImageDecodeError as err:
                _skip(rows[i], err)
        if not indices:
            continue
        amap, score = scorer.run(torch.stack(tensors).to(scorer.device))  # (b, 1, s, s), (b,)
        for j, i in enumerate(indices):
            value = float(score[j])
            rows[i].update(score=value, anomalous=None if threshold is None else bool(value >= threshold),
                           heatmap=os.path.join(cfg.output, names[i]))
            maps[i] = amap[j, 0].float().cpu().numpy()
    ranges = scorer.info.get("map_range") or {}
    if maps:
        lo, hi = ranges.get(cfg.category or "all") or ranges.get("all") or \
            [float(min(m.min() for m in maps.values())), float(max(m.max() for m in maps.values()))]
    for i, row in enumerate(rows):
        if i in maps:
            try:
                heatmap_image(open_image(row["image"], "RGB"), maps[i], lo, hi).save(row["heatmap"])
            except ImageDecodeError as err:  # the file changed since it was scored
                _skip(row, err)
        if row["error"] is None:
            verdict = "-" if row["anomalous"] is None else ("anomalous" if row["anomalous"] else "normal")
            print(f"{row['score']:.5f}  {verdict:<9}  {row['image']}")
        else:
            print(f"{'-':>7}  {'error':<9}  {row['image']}")
    json_path, csv_path = write_predictions(rows, cfg.output)
    failed = sum(r["error"] is not None for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} images could not be read; their errors are in {json_path} and "
              f"{csv_path}", file=sys.stderr)
    if failed == len(rows):
        raise DatasetError(f"none of the {len(rows)} images could be read (first: {rows[0]['error']})")
    if cfg.strict and failed:
        raise DatasetError(f"--strict: {failed} of {len(rows)} images could not be read (first: "
                           f"{next(r['error'] for r in rows if r['error'] is not None)})")
    return rows
