"""Anomaly-detection datasets: MVTec-AD, VisA, Real-IAD, a generic folder tree, Magnetic Tile.

Multi-class setting (the paper's): :func:`build_train_set` gives one training set over the normal
images of all chosen categories; :func:`build_test_sets` one test set per category. Items are dicts
with ``image (3, S, S)``, ``mask (1, S, S)`` in {0, 1}, ``label``, ``category``, ``defect``, ``path``,
``has_mask``.
"""

from .dataset import (AnomalyDataset, available_categories, build_test_sets, build_train_set,
                      readable_samples, resolve_categories)
from .layouts import LAYOUTS, Sample
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, DatasetError, ImageDecodeError, UnreadableImageWarning,
                         decode_image, denormalize, load_image, load_mask, normalize)

DATASET_KINDS = tuple(LAYOUTS)

__all__ = ["AnomalyDataset", "DATASET_KINDS", "DatasetError", "IMAGENET_MEAN", "IMAGENET_STD",
           "ImageDecodeError", "LAYOUTS", "Sample", "UnreadableImageWarning", "available_categories",
           "build_test_sets", "build_train_set", "decode_image", "denormalize", "load_image", "load_mask",
           "normalize", "readable_samples", "resolve_categories"]
