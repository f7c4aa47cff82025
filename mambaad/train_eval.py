"""Evaluation during ``mambaad train`` (``--eval-every``): history, ``best.pt`` and the curves.

Every ``eval_every`` epochs and at the end of training, the process of rank 0 evaluates the model on
the test split of the training categories (``eval_root``, else the training root), as
``mambaad eval`` does (the seven metrics and mAD per category and their mean, streaming pixel
metrics). Each evaluation is appended to the history (``train_log.json`` ``evals``, and
``metrics_history.csv``: one row per category and ``mean``), printed as one line, and drawn into
``curves.png`` with the loss. ``best.pt`` (weights, no optimizer) is rewritten whenever the mean of
``select_by`` beats the best so far; that state is kept in ``last.pt`` so that a resumed run keeps
its history and its best.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import torch

from .curves import draw_curves
from .data import AnomalyDataset, build_test_sets
from .evaluate import score_test_sets
from .metrics import ALL_KEYS
from .runconfig import EvalConfig, TrainConfig, selection_keys

HISTORY_CSV = "metrics_history.csv"
CURVES_PNG = "curves.png"
BEST_PT = "best.pt"


def default_eval_every(epochs: int) -> int:
    """The authors' period: a tenth of the epochs, at least 1."""
    return max(1, epochs // 10)


def _plain(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def selection_value(mean: dict[str, float | None], select_by: str) -> float:
    """The sum of the ``select_by`` keys of a mean row (NaN when one is undefined)."""
    values = [mean.get(k) for k in selection_keys(select_by)]
    return float("nan") if any(v is None or math.isnan(v) for v in values) else float(sum(values))


class TrainEvaluator:
    """Evaluates on rank 0, keeps the history and the best (see the module docstring).

    Args:
        cfg: the run's configuration (``eval_root``, ``dataset``, ``image_size``, ``select_by``,
            ``batch_size``, ``workers``, ``output``).
        categories: the trained categories. device: where the model is.
        history: the evaluations kept from a resumed run (``train_log.json`` ``evals``).
        best: ``last.pt``'s ``best`` entry of a resumed run (None: none yet; ignored when it was chosen
            by another ``select_by``: the next evaluation then rewrites ``best.pt``).
    """

    def __init__(self, cfg: TrainConfig, categories: list[str], device: torch.device,
                 history: list[dict[str, Any]] | None = None, best: dict[str, Any] | None = None):
        self.cfg, self.device = cfg, device
        self.test_sets: dict[str, AnomalyDataset] = build_test_sets(
            cfg.dataset, cfg.eval_root or cfg.root, categories, cfg.image_size)
        self.eval_cfg = EvalConfig(checkpoint="(training)", output=cfg.output, batch_size=cfg.batch_size,
                                   workers=cfg.workers)
        self.history = list(history or [])
        self.best = best if best is not None and best.get("select_by") == cfg.select_by else None
        self.warned_nan = False

    def evaluate(self, model: torch.nn.Module, epoch: float, step: int, loss: float) -> dict[str, Any]:
        """Evaluate ``model`` (put back in train mode after); returns the history entry, whose
        ``"best"`` is True when it beat the best so far (the caller then writes ``best.pt``)."""
        was_training = model.training
        model.eval()
        try:
            results = score_test_sets(model, self.test_sets, self.eval_cfg, self.device)
        finally:
            model.train(was_training)
        value = selection_value(results["mean"], self.cfg.select_by)
        better = math.isfinite(value) and (self.best is None or value > self.best["value"])
        entry = {"epoch": epoch, "step": step, "loss": loss, "select_by": self.cfg.select_by,
                 "value": _plain(value), "best": better,
                 "metrics": {c: {k: _plain(v) for k, v in r.items()} for c, r in results.items()}}
        self.history.append(entry)
        if better:
            self.best = {"select_by": self.cfg.select_by, "value": value, "epoch": epoch, "step": step}
        return entry

    def summary(self, entry: dict[str, Any]) -> str:
        """The progress line of one evaluation (mean metrics in percent)."""
        mean = entry["metrics"]["mean"]
        cells = " ".join(f"{k} {'-' if mean[k] is None else f'{100 * mean[k]:.1f}'}" for k in ALL_KEYS)
        value = "undefined" if entry["value"] is None else f"{entry['value']:.4f}"
        line = f"eval epoch {entry['epoch']:g} (step {entry['step']}): {cells}; {self.cfg.select_by} {value}"
        if entry["best"]:
            line += f", best so far: wrote {BEST_PT}"
        elif entry["value"] is None and not self.warned_nan:
            self.warned_nan = True
            line += (f"; warning: {self.cfg.select_by} is undefined here (no pixel masks?), so no {BEST_PT} "
                     f"is kept: choose --select-by among the defined metrics")
        return line

    def write(self, steps: list[dict[str, Any]], steps_per_epoch: int) -> None:
        """Rewrite ``metrics_history.csv`` and ``curves.png`` from the history and the steps."""
        path = os.path.join(self.cfg.output, HISTORY_CSV)
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "step", "loss", "category", *ALL_KEYS, "select_by", "best"])
            for e in self.history:
                for category, row in e["metrics"].items():
                    w.writerow([f"{e['epoch']:g}", e["step"], f"{e['loss']:.6g}", category,
                                *("" if row[k] is None else f"{row[k]:.6f}" for k in ALL_KEYS),
                                "" if e["value"] is None else f"{e['value']:.6f}", int(e["best"])])
        os.replace(path + ".tmp", path)
        curves = os.path.join(self.cfg.output, CURVES_PNG)
        draw_curves(steps, self.history, steps_per_epoch, ALL_KEYS, curves + ".tmp.png")
        os.replace(curves + ".tmp.png", curves)
