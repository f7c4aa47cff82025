"""MobileNetV2 converted from an int8 ``.tflite`` file: an ImageNet classifier and a MambaAD encoder.

The one ImageNet backbone these machines can reach offline is the post-training-quantized
MobileNetV2 1.0 / 224 of google-coral/test_data (Apache-2.0), shipped in
``../shared/weights/mobilenet_v2_tflite``. This module rebuilds it in float PyTorch:

1. :func:`convert_tflite` walks the TFLite graph operator by operator (:mod:`.tflite_reader`) and
   checks that it is a MobileNetV2 chain: a stem convolution, inverted-residual blocks
   (``[1x1 expand, ReLU6] -> 3x3 depthwise, ReLU6 -> 1x1 project [-> ADD of the block input]``),
   a 1x1 head convolution, a global mean and a 1x1 classifier. The architecture (channels, strides,
   residuals) is read from the graph, not assumed.
2. Every int8 weight is dequantized with its per-channel scale and zero point
   (``w = s[c] * (q - z[c])``); every int32 bias with ``scale_in * scale_w[c]``, which is how
   TFLite's kernels read it. Batch norm is already folded into these biased convolutions.
3. The float model pads its stride-2 convolutions the TF "SAME" way (asymmetric: the odd pixel at
   the bottom / right) and maps its ``[0, 1]`` input to what the uint8 input quantization stands for:
   ``real = scale * (255 x - zero_point)`` (about ``2 x - 1``).

Activations stay float, so the outputs approximate the int8 graph's (which itself approximates the
float network it was quantized from); the tests compare both with an integer oracle of the graph.

The converted weights are cached as safetensors keyed by the file's sha256 in ``$MAMBAAD_CACHE``
(default ``~/.cache/mambaad``). The default file is ``$MAMBAAD_TFLITE_MOBILENET`` when set, else the
shared one beside the checkout.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .tflite_reader import Graph, Operator, file_sha256, read_tflite, same_padding

TFLITE_FILE = "tf2_mobilenet_v2_1.0_224_ptq.tflite"
ENV_WEIGHTS = "MAMBAAD_TFLITE_MOBILENET"
ENV_CACHE = "MAMBAAD_CACHE"
CONVERTER_VERSION = 1  # bump when the conversion changes: old cache files are then ignored
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_REDUCTIONS = (4, 8, 16)


# --------------------------------------------------------------------------------------------
# Architecture description (what the graph walk produces, stored in the cache's metadata)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    """One biased convolution (batch norm folded), optionally followed by ReLU6."""

    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    groups: int
    relu6: bool
    padding: str  # "SAME" (TF: odd pixel after) or "VALID"


@dataclass(frozen=True)
class BlockSpec:
    """One inverted residual: optional 1x1 expand, 3x3 depthwise, linear 1x1 project."""

    expand: ConvSpec | None
    depthwise: ConvSpec
    project: ConvSpec
    residual: bool

    @property
    def stride(self) -> int:
        return self.depthwise.stride

    @property
    def out_ch(self) -> int:
        return self.project.out_ch


@dataclass(frozen=True)
class MobileNetV2Spec:
    """The whole network, read from a TFLite graph.

    ``input_scale`` and ``input_shift`` map an image in [0, 1] to the real values the quantized
    input stands for: ``real = input_scale * x + input_shift``.
    """

    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec
    num_classes: int
    input_scale: float
    input_shift: float

    def block_strides(self) -> list[int]:
        """Output stride (total reduction) of every block, in order."""
        strides, s = [], self.stem.stride
        for block in self.blocks:
            s *= block.stride
            strides.append(s)
        return strides

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MobileNetV2Spec:
        d = json.loads(text)
        conv = lambda c: None if c is None else ConvSpec(**c)  # noqa: E731
        blocks = tuple(
            BlockSpec(conv(b["expand"]), conv(b["depthwise"]), conv(b["project"]), b["residual"])
            for b in d["blocks"]
        )
        return cls(
            conv(d["stem"]), blocks, conv(d["head"]), d["num_classes"], d["input_scale"], d["input_shift"]
        )


# --------------------------------------------------------------------------------------------
# The graph walk
# --------------------------------------------------------------------------------------------


class _Walk:
    """Cursor over the graph's operators that follows the one activation tensor of the chain."""

    def __init__(self, graph: Graph, name: str) -> None:
        self.graph, self.name = graph, name
        self.alias: dict[int, int] = {}  # outputs of QUANTIZE / DEQUANTIZE -> their source
        self.ops: list[Operator] = []
        for op in graph.operators:
            if op.kind in ("QUANTIZE", "DEQUANTIZE") and graph.tensors[op.inputs[0]].data is None:
                self.alias[op.outputs[0]] = self.src(op.inputs[0])  # same real values
            else:
                self.ops.append(op)
        self.pos = 0
        self.cur = graph.inputs[0]
        self.state: dict[str, torch.Tensor] = {}
        self.block_tensors: list[int] = []  # the graph tensor each block outputs

    def src(self, t: int) -> int:
        return self.alias.get(t, t)

    def fail(self, op: Operator | None, expected: str) -> ValueError:
        where = "end of graph" if op is None else f"operator {op.index} ({op.kind})"
        return ValueError(
            f"{self.name}: {where}: expected {expected}; not a MobileNetV2 graph this converter knows"
        )

    def peek(self, ahead: int = 0) -> Operator | None:
        i = self.pos + ahead
        return self.ops[i] if i < len(self.ops) else None

    def take(self, kinds: tuple[str, ...], expected: str) -> Operator:
        op = self.peek()
        if op is None or op.kind not in kinds or self.src(op.inputs[0]) != self.cur:
            raise self.fail(op, f"{expected} reading tensor {self.cur}")
        self.pos += 1
        self.cur = op.outputs[0]
        return op

    def conv(
        self, prefix: str, kinds: tuple[str, ...], kernel: int | None, relu6: bool, what: str
    ) -> ConvSpec:
        """Take one convolution, check it, store its dequantized weight and bias under ``prefix``."""
        op = self.take(kinds, what)
        x_t, w_t = self.graph.tensors[op.inputs[0]], self.graph.tensors[op.inputs[1]]
        opt = op.options
        act = opt["activation"]
        square_stride = opt["stride"][0] == opt["stride"][1]
        if act != ("RELU6" if relu6 else "NONE") or opt["dilation"] != (1, 1) or not square_stride:
            found = f"activation {act}, dilation {opt['dilation']}, stride {opt['stride']}"
            raise self.fail(op, f"{what} (found {found})")
        w = w_t.dequantize()  # float64, TFLite layout
        if op.kind == "CONV_2D":  # OHWI
            weight, groups = w.transpose(0, 3, 1, 2), 1
        else:  # (1, KH, KW, C * multiplier); torch groups keep TF's channel order c * m + j
            weight, groups = w[0].transpose(2, 0, 1)[:, None], x_t.shape[-1]
        out_ch, in_per_group, kh, kw = weight.shape
        if kh != kw or (kernel is not None and kh != kernel) or in_per_group * groups != x_t.shape[-1]:
            raise self.fail(op, f"{what} ({kh}x{kw} kernel on {x_t.shape[-1]} channels)")
        bias = np.zeros(out_ch)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b_t = self.graph.tensors[op.inputs[2]]
            bias = b_t.data.astype(np.float64)
            if b_t.quantized:  # int32 accumulator units: TFLite reads them with scale_in * scale_w[c]
                bias = bias * float(x_t.scale[0]) * w_t.scale.astype(np.float64)
        self.state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, np.float32))
        self.state[f"{prefix}.bias"] = torch.from_numpy(bias.astype(np.float32))
        return ConvSpec(x_t.shape[-1], out_ch, kh, opt["stride"][0], groups, relu6, opt["padding"])

    def is_head(self) -> bool:
        nxt, after = self.peek(), self.peek(1)
        pools = ("MEAN", "AVERAGE_POOL_2D")
        return nxt is not None and nxt.kind == "CONV_2D" and after is not None and after.kind in pools


def _input_scaling(graph: Graph, name: str) -> tuple[float, float]:
    """``(scale, shift)`` with ``real = scale * x + shift`` for an image x in [0, 1]."""
    t = graph.tensors[graph.inputs[0]]
    if not t.quantized or t.dtype not in (np.uint8, np.int8) or t.shape[-1] != 3:
        raise ValueError(
            f"{name}: the input is {t.dtype} {t.shape}; only uint8 / int8 RGB inputs say how pixels "
            "map to real values"
        )
    offset = 128 if t.dtype == np.int8 else 0  # int8 inputs hold pixel - 128
    s, z = float(t.scale[0]), float(t.zero_point[0])
    return 255.0 * s, -s * (z + offset)


@dataclass(frozen=True, eq=False)
class Conversion:
    """What :func:`convert_graph` reads from a graph.

    Attributes:
        spec: the architecture.
        state: float weights, loadable into :class:`MobileNetV2TFLite`.
        block_tensors: the graph tensor index each block outputs (to compare activations).
    """

    spec: MobileNetV2Spec
    state: dict[str, torch.Tensor]
    block_tensors: tuple[int, ...]


def convert_graph(graph: Graph, name: str = "tflite") -> Conversion:
    """Walk a MobileNetV2 TFLite graph in operator order; return its architecture and float weights.

    Raises:
        ValueError: the graph is not a chain this converter knows (the message names the operator).
    """
    walk = _Walk(graph, name)
    scale, shift = _input_scaling(graph, name)
    stem = walk.conv("stem.conv", ("CONV_2D",), None, True, "the stem CONV_2D with ReLU6")
    blocks: list[BlockSpec] = []
    while not walk.is_head():
        i, block_in = len(blocks), walk.cur
        expand = None
        nxt = walk.peek()
        if nxt is not None and nxt.kind == "CONV_2D":
            expand = walk.conv(f"blocks.{i}.expand.conv", ("CONV_2D",), 1, True, "a 1x1 CONV_2D, ReLU6")
        dw = walk.conv(f"blocks.{i}.depthwise.conv", ("DEPTHWISE_CONV_2D",), None, True, "a depthwise, ReLU6")
        proj = walk.conv(f"blocks.{i}.project.conv", ("CONV_2D",), 1, False, "a linear 1x1 project CONV_2D")
        residual = False
        nxt = walk.peek()
        if nxt is not None and nxt.kind == "ADD":
            summands = {walk.src(t) for t in nxt.inputs}
            if summands != {block_in, walk.cur} or nxt.options["activation"] != "NONE":
                raise walk.fail(nxt, "the residual ADD of the block input and the projection")
            walk.pos, walk.cur, residual = walk.pos + 1, nxt.outputs[0], True
        blocks.append(BlockSpec(expand, dw, proj, residual))
        walk.block_tensors.append(walk.cur)
    head = walk.conv("head.conv", ("CONV_2D",), 1, True, "the 1x1 head CONV_2D, ReLU6")
    _take_global_pool(walk)
    cls = walk.conv("classifier", ("CONV_2D",), 1, False, "the 1x1 classifier CONV_2D")
    walk.state["classifier.weight"] = walk.state["classifier.weight"][:, :, 0, 0]
    if walk.peek() is not None and walk.peek().kind == "RESHAPE":
        op = walk.take(("RESHAPE",), "the logits RESHAPE")
        if graph.tensors[op.outputs[0]].shape[1:] != (cls.out_ch,):
            raise walk.fail(op, f"a reshape to (batch, {cls.out_ch})")
    if walk.peek() is not None and walk.peek().kind == "SOFTMAX":
        walk.take(("SOFTMAX",), "the SOFTMAX")
    if walk.peek() is not None or walk.src(graph.outputs[0]) != walk.cur:
        raise walk.fail(walk.peek(), "the graph output after the classifier")
    spec = MobileNetV2Spec(stem, tuple(blocks), head, cls.out_ch, scale, shift)
    return Conversion(spec, walk.state, tuple(walk.block_tensors))


def _take_global_pool(walk: _Walk) -> None:
    op = walk.peek()
    in_shape = walk.graph.tensors[walk.cur].shape  # (1, H, W, C)
    if op is not None and op.kind == "MEAN":
        walk.take(("MEAN",), "the global MEAN")
        axes = sorted(int(a) % 4 for a in walk.graph.tensors[op.inputs[1]].data.reshape(-1))
        if axes != [1, 2] or not op.options["keep_dims"]:
            raise walk.fail(op, f"a MEAN over H and W keeping dims (axes {axes})")
        return
    walk.take(("AVERAGE_POOL_2D",), "the global MEAN or AVERAGE_POOL_2D")
    opt = op.options
    if opt["filter"] != tuple(in_shape[1:3]) or opt["padding"] != "VALID" or opt["activation"] != "NONE":
        raise walk.fail(op, f"an AVERAGE_POOL_2D over the whole {in_shape[1]}x{in_shape[2]} map")


def convert_tflite(path: str | Path) -> tuple[MobileNetV2Spec, dict[str, torch.Tensor], str]:
    """Read and convert a MobileNetV2 ``.tflite`` file (no cache).

    Returns:
        ``(spec, state_dict, sha256 of the file)``; the state dict loads into :class:`MobileNetV2TFLite`.
    """
    graph = read_tflite(path)
    conv = convert_graph(graph, str(path))
    return conv.spec, conv.state, graph.sha256


# --------------------------------------------------------------------------------------------
# Paths and the safetensors cache
# --------------------------------------------------------------------------------------------


def default_tflite_path() -> Path:
    """``$MAMBAAD_TFLITE_MOBILENET`` when set, else ``../shared/weights/mobilenet_v2_tflite/...``.

    Raises:
        FileNotFoundError: the file is not there (the message says how to point at one).
    """
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${ENV_WEIGHTS} names {path}, which is not a file")
        return path
    repo = Path(__file__).resolve().parents[2]
    path = repo.parent / "shared" / "weights" / "mobilenet_v2_tflite" / TFLITE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no MobileNetV2 .tflite at {path}; pass its path or set ${ENV_WEIGHTS} "
            f"({TFLITE_FILE} from google-coral/test_data)"
        )
    return path


def cache_dir() -> Path:
    """``$MAMBAAD_CACHE`` when set, else ``~/.cache/mambaad``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mambaad"


def cache_file(sha256: str) -> Path:
    """Where the conversion of the file with this sha256 is cached."""
    return cache_dir() / f"mobilenet_v2_tflite-v{CONVERTER_VERSION}-{sha256}.safetensors"


def _read_cache(target: Path, sha256: str) -> tuple[MobileNetV2Spec, dict[str, torch.Tensor]] | None:
    from safetensors import SafetensorError, safe_open

    if not target.is_file():
        return None
    try:
        with safe_open(str(target), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("sha256") != sha256 or meta.get("converter_version") != str(CONVERTER_VERSION):
                return None
            state = {k: f.get_tensor(k) for k in f.keys()}
            return MobileNetV2Spec.from_json(meta["spec"]), state
    except (OSError, SafetensorError, KeyError, TypeError, ValueError):
        return None  # unreadable or foreign: convert again and overwrite


def _write_cache(target: Path, spec: MobileNetV2Spec, state: dict[str, torch.Tensor], sha256: str) -> None:
    from safetensors.torch import save_file

    meta = {"sha256": sha256, "converter_version": str(CONVERTER_VERSION), "spec": spec.to_json()}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata=meta)
            os.replace(tmp, target)  # atomic: concurrent loaders see the old file or the new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"could not cache the converted MobileNetV2 at {target}: {exc}", stacklevel=3)


def load_converted(path: str | Path | None = None) -> tuple[MobileNetV2Spec, dict[str, torch.Tensor]]:
    """The converted network of a ``.tflite`` file: from the cache when its sha256 is there.

    Args:
        path: the ``.tflite`` file; None for :func:`default_tflite_path`.

    Returns:
        ``(spec, state_dict)``.
    """
    path = default_tflite_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .tflite file at {path}")
    sha = file_sha256(path)
    cached = _read_cache(cache_file(sha), sha)
    if cached is not None:
        return cached
    spec, state, sha = convert_tflite(path)
    _write_cache(cache_file(sha), spec, state, sha)
    return spec, state


# --------------------------------------------------------------------------------------------
# The float PyTorch network
# --------------------------------------------------------------------------------------------


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "SAME" padding computed from the input size (the odd pixel after).

    Input ``(B, C, H, W)`` -> ``(B, O, ceil(H / s), ceil(W / s))``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if any(ph) or any(pw):
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return super().forward(x)


class ConvUnit(nn.Module):
    """A biased convolution (folded batch norm) and ReLU6 when the graph fused one."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        k, s = spec.kernel, spec.stride
        args = (spec.in_ch, spec.out_ch, k, s)
        if spec.padding == "VALID":
            self.conv = nn.Conv2d(*args, padding=0, groups=spec.groups)
        elif s == 1 and k % 2 == 1:  # SAME at stride 1 with an odd kernel is symmetric
            self.conv = nn.Conv2d(*args, padding=k // 2, groups=spec.groups)
        else:
            self.conv = Conv2dSame(*args, padding=0, groups=spec.groups)
        self.act = nn.ReLU6() if spec.relu6 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``[expand] -> depthwise -> project (+ input when residual)``."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.expand = ConvUnit(spec.expand) if spec.expand is not None else nn.Identity()
        self.depthwise = ConvUnit(spec.depthwise)
        self.project = ConvUnit(spec.project)
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2TFLite(nn.Module):
    """The float MobileNetV2 described by a :class:`MobileNetV2Spec` (weights loaded separately).

    ``forward``: RGB ``(B, 3, H, W)`` in [0, 1] (224 x 224 for the ImageNet classifier) ->
    ``(B, num_classes)`` logits, the values the TFLite graph feeds its SOFTMAX.
    """

    def __init__(self, spec: MobileNetV2Spec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = ConvUnit(spec.stem)
        self.blocks = nn.ModuleList(InvertedResidual(b) for b in spec.blocks)
        self.head = ConvUnit(spec.head)
        self.classifier = nn.Linear(spec.head.out_ch, spec.num_classes)
        # channels-last depthwise convolutions run about 1.6x faster on CPU (BENCHMARKS.md)
        self.to(memory_format=torch.channels_last)

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> the real values of the quantized input, same shape."""
        return x * self.spec.input_scale + self.spec.input_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, 1)
        x = self.stem(self.scale_input(x).contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            x = block(x)
        x = self.head(x).mean(dim=(2, 3))  # (B, C_head)
        return self.classifier(x)


def _check_images(x: torch.Tensor, multiple: int) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"H and W must be multiples of {multiple}, got {tuple(x.shape[2:])}")


def tflite_mobilenet_v2(path: str | Path | None = None) -> MobileNetV2TFLite:
    """The ImageNet classifier converted from a MobileNetV2 ``.tflite`` file, in eval mode.

    Args:
        path: the ``.tflite`` file; None for :func:`default_tflite_path`.

    Returns:
        A module taking RGB ``(B, 3, 224, 224)`` in [0, 1] and returning ``(B, 1001)`` logits
        (index 0 = background).
    """
    spec, state = load_converted(path)
    model = MobileNetV2TFLite(spec)
    model.load_state_dict(state)
    return model.eval()


# --------------------------------------------------------------------------------------------
# The MambaAD encoder
# --------------------------------------------------------------------------------------------


class MobileNetV2Encoder(nn.Module):
    """Frozen MobileNetV2 (from the TFLite file) giving features at strides 4, 8 and 16.

    The taps are the last block output at each stride; for MobileNetV2 1.0 these are blocks 2, 5
    and 12 (0-based; in the graph ``expanded_conv_3 / _6 / _13/add``) with 24, 32 and 96 channels, the
    outputs timm's ``mobilenetv2_100`` gives at ``out_indices=(1, 2, 3)``. Blocks after the last tap
    and the classifier are dropped.

    Input: RGB ``(B, 3, H, W)`` normalised with the ImageNet mean / std, H and W multiples of 16;
    it is un-normalised to [0, 1], then scaled as the TFLite input quantization implies.
    Output: ``[(B, 24, H/4, W/4), (B, 32, H/8, W/8), (B, 96, H/16, W/16)]``.

    Attributes:
        channels: the three channel counts.
        reductions: ``(4, 8, 16)``.
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        model = tflite_mobilenet_v2(weights)
        spec = model.spec
        strides = spec.block_strides()
        taps = []
        for r in ENCODER_REDUCTIONS:
            at = [i for i, s in enumerate(strides) if s == r]
            if not at:
                raise ValueError(f"the converted network has no block at stride {r} (strides {strides})")
            taps.append(at[-1])
        self.taps = tuple(taps)
        self.channels = tuple(spec.blocks[i].out_ch for i in taps)
        self.reductions = ENCODER_REDUCTIONS
        self.stem = model.stem
        self.blocks = nn.ModuleList(model.blocks[: taps[-1] + 1])
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # real = input_scale * (x_norm * std + mean) + input_shift, per channel
        in_scale, in_shift = spec.input_scale * std, spec.input_scale * mean + spec.input_shift
        self.register_buffer("in_scale", in_scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", in_shift.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> MobileNetV2Encoder:
        """Stays in eval mode whatever ``mode`` is (the encoder is frozen)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"taps={self.taps}, channels={self.channels}, reductions={self.reductions}, frozen"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` ImageNet-normalised -> three feature maps (see the class docstring)."""
        _check_images(x, self.reductions[-1])
        x = self.stem((x * self.in_scale + self.in_shift).contiguous(memory_format=torch.channels_last))
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x.contiguous())  # computed channels-last, handed out NCHW-contiguous
        return feats
