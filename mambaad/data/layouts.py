"""Where the images of each dataset live: one discovery function per on-disk layout.

Every layout answers two questions for a dataset root: which categories it has, and which samples
(image file, mask file or none, label, category, defect type) make up a category's train or test
split. Nothing is read but directory listings and index files (CSV / JSON); pixels are read later,
by :class:`mambaad.data.AnomalyDataset`. Layouts (SPEC "Data layouts"):

- ``mvtec``: ``<root>/<category>/train/good/*``, ``test/<defect or good>/*``,
  ``ground_truth/<defect>/<stem>_mask.png``.
- ``visa``: ``<root>/split_csv/1cls.csv`` (columns object, split, label, image, mask; paths relative
  to the root).
- ``realiad``: ``<root>/realiad_jsons/<category>.json`` (or ``realiad_jsons/realiad_jsons/``) with
  ``train`` / ``test`` lists of ``image_path, mask_path, anomaly_class`` ('OK' = normal), images under
  ``<root>/realiad_<resolution>/<category>/``.
- ``folder``: the MVTec tree with any image extension; ``ground_truth/`` optional (without it the test
  set has image labels only, from ``test/good`` vs the other folders); masks named ``<stem>_mask.*`` or
  ``<stem>.*``.
- ``magnetic_tile``: the Magnetic Tile surface-defect set, ``<root>/MT_<type>/Imgs/<stem>.jpg`` with
  ``<stem>.png`` masks, one category. A fixed-seed split of ``MT_Free`` gives the training set; the
  test set is the held-out free images plus every defective image.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from typing import Callable

from .transforms import DatasetError, is_image_file

NORMAL_DIRS = ("good", "ok", "normal")
SPLITS = ("train", "test")
MAGNETIC_TILE_SEED = 0
MAGNETIC_TILE_TEST_FRACTION = 0.2
MAGNETIC_TILE_CATEGORY = "magnetic_tile"
REALIAD_RESOLUTIONS = ("256", "512", "1024", "raw")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset split.

    Attributes:
        image: path of the image file.
        mask: path of the ground-truth mask, or None (normal image, or a layout without masks).
        label: 0 normal, 1 anomalous.
        category: the object / texture category.
        defect: the defect type (``"good"`` for normal images).
        has_mask: whether the pixel ground truth is known (True for normal images of any layout
            that has masks; False for anomalous images of a mask-less layout).
        mask_threshold: grey levels above this value are defective in the mask file.
    """

    image: str
    mask: str | None
    label: int
    category: str
    defect: str
    has_mask: bool = True
    mask_threshold: int = 127


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise DatasetError(f"dataset root not found (or not a folder): {root}")


def _images_in(folder: str) -> list[str]:
    """Sorted image files directly inside ``folder``."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if is_image_file(f) and os.path.isfile(os.path.join(folder, f)))


def _subdirs(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ----------------------------------------------------------------------------- MVTec and folder
def _tree_categories(root: str) -> list[str]:
    _check_root(root)
    return [d for d in _subdirs(root)
            if os.path.isdir(os.path.join(root, d, "train")) or os.path.isdir(os.path.join(root, d, "test"))]


def _find_mask(gt_dir: str, stem: str, strict_mvtec: bool) -> str | None:
    if strict_mvtec:
        path = os.path.join(gt_dir, stem + "_mask.png")
        return path if os.path.isfile(path) else None
    if not os.path.isdir(gt_dir):
        return None
    for name in sorted(os.listdir(gt_dir)):
        base, _ = os.path.splitext(name)
        if is_image_file(name) and base in (stem + "_mask", stem):
            return os.path.join(gt_dir, name)
    return None


def _tree_samples(root: str, category: str, split: str, strict_mvtec: bool) -> list[Sample]:
    """Samples of the MVTec-style tree; ``strict_mvtec`` asks for ``<stem>_mask.png`` masks."""
    cat_dir = os.path.join(root, category)
    split_dir = os.path.join(cat_dir, split)
    if not os.path.isdir(split_dir):
        raise DatasetError(f"category {category!r} has no {split} folder: {split_dir}")
    gt_root = os.path.join(cat_dir, "ground_truth")
    with_masks = strict_mvtec or os.path.isdir(gt_root)
    samples = []
    for defect in _subdirs(split_dir):
        normal = defect.lower() in NORMAL_DIRS
        if split == "train" and not normal:
            continue  # training uses normal images only
        for image in _images_in(os.path.join(split_dir, defect)):
            if normal:
                samples.append(Sample(image, None, 0, category, "good", True))
                continue
            mask = None
            if with_masks:
                gt_dir = os.path.join(gt_root, defect)
                mask = _find_mask(gt_dir, _stem(image), strict_mvtec)
                if mask is None:
                    expected = (os.path.join(gt_dir, _stem(image) + "_mask.png") if strict_mvtec
                                else os.path.join(gt_dir, _stem(image) + "_mask.<ext>"))
                    raise DatasetError(f"image without its mask: {image} (expected {expected})")
            samples.append(Sample(image, mask, 1, category, defect, with_masks))
    return samples


def mvtec_samples(root: str, category: str, split: str) -> list[Sample]:
    """MVTec-AD samples of one category and split (see the module docstring)."""
    return _tree_samples(root, category, split, strict_mvtec=True)


def folder_samples(root: str, category: str, split: str) -> list[Sample]:
    """Generic-folder samples of one category and split (see the module docstring)."""
    return _tree_samples(root, category, split, strict_mvtec=False)


# ----------------------------------------------------------------------------- VisA
def _visa_rows(root: str) -> list[dict[str, str]]:
    _check_root(root)
    path = os.path.join(root, "split_csv", "1cls.csv")
    if not os.path.isfile(path):
        raise DatasetError(f"VisA split file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path}: missing columns {sorted(missing)}")
        return list(reader)


def visa_categories(root: str) -> list[str]:
    """Categories listed in VisA's ``split_csv/1cls.csv``."""
    return sorted({row["object"] for row in _visa_rows(root)})


def visa_samples(root: str, category: str, split: str) -> list[Sample]:
    """VisA samples of one category and split, from ``split_csv/1cls.csv``."""
    samples = []
    for row in _visa_rows(root):
        if row["object"] != category or row["split"].strip().lower() != split:
            continue
        image = os.path.join(root, row["image"].strip())
        anomalous = row["label"].strip().lower() not in ("normal", "good", "ok", "0")
        if split == "train" and anomalous:
            continue
        mask = None
        if anomalous:
            rel = row["mask"].strip()
            if not rel:
                raise DatasetError(f"image without its mask: {image} (empty mask column in 1cls.csv)")
            mask = os.path.join(root, rel)
        # VisA masks store defect ids (small values): any non-zero grey level is defective
        samples.append(Sample(image, mask, int(anomalous), category,
                              "anomaly" if anomalous else "good", True, mask_threshold=0))
    return samples


# ----------------------------------------------------------------------------- Real-IAD
def _realiad_json(root: str, category: str) -> str:
    for sub in ("realiad_jsons", os.path.join("realiad_jsons", "realiad_jsons")):
        path = os.path.join(root, sub, category + ".json")
        if os.path.isfile(path):
            return path
    raise DatasetError(f"Real-IAD index not found for {category!r}: "
                       f"{os.path.join(root, 'realiad_jsons', category + '.json')}")


def realiad_categories(root: str) -> list[str]:
    """Categories with a JSON index under ``<root>/realiad_jsons``."""
    _check_root(root)
    cats: set[str] = set()
    for sub in ("realiad_jsons", os.path.join("realiad_jsons", "realiad_jsons")):
        folder = os.path.join(root, sub)
        if os.path.isdir(folder):
            cats.update(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".json"))
    if not cats:
        raise DatasetError(f"no Real-IAD JSON index found under {os.path.join(root, 'realiad_jsons')}")
    return sorted(cats)


def _realiad_image_dir(root: str, category: str) -> str:
    """The smallest stored resolution (256, 512, 1024, raw) that holds the category."""
    for res in REALIAD_RESOLUTIONS:
        folder = os.path.join(root, f"realiad_{res}", category)
        if os.path.isdir(folder):
            return folder
    raise DatasetError(f"no Real-IAD images for {category!r}: expected "
                       f"{os.path.join(root, 'realiad_<256|512|1024|raw>', category)}")


def realiad_samples(root: str, category: str, split: str) -> list[Sample]:
    """Real-IAD samples of one category and split, from its JSON index."""
    index = _realiad_json(root, category)
    try:
        with open(index) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"cannot read Real-IAD index {index}: {err}") from err
    if split not in meta:
        raise DatasetError(f"{index}: no {split!r} list")
    image_dir = _realiad_image_dir(root, category)
    normal_class = meta.get("meta", {}).get("normal_class", "OK")
    samples = []
    for item in meta[split]:
        anomalous = item.get("anomaly_class", normal_class) != normal_class
        if split == "train" and anomalous:
            continue
        image = os.path.join(image_dir, item["image_path"])
        mask = None
        if anomalous:
            if not item.get("mask_path"):
                raise DatasetError(f"image without its mask: {image} (no mask_path in {index})")
            mask = os.path.join(image_dir, item["mask_path"])
        samples.append(Sample(image, mask, int(anomalous), category,
                              item.get("anomaly_class", "OK") if anomalous else "good", True,
                              mask_threshold=0))
    return samples


# ----------------------------------------------------------------------------- Magnetic Tile
def magnetic_tile_categories(root: str) -> list[str]:
    """The one category of the Magnetic Tile set (checks the ``MT_Free`` folder is there)."""
    _check_root(root)
    if not os.path.isdir(os.path.join(root, "MT_Free", "Imgs")):
        raise DatasetError(f"not a Magnetic Tile root (no MT_Free/Imgs): {root}")
    return [MAGNETIC_TILE_CATEGORY]


def _mt_pairs(root: str, kind: str) -> list[tuple[str, str]]:
    folder = os.path.join(root, kind, "Imgs")
    pairs = []
    for image in _images_in(folder):
        if not image.lower().endswith(".jpg"):
            continue
        mask = os.path.splitext(image)[0] + ".png"
        if not os.path.isfile(mask):
            raise DatasetError(f"image without its mask: {image} (expected {mask})")
        pairs.append((image, mask))
    return pairs


def magnetic_tile_samples(root: str, category: str, split: str) -> list[Sample]:
    """Magnetic Tile samples: a seeded split of MT_Free, all defect folders in the test set.

    ``MT_Free`` images, sorted by name, are shuffled with ``random.Random(MAGNETIC_TILE_SEED)``; the
    first ``round(MAGNETIC_TILE_TEST_FRACTION * n)`` are held out for testing, the rest train.
    """
    if category != MAGNETIC_TILE_CATEGORY:
        raise DatasetError(f"the Magnetic Tile set has one category, {MAGNETIC_TILE_CATEGORY!r}")
    free = _mt_pairs(root, "MT_Free")
    order = list(range(len(free)))
    random.Random(MAGNETIC_TILE_SEED).shuffle(order)
    n_test = round(MAGNETIC_TILE_TEST_FRACTION * len(free))
    chosen = sorted(order[:n_test]) if split == "test" else sorted(order[n_test:])
    samples = [Sample(free[i][0], None, 0, category, "good", True) for i in chosen]
    if split == "test":
        for kind in _subdirs(root):
            if kind.startswith("MT_") and kind != "MT_Free":
                samples += [Sample(img, mask, 1, category, kind[3:].lower(), True)
                            for img, mask in _mt_pairs(root, kind)]
    return samples


@dataclass(frozen=True)
class Layout:
    """A dataset layout: its categories and the samples of a (category, split)."""

    categories: Callable[[str], list[str]]
    samples: Callable[[str, str, str], list[Sample]]


LAYOUTS: dict[str, Layout] = {
    "mvtec": Layout(_tree_categories, mvtec_samples),
    "visa": Layout(visa_categories, visa_samples),
    "realiad": Layout(realiad_categories, realiad_samples),
    "folder": Layout(_tree_categories, folder_samples),
    "magnetic_tile": Layout(magnetic_tile_categories, magnetic_tile_samples),
}
