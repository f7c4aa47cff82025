"""``mambaad train``: the authors' recipe, multi-class, one process or many (torchrun).

Recipe (SPEC "Training and evaluation"): one shuffled loader over the normal training images of every
chosen category; AdamW with lr 0.005 x (global batch) / 16, betas (0.9, 0.999), weight decay 1e-4 on
tensors of >= 2 dims that are not biases (and not marked ``_no_weight_decay``, as the scan module
marks its A_logs and Ds); the learning rate multiplied by 0.1 once, at 80 % of the steps; gradients
clipped to norm 5; loss 5 x MSE summed over the three scales. bf16 autocast on CUDA when ``amp``.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its shard of each epoch
(:class:`~torch.utils.data.DistributedSampler`, seeded) inside DistributedDataParallel: NCCL on
CUDA, gloo on the CPU. Only rank 0 writes (checkpoint, log, progress bar); the logged loss is the
mean over the ranks.

Resume (``--resume``): the checkpoint holds the weights, the optimizer, the position in the epoch and
every process's drop-path random stream (:mod:`mambaad.rng`); each epoch's data order and DataLoader
seed depend on ``(seed, epoch, rank)`` only. A run resumed from any checkpoint, SIGKILLed or not,
mid-epoch or at an epoch's end, logs the same losses and ends with the same weights as the run that
was never stopped, for one process and for several (same process count; tested with gloo on the
CPU), whatever ``--workers``. A checkpoint of another configuration is refused
(:func:`check_resumable`); ``--init-from`` fine-tunes from its weights instead.

Outputs in ``output``: ``last.pt`` (see :mod:`mambaad.checkpoint`; rewritten at every save, resumable
mid-epoch) and ``train_log.json`` (the run's settings and, per step, loss, learning rate, images/s;
``evals``: the evaluations during training). With ``eval_every`` (:mod:`mambaad.train_eval`):
``metrics_history.csv``, ``best.pt`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from .checkpoint import (RESUME_FIXED, RESUME_NOTED, load_checkpoint, model_overrides, resume_differences,
                         save_checkpoint)
from .data import DatasetError, build_train_set, resolve_categories
from .rng import ModelRNG, loader_generator
from .runconfig import ConfigError, TrainConfig, to_dict
from .runtime import distributed_env, select_device
from .train_eval import BEST_PT, TrainEvaluator, default_eval_every

BASE_LR = 0.005
# how long the other ranks wait for rank 0's evaluation (a gloo group of its own: NCCL's default
# timeout, 10 minutes, is shorter than an evaluation of a large test set)
EVAL_WAIT = datetime.timedelta(hours=6)
BASE_BATCH = 16
TFLITE_ENCODER = "mobilenetv2_tflite"


class _Skip(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (to resume inside an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay for trainable tensors of >= 2 dims that are not biases or marked
    ``_no_weight_decay``; none for the rest. Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and not name.endswith("bias") and not getattr(p, "_no_weight_decay", False):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, lr: float, step_at: float, gamma: float) -> float:
    """The step schedule: ``lr`` before ``round(step_at * total)`` steps, ``lr * gamma`` from there."""
    return lr if step < round(step_at * total) else lr * gamma


def _build_model(cfg: TrainConfig, source: dict[str, Any] | None, flag: str) -> nn.Module:
    """The model of ``cfg``, or of the checkpoint ``source`` (its architecture; ``flag`` names it)."""
    from . import create_model

    if source is not None:
        if source["model_name"] != cfg.model:
            raise ConfigError(f"{flag}: the checkpoint holds {source['model_name']!r}, not {cfg.model!r} "
                              f"(pass --model {source['model_name']})")
        encoder = source["model_config"].get("encoder")
        if cfg.encoder is not None and cfg.encoder != encoder:
            raise ConfigError(f"{flag}: the checkpoint's encoder is {encoder!r}, not {cfg.encoder!r}")
        overrides = model_overrides(source["model_config"])
        overrides["backend"] = cfg.backend
        return create_model(source["model_name"], **overrides)
    overrides = {k: getattr(cfg, k) for k in ("encoder", "encoder_weights") if getattr(cfg, k) is not None}
    overrides["backend"] = cfg.backend
    if cfg.pretrained is not None:
        overrides["pretrained"] = cfg.pretrained
    return create_model(cfg.model, **overrides)


def check_resumable(ckpt: dict[str, Any], path: str, cfg: TrainConfig, categories: list[str], world: int,
                    main: bool) -> None:
    """Refuse a checkpoint of another configuration (naming every difference); note allowed changes.

    Raises:
        ConfigError: weights only (no optimizer state), or a setting of
            :data:`mambaad.checkpoint.RESUME_FIXED` differs.
    """
    if "optimizer" not in ckpt or "step" not in ckpt:
        raise ConfigError(f"--resume: {path} holds weights only (no optimizer state and step), it cannot be "
                          f"resumed; to fine-tune from its weights pass --init-from {path}")
    run = {name: getattr(cfg, name) for name in RESUME_FIXED + RESUME_NOTED if hasattr(cfg, name)}
    run.update(categories=categories, world_size=world, betas=list(cfg.betas))
    refused, noted = resume_differences(ckpt, run)
    if refused:
        raise ConfigError(f"--resume: {path} comes from a different configuration ({'; '.join(refused)}); "
                          f"pass the checkpoint's values to continue that run, or fine-tune from its "
                          f"weights with --init-from {path} (new optimizer, step 0) and another --output")
    if noted and main:
        _log(f"note: resuming with changed settings ({'; '.join(noted)})")


def _resume_path(cfg: TrainConfig) -> str | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = os.path.join(cfg.output, "last.pt")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(cfg.resume):
        raise ConfigError(f"--resume: checkpoint not found: {cfg.resume}")
    return cfg.resume


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(cfg: TrainConfig) -> str:
    """Train a model as ``cfg`` says; returns the path of ``last.pt`` (on every rank).

    Args:
        cfg: the run configuration (see :class:`mambaad.runconfig.TrainConfig`).
    """
    cfg.check_required()
    rank, world, local_rank = distributed_env()
    device = select_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main = rank == 0
    try:
        return _train(cfg, rank, world, device, main)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, main: bool) -> str:
    resume = _resume_path(cfg)
    ckpt = load_checkpoint(resume) if resume else None
    categories = resolve_categories(cfg.dataset, cfg.root, cfg.categories)
    if ckpt is not None:
        check_resumable(ckpt, resume, cfg, categories, world, main)
    init = load_checkpoint(cfg.init_from) if ckpt is None and cfg.init_from else None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = _build_model(cfg, ckpt or init, "--resume" if ckpt is not None else "--init-from")
    if ckpt is not None or init is not None:
        model.load_state_dict((ckpt or init)["state_dict"], strict=True)
    model.to(device)
    if main and init is None and ckpt is None and not getattr(model.config, "pretrained", True) \
            and model.config.encoder != TFLITE_ENCODER:
        _log(f"note: encoder {model.config.encoder!r} has random weights (pass --pretrained for ImageNet "
             f"weights through timm; offline: --encoder {TFLITE_ENCODER})")
    if main and ckpt is not None and cfg.init_from:
        _log(f"note: --init-from {cfg.init_from} ignored: resuming the run of {resume}")

    dataset = build_train_set(cfg.dataset, cfg.root, categories, cfg.image_size)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    shard = len(sampler)
    drop_last = shard >= cfg.batch_size
    steps_per_epoch = shard // cfg.batch_size if drop_last else 1
    total = cfg.iterations if cfg.iterations is not None else cfg.epochs * steps_per_epoch
    global_batch = cfg.batch_size * world
    lr = cfg.lr if cfg.lr is not None else BASE_LR * global_batch / BASE_BATCH

    epochs_total = math.ceil(total / steps_per_epoch)
    eval_every = cfg.eval_every if cfg.eval_every is not None else default_eval_every(epochs_total)

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=cfg.betas)
    step, epoch, epoch_step = 0, 0, 0
    model_rng = ModelRNG(cfg.seed, rank, device)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, epoch_step = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["epoch_step"])
        states = ckpt.get("rng", {}).get("model")
        if states is None or not model_rng.load_state_dict(states[rank]):
            if main:
                _log("note: the checkpoint holds no drop-path random state for this device (an older "
                     "version, or trained on another device type): the draws restart from the seed and "
                     "the run does not continue exactly")
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    trainable = [p for p in model.parameters() if p.requires_grad]

    from . import reconstruction_loss

    log_path = os.path.join(cfg.output, "train_log.json")
    last_path = os.path.join(cfg.output, "last.pt")
    steps_log: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    if main:
        os.makedirs(cfg.output, exist_ok=True)
        if ckpt is not None and os.path.isfile(log_path):
            with open(log_path) as f:
                kept = json.load(f)
            steps_log = [s for s in kept.get("steps", []) if s["step"] <= step]
            evals = [e for e in kept.get("evals", []) if e["step"] <= step]
    evaluator = None
    last_eval_step = int(ckpt.get("last_eval_step") or 0) if ckpt is not None else 0
    if eval_every:
        try:
            evaluator = TrainEvaluator(cfg, categories, device, evals, ckpt.get("best") if ckpt else None)
        except DatasetError as err:
            if cfg.eval_every is not None:
                raise DatasetError(f"--eval-every {cfg.eval_every}: {err} (pass --eval-root, or "
                                   "--eval-every 0)") from err
            if main:
                _log(f"note: no evaluation during training ({err}); --eval-every 0 silences this note")
    wait_group = None
    if evaluator is not None and world > 1:
        wait_group = dist.new_group(backend="gloo", timeout=EVAL_WAIT)
    if main:
        _log(f"training {model.model_name} on {len(dataset)} images of {len(categories)} "
             f"categor{'ies' if len(categories) > 1 else 'y'} ({', '.join(categories)}); {total} steps "
             f"of {global_batch} images "
             f"({world} process{'es' if world > 1 else ''}, {device}), lr {lr:g}"
             + (f"; resumed from {resume} at step {step}" if ckpt is not None else "")
             + (f"; weights from {cfg.init_from}" if init is not None else "")
             + (f"; evaluating every {eval_every} epoch{'s' if eval_every > 1 else ''} on the test split "
                f"of {cfg.eval_root or cfg.root}, best.pt by {cfg.select_by}"
                if evaluator is not None else ""))
        if dataset.skipped:
            _log(f"skipped {len(dataset.skipped)} unreadable training image(s) (listed in {log_path})")

    def payload() -> dict[str, Any]:
        return {"model_name": model.model_name, "model_config": _plain(model.config),
                "state_dict": model.state_dict(), "step": step, "epoch": epoch, "epoch_step": epoch_step,
                "train_config": to_dict(cfg), "image_size": cfg.image_size, "dataset": cfg.dataset,
                "categories": categories, "world_size": world, "lr": lr, "total_steps": total,
                "best": evaluator.best if evaluator else None, "last_eval_step": last_eval_step}

    def write_log() -> None:
        _write_json(log_path, {"model": model.model_name, "world_size": world, "global_batch": global_batch,
                               "lr": lr, "total_steps": total, "steps_per_epoch": steps_per_epoch,
                               "categories": categories, "config": to_dict(cfg),
                               "skipped_images": [{"path": p, "error": e} for p, e in dataset.skipped],
                               "steps": steps_log, "evals": evaluator.history if evaluator else evals})

    def save() -> None:
        # every rank's drop-path stream goes into the checkpoint: a resumed run of the same world
        # size continues exactly
        rng_states = [model_rng.state_dict()]
        if world > 1:
            rng_states = [None] * world
            dist.all_gather_object(rng_states, model_rng.state_dict())
        if not main:
            return
        # the log first: a kill between the two writes leaves a log that covers the checkpoint
        write_log()
        save_checkpoint(last_path, {**payload(), "optimizer": optimizer.state_dict(),
                                    "rng": {"model": rng_states}})

    def run_eval() -> None:
        """Rank 0 evaluates (the plain model: no collective inside), the other ranks wait."""
        nonlocal saved_at, last_eval_step
        if main:
            since = evaluator.history[-1]["step"] if evaluator.history else 0
            recent = [s["loss"] for s in steps_log if s["step"] > since]
            entry = evaluator.evaluate(model, step / steps_per_epoch, step,
                                       sum(recent) / len(recent) if recent else float("nan"))
            if entry["best"]:
                save_checkpoint(os.path.join(cfg.output, BEST_PT),
                                {**payload(), "eval_metrics": entry["metrics"]})
            bar.write(evaluator.summary(entry), file=sys.stderr)
            write_log()
            evaluator.write(steps_log, steps_per_epoch)
        if world > 1:
            dist.barrier(group=wait_group)
        saved_at = -1  # last.pt must now record the new best and history
        last_eval_step = step

    amp = cfg.amp and device.type == "cuda"
    bar = tqdm(total=total, initial=step, disable=not main, desc="train", unit="step", dynamic_ncols=True)
    ddp.train()
    speed = None
    saved_at = step if ckpt is not None else -1
    while step < total:
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=cfg.batch_size,
                            sampler=_Skip(sampler, epoch_step * cfg.batch_size), drop_last=drop_last,
                            num_workers=cfg.workers, pin_memory=device.type == "cuda",
                            generator=loader_generator(cfg.seed, epoch, rank))
        tick = time.perf_counter()
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            current_lr = lr_at(step, total, lr, cfg.lr_step_at, cfg.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            with model_rng.active():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    enc, dec = ddp(images)
                    loss = reconstruction_loss(enc, dec, cfg.loss_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            optimizer.step()
            value = loss.detach().float()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            value = float(value)
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss is {value} at step {step + 1}; lower --lr or check "
                                         "the data")
            step += 1
            epoch_step += 1
            now = time.perf_counter()
            ips = global_batch / max(now - tick, 1e-9)
            tick = now
            speed = ips if speed is None else 0.9 * speed + 0.1 * ips
            steps_log.append({"step": step, "epoch": epoch, "loss": value, "lr": current_lr,
                              "images_per_s": round(ips, 3)})
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{speed:.1f}", epoch=epoch)
            if epoch_step >= steps_per_epoch:
                epoch, epoch_step = epoch + 1, 0
                if evaluator is not None and epoch % eval_every == 0:
                    run_eval()
                if not cfg.save_every:
                    save()
                    saved_at = step
            if cfg.save_every and step % cfg.save_every == 0:
                save()
                saved_at = step
            if step >= total or epoch_step == 0:
                break
    if evaluator is not None and last_eval_step != step:
        run_eval()  # the end of training, when no periodic evaluation fell on it
    bar.close()
    if saved_at != step:
        save()
    if world > 1:
        dist.barrier()  # rank 0 has written last.pt
    if main:
        last = steps_log[-1]["loss"] if steps_log else float("nan")
        _log(f"done: {step} steps, last loss {last:.4f}; wrote {last_path} and {log_path}")
    return last_path


def _plain(config: Any) -> dict[str, Any]:
    """``asdict`` of a model config (kept as tuples: ``create_model`` takes it back whole)."""
    return dataclasses.asdict(config)
