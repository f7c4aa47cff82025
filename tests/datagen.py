"""A tiny generated dataset in the MVTec-AD layout, and its session-scoped pytest fixture.

Two categories, drawn with numpy from a seed (nothing downloaded, nothing stored in the repository):

- ``stripes``: smooth diagonal stripes with a random phase and mild noise;
- ``disc``: a grey disc at a slightly varying place on a darker, noisy background.

Defects (test set only, with ``<stem>_mask.png`` ground truth, 0 / 255): ``spot`` (a bright or dark
ellipse) and ``scratch`` (a thin bright line). Normal test images come from the same process as the
training images. Layout: ``<root>/<category>/train/good/*.png``, ``test/{good,spot,scratch}/*.png``,
``ground_truth/{spot,scratch}/<stem>_mask.png``.

Use in a test module: ``from tests.datagen import tiny_mvtec  # noqa: F401`` (the fixture), or call
:func:`make_tiny_mvtec` directly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

CATEGORIES = ("stripes", "disc")
DEFECTS = ("spot", "scratch")
SIZE = 72  # written at 72 x 72: the loaders resize (to 64 in the tests)


def _normal(category: str, rng: np.random.Generator) -> np.ndarray:
    """One defect-free image, ``(SIZE, SIZE, 3)`` float in [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    if category == "stripes":
        phase = rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.25 * np.sin((x + y) * 2 * np.pi / 12 + phase)
        tint = np.array([0.9, 0.8, 0.6])
    else:
        cy, cx = SIZE / 2 + rng.uniform(-3, 3, 2)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < (SIZE * 0.33) ** 2
        base = np.where(inside, 0.6, 0.25)
        tint = np.array([0.7, 0.75, 0.9])
    img = base[..., None] * tint + rng.normal(0, 0.02, (SIZE, SIZE, 3))
    return np.clip(img, 0, 1)


def _defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a defect; returns the image and its boolean mask ``(SIZE, SIZE)``."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cy, cx = rng.uniform(SIZE * 0.25, SIZE * 0.75, 2)
    if kind == "spot":
        ry, rx = rng.uniform(5, 10, 2)
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        value = np.array([1.0, 1.0, 1.0]) if rng.random() < 0.5 else np.array([0.0, 0.05, 0.1])
    else:
        angle = rng.uniform(0, np.pi)
        dist = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
        along = np.abs((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle))
        mask = (dist <= 1.5) & (along <= rng.uniform(12, 20))
        value = np.array([1.0, 0.95, 0.2])
    out = img.copy()
    out[mask] = value
    return out, mask


def _save(arr: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def make_tiny_mvtec(root: str, n_train: int = 12, n_good: int = 4, n_defect: int = 3,
                    seed: int = 0) -> str:
    """Write the dataset under ``root`` (see the module docstring); returns ``root``.

    Args:
        root: output folder. n_train: normal training images per category. n_good: normal test
            images per category. n_defect: test images per defect type per category. seed: the seed.
    """
    rng = np.random.default_rng(seed)
    for category in CATEGORIES:
        base = os.path.join(root, category)
        for i in range(n_train):
            _save(_normal(category, rng), os.path.join(base, "train", "good", f"{i:03d}.png"))
        for i in range(n_good):
            _save(_normal(category, rng), os.path.join(base, "test", "good", f"{i:03d}.png"))
        for kind in DEFECTS:
            for i in range(n_defect):
                img, mask = _defect(_normal(category, rng), kind, rng)
                _save(img, os.path.join(base, "test", kind, f"{i:03d}.png"))
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    _mkdir(os.path.join(base, "ground_truth", kind, f"{i:03d}_mask.png")))
    return root


def _mkdir(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory) -> str:
    """The generated dataset's root (made once per session per importing module)."""
    return make_tiny_mvtec(str(tmp_path_factory.mktemp("tiny_mvtec")))
