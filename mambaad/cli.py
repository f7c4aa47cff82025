"""The ``mambaad`` command: ``train``, ``eval``, ``predict`` and ``export`` subcommands (``--help`` on each).

Every flag sets the config field of the same name (``--image-size`` -> ``image_size``); ``--config
FILE`` (YAML or JSON) sets any of them, flags given on the command line win, unknown keys are
rejected. Multi-GPU (or multi-process on the CPU with gloo)::

    torchrun --nproc_per_node 2 -m mambaad.cli train --root DIR --dataset mvtec --output runs/x
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .data import DATASET_KINDS
from .runconfig import (ConfigError, EvalConfig, ExportConfig, PredictConfig, TrainConfig, build_config,
                        field_names, load_file)

BACKEND_CHOICES = ("reference", "triton", "cpu", "cuda", "portable")
S = argparse.SUPPRESS


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


class _Adder:
    """Adds flags whose help ends with the dataclass default, and whose absence leaves the field unset
    (so that a config file's value is not overwritten by a default)."""

    def __init__(self, parser: argparse.ArgumentParser, cls: type):
        self.parser, self.defaults = parser, _defaults(cls)

    def __call__(self, *flags: str, help: str, **kwargs: Any) -> None:
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        default = self.defaults.get(dest)
        shown = "all" if dest == "categories" and default is None else default
        if isinstance(shown, tuple):
            shown = " ".join(map(str, shown))
        if shown not in (None, "", []):
            help = f"{help} (default: {shown})"
        self.parser.add_argument(*flags, help=help, default=S, **kwargs)


def _common(add: _Adder) -> None:
    add("--config", metavar="FILE", help="YAML or JSON file of settings (flags given win)")
    add("--device", help="cuda, cuda:N or cpu (default: CUDA when there is one)")
    add("--backend", choices=BACKEND_CHOICES, help="scan backend (default: the best available)")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (multi-class: all chosen categories together)",
                       description="Train MambaAD with the authors' recipe: AdamW lr 0.005 x batch/16, "
                       "weight decay 1e-4, lr x0.1 at 80% of the steps, grad clip 5, loss 5 x MSE. "
                       "Writes OUTPUT/last.pt and OUTPUT/train_log.json; evaluating during "
                       "training: OUTPUT/metrics_history.csv, best.pt and curves.png.")
    add = _Adder(p, TrainConfig)
    add("--root", metavar="DIR", help="dataset root folder (required)")
    add("--dataset", choices=DATASET_KINDS, help="dataset layout")
    add("--categories", metavar="A,B", help="comma-separated categories to train on together")
    add("--output", metavar="DIR", help="run folder for last.pt and train_log.json (required)")
    add("--model", metavar="NAME", help="registered model: mambaad, mambaad_test, ...")
    add("--encoder", metavar="NAME", help="encoder: a timm CNN or mobilenetv2_tflite (default: the model's)")
    add("--encoder-weights", metavar="FILE", help="weights file of the encoder (mobilenetv2_tflite)")
    add("--pretrained", action=argparse.BooleanOptionalAction,
        help="ImageNet weights for a timm encoder, through timm (needs the network or its cache; "
        "default: off)")
    add("--image-size", type=int, metavar="S", help="side of the square input, a multiple of 32")
    add("--epochs", type=int, metavar="E", help="passes over the training images")
    add("--iterations", type=int, metavar="N", help="optimiser steps (instead of --epochs)")
    add("--batch-size", type=int, metavar="B", help="images per step per process")
    add("--lr", type=float, help="learning rate (default: 0.005 x global batch / 16)")
    add("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="AdamW betas")
    add("--weight-decay", type=float, help="AdamW weight decay (>= 2-dim, non-bias tensors)")
    add("--lr-step-at", type=float, metavar="FRACTION", help="fraction of the steps where the lr drops")
    add("--lr-gamma", type=float, help="factor of the lr drop")
    add("--clip-grad", type=float, metavar="NORM", help="gradient-norm clip (0: off)")
    add("--loss-weight", type=float, help="weight of the MSE loss")
    add("--seed", type=int, help="seed of the weights and the data order")
    add("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast on CUDA")
    add("--workers", type=int, help="data-loading processes")
    add("--save-every", type=int, metavar="STEPS", help="checkpoint period in steps (0: every epoch)")
    add("--resume", nargs="?", const="auto", metavar="CKPT",
        help="continue from CKPT, or (flag alone) from OUTPUT/last.pt if it exists; the checkpoint must "
        "come from the same configuration (model, image size, categories, batch size, ...)")
    add("--init-from", metavar="CKPT",
        help="start from the weights of CKPT, a file or hf://OWNER/REPO/FILE (fine-tuning: new optimizer, "
        "step 0, any data)")
    add("--log-every", type=int, metavar="STEPS", help="progress-bar refresh period")
    add("--eval-every", type=int, metavar="EPOCHS",
        help="evaluate on the test split every EPOCHS epochs and at the end: metrics_history.csv, "
        "best.pt, curves.png (default: a tenth of the epochs; 0: off)")
    add("--eval-root", metavar="DIR", help="dataset root of that test split (default: --root)")
    add("--select-by", metavar="METRIC",
        help="mean metric that picks best.pt: one of i_auroc, i_ap, i_f1max, p_auroc, p_ap, p_f1max, "
        "aupro, mad, or a sum such as i_auroc+aupro")
    _common(add)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="the seven metrics + mAD per category and mean",
                       description="Evaluate a checkpoint: image AUROC / AP / F1-max, pixel AUROC / AP / "
                       "F1-max, AUPRO (FPR <= 0.3) and mAD per category and their mean; prints the table, "
                       "writes OUTPUT/metrics.json and OUTPUT/metrics.csv, stores the F1-max thresholds "
                       "in the checkpoint.")
    add = _Adder(p, EvalConfig)
    add("--checkpoint", metavar="FILE", help="a last.pt of mambaad train or released weights, a file or "
        "hf://OWNER/REPO/FILE (required)")
    add("--root", metavar="DIR", help="dataset root (default: the training root)")
    add("--dataset", choices=DATASET_KINDS, help="dataset layout (default: the training one)")
    add("--categories", metavar="A,B", help="categories (default: the trained ones)")
    add("--output", metavar="DIR", help="folder for metrics.json, metrics.csv, maps/ (required)")
    add("--image-size", type=int, metavar="S", help="input side (default: the training one)")
    add("--batch-size", type=int, metavar="B", help="images per batch")
    add("--workers", type=int, help="data-loading processes")
    add("--save-maps", type=int, metavar="N",
        help="PNG figures of the N worst and N best images per category")
    add("--exact", action=argparse.BooleanOptionalAction,
        help="exact pixel metrics (keeps every map in memory) instead of the streaming histogram")
    add("--bins", type=int, help="histogram bins of the streaming pixel metrics")
    add("--store-threshold", action=argparse.BooleanOptionalAction,
        help="write the F1-max thresholds into the checkpoint")
    _common(add)


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images, write heat maps, normal / anomalous",
                       description="Score images with a checkpoint or an exported model: prints score and "
                       "verdict per image, writes OUTPUT/<stem>_heatmap.png, OUTPUT/predictions.json and "
                       ".csv. A file that cannot be read is skipped with a warning and listed with its "
                       "error; the exit status is non-zero only with --strict or when no image could be "
                       "read.")
    add = _Adder(p, PredictConfig)
    add("images", nargs="*", metavar="IMAGES", help="image files or folders")
    add("--checkpoint", metavar="FILE", help="a (preferably evaluated) checkpoint, a file or "
        "hf://OWNER/REPO/FILE (this or --model)")
    add("--model", metavar="FILE", help="a model written by mambaad export: .pt2, .onnx (onnxruntime) or .xml "
        "(OpenVINO) (this or --checkpoint)")
    add("--output", metavar="DIR", help="folder for the heat maps and predictions (required)")
    add("--threshold", type=float, help="image-score threshold (default: the one mambaad eval stored)")
    add("--category", help="use this category's stored threshold (default: all categories')")
    add("--image-size", type=int, metavar="S", help="input side (default: the training one)")
    add("--batch-size", type=int, metavar="B", help="images per batch")
    add("--strict", action=argparse.BooleanOptionalAction,
        help="exit non-zero when any image cannot be read (after scoring all the others)")
    _common(add)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint as a .pt2 program, an ONNX file or an OpenVINO model",
                       description="Export a checkpoint's eval-mode model, on the CPU, batch size dynamic, at "
                       "the trained image size; checks it against the checkpoint before writing. pt2: a "
                       "torch.export program (runs with torch and mambaad_kernels); onnx / openvino: the "
                       "scans in standard ONNX operators (runs with onnxruntime / OpenVINO alone). Run "
                       "any of them with mambaad predict --model.")
    add = _Adder(p, ExportConfig)
    add("--checkpoint", metavar="FILE", help="a checkpoint of mambaad train or released weights, a file or "
        "hf://OWNER/REPO/FILE (required)")
    add("--output", metavar="FILE", help="the file to write: .pt2, .onnx, or .xml (OpenVINO) (required)")
    add("--format", choices=("pt2", "onnx", "openvino"),
        help="file format (default: from the --output suffix, else pt2)")
    add("--config", metavar="FILE", help="YAML or JSON file of settings (flags given win)")


def build_parser() -> argparse.ArgumentParser:
    """The ``mambaad`` argument parser."""
    parser = argparse.ArgumentParser(prog="mambaad", description="MambaAD: train, evaluate, predict, export.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,predict,export}", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    _predict_parser(sub)
    _export_parser(sub)
    return parser


CONFIGS = {"train": TrainConfig, "eval": EvalConfig, "predict": PredictConfig, "export": ExportConfig}


def config_from_args(args: argparse.Namespace) -> Any:
    """The run config of a parsed command line (file values, then flags)."""
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    cls = CONFIGS[args.command]
    file_values = load_file(args.config) if getattr(args, "config", None) else None
    known = set(field_names(cls))
    assert set(values) <= known, set(values) - known  # every flag is a field
    return build_config(cls, file_values, values, source=getattr(args, "config", "config"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mambaad`` command; returns the exit status (2 for a usage or data error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from mambaad_kernels.backends import BackendUnavailable

    from .checkpoint import CheckpointError
    from .data import DatasetError, UnreadableImageWarning
    from .export import ExportError

    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.showwarning = _warning_printer(args.command, warnings.showwarning, UnreadableImageWarning)
        return _run(args, (ConfigError, CheckpointError, DatasetError, ExportError, FileNotFoundError,
                           BackendUnavailable))


def _warning_printer(command: str, default: Callable[..., None], plain: type[Warning]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing warnings of category ``plain`` as one line
    ``mambaad COMMAND: warning: ...`` on stderr, and the others as ``default`` does."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, plain):
            print(f"mambaad {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _run(args: argparse.Namespace, errors: tuple[type[Exception], ...]) -> int:
    """Run one parsed command; an error of ``errors`` is printed and gives exit status 2."""
    try:
        cfg = config_from_args(args)
        if args.command == "train":
            from .train import train

            train(cfg)
        elif args.command == "eval":
            from .evaluate import evaluate

            evaluate(cfg)
        elif args.command == "predict":
            from .predict import predict

            predict(cfg)
        else:
            from .export import export

            export(cfg)
    except errors as err:
        print(f"mambaad {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
