"""End to end: ``mambaad train / eval / predict`` on the generated dataset, configs, resume, DDP.

The pipeline (module fixture ``run``) trains ``mambaad_test`` for one epoch (4 steps) with exactly the
flags the issue spells out, evaluates and predicts; the tests check files and keys. A longer run
(resumed from it) must separate the synthetic defects better than chance.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image

from mambaad.checkpoint import load_checkpoint
from mambaad.cli import build_parser, config_from_args, main
from mambaad.metrics import ALL_KEYS
from mambaad.runconfig import ConfigError, TrainConfig, build_config
from mambaad.train import lr_at, param_groups
from tests.datagen import CATEGORIES, tiny_mvtec  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--model", "mambaad_test", "--image-size", "64", "--workers", "0", "--eval-every", "0"]
LONGER_STEPS = 30


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def run(tiny_mvtec, tmp_path_factory):
    """Train 4 steps (1 epoch of 24 images, batch 6), evaluate with figures, predict two images."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    assert cli("train", "--root", tiny_mvtec, "--dataset", "mvtec", "--categories", "stripes,disc",
               "--model", "mambaad_test", "--image-size", 64, "--epochs", 1, "--batch-size", 6,
               "--output", out / "train", "--workers", 0) == 0
    assert cli("eval", "--checkpoint", out / "train" / "last.pt", "--root", tiny_mvtec, "--dataset", "mvtec",
               "--output", out / "eval", "--save-maps", 1, "--workers", 0) == 0
    images = [os.path.join(tiny_mvtec, "disc", "test", "good", "000.png"),
              os.path.join(tiny_mvtec, "disc", "test", "spot", "000.png")]
    assert cli("predict", "--checkpoint", out / "train" / "last.pt", "--output", out / "pred", *images) == 0
    return {"out": out, "root": tiny_mvtec, "images": images}


def test_train_writes_checkpoint_and_json_log(run):
    ckpt = load_checkpoint(str(run["out"] / "train" / "last.pt"))
    assert ckpt["model_name"] == "mambaad_test" and ckpt["step"] == 4 and ckpt["epoch"] == 1
    assert ckpt["categories"] == ["stripes", "disc"] and ckpt["image_size"] == 64
    log = json.loads((run["out"] / "train" / "train_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3, 4]
    assert all(math.isfinite(s["loss"]) and s["images_per_s"] > 0 for s in log["steps"])
    assert log["global_batch"] == 6 and log["lr"] == pytest.approx(0.005 * 6 / 16)
    # the recipe: lr x 0.1 from 80 % of the steps (step index 3 of 4)
    assert [s["lr"] for s in log["steps"]] == pytest.approx([0.001875] * 3 + [0.0001875])
    assert log["steps"][-1]["loss"] < log["steps"][0]["loss"]


def test_recipe_weight_decay_groups():
    from mambaad import create_model

    model = create_model("mambaad_test")
    decay, no_decay = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert decayed and all(not n.endswith("bias") for n in decayed)
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in decayed)
    assert any(n.endswith("A_logs") for n in kept) and any(n.endswith("bias") for n in kept)
    assert not any(n.startswith("encoder.") for n in decayed | kept)  # frozen: not optimised
    assert lr_at(79, 100, 1.0, 0.8, 0.1) == 1.0 and lr_at(80, 100, 1.0, 0.8, 0.1) == pytest.approx(0.1)


def test_eval_writes_the_table(run):
    metrics = json.loads((run["out"] / "eval" / "metrics.json").read_text())
    assert list(metrics) == ["stripes", "disc", "mean"]
    for row in metrics.values():
        assert list(row) == list(ALL_KEYS)
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert metrics["mean"]["i_auroc"] == pytest.approx(
        (metrics["stripes"]["i_auroc"] + metrics["disc"]["i_auroc"]) / 2)
    with open(run["out"] / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["category"] for r in rows] == ["stripes", "disc", "mean"]
    assert float(rows[2]["mad"]) == pytest.approx(metrics["mean"]["mad"], abs=1e-6)
    for cat in CATEGORIES:
        figs = sorted(os.listdir(run["out"] / "eval" / "maps" / cat))
        assert len(figs) == 2 and figs[0].startswith("best_01_") and figs[1].startswith("worst_01_")
        assert Image.open(run["out"] / "eval" / "maps" / cat / figs[0]).size[0] >= 3 * 64
    ckpt = load_checkpoint(str(run["out"] / "train" / "last.pt"))
    assert set(ckpt["thresholds"]["image"]) == {"stripes", "disc", "all"}
    assert ckpt["metrics"]["mean"] == pytest.approx(metrics["mean"])


def test_predict_writes_scores_verdicts_and_heatmaps(run):
    rows = json.loads((run["out"] / "pred" / "predictions.json").read_text())
    ckpt = load_checkpoint(str(run["out"] / "train" / "last.pt"))
    t = ckpt["thresholds"]["image"]["all"]
    assert [r["image"] for r in rows] == run["images"]
    for r in rows:
        assert r["threshold"] == pytest.approx(t) and r["anomalous"] == (r["score"] >= t)
        im = Image.open(r["heatmap"])
        assert im.format == "PNG" and im.size[0] >= 2 * 72
    assert len(list(csv.DictReader(open(run["out"] / "pred" / "predictions.csv")))) == 2


def test_eval_on_a_folder_layout_without_masks(run, tmp_path):
    root = tmp_path / "folder"
    shutil.copytree(os.path.join(run["root"], "disc"), root / "disc",
                    ignore=shutil.ignore_patterns("ground_truth"))
    assert cli("eval", "--checkpoint", run["out"] / "train" / "last.pt", "--root", root, "--dataset",
               "folder", "--output", tmp_path / "eval", "--workers", 0, "--no-store-threshold") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics) == ["disc", "mean"]
    assert all(metrics["disc"][k] is None for k in ("p_auroc", "p_ap", "p_f1max", "aupro", "mad"))
    assert 0.0 <= metrics["disc"]["i_auroc"] <= 1.0


@pytest.mark.slow
def test_longer_training_separates_defects_better_than_chance(run, tmp_path):
    """Resume the 4-step run to LONGER_STEPS (seeded data, seeded order): the anomaly maps must rank
    defective pixels above normal ones well above chance (pixel AUROC 0.5, AUPRO about 0.15)."""
    train_dir = tmp_path / "train"
    shutil.copytree(run["out"] / "train", train_dir)
    assert cli("train", "--root", run["root"], "--dataset", "mvtec", "--categories", "stripes,disc",
               "--output", train_dir, "--resume", "--iterations", LONGER_STEPS, "--batch-size", 6,
               "--lr", 0.01, *FAST) == 0
    assert cli("eval", "--checkpoint", train_dir / "last.pt", "--output", tmp_path / "eval", "--workers", 0,
               "--no-store-threshold") == 0
    mean = json.loads((tmp_path / "eval" / "metrics.json").read_text())["mean"]
    assert mean["p_auroc"] > 0.65, mean
    assert mean["aupro"] > 0.3, mean


def test_resume_continues_exactly(tiny_mvtec, tmp_path):
    base = ["--root", tiny_mvtec, "--dataset", "mvtec", "--categories", "disc", "--batch-size", 2, *FAST]
    assert cli("train", *base, "--iterations", 4, "--output", tmp_path / "straight") == 0
    assert cli("train", *base, "--iterations", 2, "--output", tmp_path / "split") == 0
    assert cli("train", *base, "--iterations", 4, "--output", tmp_path / "split", "--resume") == 0
    a = load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["step"] == b["step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    log = json.loads((tmp_path / "split" / "train_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- configuration
def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"root": "/data", "dataset": "visa", "epochs": 7, "batch-size": 4,
                                    "categories": ["candle", "pcb1"]}))
    args = build_parser().parse_args(["train", "--config", str(path), "--batch-size", "8", "--output", "o"])
    cfg = config_from_args(args)
    assert (cfg.root, cfg.dataset, cfg.epochs, cfg.batch_size, cfg.output) == ("/data", "visa", 7, 8, "o")
    assert cfg.categories == ["candle", "pcb1"] and cfg.lr is None and cfg.weight_decay == 1e-4
    (tmp_path / "run.json").write_text(json.dumps({"checkpoint": "c.pt", "save_maps": 3}))
    cfg = config_from_args(build_parser().parse_args(["eval", "--config", str(tmp_path / "run.json")]))
    assert (cfg.checkpoint, cfg.save_maps, cfg.exact) == ("c.pt", 3, False)


def test_unknown_keys_are_rejected(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown setting 'epoch'.*valid settings"):
        build_config(TrainConfig, {"epoch": 3})
    with pytest.raises(ConfigError, match="unknown setting 'lr_sched'"):
        build_config(TrainConfig, None, {"lr_sched": 1})
    path = tmp_path / "bad.yaml"
    path.write_text("root: /data\noutput: o\nbatchsize: 4\n")
    assert cli("train", "--config", path) == 2
    assert "unknown setting 'batchsize'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_config(TrainConfig, {"image_size": 100})


def test_clear_errors(tmp_path, capsys):
    assert cli("train", "--root", tmp_path / "missing", "--output", tmp_path / "o", *FAST) == 2
    assert "dataset root not found" in capsys.readouterr().err
    assert cli("train", "--root", tmp_path) == 2
    assert "--output" in capsys.readouterr().err
    assert cli("eval", "--checkpoint", tmp_path / "none.pt", "--output", tmp_path) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert cli("eval", "--checkpoint", tmp_path / "text.pt", "--output", tmp_path) == 2
    assert f"cannot read checkpoint {tmp_path / 'text.pt'}" in capsys.readouterr().err
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    assert cli("predict", "--checkpoint", tmp_path / "other.pt", "--output", tmp_path, tmp_path / "text.pt") == 2
    assert "is not a mambaad train checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command, flags", [
    ("train", ["--root", "--dataset", "--categories", "--model", "--image-size", "--epochs", "--batch-size",
               "--output", "--iterations", "--backend", "--seed", "--resume", "--config"]),
    ("eval", ["--checkpoint", "--root", "--dataset", "--output", "--save-maps", "--config"]),
    ("predict", ["--checkpoint", "--output", "IMAGES", "--threshold", "--config"]),
])
def test_help_on_each_subcommand(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(f in text for f in flags)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "mambaad.cli", "--help"], capture_output=True, text=True,
                         env=_env(), cwd=REPO, timeout=300)
    assert res.returncode == 0 and "train" in res.stdout and "predict" in res.stdout


def test_ddp_two_cpu_processes_gloo(tiny_mvtec, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mambaad.cli", "train", "--root", tiny_mvtec, "--dataset", "mvtec", "--categories", "disc",
           "--iterations", "3", "--batch-size", "2", "--output", str(out), "--device", "cpu", *map(str, FAST)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["last.pt", "train_log.json"]
    assert res.stderr.count("training mambaad_test") == 1  # only rank 0 reports (and writes)
    log = json.loads((out / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["global_batch"] == 4 and len(log["steps"]) == 3
    assert log["lr"] == pytest.approx(0.005 * 4 / 16)
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3
    # each rank saw its own shard: 12 images / 2 ranks = 6 per rank, 3 steps of 2 = one epoch
    assert ckpt["epoch"] == 1 and ckpt["epoch_step"] == 0
