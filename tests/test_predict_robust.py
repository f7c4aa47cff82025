"""``mambaad predict`` on a folder holding unreadable files (truncated PNG and JPEG, not an image,
zero bytes, no read permission): each is skipped with a warning and recorded with its error, every
other image is scored, the exit status is non-zero only with --strict or when nothing could be read.
Grey, RGBA and 16-bit images are scored as the RGB images the decode rules make of them."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mambaad.cli import main
from mambaad.data import DatasetError, UnreadableImageWarning
from mambaad.predict import COLUMNS, predict
from mambaad.runconfig import PredictConfig
from tests import imagefiles
from tests.datagen import tiny_mvtec  # noqa: F401

SIZE = 64


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(tiny_mvtec, tmp_path_factory) -> str:
    """mambaad_test trained one step (scores need not be good, only computed)."""
    out = tmp_path_factory.mktemp("predict_ckpt")
    torch.manual_seed(0)
    assert cli("train", "--root", tiny_mvtec, "--dataset", "mvtec", "--categories", "disc", "--model",
               "mambaad_test", "--image-size", SIZE, "--iterations", 1, "--batch-size", 2, "--workers", 0,
               "--output", out) == 0
    return str(out / "last.pt")


@pytest.fixture
def mixed_folder(tiny_mvtec, tmp_path, monkeypatch) -> tuple[str, list[str], dict[str, str]]:
    """Two good PNGs of the test set, one odd EXIF JPEG and one file of each unreadable kind."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    good = []
    for name in ("good/000.png", "spot/000.png"):
        dst = str(folder / name.replace("/", "_"))
        shutil.copy(os.path.join(tiny_mvtec, "disc", "test", name), dst)
        good.append(dst)
    good.append(imagefiles.exif_rotated_jpeg(str(folder / "turned.jpg"))[0])
    (folder / "notes.txt").write_text("not listed: no image extension")
    bad = imagefiles.write_bad_files(str(folder), np.random.default_rng(), monkeypatch)
    return str(folder), sorted(good), bad


def _rows(folder) -> list[dict]:
    return json.loads((folder / "predictions.json").read_text())


def test_bad_files_are_skipped_and_recorded(checkpoint, mixed_folder, tmp_path, capsys):
    folder, good, bad = mixed_folder
    out = tmp_path / "pred"
    assert cli("predict", "--checkpoint", checkpoint, "--output", out, "--threshold", 0.5, folder) == 0
    err = capsys.readouterr().err
    rows = _rows(out)
    assert [r["image"] for r in rows] == sorted(good + list(bad.values()))
    by_path = {r["image"]: r for r in rows}
    for kind, path in bad.items():
        r = by_path[path]
        assert os.path.basename(path) in r["error"], (kind, r)
        assert r["score"] is None and r["anomalous"] is None and r["heatmap"] is None
        assert f"mambaad predict: warning: skipping an image: cannot read image file {path}" in err
    assert "truncated" in by_path[bad["truncated_png"]]["error"]
    assert "truncated" in by_path[bad["truncated_jpeg"]]["error"]
    for path in good:
        r = by_path[path]
        assert r["error"] is None and np.isfinite(r["score"]) and r["anomalous"] == (r["score"] >= 0.5)
        assert Image.open(r["heatmap"]).format == "PNG"
    assert f"{len(bad)} of {len(rows)} images could not be read" in err
    with open(out / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(COLUMNS) and len(table) == len(rows)
    assert all((t["error"] == "") == (t["image"] in good) for t in table)
    assert all((t["score"] == "") == (t["image"] not in good) for t in table)


def test_strict_fails_after_writing_everything(checkpoint, mixed_folder, tmp_path, capsys):
    folder, good, bad = mixed_folder
    out = tmp_path / "pred"
    assert cli("predict", "--checkpoint", checkpoint, "--output", out, "--strict", folder) == 2
    total = len(good) + len(bad)
    assert f"--strict: {len(bad)} of {total} images could not be read" in capsys.readouterr().err
    rows = _rows(out)
    assert sum(r["error"] is None for r in rows) == len(good) and len(rows) == len(good) + len(bad)


def test_nothing_readable_is_an_error(checkpoint, mixed_folder, tmp_path, capsys):
    _, _, bad = mixed_folder
    out = tmp_path / "pred"
    missing = tmp_path / "missing.png"
    assert cli("predict", "--checkpoint", checkpoint, "--output", out, *bad.values(), missing) == 2
    assert f"none of the {len(bad) + 1} images could be read" in capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == len(bad) + 1 and all(r["error"] for r in rows)
    assert "file not found" in rows[-1]["error"]


def test_python_api_warns_and_raises(checkpoint, mixed_folder, tmp_path):
    folder, good, bad = mixed_folder
    cfg = PredictConfig(checkpoint=checkpoint, images=[folder], output=str(tmp_path / "a"))
    with pytest.warns(UnreadableImageWarning) as record:
        rows = predict(cfg)
    assert len([w for w in record if "skipping an image" in str(w.message)]) == len(bad)
    assert sum(r["error"] is None for r in rows) == len(good)
    cfg = PredictConfig(checkpoint=checkpoint, images=[folder], output=str(tmp_path / "b"), strict=True)
    with pytest.warns(UnreadableImageWarning), pytest.raises(DatasetError, match="--strict"):
        predict(cfg)


@pytest.mark.parametrize("kind", ["grey_png", "rgba_png", "grey16_png", "rgb16_png"])
def test_odd_modes_score_as_their_rgb(checkpoint, kind, tmp_path):
    rng = np.random.default_rng()
    odd, rgb = getattr(imagefiles, kind)(str(tmp_path / f"{kind}.png"), rng)
    plain = str(tmp_path / "plain_rgb.png")
    Image.fromarray(rgb, mode="RGB").save(plain)
    rows = predict(PredictConfig(checkpoint=checkpoint, images=[odd, plain], output=str(tmp_path / "o")))
    assert all(r["error"] is None for r in rows)
    assert rows[0]["score"] == rows[1]["score"]
