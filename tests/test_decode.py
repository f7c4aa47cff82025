"""The decode rules (mambaad.data.transforms.decode_image) and the datasets' handling of unreadable
files: odd but valid images read as the right RGB, bad files raise naming themselves, and the
dataset builders skip them with a warning and a record."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mambaad.data import (DatasetError, ImageDecodeError, UnreadableImageWarning, build_test_sets,
                          build_train_set, decode_image, load_image)
from mambaad.data.transforms import open_image
from tests import imagefiles
from tests.datagen import make_tiny_mvtec


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


@pytest.mark.parametrize("kind", ["grey_png", "rgba_png", "grey16_png", "rgb16_png"])
def test_odd_modes_read_as_rgb(kind, rng, tmp_path):
    path, want = getattr(imagefiles, kind)(str(tmp_path / f"{kind}.png"), rng)
    got = np.asarray(open_image(path, "RGB"))
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_sixteen_bit_grey_is_not_saturated(rng, tmp_path):
    """Pillow's own convert("RGB") clips 16-bit grey levels at 255: the rule keeps the high byte."""
    ramp = np.linspace(0, 65535, 40 * 48).reshape(40, 48).astype(np.uint16)
    path = imagefiles.write_png16(str(tmp_path / "ramp.png"), ramp)
    got = np.asarray(open_image(path, "RGB"))[..., 0].astype(int)
    assert got.min() == 0 and got.max() == 255
    assert np.abs(got - ramp / 257.0).max() <= 1.0  # the 8-bit value of each 16-bit level
    assert (got == 255).mean() < 0.01


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    path, upright = imagefiles.exif_rotated_jpeg(str(tmp_path / "turned.jpg"))
    stored = Image.open(path)
    assert stored.size == (upright.shape[0], upright.shape[1])  # stored sideways: (w, h) swapped
    got = np.asarray(open_image(path, "RGB")).astype(float)
    assert got.shape == upright.shape
    h, w = upright.shape[:2]
    for ys in (slice(2, h // 2 - 2), slice(h // 2 + 2, h - 2)):  # quadrant interiors (JPEG is lossy)
        for xs in (slice(2, w // 2 - 2), slice(w // 2 + 2, w - 2)):
            np.testing.assert_allclose(got[ys, xs].mean((0, 1)), upright[ys, xs].mean((0, 1)), atol=6)


def test_load_image_of_an_exif_jpeg_matches_its_upright_png(tmp_path):
    path, upright = imagefiles.exif_rotated_jpeg(str(tmp_path / "turned.jpg"))
    Image.fromarray(upright).save(tmp_path / "upright.png")
    a = load_image(path, 64)
    b = load_image(str(tmp_path / "upright.png"), 64)
    assert a.shape == b.shape == (3, 64, 64)
    assert (a - b).abs().mean() < 0.05  # JPEG noise only; turned sideways it would differ by ~1


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpeg", "not_an_image", "zero_bytes",
                                  "no_permission", "missing"])
def test_unreadable_files_raise_naming_the_file(kind, rng, tmp_path, monkeypatch):
    files = imagefiles.write_bad_files(str(tmp_path), rng, monkeypatch)
    path = files.get(kind, str(tmp_path / "missing.png"))
    with pytest.raises(ImageDecodeError, match=f"{os.path.basename(path)}") as err:
        decode_image(path)
    assert isinstance(err.value, DatasetError)
    if kind.startswith("truncated"):
        assert "truncated" in str(err.value)


def _break_some(root: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Overwrite training and test images of category disc with unreadable files."""
    train = os.path.join(root, "disc", "train", "good")
    test = os.path.join(root, "disc", "test")
    return {os.path.join(train, "001.png"): imagefiles.truncated_png(os.path.join(train, "001.png"), rng),
            os.path.join(train, "002.png"): imagefiles.zero_bytes(os.path.join(train, "002.png")),
            os.path.join(train, "003.png"): imagefiles.unreadable(os.path.join(train, "003.png"), rng,
                                                                  monkeypatch),
            os.path.join(test, "spot", "000.png"): imagefiles.not_an_image(os.path.join(test, "spot",
                                                                                        "000.png"))}


def test_builders_skip_unreadable_images_with_a_warning(rng, tmp_path, monkeypatch):
    root = make_tiny_mvtec(str(tmp_path / "d"), n_train=5, n_good=2, n_defect=1)
    bad = _break_some(root, rng, monkeypatch)
    with pytest.warns(UnreadableImageWarning) as record:
        ds = build_train_set("mvtec", root, "disc,stripes", 64)
    assert len(ds) == 2 * 5 - 3
    assert sorted(p for p, _ in ds.skipped) == sorted(p for p in bad if "/train/" in p)
    assert all(p not in [s.image for s in ds.samples] for p in bad)
    assert len(record) == 3 and all("cannot read image file" in str(w.message) for w in record)
    assert all(ds[i]["image"].shape == (3, 64, 64) for i in range(len(ds)))
    with pytest.warns(UnreadableImageWarning, match=r"test \(category disc\).*spot/000\.png"):
        sets = build_test_sets("mvtec", root, "disc,stripes", 64)
    assert len(sets["disc"]) == 2 + 2 - 1 and len(sets["stripes"]) == 2 + 2
    assert [p for p, _ in sets["disc"].skipped] == [p for p in bad if "/test/" in p]


def test_a_bad_mask_skips_its_image(rng, tmp_path):
    root = make_tiny_mvtec(str(tmp_path / "d"), n_train=1, n_good=1, n_defect=1)
    mask = imagefiles.zero_bytes(os.path.join(root, "disc", "ground_truth", "scratch", "000_mask.png"))
    with pytest.warns(UnreadableImageWarning, match="000_mask.png"):
        ds = build_test_sets("mvtec", root, "disc", 64)["disc"]
    assert ds.skipped[0][0] == mask
    assert all(s.mask != mask for s in ds.samples) and len(ds) == 2


def test_no_readable_image_is_an_error(tmp_path):
    root = make_tiny_mvtec(str(tmp_path / "d"), n_train=2, n_good=1, n_defect=1)
    for name in ("000.png", "001.png"):
        imagefiles.not_an_image(os.path.join(root, "disc", "train", "good", name))
    with pytest.warns(UnreadableImageWarning), pytest.raises(DatasetError, match="none of the 2 training"):
        build_train_set("mvtec", root, "disc", 64)


def test_train_counts_skipped_images_in_its_log(rng, tmp_path, monkeypatch, capsys):
    from mambaad.cli import main

    root = make_tiny_mvtec(str(tmp_path / "d"), n_train=4, n_good=1, n_defect=1)
    bad = _break_some(root, rng, monkeypatch)
    torch.manual_seed(0)
    assert main(["train", "--root", root, "--dataset", "mvtec", "--categories", "disc,stripes",
                 "--model", "mambaad_test", "--image-size", "64", "--iterations", "1", "--batch-size", "2",
                 "--workers", "0", "--output", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 unreadable training image(s)" in err
    assert err.count("mambaad train: warning: skipping a training image") == 3
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert sorted(s["path"] for s in log["skipped_images"]) == sorted(p for p in bad if "/train/" in p)
    assert all("cannot read image file" in s["error"] for s in log["skipped_images"])
