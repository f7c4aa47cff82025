"""Datasets: the five layouts, resize / normalisation / mask rules, multi-class sets, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mambaad.data import (IMAGENET_MEAN, IMAGENET_STD, DatasetError, build_test_sets, build_train_set,
                          load_image, load_mask, resolve_categories)
from mambaad.data.layouts import MAGNETIC_TILE_TEST_FRACTION, magnetic_tile_samples
from tests.datagen import CATEGORIES, DEFECTS, make_tiny_mvtec, tiny_mvtec  # noqa: F401

SHARED_MT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "magnetic_tile")


def _png(path: str, arr: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# ----------------------------------------------------------------------------- MVTec layout
def test_mvtec_train_set_is_multi_class(tiny_mvtec):
    ds = build_train_set("mvtec", tiny_mvtec, None, 64)
    assert len(ds) == 2 * 12 and ds.categories == sorted(CATEGORIES)
    assert {s.label for s in ds.samples} == {0}
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and item["mask"].sum() == 0
    assert item["label"] == 0 and item["category"] in CATEGORIES and item["path"].endswith(".png")


def test_mvtec_test_sets_per_category(tiny_mvtec):
    sets = build_test_sets("mvtec", tiny_mvtec, "stripes,disc", 64)
    assert list(sets) == ["stripes", "disc"]
    for name, ds in sets.items():
        assert len(ds) == 4 + len(DEFECTS) * 3 and ds.categories == [name] and ds.has_masks
        for i in range(len(ds)):
            item = ds[i]
            assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
            assert (item["mask"].sum() > 0) == (item["label"] == 1), item["path"]
            folder = os.path.basename(os.path.dirname(item["path"]))
            assert item["defect"] == ("good" if item["label"] == 0 else folder)


def test_loader_batches_dicts(tiny_mvtec):
    ds = build_test_sets("mvtec", tiny_mvtec, ["disc"], 64)["disc"]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["label"].shape == (4,) and len(batch["path"]) == 4 and batch["category"] == ["disc"] * 4


def test_resize_and_imagenet_normalisation(tmp_path):
    path = _png(str(tmp_path / "c.png"), np.full((40, 50, 3), (255, 128, 0), np.uint8))
    x = load_image(path, 64)
    assert x.shape == (3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (torch.tensor([255, 128, 0]) / 255.0 - mean) / std
    assert torch.allclose(x.mean((1, 2)), expected.float(), atol=1e-5)
    grey = _png(str(tmp_path / "g.png"), np.full((10, 10), 200, np.uint8))  # mode L -> RGB
    assert load_image(grey, 64).shape == (3, 64, 64)


def test_mask_is_binarised_resized_then_thresholded(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[:, :2] = 255  # left half defective
    assert load_mask(_png(str(tmp_path / "half.png"), m), 2)[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    grey = np.full((4, 4), 100, np.uint8)  # <= 127: not defective (0 / 255 masks)
    assert load_mask(_png(str(tmp_path / "grey.png"), grey), 4).sum() == 0
    assert load_mask(str(tmp_path / "grey.png"), 4, threshold=0).sum() == 16  # defect ids (VisA)
    # one defective column of 4 weighs 0.75 / 1.75 < 0.5 in the bilinear (antialiased) 4 -> 2 resize:
    # dropped, where a nearest-neighbour resize would keep it (it samples columns 1 and 3)
    col = np.zeros((4, 4), np.uint8)
    col[:, 1] = 255
    assert load_mask(_png(str(tmp_path / "col.png"), col), 2).sum() == 0
    assert np.asarray(Image.open(tmp_path / "col.png").resize((2, 2), Image.NEAREST)).max() == 255


# ----------------------------------------------------------------------------- errors
def test_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        build_train_set("mvtec", str(tmp_path / "nowhere"), None, 64)


def test_unknown_category_lists_the_available(tiny_mvtec):
    with pytest.raises(DatasetError, match="available: disc, stripes"):
        resolve_categories("mvtec", tiny_mvtec, "disc,carpet")


def test_unknown_dataset_kind(tiny_mvtec):
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        build_train_set("mvtec2", tiny_mvtec, None, 64)


def test_empty_category(tmp_path):
    os.makedirs(tmp_path / "empty" / "train" / "good")
    with pytest.raises(DatasetError, match="'empty' has no train images"):
        build_train_set("mvtec", str(tmp_path), None, 64)


def test_image_without_its_mask(tmp_path):
    root = make_tiny_mvtec(str(tmp_path / "d"), n_train=1, n_good=1, n_defect=1)
    os.remove(os.path.join(root, "disc", "ground_truth", "spot", "000_mask.png"))
    with pytest.raises(DatasetError, match=r"image without its mask: .*disc/test/spot/000\.png"):
        build_test_sets("mvtec", root, "disc", 64)


def test_unreadable_image_names_the_file(tmp_path):
    """A file that goes bad after the set was built (unreadable ones are skipped then: test_decode.py)."""
    root = make_tiny_mvtec(str(tmp_path / "d"), n_train=2, n_good=1, n_defect=1)
    bad = os.path.join(root, "disc", "train", "good", "001.png")
    ds = build_train_set("mvtec", root, "disc", 64)
    with open(bad, "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot read image file .*001\.png"):
        ds[[s.image for s in ds.samples].index(bad)]


# ----------------------------------------------------------------------------- other layouts
def test_visa_layout(tiny_mvtec, tmp_path):
    root = tmp_path / "visa"
    rows = []
    for cat in CATEGORIES:
        for i, split in enumerate(["train", "train", "test", "test"]):
            src = os.path.join(tiny_mvtec, cat, "train" if split == "train" else "test", "good", "000.png")
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            os.makedirs(root / os.path.dirname(rel), exist_ok=True)
            Image.open(src).save(root / rel, format="JPEG")
            rows.append([cat, split, "normal", rel, ""])
        rel, mrel = f"{cat}/Data/Images/Anomaly/0000.JPG", f"{cat}/Data/Masks/Anomaly/0000.png"
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        Image.open(os.path.join(tiny_mvtec, cat, "test", "spot", "000.png")).save(root / rel, format="JPEG")
        ids = np.zeros((72, 72), np.uint8)
        ids[10:40, 10:40] = 3  # VisA stores defect ids, not 255
        _png(str(root / mrel), ids)
        rows.append([cat, "test", "anomaly", rel, mrel])
    os.makedirs(root / "split_csv")
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
    train = build_train_set("visa", str(root), None, 64)
    assert len(train) == 4 and train.categories == sorted(CATEGORIES)
    test = build_test_sets("visa", str(root), "disc", 64)["disc"]
    assert [s.label for s in test.samples] == [0, 0, 1]
    assert test[2]["mask"].sum() > 0 and test[0]["mask"].sum() == 0


def test_realiad_layout(tiny_mvtec, tmp_path):
    root = tmp_path / "realiad"
    meta: dict = {"meta": {"normal_class": "OK"}, "train": [], "test": []}
    for i in range(3):
        rel = f"OK/S{i:04d}/disc_{i:04d}_OK_C1.jpg"
        _png(str(root / "realiad_256" / "disc" / rel), np.asarray(Image.open(
            os.path.join(tiny_mvtec, "disc", "train", "good", f"{i:03d}.png"))))
        entry = {"image_path": rel, "mask_path": None, "anomaly_class": "OK"}
        meta["train" if i < 2 else "test"].append(entry)
    rel, mrel = "NG/AK/S0009/disc_0009_NG_C1.jpg", "NG/AK/S0009/disc_0009_NG_C1.png"
    _png(str(root / "realiad_256" / "disc" / rel), np.asarray(Image.open(
        os.path.join(tiny_mvtec, "disc", "test", "spot", "000.png"))))
    _png(str(root / "realiad_256" / "disc" / mrel), np.asarray(Image.open(
        os.path.join(tiny_mvtec, "disc", "ground_truth", "spot", "000_mask.png"))))
    meta["test"].append({"image_path": rel, "mask_path": mrel, "anomaly_class": "AK"})
    os.makedirs(root / "realiad_jsons")
    (root / "realiad_jsons" / "disc.json").write_text(json.dumps(meta))
    assert len(build_train_set("realiad", str(root), None, 64)) == 2
    test = build_test_sets("realiad", str(root), ["disc"], 64)["disc"]
    assert [s.label for s in test.samples] == [0, 1] and test.samples[1].defect == "AK"
    assert test[1]["mask"].sum() > 0


def test_folder_layout_without_masks(tiny_mvtec, tmp_path):
    root = tmp_path / "folder"
    shutil.copytree(os.path.join(tiny_mvtec, "disc"), root / "disc",
                    ignore=shutil.ignore_patterns("ground_truth"))
    test = build_test_sets("folder", str(root), None, 64)["disc"]
    assert not test.has_masks
    anomalous = [i for i, s in enumerate(test.samples) if s.label == 1]
    assert anomalous and not test[anomalous[0]]["has_mask"]


def test_folder_layout_masks_named_like_their_image(tiny_mvtec, tmp_path):
    root = tmp_path / "folder"
    shutil.copytree(os.path.join(tiny_mvtec, "disc"), root / "disc")
    gt = root / "disc" / "ground_truth" / "spot"
    os.rename(gt / "000_mask.png", gt / "000.png")
    test = build_test_sets("folder", str(root), None, 64)["disc"]
    assert test.has_masks and sum(s.label for s in test.samples) == 6


def _fake_magnetic_tile(root, n_free=11, n_crack=2):
    for kind, n in (("MT_Free", n_free), ("MT_Crack", n_crack)):
        for i in range(n):
            _png(str(root / kind / "Imgs" / f"exp_{i}.jpg"), np.full((30, 40), 120, np.uint8))
            m = np.zeros((30, 40), np.uint8)
            if kind != "MT_Free":
                m[5:9, 5:20] = 255
            _png(str(root / kind / "Imgs" / f"exp_{i}.png"), m)
    return str(root)


def test_magnetic_tile_split_is_seeded_and_disjoint(tmp_path):
    root = _fake_magnetic_tile(tmp_path / "mt")
    train = magnetic_tile_samples(root, "magnetic_tile", "train")
    test = magnetic_tile_samples(root, "magnetic_tile", "test")
    free_test = [s.image for s in test if s.label == 0]
    assert len(free_test) == round(MAGNETIC_TILE_TEST_FRACTION * 11) == 2
    assert not set(free_test) & {s.image for s in train} and len(train) + len(free_test) == 11
    assert [s.image for s in magnetic_tile_samples(root, "magnetic_tile", "test")] == [s.image for s in test]
    assert sum(s.label for s in test) == 2 and {s.defect for s in test if s.label} == {"crack"}
    ds = build_test_sets("magnetic_tile", root, None, 64)["magnetic_tile"]
    assert ds[len(ds) - 1]["mask"].sum() > 0


@pytest.mark.skipif(not os.path.isdir(SHARED_MT), reason="the shared Magnetic Tile set is not here")
def test_magnetic_tile_shared_split_sizes():
    train = build_train_set("magnetic_tile", SHARED_MT, None, 256)
    test = build_test_sets("magnetic_tile", SHARED_MT, None, 256)["magnetic_tile"]
    assert len(train) == 762 and len(test) == 190 + 392
    assert sum(s.label for s in test.samples) == 392
