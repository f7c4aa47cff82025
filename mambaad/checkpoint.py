"""Checkpoints of ``mambaad train``: what they hold, atomic writes, rebuilding the model.

A checkpoint (``torch.save`` of a dict, loadable with ``weights_only=True``) holds:

- ``format`` (``"mambaad-checkpoint"``), ``version``;
- ``model_name`` and ``model_config`` (``dataclasses.asdict(model.config)``): enough to rebuild the
  model with :func:`mambaad.create_model`; ``state_dict``: all of its weights, the frozen encoder's
  too, so that no download or weight file is needed to use it;
- ``train_config`` (the :class:`mambaad.runconfig.TrainConfig` as a dict), ``image_size``,
  ``dataset``, ``categories``;
- for resuming: ``optimizer``, ``step``, ``epoch``, ``epoch_step`` (batches of the current epoch
  already done), ``world_size``, ``rng`` (``{"model": [one :meth:`mambaad.rng.ModelRNG.state_dict`
  per rank]}``, version 2; version 1 held ``torch_rng`` instead), ``best`` (the evaluation-during-training
  state: metric, value, epoch, step);
- written by ``mambaad eval``: ``thresholds`` (``{"image": {category: t, "all": t},
  "pixel": {...}}``, F1-max thresholds, score >= t is anomalous), ``map_range`` (the 0.1 and
  99.9 percentiles of the evaluated maps, for heat-map colours) and ``metrics``.

Versions: 2 (this one) holds maps, scores and thresholds on the authors' scale (the sum over the
three scales divided by 9, see :mod:`mambaad.anomaly`) and the per-rank random streams; version 1
held the maps undivided, so :func:`load_checkpoint` divides a version-1 checkpoint's ``thresholds``
and ``map_range`` by 9 (and marks it version 2; its missing ``rng`` still tells a resumed run that it
cannot continue exactly).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from typing import Any

import torch
import torch.nn as nn

FORMAT = "mambaad-checkpoint"
VERSION = 2
_V1_MAP_FACTOR = 9.0  # version 1's maps: the sum over 3 scales; version 2: that sum / (3 x 3 unit weights)

# Settings a resumed run must share with its checkpoint (they define the model, the data it sees and
# the order it sees it in); a different value is refused (``--init-from`` fine-tunes instead).
RESUME_FIXED = ("model", "encoder", "dataset", "categories", "image_size", "batch_size", "world_size", "seed")
# Settings that may change on resume (reported): the schedule follows the new length, the rest applies
# from the first resumed step.
RESUME_NOTED = ("epochs", "iterations", "lr", "betas", "weight_decay", "lr_step_at", "lr_gamma", "clip_grad",
                "loss_weight", "amp", "root", "eval_every", "eval_root", "select_by")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of ``mambaad train`` (the message names it)."""


def save_checkpoint(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint of ``mambaad train`` (on the CPU), or released MambaAD weights, from a file or
    from the Hugging Face Hub.

    ``path`` may name a Hub file, ``hf://<owner>/<repo>[@<revision>]/<path/in/repo>``, fetched through
    the Hub cache (``HF_HUB_OFFLINE=1``: the cache only; see :mod:`mambaad.hub`). A file that is not one
    of our checkpoints but holds a MambaAD state dict (the authors' released weights in either naming,
    see :func:`mambaad.checkpoint_naming`, or ours; bare or under ``net`` / ``state_dict`` / ``model``)
    is read as weights of the paper's model ``mambaad`` (resnet34, trained at 256 x 256), which they must
    fit strictly, and returned as a checkpoint of it without dataset, categories or thresholds, its
    ``converted_from`` entry naming ``path``.

    Raises:
        FileNotFoundError: no such file (:class:`mambaad.hub.HubError` for a Hub file that cannot be
            fetched). CheckpointError: not one of our checkpoints, nor MambaAD weights that fit.
    """
    from .hub import resolve

    local = resolve(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of many kinds
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        return _from_state_dict(ckpt, path)
    for key in ("model_name", "model_config", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    version = ckpt.get("version")
    if version == 1:
        _rescale_v1(ckpt)
    elif version != VERSION:
        raise CheckpointError(f"checkpoint {path} has version {version!r}; this package reads 1 and {VERSION}")
    return ckpt


PAPER_MODEL = "mambaad"  # the model of the authors' released weights
PAPER_IMAGE_SIZE = 256


def _from_state_dict(obj: Any, path: str) -> dict[str, Any]:
    """Released weights (a bare or wrapped MambaAD state dict) as a checkpoint of the paper's model."""
    from . import create_model, load_pretrained
    from .model import _unwrap, checkpoint_naming

    try:
        naming = checkpoint_naming(_unwrap(obj))
    except ValueError as err:
        raise CheckpointError(f"{path} is not a mambaad train checkpoint (no format={FORMAT!r} entry), nor "
                              f"MambaAD weights: {err}") from err
    model = create_model(PAPER_MODEL, pretrained=False)
    try:
        load_pretrained(model, obj, strict=True)
    except ValueError as err:
        raise CheckpointError(f"{path} holds MambaAD weights ({naming} naming) that do not fit the paper's "
                              f"model {PAPER_MODEL!r}: {err}") from err
    return {"format": FORMAT, "version": VERSION, "model_name": PAPER_MODEL,
            "model_config": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
            "image_size": PAPER_IMAGE_SIZE, "converted_from": str(path)}


def _rescale_v1(ckpt: dict[str, Any]) -> None:
    """Bring a version-1 checkpoint's thresholds and map ranges to the authors' map scale."""
    for kind in ckpt.get("thresholds", {}).values():
        for name, value in kind.items():
            kind[name] = value / _V1_MAP_FACTOR
    for name, (lo, hi) in ckpt.get("map_range", {}).items():
        ckpt["map_range"][name] = [lo / _V1_MAP_FACTOR, hi / _V1_MAP_FACTOR]
    ckpt["version"] = VERSION


def resume_differences(ckpt: dict[str, Any], run: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What differs between a checkpoint's run and this one.

    Args:
        ckpt: from :func:`load_checkpoint`.
        run: this run's ``RESUME_FIXED`` and ``RESUME_NOTED`` values (``encoder`` None: the model's own;
            ``categories`` resolved to a list).

    Returns:
        ``(refused, noted)``: ``"name: checkpoint X, this run Y"`` for each differing setting of
        ``RESUME_FIXED`` and of ``RESUME_NOTED``.
    """
    trained = dict(ckpt.get("train_config", {}))
    trained.update(model=ckpt["model_name"], encoder=ckpt["model_config"].get("encoder"),
                   categories=ckpt.get("categories"), image_size=ckpt.get("image_size"),
                   dataset=ckpt.get("dataset"), world_size=ckpt.get("world_size"))
    if run.get("encoder") is None:
        run = {**run, "encoder": trained["encoder"]}

    def differ(names: tuple[str, ...]) -> list[str]:
        out = []
        for name in names:
            old, new = trained.get(name), run.get(name)
            if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
                same = list(old) == list(new)
            else:
                same = old == new
            if not same:
                out.append(f"{name}: checkpoint {old!r}, this run {new!r}")
        return out

    return differ(RESUME_FIXED), differ(RESUME_NOTED)


def model_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``model_config`` as ``create_model`` overrides: encoder weights come from the
    state dict, so nothing is downloaded (``pretrained=False``)."""
    out = copy.deepcopy(config)
    out["pretrained"] = False
    return out


def build_model(ckpt: dict[str, Any], backend: str | None = None,
                device: torch.device | str = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode on ``device``.

    Args:
        ckpt: from :func:`load_checkpoint`.
        backend: scan backend to run on (None: the best available for ``device``; the backend of
            training is not reused, it may not exist here, and every backend computes the same scan).
        device: where to put it.
    """
    from . import create_model, load_pretrained

    overrides = model_overrides(ckpt["model_config"])
    overrides["backend"] = backend
    model = create_model(ckpt["model_name"], **overrides)
    load_pretrained(model, ckpt["state_dict"], strict=True)
    return model.to(device).eval()
