"""Run configurations of ``mambaad train / eval / predict / export``: dataclasses, file loading, merging.

A run's settings come from three layers, later ones winning: the dataclass defaults, a YAML or JSON
file (``--config FILE``, a mapping of field names; ``-`` and ``_`` alike), and the command-line flags
given. Unknown keys raise, with the valid ones listed: a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .data import DATASET_KINDS

T = TypeVar("T")


class ConfigError(ValueError):
    """A run configuration that cannot be used (unknown key, bad value, missing field)."""


def _categories(value: Any) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` to a list; None, ``""`` and ``"all"`` to None (all categories)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    value = [str(c) for c in value]
    return None if not value or value == ["all"] else value


def _check_dataset(kind: str | None, allow_none: bool = False) -> None:
    if kind is None and allow_none:
        return
    if kind not in DATASET_KINDS:
        raise ConfigError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASET_KINDS)}")


def _check_image_size(size: int | None) -> None:
    if size is not None and (size < 64 or size % 32):
        raise ConfigError(f"image_size must be a multiple of 32 and at least 64, got {size}")


def selection_keys(select_by: str) -> list[str]:
    """The metric keys of a ``select_by`` expression (``"i_auroc+p_auroc"`` -> both keys).

    Raises:
        ConfigError: an empty expression or a key that is not a metric.
    """
    from .metrics import ALL_KEYS

    keys = [k.strip() for k in str(select_by).split("+")]
    bad = [k for k in keys if k not in ALL_KEYS]
    if bad:
        raise ConfigError(f"select_by {select_by!r}: unknown metric(s) {', '.join(map(repr, bad))}; use "
                          f"one of {', '.join(ALL_KEYS)} or a sum joined by '+'")
    return keys


@dataclass
class TrainConfig:
    """``mambaad train``: the authors' recipe as defaults (SPEC "Training and evaluation").

    Attributes:
        root: dataset root folder. dataset: its layout (``mvtec, visa, realiad, folder,
            magnetic_tile``). categories: the categories to train on together (None: all).
        output: folder for ``last.pt`` and ``train_log.json``.
        model: registered model name (``mambaad``, ``mambaad_test``, ...).
        encoder, encoder_weights, pretrained: override the model's encoder (None: the model's own).
        backend: scan backend (None: the best available).
        image_size: side of the square inputs (multiple of 32).
        epochs: passes over the training set; iterations: optimiser steps instead (wins if set).
        batch_size: images per step per process.
        lr: learning rate; None: 0.005 x (global batch) / 16.
        betas, weight_decay: AdamW's; decay applies to tensors of >= 2 dims that are not biases.
        lr_step_at, lr_gamma: the learning rate is multiplied by ``lr_gamma`` once, at this fraction
            of the steps.
        clip_grad: gradient-norm clip. loss_weight: the MSE weight.
        seed: seeds the weights and the data order. amp: bf16 autocast on CUDA (ignored on CPU).
        workers: data-loading processes per training process. device: ``cuda``, ``cpu`` or None
            (CUDA when there is one).
        save_every: checkpoint every this many steps (0: at each epoch's end); always at the end.
        resume: a checkpoint to continue from, or ``"auto"`` (``output/last.pt`` if it exists). It must
            come from the same configuration (model, encoder, dataset, categories, image size, batch
            size, process count, seed), else it is refused naming the differences.
        init_from: a checkpoint whose weights start this run (fine-tuning: new optimizer, step 0, any
            data and image size); ignored when ``resume`` finds a checkpoint.
        log_every: tqdm refresh period in steps.
        eval_every: evaluate on the test split every this many epochs (and at the end); None: a tenth
            of the epochs (at least 1), as the authors' trainer; 0: off.
        eval_root: root of the test split (None: ``root``; same layout and categories).
        select_by: the mean metric that picks ``best.pt``: a key of
            :data:`mambaad.metrics.ALL_KEYS` or a sum of them joined by ``+`` (higher is better).
    """

    root: str = ""
    dataset: str = "mvtec"
    categories: list[str] | None = None
    output: str = ""
    model: str = "mambaad"
    encoder: str | None = None
    encoder_weights: str | None = None
    pretrained: bool | None = None
    backend: str | None = None
    image_size: int = 256
    epochs: int = 500
    iterations: int | None = None
    batch_size: int = 16
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    lr_step_at: float = 0.8
    lr_gamma: float = 0.1
    clip_grad: float = 5.0
    loss_weight: float = 5.0
    seed: int = 0
    amp: bool = True
    workers: int = 2
    device: str | None = None
    save_every: int = 0
    resume: str | None = None
    init_from: str | None = None
    log_every: int = 1
    eval_every: int | None = None
    eval_root: str | None = None
    select_by: str = "i_auroc+p_auroc"

    def __post_init__(self) -> None:
        self.categories = _categories(self.categories)
        self.betas = tuple(float(b) for b in self.betas)
        _check_dataset(self.dataset)
        _check_image_size(self.image_size)
        if len(self.betas) != 2:
            raise ConfigError(f"betas needs two values, got {self.betas}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.iterations is not None and self.iterations <= 0:
            raise ConfigError(f"iterations must be positive, got {self.iterations}")
        if not 0.0 < self.lr_step_at <= 1.0:
            raise ConfigError(f"lr_step_at must be in (0, 1], got {self.lr_step_at}")
        if self.workers < 0 or self.save_every < 0 or self.log_every <= 0:
            raise ConfigError("workers and save_every must be >= 0, log_every > 0")
        if self.eval_every is not None and self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: off), got {self.eval_every}")
        selection_keys(self.select_by)

    def check_required(self) -> None:
        """Raise unless ``root`` and ``output`` are set."""
        missing = [n for n in ("root", "output") if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join('--' + m for m in missing)}")


@dataclass
class EvalConfig:
    """``mambaad eval``: the seven metrics per category and their mean.

    Attributes:
        checkpoint: a ``last.pt`` of ``mambaad train``.
        root, dataset, categories, image_size: the test data (None: as the checkpoint was trained).
        output: folder for ``metrics.json``, ``metrics.csv`` and the figures.
        batch_size, workers, device, backend: as for training.
        save_maps: figures of the N worst and N best images per category (0: none).
        exact: keep the maps and compute the pixel metrics exactly (memory grows with the test set);
            default: the streaming histogram of :class:`mambaad.metrics.PixelHistogram`.
        bins: histogram bins of the streaming pixel metrics.
        store_threshold: write the F1-max thresholds into the checkpoint (for ``predict``).
    """

    checkpoint: str = ""
    root: str | None = None
    dataset: str | None = None
    categories: list[str] | None = None
    output: str = ""
    image_size: int | None = None
    batch_size: int = 8
    workers: int = 2
    device: str | None = None
    backend: str | None = None
    save_maps: int = 0
    exact: bool = False
    bins: int = 1 << 18
    store_threshold: bool = True

    def __post_init__(self) -> None:
        self.categories = _categories(self.categories)
        _check_dataset(self.dataset, allow_none=True)
        _check_image_size(self.image_size)
        if self.batch_size <= 0 or self.workers < 0 or self.save_maps < 0:
            raise ConfigError("batch_size must be positive, workers and save_maps >= 0")

    def check_required(self) -> None:
        """Raise unless ``checkpoint`` and ``output`` are set."""
        missing = [n for n in ("checkpoint", "output") if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join('--' + m for m in missing)}")


@dataclass
class PredictConfig:
    """``mambaad predict``: score images, write heat maps, call them normal or anomalous.

    Attributes:
        checkpoint: a checkpoint (evaluated, for the stored threshold).
        model: a file of ``mambaad export`` instead of ``checkpoint``: a ``.pt2`` program, an
            ``.onnx`` file (run with onnxruntime) or an OpenVINO ``.xml`` (run with OpenVINO).
        images: image files or folders of images.
        output: folder for ``predictions.json``, ``predictions.csv`` and the heat maps.
        threshold: image-score threshold; None: the checkpoint's F1-max threshold (of ``category``
            when given and stored, else of all evaluated categories together).
        category: whose stored threshold to use.
        image_size, batch_size, device, backend: None: as trained / the defaults (an exported
            program runs at its trained size on the CPU, on the backend it was exported with).
        strict: fail (after writing every result) when any image cannot be read; by default such
            images are skipped with a warning and listed with their error.
    """

    checkpoint: str = ""
    model: str = ""
    images: list[str] = field(default_factory=list)
    output: str = ""
    threshold: float | None = None
    category: str | None = None
    image_size: int | None = None
    batch_size: int = 8
    device: str | None = None
    backend: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        self.images = [self.images] if isinstance(self.images, str) else list(self.images)
        _check_image_size(self.image_size)
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")

    def check_required(self) -> None:
        """Raise unless exactly one of ``checkpoint`` and ``model``, ``output`` and an image are set."""
        if self.checkpoint and self.model:
            raise ConfigError("give --checkpoint or --model, not both")
        missing = [n for n in ("output", "images") if not getattr(self, n)]
        if not self.checkpoint and not self.model:
            missing.insert(0, "checkpoint (or model)")
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")


EXPORT_FORMATS = {".pt2": "pt2", ".onnx": "onnx", ".xml": "openvino"}  # output suffix -> format


@dataclass
class ExportConfig:
    """``mambaad export``: a checkpoint as a ``.pt2`` program, an ONNX file or an OpenVINO model (see
    :mod:`mambaad.export` and :mod:`mambaad.deploy`).

    Attributes:
        checkpoint: a checkpoint of ``mambaad train`` (evaluated ones carry their thresholds along).
        output: the file to write: ``.pt2``, ``.onnx``, or the ``.xml`` of an OpenVINO model (its
            ``.bin`` goes beside it).
        format: ``pt2``, ``onnx`` or ``openvino``; None: from the output's suffix (``.pt2``,
            ``.onnx``, ``.xml``), else ``pt2``.
    """

    checkpoint: str = ""
    output: str = ""
    format: str | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in EXPORT_FORMATS.values():
            raise ConfigError(f"unknown export format {self.format!r}; choose one of "
                              f"{', '.join(EXPORT_FORMATS.values())}")

    def output_format(self) -> str:
        """The format to write: ``format``, else the output suffix's, else ``pt2``.

        Raises:
            ConfigError: a format whose usual suffix the output does not have while it has another
                format's (``--format onnx --output m.pt2``), or OpenVINO without ``.xml``.
        """
        suffix = os.path.splitext(self.output)[1].lower()
        by_suffix = EXPORT_FORMATS.get(suffix)
        fmt = self.format or by_suffix or "pt2"
        if by_suffix and by_suffix != fmt:
            raise ConfigError(f"--format {fmt} does not match the output {self.output} (a {by_suffix} "
                              "suffix): change one of them")
        if fmt == "openvino" and suffix != ".xml":
            raise ConfigError(f"an OpenVINO model is an .xml file with a .bin beside it: name the output "
                              f"FILE.xml, not {self.output}")
        return fmt

    def check_required(self) -> None:
        """Raise unless ``checkpoint`` and ``output`` are set (and fit the format)."""
        missing = [n for n in ("checkpoint", "output") if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join('--' + m for m in missing)}")
        self.output_format()


def field_names(cls: type) -> list[str]:
    """The settable fields of a config dataclass."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def load_file(path: str) -> dict[str, Any]:
    """A YAML (``.yaml``, ``.yml``) or JSON file holding a mapping of settings."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        text = f.read()
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml and json raise their own error types
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def build_config(cls: type[T], file_values: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None, source: str = "config") -> T:
    """``cls`` from its defaults, then ``file_values``, then ``overrides``.

    Args:
        cls: :class:`TrainConfig`, :class:`EvalConfig`, :class:`PredictConfig` or :class:`ExportConfig`.
        file_values: settings from a file (keys with ``-`` or ``_``).
        overrides: settings from the command line (already field names).
        source: how to name ``file_values`` in error messages.

    Raises:
        ConfigError: an unknown key or a value the dataclass rejects.
    """
    names = field_names(cls)
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"unknown setting {key!r} in {source}; valid settings: {', '.join(names)}")
        values[name] = value
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}; valid settings: {', '.join(names)}")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
