"""MambaAD: frozen encoder -> HFPN bottleneck -> state-space decoder; and the authors' weights.

In timm's model-file order: the model class (its blocks live in :mod:`mambaad.bottleneck` and
:mod:`mambaad.decoder`), :func:`checkpoint_filter_fn` / :func:`load_pretrained`, and the
registered entry points ``mambaad`` (the paper's) and ``mambaad_test`` (tiny, for CI).

Torch-model contract (anomalib's reverse distillation): in train mode ``model(images)`` returns
``(encoder features, decoder features)``, two lists of three ``(B, C_i, H_i, W_i)`` shallow first;
in eval mode an :class:`~mambaad.anomaly.AnomalyOutput` ``(anomaly_map (B, 1, H, W),
pred_score (B,))``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from mambaad_kernels.modules import SS2D

from .anomaly import AnomalyOutput, anomaly_map
from .config import MambaADConfig
from .decoder import MambaDecoder
from .encoders import build_encoder
from .registry import get_bottleneck, register_model


class MambaAD(nn.Module):
    """The MambaAD anomaly detector.

    Args:
        config: the configuration (default: the paper's).
        model_name: the registered name (set by :func:`mambaad.create_model`).

    Modules: ``encoder`` (frozen, see :mod:`mambaad.encoders`), ``bottleneck`` (built by the
    bottleneck registered as ``config.bottleneck``: ``(B, dims[0], H / 32, W / 32)``), ``decoder``
    (:class:`~mambaad.decoder.MambaDecoder`), ``proj``: per scale, a conv1x1 from the decoder's
    channels to the encoder's where they differ, else an Identity (none for resnet34 and the
    paper's dims).

    Shapes: input ``(B, 3, H, W)`` ImageNet-normalised, H and W multiples of 32 (any, also
    non-square), not both 32.
    """

    def __init__(self, config: MambaADConfig | None = None, model_name: str | None = None):
        super().__init__()
        config = MambaADConfig() if config is None else config
        self.config = config
        self.model_name = model_name
        self.encoder = build_encoder(config.encoder, config.pretrained, config.encoder_weights)
        channels = tuple(int(c) for c in self.encoder.channels)
        if len(channels) != 3:
            raise ValueError(f"the encoder must give three scales, it gives channels {channels}")
        self.bottleneck = get_bottleneck(config.bottleneck)(channels, config.dims[0], config)
        self.decoder = MambaDecoder(config)
        self.proj = nn.ModuleList(nn.Identity() if d == c else nn.Conv2d(d, c, 1)
                                  for d, c in zip(self.decoder.out_channels, channels, strict=True))

    def train(self, mode: bool = True) -> MambaAD:
        """Set the train mode of the bottleneck and decoder; the encoder stays in eval mode."""
        super().train(mode)
        self.encoder.train(False)
        return self

    def set_backend(self, backend: str | None) -> MambaAD:
        """Run every scan block on ``backend`` (None: the dispatcher's choice per call)."""
        self.config = self.config.replace(backend=backend)
        for m in self.modules():
            if isinstance(m, SS2D):
                m.backend = backend
        return self

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"MambaAD takes RGB images (B, 3, H, W), got {getattr(images, 'shape', images)}")
        if not images.is_floating_point():
            raise TypeError(f"MambaAD takes floating-point images, got {images.dtype}")
        h, w = images.shape[-2:]
        if h % 32 or w % 32 or h * w < 2 * 32 * 32:
            raise ValueError(f"image size {h} x {w}: H and W must be multiples of 32, and the H/32 x W/32 "
                             "grid of the deepest stage must have at least 2 cells (InstanceNorm)")
        p = next(self.decoder.parameters())
        if images.device != p.device:
            raise ValueError(f"images are on {images.device} but the model is on {p.device}")
        if images.dtype != p.dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(f"images are {images.dtype} but the model is {p.dtype} "
                            "(cast one, or use autocast)")

    def forward_features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Encoder features and their reconstructions.

        Args:
            images: ``(B, 3, H, W)``.

        Returns:
            ``(enc, dec)``: two lists of three ``(B, C_i, H / s_i, W / s_i)``, s = (4, 8, 16), C_i
            the encoder's channels; ``enc`` carries no gradient.
        """
        self._check_images(images)
        with torch.no_grad():
            enc = [f.detach() for f in self.encoder(images)]
        dec = [p(f) for p, f in zip(self.proj, self.decoder(self.bottleneck(enc)), strict=True)]
        for i, (fe, fd) in enumerate(zip(enc, dec, strict=True)):
            if fe.shape != fd.shape:
                raise RuntimeError(f"scale {i}: encoder feature {tuple(fe.shape)} and reconstruction "
                                   f"{tuple(fd.shape)} differ (does the encoder follow the contract?)")
        return enc, dec

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]] | AnomalyOutput:
        """Train mode: ``(enc, dec)`` (see :meth:`forward_features`). Eval mode: ``AnomalyOutput``
        with ``anomaly_map (B, 1, H, W)`` and ``pred_score (B,)`` (the map's maximum)."""
        enc, dec = self.forward_features(images)
        if self.training:
            return enc, dec
        amap = anomaly_map(enc, dec, tuple(images.shape[-2:]), self.config.blur_sigma)
        return AnomalyOutput(amap, amap.flatten(1).amax(1))


# ---------------------------------------------------------------------------------------------
# The authors' checkpoints
# ---------------------------------------------------------------------------------------------

_LAYER = r"^net_s\.layers_up\.(\d+)\."
_MODULE = _LAYER + r"blocks\.(\d+)\."
_STAGE = r"decoder.stages.\1."
_LSS = _STAGE + r"lss.\2."
_AUTHORS_RULES = [(re.compile(p), r) for p, r in (
    (r"^mff_oce\.conv1\.", "bottleneck.down1.conv."),
    (r"^mff_oce\.bn1\.", "bottleneck.down1.bn."),
    (r"^mff_oce\.conv21\.", "bottleneck.lat2.conv."),
    (r"^mff_oce\.bn21\.", "bottleneck.lat2.bn."),
    (r"^mff_oce\.conv2\.", "bottleneck.down2.conv."),
    (r"^mff_oce\.bn2\.", "bottleneck.down2.bn."),
    (r"^mff_oce\.conv31\.", "bottleneck.lat3.conv."),
    (r"^mff_oce\.bn31\.", "bottleneck.lat3.bn."),
    (r"^mff_oce\.convf\.", "bottleneck.fuse.conv."),
    (r"^mff_oce\.bnf\.", "bottleneck.fuse.bn."),
    (r"^mff_oce\.bn_layer\.", "bottleneck.oce."),
    (_LAYER + r"upsample\.", _STAGE + "upsample."),
    (_MODULE + r"smm_blocks\.", _LSS + "ssm."),
    (_MODULE + r"conv1b([57])\.0\.", _LSS + r"local\3.pw_in."),
    (_MODULE + r"conv1a([57])\.0\.", _LSS + r"local\3.pw_out."),
    (_MODULE + r"conv([57])\3\.0\.", _LSS + r"local\3.dw."),
    (_MODULE + r"finalconv11\.", _LSS + "fuse."),
)]
_SCAN_INDEX = re.compile(r"\.scans\.index_flat(_inv)?$")
_UNUSED_BRANCH = re.compile(r"\.(conv1b3|conv1a3|conv33)\.")
_OUR_PREFIXES = ("encoder.", "bottleneck.", "decoder.", "proj.")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: MambaAD) -> dict[str, Tensor]:
    """Map a state dict in the authors' MambaAD naming to this model's names.

    The authors' names (their ``model/mambaad.py``) -> ours:

    - ``net_t.*`` (the timm features_only model) -> ``encoder.body.*``;
    - ``mff_oce.{conv1,bn1}``, ``{conv21,bn21}``, ``{conv2,bn2}``, ``{conv31,bn31}``, ``{convf,bnf}``
      -> ``bottleneck.{down1,lat2,down2,lat3,fuse}.{conv,bn}``;
    - ``mff_oce.bn_layer.{i}`` (timm Bottlenecks) -> ``bottleneck.oce.{i}``;
    - ``net_s.layers_up.{i}.upsample.{expand,norm}`` -> ``decoder.stages.{i}.upsample.*``;
    - ``net_s.layers_up.{i}.blocks.{j}.`` -> ``decoder.stages.{i}.lss.{j}.`` and inside it
      ``smm_blocks.{b}.*`` -> ``ssm.{b}.*`` (HSS blocks: ``ln_1``, ``self_attention.*`` unchanged),
      ``conv1b{k}.0`` / ``conv{k}{k}.0`` / ``conv1a{k}.0`` -> ``local{k}.pw_in`` / ``dw`` / ``pw_out``
      (k = 5, 7), ``finalconv11`` -> ``fuse``.

    Dropped: ``*.self_attention.scans.index_flat`` / ``index_flat_inv`` (scan indices the authors
    stored as parameters; ours come from the path cache), and, with a warning that lists them, the
    ``conv1b3`` / ``conv1a3`` / ``conv33`` tensors of an unused branch in older checkpoints. A
    leading ``module.`` (DDP) is stripped. A state dict already in our naming passes unchanged;
    keys that match no rule are kept as they are (``load_state_dict`` reports them).

    Args:
        state_dict: name -> tensor.
        model: the model the weights are for (decides the encoder's prefix).

    Returns:
        A new dict in this model's naming.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith(_OUR_PREFIXES) for k in sd):
        return sd
    encoder_prefix = "encoder.body." if hasattr(model.encoder, "body") else "encoder."
    out: dict[str, Tensor] = {}
    unused: list[str] = []
    for key, value in sd.items():
        if _SCAN_INDEX.search(key):
            continue
        if _UNUSED_BRANCH.search(key):
            unused.append(key)
            continue
        if key.startswith("net_t."):
            out[encoder_prefix + key[len("net_t."):]] = value
            continue
        for pattern, repl in _AUTHORS_RULES:
            new, count = pattern.subn(repl, key)
            if count:
                key = new
                break
        out[key] = value
    if unused:
        warnings.warn(f"checkpoint_filter_fn: dropped {len(unused)} tensors of the unused 3x3 branch "
                      f"(older checkpoints): {unused}", stacklevel=2)
    return out


def _unwrap(obj: Any) -> Mapping[str, Tensor]:
    """The state dict inside a checkpoint: ours (``state_dict``), the authors' trainer (``net``), a
    ``model`` mapping, or a bare state dict."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "net", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError("the checkpoint holds no state dict (a mapping of names to tensors, bare or under "
                         "'state_dict', 'net' or 'model')")
    return obj


def load_pretrained(model: MambaAD, checkpoint: str | os.PathLike | Mapping[str, Any],
                    strict: bool = False) -> nn.modules.module._IncompatibleKeys:
    """Load MambaAD weights (the authors' checkpoints or ours) into ``model``.

    Args:
        model: the model to fill.
        checkpoint: a path to a ``torch.save`` file (loaded on the CPU with ``weights_only=True``) or
            an already loaded checkpoint / state dict.
        strict: raise when keys are missing or unexpected (shape mismatches always raise).

    Returns:
        torch's ``(missing_keys, unexpected_keys)``; when either is non-empty a warning lists them.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state_dict = checkpoint_filter_fn(_unwrap(checkpoint), model)
    result = model.load_state_dict(state_dict, strict=strict)
    if result.missing_keys or result.unexpected_keys:
        warnings.warn(f"load_pretrained: {len(result.missing_keys)} missing keys {result.missing_keys}; "
                      f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys}", stacklevel=2)
    return result


# ---------------------------------------------------------------------------------------------
# Registered models
# ---------------------------------------------------------------------------------------------

TEST_CONFIG = {"encoder": "resnet18", "dims": (64, 32, 16, 8), "depths": (1, 1, 1, 1), "d_state": 8}


@register_model
def mambaad(pretrained: bool = False, **overrides: Any) -> MambaAD:
    """The paper's MambaAD: resnet34, HFPN, dims 512/256/128/64, depths 3/4/6/3, Hilbert x 8.

    17,444,928 trainable + 8,170,304 frozen parameters (see tests/test_model.py). ``pretrained``:
    the encoder's ImageNet weights through timm.
    """
    return MambaAD(MambaADConfig().replace(pretrained=pretrained, **overrides), "mambaad")


@register_model
def mambaad_test(pretrained: bool = False, **overrides: Any) -> MambaAD:
    """A tiny MambaAD for CI: resnet18, dims 64/32/16/8, depths 1/1/1/1, d_state 8.

    Its decoder outputs (8, 16, 32 channels) differ from resnet18's (64, 128, 256), so the 1x1
    projections are in place.
    """
    return MambaAD(MambaADConfig(**TEST_CONFIG).replace(pretrained=pretrained, **overrides), "mambaad_test")
