"""Read a ``.tflite`` file into plain Python objects, and run its quantized graph as an oracle.

:func:`read_tflite` parses the flatbuffer with the ``tflite`` package (generated accessors; no
TensorFlow) into a :class:`Graph`: tensors (shape, dtype, quantization, constant data) and
operators in execution order with their builtin options decoded into a dict.

:func:`run_quantized` executes an int8 / uint8 graph the way TFLite's integer kernels do:
``real = scale * (q - zero_point)``; a convolution accumulates ``(q_in - zp_in) * q_w`` exactly
(int32 in TFLite, float64 here: every product and sum stays an integer below 2**53), adds the int32
bias, rescales by ``scale_in * scale_w[c] / scale_out``, rounds, adds ``zp_out`` and clamps to the
fused activation's range. TFLite rescales with fixed-point multipliers, so an output can differ from
this by one quantization step where the real value sits on a rounding tie. It is slow and simple on
purpose: it is what the float conversion in :mod:`.tflite_mobilenet` is tested against.

Activations are NHWC throughout, like the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_TENSOR_DTYPES = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8
}
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


@dataclass(frozen=True, eq=False)
class Tensor:
    """One tensor of the graph.

    Attributes:
        index: position in the subgraph's tensor list (what operators refer to).
        name: the converter's name (often several ';'-joined TF names).
        shape: the static shape, NHWC for activations; OHWI for CONV_2D weights,
            (1, KH, KW, C) for DEPTHWISE_CONV_2D weights.
        dtype: numpy dtype of the stored values.
        scale: per-tensor ``(1,)`` or per-channel ``(C,)`` float scales; None when not quantized.
        zero_point: same length as ``scale``; None when not quantized.
        quantized_dim: the axis the per-channel scales run along.
        data: the constant contents (shaped), None for activations.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dim: int
    data: np.ndarray | None

    @property
    def quantized(self) -> bool:
        """True when the tensor stores integers standing for ``scale * (q - zero_point)``."""
        return self.scale is not None

    def _per_channel(self, a: np.ndarray, ndim: int) -> np.ndarray:
        shape = [1] * ndim
        if a.size > 1:
            shape[self.quantized_dim] = a.size
        return a.astype(np.float64).reshape(shape)

    def centred(self, q: np.ndarray | None = None) -> np.ndarray:
        """``q - zero_point`` as float64 (``q`` defaults to the constant data); exact integers.

        Per-channel zero points broadcast along :attr:`quantized_dim`.
        """
        values = self.data if q is None else q
        if values is None:
            raise ValueError(f"tensor {self.index} ({self.name!r}) holds no constant data")
        values = np.asarray(values, dtype=np.float64)
        if not self.quantized:
            return values
        return values - self._per_channel(self.zero_point, values.ndim)

    def dequantize(self, q: np.ndarray | None = None) -> np.ndarray:
        """The real values ``scale * (q - zero_point)`` as float64 (``q`` defaults to the constant data).

        Per-channel scales broadcast along :attr:`quantized_dim`; unquantized tensors come back as is.
        """
        centred = self.centred(q)
        if not self.quantized:
            return centred
        return self._per_channel(self.scale, centred.ndim) * centred


@dataclass(frozen=True, eq=False)
class Operator:
    """One operator, in execution order.

    Attributes:
        index: position in the subgraph's operator list.
        kind: builtin operator name, e.g. ``"CONV_2D"``.
        inputs: tensor indices (-1 for an absent optional input).
        outputs: tensor indices.
        options: decoded builtin options (see :func:`_decode_options` for the keys per kind).
    """

    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Graph:
    """The single subgraph of a ``.tflite`` file.

    Attributes:
        tensors: every tensor, by index.
        operators: every operator, in execution order.
        inputs: the graph input tensor indices.
        outputs: the graph output tensor indices.
        sha256: hex digest of the file's bytes.
    """

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    sha256: str


def _import_tflite() -> Any:
    try:
        import tflite
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .tflite files needs the 'tflite' package (flatbuffers accessors, no TensorFlow): "
            "pip install tflite flatbuffers"
        ) from exc
    return tflite


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _decode_options(tfl: Any, kind: str, op: Any) -> dict[str, Any]:
    """The builtin options of ``op`` as a dict; kinds this module does not use give ``{}``.

    Keys: CONV_2D / DEPTHWISE_CONV_2D: padding, stride (h, w), dilation (h, w), activation
    (+ depth_multiplier); AVERAGE_POOL_2D: padding, stride, filter (h, w), activation; ADD:
    activation; MEAN: keep_dims; SOFTMAX: beta.
    """
    table = op.BuiltinOptions()
    if table is None:
        return {}

    def load(cls: type) -> Any:
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = load(tfl.Conv2DOptions if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions)
        out = {
            "padding": _PADDING[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": _ACTIVATION[o.FusedActivationFunction()],
        }
        if kind == "DEPTHWISE_CONV_2D":
            out["depth_multiplier"] = o.DepthMultiplier()
        return out
    if kind == "AVERAGE_POOL_2D":
        o = load(tfl.Pool2DOptions)
        return {
            "padding": _PADDING[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "filter": (o.FilterHeight(), o.FilterWidth()),
            "activation": _ACTIVATION[o.FusedActivationFunction()],
        }
    if kind == "ADD":
        return {"activation": _ACTIVATION[load(tfl.AddOptions).FusedActivationFunction()]}
    if kind == "MEAN":
        return {"keep_dims": bool(load(tfl.ReducerOptions).KeepDims())}
    if kind == "SOFTMAX":
        return {"beta": float(load(tfl.SoftmaxOptions).Beta())}
    return {}


def _buffer_bytes(model: Any, raw: bytes, index: int) -> bytes | None:
    buf = model.Buffers(index)
    if buf is None:
        return None
    if buf.Offset() > 1:  # large models keep buffers after the flatbuffer, addressed by offset
        return raw[buf.Offset() : buf.Offset() + buf.Size()]
    if buf.DataLength() == 0:
        return None
    return buf.DataAsNumpy().tobytes()


def _read_tensor(model: Any, raw: bytes, sub: Any, index: int) -> Tensor:
    t = sub.Tensors(index)
    if t.Type() not in _TENSOR_DTYPES:
        raise ValueError(f"tensor {index} ({t.Name()!r}): unsupported TFLite tensor type {t.Type()}")
    dtype = np.dtype(_TENSOR_DTYPES[t.Type()])
    shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    q = t.Quantization()
    scale = zero = None
    qdim = 0
    if q is not None and q.ScaleLength() > 0:
        scale = q.ScaleAsNumpy().astype(np.float32)
        zero = np.zeros(scale.shape, np.int64)
        if q.ZeroPointLength():
            zero = q.ZeroPointAsNumpy().astype(np.int64)
        qdim = int(q.QuantizedDimension())
    data = _buffer_bytes(model, raw, t.Buffer())
    if data is not None:
        data = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return Tensor(index, t.Name().decode("utf-8", "replace"), shape, dtype, scale, zero, qdim, data)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tflite(path: str | Path) -> Graph:
    """Parse a ``.tflite`` file (one subgraph) into a :class:`Graph`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a TFLite flatbuffer, several subgraphs, or an unsupported tensor type.
    """
    tfl = _import_tflite()
    raw = Path(path).read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ValueError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    model = tfl.Model.GetRootAsModel(raw, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
    sub = model.Subgraphs(0)
    op_names = _enum_names(tfl.BuiltinOperator)
    tensors = tuple(_read_tensor(model, raw, sub, i) for i in range(sub.TensorsLength()))
    ops = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        # schema >= 2.4 moved builtin codes > 127 to BuiltinCode; the deprecated byte keeps the rest
        kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ins = tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else ()
        outs = tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        ops.append(Operator(i, kind, ins, outs, _decode_options(tfl, kind, op)))
    return Graph(
        tensors=tensors,
        operators=tuple(ops),
        inputs=tuple(int(x) for x in sub.InputsAsNumpy()),
        outputs=tuple(int(x) for x in sub.OutputsAsNumpy()),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


# --------------------------------------------------------------------------------------------
# The quantized oracle
# --------------------------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding of one spatial dim: ``(before, after)``, the odd pixel going after.

    The output has ``ceil(size / stride)`` positions.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _qrange(t: Tensor) -> tuple[int, int]:
    info = np.iinfo(t.dtype)
    return int(info.min), int(info.max)


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)  # half up, as TFLite's rounding multipliers do for these magnitudes


def _requantize(real_over_scale: np.ndarray, out: Tensor, activation: str) -> np.ndarray:
    """``real / scale_out`` -> stored integers of ``out`` after the fused activation's clamp."""
    lo, hi = _qrange(out)
    zp = int(out.zero_point[0])
    s = float(out.scale[0])
    if activation in ("RELU", "RELU6"):
        lo = max(lo, zp)
    if activation == "RELU6":
        hi = min(hi, zp + int(_round(np.array(6.0 / s))))
    elif activation != "NONE" and activation != "RELU":
        raise NotImplementedError(f"fused activation {activation} in the quantized oracle")
    q = _round(real_over_scale) + zp
    return np.clip(q, lo, hi).astype(np.int64)


def _conv(g: Graph, op: Operator, q: np.ndarray) -> np.ndarray:
    x_t, w_t, b_t = (g.tensors[i] for i in op.inputs[:3])
    out_t = g.tensors[op.outputs[0]]
    x = torch.from_numpy(x_t.centred(q)).permute(0, 3, 1, 2)  # (b, c, h, w) exact integers
    w = w_t.centred()  # exact integers
    if op.kind == "CONV_2D":
        weight = torch.from_numpy(w).permute(0, 3, 1, 2)  # OHWI -> (o, i, kh, kw)
        groups = 1
    else:
        weight = torch.from_numpy(w[0]).permute(2, 0, 1)[:, None]  # (1, kh, kw, c) -> (c, 1, kh, kw)
        groups = x.shape[1]
    kh, kw = weight.shape[-2:]
    (sh, sw), (dh, dw) = op.options["stride"], op.options["dilation"]
    if op.options["padding"] == "SAME":
        ph, pw = same_padding(x.shape[2], kh, sh, dh), same_padding(x.shape[3], kw, sw, dw)
        x = F.pad(x, (*pw, *ph))  # zeros here are the input zero point: real 0
    # Every partial sum is an integer; float32 holds them exactly below 2**24 (the depthwise case,
    # and much faster there), float64 below 2**53 (every int32 accumulator).
    bound = float(weight[0].numel()) * float(x.abs().max()) * float(weight.abs().max())
    dtype = torch.float32 if bound < 2**24 else torch.float64
    acc = F.conv2d(x.to(dtype), weight.to(dtype), stride=(sh, sw), dilation=(dh, dw), groups=groups)
    acc = acc.double()  # (b, o, h, w)
    acc = acc.permute(0, 2, 3, 1).numpy()  # NHWC, exact int32 sums
    if b_t is not None:
        acc = acc + b_t.data.astype(np.float64)
    mult = float(x_t.scale[0]) * w_t.scale.astype(np.float64) / float(out_t.scale[0])  # (o,) or (1,)
    return _requantize(acc * mult, out_t, op.options["activation"])


def _add(g: Graph, op: Operator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ta, tb, out_t = g.tensors[op.inputs[0]], g.tensors[op.inputs[1]], g.tensors[op.outputs[0]]
    real = ta.dequantize(a) + tb.dequantize(b)
    return _requantize(real / float(out_t.scale[0]), out_t, op.options["activation"])


def run_operator(graph: Graph, op: Operator, inputs: list[np.ndarray | None]) -> np.ndarray:
    """One integer operator: stored integers of its inputs (NHWC) -> stored integers of its output.

    Supported: QUANTIZE, CONV_2D, DEPTHWISE_CONV_2D, ADD, MEAN, RESHAPE, SOFTMAX. ``inputs`` follows
    ``op.inputs``; constant inputs (weights, biases, axes) are read from the graph, pass None.

    Raises:
        NotImplementedError: any other operator.
    """
    out_t = graph.tensors[op.outputs[0]]
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return _conv(graph, op, inputs[0])
    if op.kind == "ADD":
        return _add(graph, op, inputs[0], inputs[1])
    if op.kind == "QUANTIZE":
        real = graph.tensors[op.inputs[0]].dequantize(inputs[0])
        return _requantize(real / float(out_t.scale[0]), out_t, "NONE")
    if op.kind == "MEAN":
        axes = tuple(int(a) for a in graph.tensors[op.inputs[1]].data.reshape(-1))
        real = graph.tensors[op.inputs[0]].dequantize(inputs[0]).mean(axis=axes, keepdims=True)
        if not op.options["keep_dims"]:
            real = real.squeeze(axes)
        return _requantize(real / float(out_t.scale[0]), out_t, "NONE")
    if op.kind == "RESHAPE":
        return inputs[0].reshape(inputs[0].shape[0], *out_t.shape[1:])
    if op.kind == "SOFTMAX":
        logits = graph.tensors[op.inputs[0]].dequantize(inputs[0]) * op.options["beta"]
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return _requantize(p / float(out_t.scale[0]), out_t, "NONE")
    raise NotImplementedError(f"operator {op.index} {op.kind} in the quantized oracle")


def run_quantized(graph: Graph, image: np.ndarray, keep: tuple[int, ...] = ()) -> dict[int, np.ndarray]:
    """Run an integer-quantized graph on one batch, operator by operator (:func:`run_operator`).

    Args:
        graph: from :func:`read_tflite`; every activation int8 or uint8.
        image: ``(B, H, W, C)`` stored integers of the graph input (uint8 pixels for MobileNetV2);
            H and W need not match the file's static shape.
        keep: tensor indices whose values to return besides the graph outputs.

    Returns:
        ``{tensor index: stored integers (int64, NHWC)}`` for the graph outputs and ``keep``.

    Raises:
        NotImplementedError: an operator :func:`run_operator` does not support.
    """
    values: dict[int, np.ndarray] = {graph.inputs[0]: np.asarray(image).astype(np.int64)}
    for op in graph.operators:
        values[op.outputs[0]] = run_operator(graph, op, [values.get(i) for i in op.inputs])
    return {i: values[i] for i in set(graph.outputs) | set(keep)}
