"""``mambaad eval``: the seven metrics and mAD per category and their mean; figures; thresholds.

For each chosen category the checkpoint's model scores the test images (eval mode: the anomaly map
and its maximum as the image score); :class:`mambaad.metrics.AnomalyMetrics` accumulates them. The
table (per category, then ``mean``, the plain mean over the categories) is printed in percent and
written as fractions to ``metrics.json`` and ``metrics.csv``. With ``store_threshold`` the image and
pixel F1-max thresholds (per category, and for images also over all categories pooled, ``"all"``)
and the map colour range go into the checkpoint, for ``mambaad predict``; for a checkpoint on the
Hugging Face Hub (``hf://...``) or released weights read as a checkpoint (see
:func:`mambaad.checkpoint.load_checkpoint`), into a new checkpoint ``OUTPUT/checkpoint.pt`` instead.

``save_maps = N`` writes, per category, the N worst and the N best test images under
``maps/<category>/``: ranked by the signed margin of their score from the category's F1-max
threshold (anomalous images: score - t, normal ones: t - score), worst = the smallest margins.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .data import AnomalyDataset, build_test_sets
from .hub import is_hub_uri
from .metrics import ALL_KEYS, AnomalyMetrics, binary_curve, f1_max
from .runconfig import ConfigError, EvalConfig
from .runtime import select_device
from .visualize import evaluation_figure

MAP_SAMPLE_STRIDE = 97  # every 97th pixel of every map feeds the colour-range percentiles
MAP_PERCENTILES = (0.1, 99.9)


def _json_value(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """The metrics table in percent, one row per category then ``mean``."""
    names = list(results)
    width = max(12, *(len(n) for n in names))
    head = f"{'category':<{width}} " + " ".join(f"{k:>8}" for k in ALL_KEYS)
    lines = [head, "-" * len(head)]
    for name in names:
        cells = []
        for k in ALL_KEYS:
            v = results[name][k]
            cells.append(f"{'-':>8}" if v is None or math.isnan(v) else f"{100 * v:8.1f}")
        if name == "mean" and len(names) > 1:
            lines.append("-" * len(head))
        lines.append(f"{name:<{width}} " + " ".join(cells))
    return "\n".join(lines)


def write_results(results: dict[str, dict[str, float]], output: str) -> tuple[str, str]:
    """``metrics.json`` (``{category: {key: fraction or null}}`` and ``"mean"``) and ``metrics.csv``."""
    os.makedirs(output, exist_ok=True)
    json_path, csv_path = os.path.join(output, "metrics.json"), os.path.join(output, "metrics.csv")
    with open(json_path, "w") as f:
        json.dump({c: {k: _json_value(v) for k, v in r.items()} for c, r in results.items()}, f, indent=2)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", *ALL_KEYS])
        for c, r in results.items():
            w.writerow([c, *("" if math.isnan(r[k]) else f"{r[k]:.6f}" for k in ALL_KEYS)])
    return json_path, csv_path


def mean_row(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The plain mean over categories of every key (NaN if any category's value is NaN)."""
    return {k: float(np.mean([r[k] for r in results.values()])) for k in ALL_KEYS}


@torch.no_grad()
def _score(model: torch.nn.Module, dataset: AnomalyDataset, cfg: EvalConfig, device: torch.device,
           desc: str) -> tuple[AnomalyMetrics, np.ndarray, np.ndarray, np.ndarray]:
    """Run the model over a test set: the metric accumulator, scores, labels, sampled map values."""
    acc = AnomalyMetrics(bins=cfg.bins, exact=cfg.exact)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
    pixel_truth = dataset.has_masks
    scores, labels, sample = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        out = model(batch["image"].to(device))
        amap = out.anomaly_map.float().cpu()[:, 0]  # (b, h, w)
        score = out.pred_score.float().cpu()  # (b,)
        acc.update(score, batch["label"], amap, batch["mask"][:, 0] if pixel_truth else None)
        scores.append(score.numpy())
        labels.append(batch["label"].numpy())
        sample.append(amap.flatten()[::MAP_SAMPLE_STRIDE].numpy())
    return acc, np.concatenate(scores), np.concatenate(labels), np.concatenate(sample)


def score_test_sets(model: torch.nn.Module, test_sets: dict[str, AnomalyDataset], cfg: EvalConfig,
                    device: torch.device) -> dict[str, dict[str, float]]:
    """The table of :func:`evaluate` for a model in memory (no thresholds, figures or files).

    Args:
        model: in eval mode, on ``device``. test_sets: ``{category: test set}``.
        cfg: batch size, workers, bins and exactness of the evaluation.

    Returns:
        ``{category: {i_auroc, ..., mad}, ..., "mean": {...}}``, fractions (NaN where undefined).
    """
    results = {name: _score(model, ds, cfg, device, name)[0].compute() for name, ds in test_sets.items()}
    results["mean"] = mean_row(results)
    return results


@torch.no_grad()
def save_figures(model: torch.nn.Module, dataset: AnomalyDataset, scores: np.ndarray, labels: np.ndarray,
                 threshold: float, lo: float, hi: float, count: int, folder: str,
                 device: torch.device) -> list[str]:
    """The ``count`` worst and best images of a test set as three-panel PNGs; returns their paths."""
    if math.isnan(threshold):
        threshold = float(np.median(scores))
    margin = np.where(labels == 1, scores - threshold, threshold - scores)  # (n,) > 0: right side
    order = np.argsort(margin, kind="stable")
    count = min(count, len(order))
    picks = [("worst", i, int(j)) for i, j in enumerate(order[:count])]
    picks += [("best", i, int(j)) for i, j in enumerate(order[::-1][:count])]
    os.makedirs(folder, exist_ok=True)
    paths = []
    for kind, rank, index in picks:
        item = dataset[index]
        out = model(item["image"][None].to(device))
        stem = os.path.splitext(os.path.basename(item["path"]))[0]
        name = f"{kind}_{rank + 1:02d}_{item['defect']}_{stem}.png"
        caption = (f"{item['defect']} ({'anomalous' if item['label'] else 'normal'}), score "
                   f"{scores[index]:.4f}, threshold {threshold:.4f}")
        fig = evaluation_figure(item["image"], item["mask"], out.anomaly_map[0, 0].float().cpu(), lo, hi,
                                caption)
        path = os.path.join(folder, name)
        fig.save(path)
        paths.append(path)
    return paths


def evaluate(cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint as ``cfg`` says (see the module docstring).

    Returns:
        ``{category: {i_auroc, ..., mad}, ..., "mean": {...}}``, fractions (NaN where undefined).
    """
    cfg.check_required()
    ckpt = load_checkpoint(cfg.checkpoint)
    # a Hub file (in the Hub's cache) and released weights (converted on load) are not rewritten: the
    # thresholds go, with the model, into OUTPUT/checkpoint.pt
    converted = ckpt.pop("converted_from", None) is not None
    store_path = os.path.join(cfg.output, "checkpoint.pt") if converted or is_hub_uri(cfg.checkpoint) \
        else cfg.checkpoint
    dataset = cfg.dataset or ckpt.get("dataset")
    root = cfg.root or ckpt.get("train_config", {}).get("root")
    if not dataset or not root:
        raise ConfigError("--root and --dataset are needed (the checkpoint does not name its data)")
    categories = cfg.categories
    if categories is None and dataset == ckpt.get("dataset"):
        categories = ckpt.get("categories")
    image_size = cfg.image_size or int(ckpt["image_size"])
    device = select_device(cfg.device)
    model = build_model(ckpt, cfg.backend, device)
    test_sets = build_test_sets(dataset, root, categories, image_size)

    results: dict[str, dict[str, float]] = {}
    image_t: dict[str, float] = {}
    pixel_t: dict[str, float] = {}
    ranges: dict[str, list[float]] = {}
    pooled_scores, pooled_labels, pooled_sample = [], [], []
    figures: list[str] = []
    for name, ds in test_sets.items():
        acc, scores, labels, sample = _score(model, ds, cfg, device, name)
        results[name] = acc.compute()
        t = acc.thresholds()
        image_t[name], pixel_t[name] = t["image"], t["pixel"]
        lo, hi = (float(v) for v in np.percentile(sample, MAP_PERCENTILES))
        ranges[name] = [lo, hi]
        pooled_scores.append(scores)
        pooled_labels.append(labels)
        pooled_sample.append(sample)
        if cfg.save_maps:
            figures += save_figures(model, ds, scores, labels, t["image"], lo, hi, cfg.save_maps,
                                    os.path.join(cfg.output, "maps", name), device)
    results["mean"] = mean_row(results)
    image_t["all"] = f1_max(binary_curve(np.concatenate(pooled_scores), np.concatenate(pooled_labels)))[1]
    ranges["all"] = [float(v) for v in np.percentile(np.concatenate(pooled_sample), MAP_PERCENTILES)]

    print(format_table(results))
    json_path, csv_path = write_results(results, cfg.output)
    msg = f"wrote {json_path}, {csv_path}"
    if figures:
        msg += f" and {len(figures)} figures under {os.path.join(cfg.output, 'maps')}"
    if cfg.store_threshold:
        ckpt["thresholds"] = {"image": image_t, "pixel": pixel_t}
        ckpt["map_range"] = ranges
        ckpt["metrics"] = {c: {k: _json_value(v) for k, v in r.items()} for c, r in results.items()}
        save_checkpoint(store_path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
        msg += f"; stored the F1-max thresholds in {store_path}"
    print(msg, file=sys.stderr)
    return results


def stored_threshold(ckpt: dict[str, Any], category: str | None) -> float | None:
    """The image F1-max threshold an evaluation stored (``category``'s, else all categories')."""
    table = ckpt.get("thresholds", {}).get("image", {})
    if category is not None:
        if category not in table:
            raise ConfigError(f"no stored threshold for category {category!r}; stored: "
                              f"{sorted(table) or 'none (run mambaad eval first)'}")
        value = table[category]
    else:
        value = table.get("all")
    return None if value is None or math.isnan(value) else float(value)
