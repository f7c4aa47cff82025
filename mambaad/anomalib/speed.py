"""Training speed of the anomalib loop against ``mambaad train``, same model, data and batch, side by side.

``python -m mambaad.anomalib.speed --root DIR --categories a,b [--model mambaad_test] [--image-size 128]
[--batch-size 8] [--steps 12] [--rounds 3] [--threads N]`` trains, in one process, alternately ``rounds`` times:
``mambaad train`` (:func:`mambaad.train.train`, its own loop) and ``Engine.fit`` of
:class:`mambaad.anomalib.MambaAD` on :class:`~mambaad.anomalib.MultiCategory` of anomalib's
``MVTecAD`` datamodules, both from the same seed, for ``steps`` optimiser steps on the normal training
images of the MVTec-layout root, with no data-loading workers and no evaluation during training.

A step's time is the wall time between the ends of consecutive steps (data loading, forward, backward,
clipping, optimiser and the loop's own work; ``mambaad train``'s ``images_per_s`` log measures the
same span). The first ``warmup`` steps of each run are left out; the table gives the median steps/s
of each loop over all rounds, their ratio and each round's, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings

import torch


def mambaad_train_steps(root: str, categories: list[str], model: str, size: int, batch: int, steps: int,
                        seed: int, backend: str | None) -> list[float]:
    """Seconds per step of ``mambaad train`` (from its log's images/s)."""
    from ..runconfig import TrainConfig
    from ..train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(root=root, dataset="mvtec", categories=categories, output=out, model=model,
                          image_size=size, batch_size=batch, iterations=steps, workers=0, eval_every=0,
                          seed=seed, backend=backend, amp=False, save_every=steps)
        train(cfg)
        with open(os.path.join(out, "train_log.json")) as f:
            log = json.load(f)
    return [batch / s["images_per_s"] for s in log["steps"]]


def anomalib_fit_steps(root: str, categories: list[str], model: str, size: int, batch: int, steps: int,
                       seed: int, backend: str | None) -> list[float]:
    """Seconds per step of ``Engine.fit`` (between consecutive ``on_train_batch_end``)."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch.callbacks import Callback

    from . import MambaAD, MultiCategory

    ends: list[float] = []

    class StepClock(Callback):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001
            ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            ends.append(time.perf_counter())

    torch.manual_seed(seed)
    module = MambaAD(model=model, image_size=size, pretrained=False, backend=backend, visualizer=False)
    data = MultiCategory([MVTecAD(root=root, category=c, num_workers=0) for c in categories],
                         train_batch_size=batch, eval_batch_size=batch, num_workers=0)
    with tempfile.TemporaryDirectory() as out:
        engine = Engine(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps, limit_val_batches=0,
                        default_root_dir=out, callbacks=[StepClock()])
        engine.fit(module, datamodule=data)
    return [b - a for a, b in zip(ends, ends[1:])]


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison (see the module docstring); prints a table, returns the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="MVTec-layout dataset root")
    p.add_argument("--categories", required=True, help="comma-separated categories")
    p.add_argument("--model", default="mambaad_test")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; 1 avoids OpenMP stalls on a busy machine)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cats = [c for c in args.categories.split(",") if c]
    runs = {"mambaad train": [], "anomalib Engine.fit": []}
    ratios = []  # per round: anomalib's steps/s over mambaad train's (medians of the round)
    load_before = os.getloadavg()
    common = (args.root, cats, args.model, args.image_size, args.batch_size, args.steps, args.seed,
              args.backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(args.rounds):
            ours = mambaad_train_steps(*common)[args.warmup:]
            theirs = anomalib_fit_steps(*common)[args.warmup:]
            runs["mambaad train"] += ours
            runs["anomalib Engine.fit"] += theirs
            ratios.append(statistics.median(ours) / statistics.median(theirs))
    load_after = os.getloadavg()
    rates = {name: 1.0 / statistics.median(times) for name, times in runs.items()}
    result = {"steps_per_s": rates, "steps_timed": {k: len(v) for k, v in runs.items()},
              "seconds_per_step": {k: [round(t, 4) for t in v] for k, v in runs.items()},
              "ratio_anomalib_over_mambaad": rates["anomalib Engine.fit"] / rates["mambaad train"],
              "ratio_per_round": [round(r, 3) for r in ratios],
              "settings": vars(args), "torch_threads": torch.get_num_threads(),
              "loadavg_before": load_before, "loadavg_after": load_after}
    print(f"{'loop':<22} {'steps/s':>8} {'images/s':>9} {'steps timed':>12}")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:8.3f} {rate * args.batch_size:9.2f} {len(runs[name]):12d}")
    print(f"anomalib / mambaad train: {result['ratio_anomalib_over_mambaad']:.3f} (rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
