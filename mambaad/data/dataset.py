"""The dataset class and the multi-class builders: one training set, one test set per category.

The builders decode every image (and mask) once before the sets are made, by the rules of
:func:`mambaad.data.transforms.decode_image`: a sample whose file cannot be decoded (truncated, not
an image, zero bytes, no permission, missing) is left out with an :class:`UnreadableImageWarning`
naming it and recorded in the set's ``skipped`` list, never silently. A file that goes bad after
that check still raises :class:`ImageDecodeError` when the item is read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.utils.data import Dataset

from .layouts import LAYOUTS, Sample
from .transforms import (DatasetError, ImageDecodeError, UnreadableImageWarning, decode_image, empty_mask,
                         load_image, load_mask)

CHECK_THREADS = 8  # threads decoding the files once when a set is built (Pillow releases the GIL)


class AnomalyDataset(Dataset):
    """Images (and ground-truth masks) of one split, read and resized on access.

    Args:
        samples: the images, from a layout (:data:`mambaad.data.layouts.LAYOUTS`).
        image_size: side S of the square the images and masks are resized to.
        skipped: ``(path, reason)`` of the samples left out because a file could not be decoded
            (see :func:`readable_samples`); kept as the attribute ``skipped``.

    Each item is a dict:
        ``image``: ``(3, S, S)`` float32, ImageNet-normalised;
        ``mask``: ``(1, S, S)`` float32 in {0, 1} (zeros for normal images);
        ``label``: int, 0 normal / 1 anomalous; ``category``: str; ``defect``: str; ``path``: str;
        ``has_mask``: bool, False when the pixel ground truth of an anomalous image is unknown.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int,
                 skipped: Sequence[tuple[str, str]] = ()):
        if not samples:
            raise DatasetError("a dataset needs at least one image")
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.skipped = list(skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        image = load_image(s.image, self.image_size)
        if s.mask is None:
            mask = empty_mask(self.image_size)
        else:
            mask = load_mask(s.mask, self.image_size, threshold=s.mask_threshold)
        return {"image": image, "mask": mask, "label": s.label, "category": s.category,
                "defect": s.defect, "path": s.image, "has_mask": s.has_mask}

    @property
    def categories(self) -> list[str]:
        """The categories present, in first-seen order."""
        return list(dict.fromkeys(s.category for s in self.samples))

    @property
    def has_masks(self) -> bool:
        """Whether every image has pixel ground truth (pixel metrics can be computed)."""
        return all(s.has_mask for s in self.samples)


def _layout(kind: str):
    if kind not in LAYOUTS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[kind]


def available_categories(kind: str, root: str) -> list[str]:
    """The categories a dataset root holds (raises :class:`DatasetError` for a missing root)."""
    cats = _layout(kind).categories(root)
    if not cats:
        raise DatasetError(f"no categories found under {root} for dataset kind {kind!r}")
    return cats


def resolve_categories(kind: str, root: str, categories: Sequence[str] | str | None) -> list[str]:
    """Check the chosen categories against the root; None or ``""`` or ``"all"`` means all of them.

    Args:
        kind: a dataset kind (``mvtec, visa, realiad, folder, magnetic_tile``).
        root: dataset root folder.
        categories: names, or a comma-separated string.

    Returns:
        The chosen categories, in the order given (all: sorted).
    """
    found = available_categories(kind, root)
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    if not categories or list(categories) == ["all"]:
        return found
    unknown = [c for c in categories if c not in found]
    if unknown:
        raise DatasetError(f"categories not found under {root}: {', '.join(unknown)} "
                           f"(available: {', '.join(found)})")
    return list(dict.fromkeys(categories))


def _samples(kind: str, root: str, category: str, split: str) -> list[Sample]:
    samples = _layout(kind).samples(root, category, split)
    if not samples:
        raise DatasetError(f"category {category!r} has no {split} images under {root}")
    return samples


def _decode_problem(sample: Sample) -> tuple[str, str] | None:
    """``(path, reason)`` if the sample's image or mask cannot be decoded, else None."""
    for path in (sample.image, sample.mask):
        if path is None:
            continue
        try:
            decode_image(path)
        except ImageDecodeError as err:
            return path, str(err)
    return None


def readable_samples(samples: Sequence[Sample], what: str) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode every image and mask of ``samples`` once; leave out those that fail, with a warning each.

    Args:
        samples: the samples of a split.
        what: how to name them in messages (``"training"``, ``"test (category disc)"``).

    Returns:
        ``(kept, skipped)``: the readable samples in their order, and ``(path, reason)`` per sample left
        out (the path of the file at fault).

    Raises:
        DatasetError: none of the samples is readable.
    """
    threads = max(1, min(CHECK_THREADS, os.cpu_count() or 1, len(samples)))
    with ThreadPoolExecutor(threads) as pool:
        problems = list(pool.map(_decode_problem, samples))
    kept = [s for s, p in zip(samples, problems) if p is None]
    skipped = [p for p in problems if p is not None]
    for path, reason in skipped:
        warnings.warn(f"skipping a {what} image: {reason}", UnreadableImageWarning, stacklevel=3)
    if not kept:
        raise DatasetError(f"none of the {len(samples)} {what} images can be read (first: {skipped[0][1]})")
    return kept, skipped


def build_train_set(kind: str, root: str, categories: Sequence[str] | str | None,
                    image_size: int) -> AnomalyDataset:
    """The multi-class training set: the normal training images of every chosen category.

    Args:
        kind: dataset kind; root: its root folder; categories: see :func:`resolve_categories`.
        image_size: side S of the resized images.

    Returns:
        One :class:`AnomalyDataset` over all chosen categories (the paper's unified setting); images
        that cannot be decoded are left out with a warning and listed in its ``skipped``.
    """
    cats = resolve_categories(kind, root, categories)
    samples = [s for c in cats for s in _samples(kind, root, c, "train")]
    kept, skipped = readable_samples(samples, "training")
    return AnomalyDataset(kept, image_size, skipped)


def build_test_sets(kind: str, root: str, categories: Sequence[str] | str | None,
                    image_size: int) -> dict[str, AnomalyDataset]:
    """One test set per chosen category (normal and anomalous images, with masks).

    Images or masks that cannot be decoded are left out with a warning and listed in each set's
    ``skipped``.

    Returns:
        ``{category: AnomalyDataset}`` in category order.
    """
    cats = resolve_categories(kind, root, categories)
    out = {}
    for c in cats:
        kept, skipped = readable_samples(_samples(kind, root, c, "test"), f"test (category {c})")
        out[c] = AnomalyDataset(kept, image_size, skipped)
    return out
