"""The dataset class and the multi-class builders: one training set, one test set per category."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from .layouts import LAYOUTS, Sample
from .transforms import DatasetError, empty_mask, load_image, load_mask


class AnomalyDataset(Dataset):
    """Images (and ground-truth masks) of one split, read and resized on access.

    Args:
        samples: the images, from a layout (:data:`mambaad.data.layouts.LAYOUTS`).
        image_size: side S of the square the images and masks are resized to.

    Each item is a dict:
        ``image``: ``(3, S, S)`` float32, ImageNet-normalised;
        ``mask``: ``(1, S, S)`` float32 in {0, 1} (zeros for normal images);
        ``label``: int, 0 normal / 1 anomalous; ``category``: str; ``defect``: str; ``path``: str;
        ``has_mask``: bool, False when the pixel ground truth of an anomalous image is unknown.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int):
        if not samples:
            raise DatasetError("a dataset needs at least one image")
        self.samples = list(samples)
        self.image_size = int(image_size)

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


def build_train_set(kind: str, root: str, categories: Sequence[str] | str | None,
                    image_size: int) -> AnomalyDataset:
    """The multi-class training set: the normal training images of every chosen category.

    Args:
        kind: dataset kind; root: its root folder; categories: see :func:`resolve_categories`.
        image_size: side S of the resized images.

    Returns:
        One :class:`AnomalyDataset` over all chosen categories (the paper's unified setting).
    """
    cats = resolve_categories(kind, root, categories)
    return AnomalyDataset([s for c in cats for s in _samples(kind, root, c, "train")], image_size)


def build_test_sets(kind: str, root: str, categories: Sequence[str] | str | None,
                    image_size: int) -> dict[str, AnomalyDataset]:
    """One test set per chosen category (normal and anomalous images, with masks).

    Returns:
        ``{category: AnomalyDataset}`` in category order.
    """
    cats = resolve_categories(kind, root, categories)
    return {c: AnomalyDataset(_samples(kind, root, c, "test"), image_size) for c in cats}
