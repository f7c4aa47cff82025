"""MambaAD as an anomalib model: :class:`MambaAD`, a subclass of anomalib's ``AnomalibModule``.

Its ``model`` attribute is this package's MambaAD (``mambaad.create_model(model, ...)``), unchanged: the
torch model contract anomalib's own reverse-distillation model follows (train mode: encoder and decoder
features; eval mode: a NamedTuple with ``anomaly_map (B, 1, H, W)`` and ``pred_score (B,)``), so
anomalib's test / predict steps, post-processor, metrics and visualiser take our maps as they are, and
the weights are ours (:meth:`MambaAD.save_mambaad_checkpoint` writes a checkpoint ``mambaad eval /
predict / export`` read).

Training follows the authors' recipe as ``mambaad train`` has it (:mod:`mambaad.train`): AdamW, lr
0.005 x (global batch) / 16 unless given, betas (0.9, 0.999), weight decay 1e-4 on tensors of >= 2
dims that are not biases, the learning rate x 0.1 once at 80 % of the steps (Lightning's estimate of
the run's steps), gradients clipped to norm 5 (by Lightning, through :attr:`trainer_arguments`), loss
5 x MSE summed over the three scales. What differs from ``mambaad train``: Lightning runs the loop
(its precision setting, not ``--amp``), drop path draws from torch's global generator (not the
per-rank streams of :mod:`mambaad.rng`), and the images come through anomalib's datamodule and
pre-processor (see :meth:`MambaAD.configure_pre_processor`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from .. import create_model, load_pretrained, reconstruction_loss
from ..checkpoint import FORMAT, save_checkpoint
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..model import _unwrap
from ..train import BASE_BATCH, BASE_LR, param_groups
from .export import onnx_export, openvino_export


class MambaAD(AnomalibModule):
    """MambaAD (He et al., NeurIPS 2024) on this package's fused scans, for anomalib's ``Engine``.

    Args:
        model: the registered model (``"mambaad"``: the paper's; ``"mambaad_test"``: tiny; ``"mmad"``).
        encoder, encoder_weights: override the model's encoder (None: the model's own).
        backend: scan backend (None: the best available per call).
        image_size: side ``S`` (or ``(H, W)``) the pre-processor resizes to; multiples of 32.
        pretrained: ImageNet weights for the encoder through timm (ignored with ``checkpoint``).
        config: further fields of the model's :class:`~mambaad.MambaADConfig` to override (``dims``,
            ``depths``, ``d_state``, ``blur_sigma``, ...), as ``create_model`` takes them.
        checkpoint: weights to start from: a path or ``hf://`` URI of the authors' released weights
            (either naming) or of a checkpoint of ours, loaded strictly by
            :func:`mambaad.load_pretrained` (e.g. ``"hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth"``
            with ``model="mambaad"``). Not kept in the hyperparameters: a Lightning checkpoint of this
            module holds the weights itself.
        revision: the Hub revision of an ``hf://`` checkpoint.
        lr: learning rate; None: 0.005 x (global batch) / 16, the batch read from the datamodule.
        betas, weight_decay: AdamW's (decay on tensors of >= 2 dims that are not biases).
        lr_step_at, lr_gamma: the learning rate is multiplied by ``lr_gamma`` once, at this fraction
            of the steps.
        clip_grad: gradient-norm clip (0: off). loss_weight: the MSE weight.
        pre_processor, post_processor, evaluator, visualizer: anomalib's components (True: this
            model's defaults, False: none).
    """

    def __init__(
        self,
        model: str = "mambaad",
        encoder: str | None = None,
        backend: str | None = None,
        image_size: int | Sequence[int] = 256,
        pretrained: bool = True,
        encoder_weights: str | None = None,
        config: dict[str, Any] | None = None,
        checkpoint: str | None = None,
        revision: str | None = None,
        lr: float | None = None,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 1e-4,
        lr_step_at: float = 0.8,
        lr_gamma: float = 0.1,
        clip_grad: float = 5.0,
        loss_weight: float = 5.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        size = _image_size(image_size)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(size)
        super().__init__(pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator,
                         visualizer=visualizer)
        # A Lightning checkpoint of this module holds all the weights, the encoder's too: rebuilding it
        # from its hyperparameters must neither fetch the starting weights nor ImageNet's.
        for name in ("checkpoint", "revision"):
            self.hparams.pop(name, None)
            self._hparams_initial.pop(name, None)
        self.hparams["pretrained"] = False
        if not 0.0 < lr_step_at <= 1.0:
            raise ValueError(f"lr_step_at must be in (0, 1], got {lr_step_at}")
        self.image_size = size
        self.lr, self.betas, self.weight_decay = lr, tuple(float(b) for b in betas), weight_decay
        self.lr_step_at, self.lr_gamma = lr_step_at, lr_gamma
        self.clip_grad, self.loss_weight = clip_grad, loss_weight
        overrides = dict(config or {})
        overrides.update({k: v for k, v in (("encoder", encoder), ("encoder_weights", encoder_weights))
                          if v is not None})
        self.model = create_model(model, pretrained=pretrained and checkpoint is None, backend=backend,
                                  **overrides)
        if checkpoint is not None:
            self.load_weights(checkpoint, revision=revision)

    def load_weights(self, checkpoint: str | os.PathLike, revision: str | None = None) -> None:
        """Load weights into :attr:`model` strictly (see :func:`mambaad.load_pretrained`): the authors'
        released files (either naming), a checkpoint of ours (of the same model), a path or ``hf://``.

        Raises:
            ValueError: a checkpoint of ours holding another model, or weights that do not fit.
        """
        from ..hub import resolve

        obj = torch.load(resolve(checkpoint, revision=revision), map_location="cpu", weights_only=True)
        name = obj.get("model_name") if isinstance(obj, dict) and obj.get("format") == FORMAT else None
        if name is not None and name != self.model.model_name:
            raise ValueError(f"{checkpoint} holds the model {name!r}; pass model={name!r} (this module has "
                             f"{self.model.model_name!r})")
        load_pretrained(self.model, _unwrap(obj), strict=True)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (bilinear, antialiased: torchvision's tensor resize, which is close to
        but not bit-equal with the PIL resize of ``mambaad train / eval``) and ImageNet-normalise.

        Args:
            image_size: ``(H, W)``; None: 256 x 256.
        """
        size = _image_size(image_size or 256)
        return PreProcessor(transform=Compose([Resize(list(size), antialias=True),
                                               Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))]))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """anomalib's counterparts of the paper's seven metrics on the test set: image AUROC, AUPR,
        F1-max; pixel AUROC, AUPR, F1-max, AUPRO (FPR limit 0.3). See docs/anomalib.md for how they
        differ from :mod:`mambaad.metrics`."""
        image = [AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
                 AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
                 F1Max(fields=["pred_score", "gt_label"], prefix="image_")]
        pixel = [AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
                 AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
                 F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
                 AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3)]
        return Evaluator(test_metrics=image + pixel)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One step of the recipe: ``loss_weight x MSE(dec_i, enc_i)`` summed over the three scales."""
        del args, kwargs
        enc, dec = self.model(batch.image)
        loss = reconstruction_loss(enc, dec, self.loss_weight)
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch.image.shape[0])
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """The eval-mode maps and scores, for anomalib's thresholds and normalisation statistics."""
        del args, kwargs
        out = self.model(batch.image)
        return batch.update(pred_score=out.pred_score, anomaly_map=out.anomaly_map)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with the recipe's groups and the one-step learning-rate decay, stepped per batch.

        Raises:
            ValueError: the trainer has neither ``max_epochs`` nor ``max_steps`` (the decay needs the
                run's length).
        """
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("MambaAD's learning-rate step needs the run's length: give the Engine "
                             "max_epochs or max_steps")
        lr = self.lr
        if lr is None:
            data = getattr(self.trainer, "datamodule", None)
            batch = getattr(data, "train_batch_size", None) or BASE_BATCH
            lr = BASE_LR * batch * self.trainer.world_size / BASE_BATCH
        optimizer = torch.optim.AdamW(param_groups(self.model, self.weight_decay), lr=lr, betas=self.betas)
        boundary = round(self.lr_step_at * int(total))
        gamma = self.lr_gamma
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                     lambda step: 1.0 if step < boundary else gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient-norm clipping at ``clip_grad``; no sanity validation."""
        clip = self.clip_grad if self.clip_grad > 0 else None
        return {"gradient_clip_val": clip, "gradient_clip_algorithm": "norm", "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    def save_mambaad_checkpoint(self, path: str, *, dataset: str | None = None, root: str | None = None,
                                categories: Sequence[str] | None = None) -> str:
        """Write :attr:`model` as a checkpoint of this package (see :mod:`mambaad.checkpoint`), for
        ``mambaad eval / predict / export``.

        Args:
            path: the file to write. dataset, root, categories: the data it was trained on, in
                ``mambaad``'s terms (``mvtec``, ``folder``, ...), so that ``mambaad eval`` finds them
                without flags (optional).

        Returns:
            ``path``.

        Raises:
            ValueError: a non-square ``image_size`` (the checkpoint format holds one side).
        """
        if self.image_size[0] != self.image_size[1]:
            raise ValueError(f"mambaad's checkpoints hold a square image size; this module's is "
                             f"{self.image_size}")
        payload = {"model_name": self.model.model_name, "model_config": dataclasses.asdict(self.model.config),
                   "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   "image_size": self.image_size[0], "dataset": dataset,
                   "categories": list(categories) if categories else None,
                   "train_config": {"root": root, "trainer": "anomalib"}}
        save_checkpoint(path, payload)
        return path

    def to_onnx(self, export_root: str | os.PathLike, model_file_name: str = "model",
                input_size: tuple[int, int] | None = None, **kwargs: Any) -> Path:
        """ONNX export of pre-processing, model and post-processing through
        :func:`mambaad_kernels.export_onnx` (the scan in standard operators), checked with onnxruntime;
        see :mod:`mambaad.anomalib.export`. Returns the ``.onnx`` path."""
        return onnx_export(self, export_root, model_file_name, input_size, **kwargs)

    def to_openvino(self, export_root: str | os.PathLike, model_file_name: str = "model",
                    input_size: tuple[int, int] | None = None, **kwargs: Any) -> Path:
        """OpenVINO export (through the ONNX file of :meth:`to_onnx`), checked with OpenVINO; arguments
        as anomalib's ``to_openvino``; see :mod:`mambaad.anomalib.export`. Returns the ``.xml`` path."""
        return openvino_export(self, export_root, model_file_name, input_size, **kwargs)


def _image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` as ``(H, W)``, each a positive multiple of 32."""
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ValueError(f"image_size must be multiples of 32, got {size}")
    return h, w
