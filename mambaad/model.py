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

import logging
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

_log = logging.getLogger(__name__)


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
_COMMON_RULES = (
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
    (_MODULE + r"conv1b5\.0\.", _LSS + "local5.pw_in."),
    (_MODULE + r"conv1a5\.0\.", _LSS + "local5.pw_out."),
    (_MODULE + r"conv55\.0\.", _LSS + "local5.dw."),
    (_MODULE + r"conv77\.0\.", _LSS + "local7.dw."),
    (_MODULE + r"finalconv11\.", _LSS + "fuse."),
)
# the 1x1 convolutions around the 7x7 depthwise one: ADer names them conv1b3 / conv1a3 (its forward
# runs conv1a3(conv77(conv1b3(x)))), the official repository conv1b7 / conv1a7
_NAMING_RULES = {
    "ader": ((_MODULE + r"conv1b3\.0\.", _LSS + "local7.pw_in."),
             (_MODULE + r"conv1a3\.0\.", _LSS + "local7.pw_out.")),
    "official": ((_MODULE + r"conv1b7\.0\.", _LSS + "local7.pw_in."),
                 (_MODULE + r"conv1a7\.0\.", _LSS + "local7.pw_out.")),
}
_RULES = {name: [(re.compile(p), r) for p, r in _COMMON_RULES + rules] for name, rules in _NAMING_RULES.items()}
_NAMING_MARKS = {"ader": re.compile(_MODULE + r"conv(1b3|1a3|33)\."),
                 "official": re.compile(_MODULE + r"conv1[ab]7\.")}
_ADER_UNUSED = re.compile(_MODULE + r"conv33\.")  # ADer's depthwise 3x3, defined but never run
_SCAN_INDEX = re.compile(r"\.scans\.index_flat(_inv)?$")
_OUR_PREFIXES = ("encoder.", "bottleneck.", "decoder.", "proj.")
_AUTHORS_PREFIXES = ("net_t.", "mff_oce.", "net_s.")


def _some(keys: list[str], most: int = 6) -> str:
    return ", ".join(keys[:most]) + (f", ... ({len(keys)} in all)" if len(keys) > most else "")


def checkpoint_naming(state_dict: Mapping[str, Tensor]) -> str:
    """Which naming a MambaAD state dict uses: ``"ours"``, ``"ader"`` or ``"official"``.

    ADer (``zhangzjn/ADer``, ``model/mambaad.py``) names the 1x1 convolutions of the 7x7 local branch
    ``conv1b3`` / ``conv1a3`` and has an unused depthwise ``conv33``; the official repository
    (``lewandofskee/MambaAD``) names them ``conv1b7`` / ``conv1a7``. Everything else is shared. A
    leading ``module.`` (DDP) is ignored.

    Raises:
        ValueError: the keys mix namings or match none; the message lists the keys that decided it.
    """
    keys = [k.removeprefix("module.") for k in state_dict]
    ours = [k for k in keys if k.startswith(_OUR_PREFIXES)]
    authors = [k for k in keys if k.startswith(_AUTHORS_PREFIXES)]
    if ours and authors:
        raise ValueError(f"the state dict mixes this package's naming ({_some(ours)}) with the authors' "
                         f"({_some(authors)})")
    if ours:
        return "ours"
    if not authors:
        raise ValueError("the state dict matches no MambaAD naming (keys under encoder./bottleneck./decoder. "
                         f"or the authors' net_t./mff_oce./net_s.); its keys: {_some(keys)}")
    marks = {name: [k for k in authors if mark.search(k)] for name, mark in _NAMING_MARKS.items()}
    if marks["ader"] and marks["official"]:
        raise ValueError("the state dict mixes ADer's naming of the 7x7 local branch "
                         f"({_some(marks['ader'])}) with the official repository's ({_some(marks['official'])})")
    for name, found in marks.items():
        if found:
            return name
    raise ValueError("the authors' state dict has neither ADer's conv1b3 / conv1a3 nor the official "
                     "conv1b7 / conv1a7 1x1 convolutions of the 7x7 local branch; its decoder keys: "
                     f"{_some([k for k in authors if k.startswith('net_s.')] or authors)}")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: MambaAD) -> dict[str, Tensor]:
    """Map a MambaAD state dict in either of the authors' namings (or ours) to this model's names.

    The authors' names (``model/mambaad.py`` of ADer and of the official repository) -> ours:

    - ``net_t.*`` (the timm features_only model) -> ``encoder.body.*`` (``encoder.*`` for an
      encoder without a ``body``);
    - ``mff_oce.{conv1,bn1}``, ``{conv21,bn21}``, ``{conv2,bn2}``, ``{conv31,bn31}``, ``{convf,bnf}``
      -> ``bottleneck.{down1,lat2,down2,lat3,fuse}.{conv,bn}``;
    - ``mff_oce.bn_layer.{i}`` (timm Bottlenecks) -> ``bottleneck.oce.{i}``;
    - ``net_s.layers_up.{i}.upsample.{expand,norm}`` -> ``decoder.stages.{i}.upsample.*``;
    - ``net_s.layers_up.{i}.blocks.{j}.`` -> ``decoder.stages.{i}.lss.{j}.`` and inside it
      ``smm_blocks.{b}.*`` -> ``ssm.{b}.*`` (HSS blocks: ``ln_1``, ``self_attention.*`` unchanged),
      ``conv1b5.0`` / ``conv55.0`` / ``conv1a5.0`` -> ``local5.pw_in`` / ``dw`` / ``pw_out``,
      ``conv77.0`` -> ``local7.dw``, ``finalconv11`` -> ``fuse``, and the 7x7 branch's 1x1
      convolutions ``conv1b3.0`` / ``conv1a3.0`` (ADer) or ``conv1b7.0`` / ``conv1a7.0`` (official)
      -> ``local7.pw_in`` / ``local7.pw_out``.

    Dropped: ``*.self_attention.scans.index_flat`` / ``index_flat_inv`` (scan indices the authors
    stored as parameters; ours come from the path cache) and ADer's ``conv33`` (a depthwise 3x3
    its forward never runs; named in an info-level log message). Nothing else is dropped. A leading
    ``module.`` (DDP) is stripped; a state dict in our naming passes unchanged. Keys that match no
    rule are kept as they are (:func:`load_pretrained` reports them).

    Args:
        state_dict: name -> tensor.
        model: the model the weights are for (decides the encoder's prefix).

    Returns:
        A new dict in this model's naming.

    Raises:
        ValueError: the keys mix namings or match none (see :func:`checkpoint_naming`).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    naming = checkpoint_naming(sd)
    if naming == "ours":
        return sd
    encoder_prefix = "encoder.body." if hasattr(model.encoder, "body") else "encoder."
    out: dict[str, Tensor] = {}
    unused: list[str] = []
    for key, value in sd.items():
        if _SCAN_INDEX.search(key):
            continue
        if naming == "ader" and _ADER_UNUSED.search(key):
            unused.append(key)
            continue
        if key.startswith("net_t."):
            out[encoder_prefix + key[len("net_t."):]] = value
            continue
        for pattern, repl in _RULES[naming]:
            new, count = pattern.subn(repl, key)
            if count:
                key = new
                break
        out[key] = value
    if unused:
        _log.info("checkpoint_filter_fn: dropped ADer's unused depthwise conv33 (%d tensors): %s",
                  len(unused), ", ".join(unused))
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


def load_pretrained(model: MambaAD, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True,
                    *, revision: str | None = None) -> nn.modules.module._IncompatibleKeys:
    """Load MambaAD weights (the authors' checkpoints in either naming, or ours) into ``model``.

    With ``strict=True`` every parameter and persistent buffer of ``model`` must come from the
    checkpoint and every tensor of the checkpoint must land in the model (only the authors' stored
    scan indices and ADer's unused ``conv33`` are dropped, by :func:`checkpoint_filter_fn`); the
    check runs before anything is copied, so a refused checkpoint leaves ``model`` untouched.

    Args:
        model: the model to fill.
        checkpoint: a path to a ``torch.save`` file (loaded on the CPU with ``weights_only=True``), a
            file on the Hugging Face Hub (``hf://<owner>/<repo>[@<revision>]/<path>``, fetched through
            the Hub cache, see :mod:`mambaad.hub`; e.g. the authors'
            ``hf://Lewandofski/MambaAD/mvtec/mambaad_mvtec.pth``), or an already loaded checkpoint /
            state dict.
        strict: raise on missing or unexpected keys; ``False`` loads what matches and warns with the
            lists.
        revision: the Hub revision (branch, tag or commit) of an ``hf://`` checkpoint; overrides the
            URI's ``@revision``.

    Returns:
        torch's ``(missing_keys, unexpected_keys)`` (both empty after a strict load).

    Raises:
        ValueError: missing or unexpected keys (strict), tensors whose shapes differ from the model's
            (always), or a state dict in no known naming.
        mambaad.hub.HubError: an ``hf://`` file that cannot be fetched (or, offline, is not cached).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        from .hub import resolve

        checkpoint = torch.load(resolve(checkpoint, revision=revision), map_location="cpu", weights_only=True)
    state_dict = checkpoint_filter_fn(_unwrap(checkpoint), model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if shapes:
        raise ValueError(f"load_pretrained: {len(shapes)} tensors differ in shape from the model's "
                         f"(another configuration?): {_some(shapes)}")
    if (missing or unexpected) and strict:
        raise ValueError(f"load_pretrained: the checkpoint does not fit the model: {len(missing)} missing "
                         f"keys {missing}; {len(unexpected)} unexpected keys {unexpected} (strict=False "
                         "loads what matches)")
    result = model.load_state_dict(state_dict, strict=False)
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
