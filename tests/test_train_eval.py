"""Evaluation during ``mambaad train`` (``--eval-every``): history, best.pt, curves, resume.

The two-process (torchrun, gloo) case is in ``tests/test_resume.py``, together with the hard kill.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mambaad.checkpoint import load_checkpoint
from mambaad.cli import main
from mambaad.metrics import ALL_KEYS
from mambaad.runconfig import ConfigError, TrainConfig
from mambaad.train_eval import default_eval_every, selection_value
from tests.datagen import tiny_mvtec  # noqa: F401

# two categories of 12 training images, batch 6: 4 steps per epoch
BASE = ["--dataset", "mvtec", "--categories", "stripes,disc", "--model", "mambaad_test", "--image-size", 64,
        "--batch-size", 6, "--workers", 0]


def cli(*args: object) -> int:
    return main([str(a) for a in args])


def _evals(out) -> list[dict]:
    return json.loads((out / "train_log.json").read_text())["evals"]


def test_eval_every_epoch_history_best_and_curves(tiny_mvtec, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("train", "--root", tiny_mvtec, *BASE, "--epochs", 2, "--eval-every", 1, "--output", out) == 0
    err = capsys.readouterr().err
    evals = _evals(out)
    assert [(e["epoch"], e["step"]) for e in evals] == [(1, 4), (2, 8)]
    steps = json.loads((out / "train_log.json").read_text())["steps"]
    for e, first in zip(evals, (1, 5)):
        assert list(e["metrics"]) == ["stripes", "disc", "mean"]
        assert all(list(row) == list(ALL_KEYS) for row in e["metrics"].values())
        mean = e["metrics"]["mean"]
        for k in ALL_KEYS:
            assert mean[k] == pytest.approx((e["metrics"]["stripes"][k] + e["metrics"]["disc"][k]) / 2)
        assert e["value"] == pytest.approx(mean["i_auroc"] + mean["p_auroc"])
        assert e["loss"] == pytest.approx(sum(s["loss"] for s in steps[first - 1:first + 3]) / 4)
        assert f"eval epoch {e['epoch']:g} (step {e['step']}): i_auroc {100 * mean['i_auroc']:.1f}" in err
    values = [e["value"] for e in evals]
    best = max(range(2), key=lambda i: values[i])
    assert [e["best"] for e in evals][0] and evals[best]["best"]
    assert err.count("best so far: wrote best.pt") == sum(e["best"] for e in evals)

    with open(out / "metrics_history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["category"]) for r in rows] == [
        (str(e), c) for e in (1, 2) for c in ("stripes", "disc", "mean")]
    for r in rows:
        e = evals[int(r["epoch"]) - 1]
        assert float(r["i_auroc"]) == pytest.approx(e["metrics"][r["category"]]["i_auroc"], abs=1e-6)

    kept = load_checkpoint(str(out / "best.pt"))
    assert "optimizer" not in kept and kept["step"] == evals[best]["step"]
    assert kept["best"]["value"] == pytest.approx(values[best])
    last = load_checkpoint(str(out / "last.pt"))
    assert last["best"] == kept["best"] and last["last_eval_step"] == 8
    if best == 1:
        assert all(torch.equal(v, last["state_dict"][k]) for k, v in kept["state_dict"].items())
    # best.pt is an ordinary checkpoint: mambaad eval (batched alike) gives the metrics it was chosen by
    assert cli("eval", "--checkpoint", out / "best.pt", "--output", tmp_path / "eval", "--workers", 0,
               "--batch-size", 6, "--no-store-threshold") == 0
    table = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for c in ("stripes", "disc", "mean"):
        assert table[c] == pytest.approx(evals[best]["metrics"][c], abs=1e-6)
    picture = Image.open(out / "curves.png")
    assert picture.format == "PNG" and picture.size == (720, 600)
    colours = np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 5  # lines of several colours were drawn

    # resume keeps the history and the best; a weights-only best.pt cannot be resumed
    assert cli("train", "--root", tiny_mvtec, *BASE, "--epochs", 3, "--eval-every", 1, "--output", out,
               "--resume") == 0
    more = _evals(out)
    assert more[:2] == evals and [(e["epoch"], e["step"]) for e in more[2:]] == [(3, 12)]
    with open(out / "metrics_history.csv") as f:
        assert len(list(csv.DictReader(f))) == 9
    best_now = max(e["value"] for e in more)
    assert load_checkpoint(str(out / "best.pt"))["best"]["value"] == pytest.approx(best_now)
    capsys.readouterr()
    assert cli("train", "--root", tiny_mvtec, *BASE, "--epochs", 5, "--output", tmp_path / "x",
               "--resume", out / "best.pt") == 2
    assert "holds weights only" in capsys.readouterr().err


def test_eval_root_default_period_and_errors(tiny_mvtec, tmp_path, capsys):
    """Training images in one root, the test split in another; no test split: a clear error when
    asked for, a note when it was only the default."""
    train_root, test_root = tmp_path / "train_only", tmp_path / "test_only"
    for c in ("stripes", "disc"):
        shutil.copytree(os.path.join(tiny_mvtec, c, "train"), train_root / c / "train")
        shutil.copytree(os.path.join(tiny_mvtec, c, "test"), test_root / c / "test")
        shutil.copytree(os.path.join(tiny_mvtec, c, "ground_truth"), test_root / c / "ground_truth")
    args = ["--root", train_root, *BASE, "--iterations", 4]
    assert cli("train", *args, "--eval-every", 1, "--output", tmp_path / "a") == 2
    assert "--eval-every 1" in capsys.readouterr().err
    assert cli("train", *args, "--output", tmp_path / "b") == 0  # default period, no test split
    assert "note: no evaluation during training" in capsys.readouterr().err
    assert not (tmp_path / "b" / "best.pt").exists() and _evals(tmp_path / "b") == []
    assert cli("train", *args, "--eval-root", test_root, "--select-by", "aupro",
               "--output", tmp_path / "c") == 0
    evals = _evals(tmp_path / "c")
    assert len(evals) == 1 and evals[0]["value"] == pytest.approx(evals[0]["metrics"]["mean"]["aupro"])
    assert default_eval_every(500) == 50 and default_eval_every(5) == 1


def test_select_by_and_eval_every_are_checked():
    assert TrainConfig(select_by="i_auroc + aupro").select_by
    with pytest.raises(ConfigError, match="unknown metric.*'auc'"):
        TrainConfig(select_by="i_auroc+auc")
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        TrainConfig(eval_every=-1)
    mean = {"i_auroc": 0.75, "p_auroc": 0.5, "aupro": None}
    assert selection_value(mean, "i_auroc+p_auroc") == 1.25
    assert math.isnan(selection_value(mean, "i_auroc+aupro"))
