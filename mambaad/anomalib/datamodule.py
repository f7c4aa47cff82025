"""Multi-class training in anomalib: several one-category datamodules as one (the paper's setting).

anomalib's datamodules (``MVTecAD``, ``VisA``, ``Folder``, ...) hold one category each. MambaAD is
trained on the normal images of every category at once and tested per category, the metrics then
averaged. :class:`MultiCategory` concatenates the train, validation and test sets of its member
datamodules (each split as its own settings say); :func:`evaluate_per_category` runs ``Engine.test``
on each member and adds the mean, as the paper's tables report::

    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from mambaad.anomalib import MambaAD, MultiCategory, evaluate_per_category

    data = MultiCategory([MVTecAD(root, category=c) for c in ("bottle", "cable", "capsule")],
                         train_batch_size=16)
    engine = Engine(max_epochs=500)
    engine.fit(MambaAD(), datamodule=data)
    table = evaluate_per_category(engine, engine.model, data)   # {"bottle": {...}, ..., "mean": {...}}
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pandas as pd
from torchvision.transforms.v2 import Transform

from anomalib.data import AnomalibDataModule


class MultiCategory(AnomalibDataModule):
    """The union of several anomalib datamodules: one training set over all their categories.

    Each member splits its own data first (its ``val_split_mode``, ``test_split_mode`` and seed); the
    train, validation and test sets are then the concatenations of the members' (a member without a
    validation set adds none). The model's resize is applied per image, in the datasets, as anomalib
    does for one category, so categories of different image sizes batch together.

    Args:
        datamodules: the members, e.g. ``[MVTecAD(root, category=c) for c in categories]``; their
            datasets may be of different classes (``MVTecAD`` with ``Folder``); their own batch sizes,
            workers and augmentations are not used.
        train_batch_size, eval_batch_size, num_workers: of this datamodule's loaders (None: the first
            member's).
        train_augmentations, val_augmentations, test_augmentations, augmentations: as anomalib's
            (applied to the concatenated sets).

    Attributes:
        datamodules: the members. category: their categories joined by ``+``.
    """

    def __init__(self, datamodules: Sequence[AnomalibDataModule], train_batch_size: int | None = None,
                 eval_batch_size: int | None = None, num_workers: int | None = None,
                 train_augmentations: Transform | None = None, val_augmentations: Transform | None = None,
                 test_augmentations: Transform | None = None, augmentations: Transform | None = None) -> None:
        members = list(datamodules)
        if not members or not all(isinstance(m, AnomalibDataModule) for m in members):
            raise ValueError("MultiCategory needs one or more anomalib datamodules")
        first = members[0]
        super().__init__(
            train_batch_size=train_batch_size if train_batch_size is not None else first.train_batch_size,
            eval_batch_size=eval_batch_size if eval_batch_size is not None else first.eval_batch_size,
            num_workers=num_workers if num_workers is not None else first.num_workers,
            train_augmentations=train_augmentations, val_augmentations=val_augmentations,
            test_augmentations=test_augmentations, augmentations=augmentations)
        self.datamodules = members
        names = [category_name(m) for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"MultiCategory: two members have the same category: {names}")
        self.category = "+".join(names)

    def prepare_data(self) -> None:
        """Each member's (anomalib's datamodules download missing datasets here)."""
        for member in self.datamodules:
            member.prepare_data()

    def _setup(self, _stage: str | None = None) -> None:
        """Set up every member, then concatenate their sets."""
        for member in self.datamodules:
            member.setup(_stage)
        for split in ("train", "val", "test"):
            sets = [getattr(m, f"{split}_data") for m in self.datamodules if hasattr(m, f"{split}_data")]
            if sets:
                setattr(self, f"{split}_data", concat_datasets(sets))

    def _create_test_split(self) -> None:
        """Nothing: the members made theirs."""

    def _create_val_split(self) -> None:
        """Nothing: the members made theirs."""


def category_name(datamodule: AnomalibDataModule) -> str:
    """A member's category (``Folder``'s ``name`` when it has no category)."""
    return str(datamodule.category or getattr(datamodule, "_name", "") or datamodule.name)


def concat_datasets(datasets: Sequence[Any]) -> Any:
    """One anomalib dataset holding the samples of all ``datasets``, in the class of the first.

    The samples tables are concatenated (a mask path missing in some is empty: no mask); the task is
    segmentation when every set is, else classification.

    Raises:
        ValueError: no dataset given.
    """
    if not datasets:
        raise ValueError("no dataset to concatenate")
    out = copy.deepcopy(datasets[0])
    samples = pd.concat([d.samples for d in datasets], ignore_index=True)
    if "mask_path" in samples.columns:
        samples["mask_path"] = samples["mask_path"].fillna("")
    tasks = {str(d.samples.attrs.get("task", "")) for d in datasets}
    samples.attrs["task"] = "segmentation" if tasks == {"segmentation"} else "classification"
    out.samples = samples
    return out


def evaluate_per_category(engine: Any, model: Any, datamodule: MultiCategory,
                          **kwargs: Any) -> dict[str, dict[str, float]]:
    """``engine.test`` on each member of ``datamodule``, then the plain mean over the categories.

    Args:
        engine: an anomalib ``Engine`` (after ``fit``). model: the trained model.
        datamodule: the :class:`MultiCategory` trained on.
        **kwargs: passed to ``engine.test`` (``verbose`` defaults to False).

    Returns:
        ``{category: {metric: value}, ..., "mean": {metric: mean}}``, the metrics as anomalib names
        them (``image_AUROC``, ``pixel_AUPRO``, ...); a metric missing for some category is left out
        of the mean.
    """
    kwargs.setdefault("verbose", False)
    table: dict[str, dict] = {}
    for member in datamodule.datamodules:
        results = engine.test(model=model, datamodule=member, **kwargs)
        table[category_name(member)] = {k: float(v) for r in results for k, v in r.items()}
    keys = [k for k in next(iter(table.values())) if all(k in row for row in table.values())]
    table["mean"] = {k: sum(row[k] for row in table.values()) / len(table) for k in keys}
    return table
