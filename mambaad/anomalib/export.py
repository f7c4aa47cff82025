"""ONNX and OpenVINO export of :class:`mambaad.anomalib.MambaAD` (``Engine.export(export_type=...)``).

anomalib's own ``to_onnx`` traces the module with ``torch.onnx.export``, which cannot write MambaAD's
scan (a custom operator of :mod:`mambaad_kernels`). Here the module's pipeline as anomalib exports
it, pre-processor -> model -> post-processor (anomalib's export versions of them: the resize without
antialiasing), goes through :func:`mambaad_kernels.export_onnx`, which writes every scan in standard
ONNX operators (the ``portable`` backend). The file is then checked against the eager pipeline (the
module's own scan backends) with onnxruntime, or, for OpenVINO, with OpenVINO (CPU, float32
inference), on random images at the export size in batches of 2 and 3; a file that misses is removed.

Files, as anomalib lays them out: ``EXPORT_ROOT/weights/onnx/<name>.onnx`` and
``EXPORT_ROOT/weights/openvino/<name>.xml`` (+ ``.bin``). Input ``input`` ``(B, 3, H, W)`` float32 RGB
in [0, 1] (not normalised: the pre-processor is inside), B dynamic, ``(H, W)`` fixed: ``input_size``,
else the module's ``image_size`` (a size other than it is resized inside the graph, without
antialiasing). Outputs named as anomalib's ``InferenceBatch`` fields, those the post-processor gives:
``pred_score (B,)``, ``pred_label (B,)`` bool, ``anomaly_map (B, 1, H, W)``, ``pred_mask (B, 1, H, W)``
bool; anomalib's ``OpenVINOInferencer`` reads them by name.

Checks: ``max |file - eager| / max |eager| <= 1e-4`` for the scores and maps; a label or mask may
differ only where its score or map lies within 1e-4 of the post-processor's threshold.
``compression_type=FP16`` is checked before the weights are halved on saving; the INT8 types
(anomalib's NNCF quantisation) are not checked.

Missing packages raise :class:`ExportUnavailable` naming what to install; where ``mambaad_kernels``
has no ``export_onnx`` (before the portable export), it names ``export_type="torch"`` and ``mambaad
export`` instead.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")  # anomalib's InferenceBatch order
BOOL_OF = {"pred_label": "pred_score", "pred_mask": "anomaly_map"}  # a verdict and the value it thresholds
MAX_REL_ERR = 1e-4
CHECK_BATCHES = (2, 3)
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # no bf16 on CPUs that have it: check float32


class ExportUnavailable(RuntimeError):
    """The export asked for cannot be made here (the message says why and what to install or use)."""


def _exporter() -> Any:
    """:mod:`mambaad_kernels.onnx_export`, its packages present, or :class:`ExportUnavailable`."""
    import mambaad_kernels

    if getattr(mambaad_kernels, "export_onnx", None) is None:
        raise ExportUnavailable(
            "MambaAD cannot be exported to ONNX or OpenVINO with this version of mambaad_kernels: its scan "
            "is a custom operator, and the portable scan in standard operators (mambaad_kernels.export_onnx) "
            "is not part of it. Use Engine.export(export_type='torch'), or save_mambaad_checkpoint() and "
            "`mambaad export` (a torch.export program).")
    from mambaad_kernels import onnx_export

    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
        try:
            onnx_export.require(module, package)
        except ImportError as err:
            raise ExportUnavailable(str(err)) from err
    return onnx_export


class Pipeline(nn.Module):
    """An anomalib module's inference as a function of tensors: ``images (B, 3, H, W)`` in [0, 1] ->
    the post-processor's fields in :data:`OUTPUT_NAMES` order (those it does not give left out).

    Copies of the module's pre-processor, model and post-processor, on the CPU (the module is left as
    it is). ``names``: the output names.
    """

    def __init__(self, module: Any, size: tuple[int, int]):
        super().__init__()
        self.pre = copy.deepcopy(module.pre_processor).cpu() if module.pre_processor is not None else None
        self.model = copy.deepcopy(module.model).cpu().eval()
        self.post = copy.deepcopy(module.post_processor).cpu() if module.post_processor is not None else None
        with torch.no_grad():
            out = self._fields(torch.rand(1, 3, *size))
        self.names = tuple(n for n in OUTPUT_NAMES if out.get(n) is not None)

    def _fields(self, images: torch.Tensor) -> dict[str, Any]:
        x = self.pre(images) if self.pre is not None else images
        out = self.model(x)
        if self.post is not None:
            out = self.post(out)
        return {n: getattr(out, n, None) for n in OUTPUT_NAMES}

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: A002  the graph input's name
        fields = self._fields(input)
        return tuple(fields[n] for n in self.names)

    def thresholds(self) -> dict[str, float]:
        """The threshold each verdict output is taken at (the post-processor's)."""
        if self.post is None:
            return {}
        return {"pred_label": float(self.post.normalized_image_threshold),
                "pred_mask": float(self.post.normalized_pixel_threshold)}


def check_outputs(got: list[np.ndarray], want: tuple[torch.Tensor, ...], names: tuple[str, ...],
                  thresholds: dict[str, float], what: str) -> float:
    """Compare a runtime's outputs with the eager pipeline's (see the module docstring).

    Returns:
        The largest relative error of the scores and maps.

    Raises:
        mambaad_kernels.onnx_export.ExportCheckError: a miss (the message names the output).
    """
    from mambaad_kernels.onnx_export import ExportCheckError, relative_error

    if len(got) != len(want):
        raise ExportCheckError(f"the {what} model gives {len(got)} outputs, the module {len(want)}")
    values = dict(zip(names, want))
    worst = 0.0
    for name, g, w in zip(names, got, want):
        if name in BOOL_OF:
            ref = values[BOOL_OF[name]].double()
            near = (ref - thresholds[name]).abs() <= MAX_REL_ERR * ref.abs().max().clamp_min(1e-30)
            differ = torch.as_tensor(np.asarray(g)).bool().reshape(w.shape) != w.bool()
            if bool((differ & ~near).any()):
                raise ExportCheckError(f"the {what} model's {name} differs from the module's away from the "
                                       f"threshold ({int(differ.sum())} of {differ.numel()} values)")
            continue
        err = relative_error(np.asarray(g), w.float())
        if not err <= MAX_REL_ERR:
            raise ExportCheckError(f"the {what} model's {name} differs from the module's by {err:.3g} "
                                   f"(max |diff| / max |module|; allowed {MAX_REL_ERR:g})")
        worst = max(worst, err)
    return worst


def _check_images(size: tuple[int, int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(b, 3, *size, generator=g) for b in CHECK_BATCHES]


def _size(module: Any, input_size: tuple[int, int] | None) -> tuple[int, int]:
    h, w = input_size if input_size is not None else module.image_size
    return int(h), int(w)


def _write_onnx(module: Any, path: Path, size: tuple[int, int], onnx_export: Any) -> tuple[Pipeline, list]:
    """Write the pipeline's ONNX file (unchecked); returns the pipeline and its eager outputs."""
    pipe = Pipeline(module, size).eval()
    images = _check_images(size)
    with torch.no_grad():
        want = [pipe(x) for x in images]
    onnx_export.export_onnx(pipe, images[0], str(path), dynamic_batch=True, output_names=pipe.names,
                            check=False)
    return pipe, list(zip(images, want))


def onnx_export(module: Any, export_root: str | os.PathLike, model_file_name: str = "model",
                input_size: tuple[int, int] | None = None, **kwargs: Any) -> Path:
    """``module.to_onnx``: write and check ``EXPORT_ROOT/weights/onnx/<name>.onnx``.

    Raises:
        ExportUnavailable: no portable export here, or onnx / onnxscript / onnxruntime missing.
        TypeError: ``torch.onnx.export`` arguments (``onnx_kwargs``), which this export does not take.
        mambaad_kernels.onnx_export.ExportCheckError: the file does not compute what the module does.
    """
    if kwargs:
        raise TypeError("MambaAD's ONNX export runs mambaad_kernels.export_onnx and takes no "
                        f"torch.onnx.export arguments; got {sorted(kwargs)}")
    exporter = _exporter()
    from anomalib.deploy import ExportType
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    size = _size(module, input_size)
    path = create_export_root(export_root, ExportType.ONNX) / f"{model_file_name}.onnx"
    pipe, cases = _write_onnx(module, path, size, exporter)
    try:
        session = exporter.onnx_session(str(path))
        for images, want in cases:
            check_outputs(exporter.run_onnx(session, [images]), want, pipe.names, pipe.thresholds(), "ONNX")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def openvino_export(module: Any, export_root: str | os.PathLike, model_file_name: str = "model",
                    input_size: tuple[int, int] | None = None, compression_type: Any = None,
                    datamodule: Any = None, metric: Any = None, task: Any = None, max_drop: float = 0.01,
                    ov_kwargs: dict[str, Any] | None = None,
                    onnx_kwargs: dict[str, Any] | None = None) -> Path:
    """``module.to_openvino``: the ONNX file of :func:`onnx_export` converted with OpenVINO, checked
    (float32, before any FP16 halving; INT8 types unchecked), saved as
    ``EXPORT_ROOT/weights/openvino/<name>.xml``. Arguments as anomalib's ``to_openvino``.

    Raises:
        ExportUnavailable: no portable export here, or openvino / onnx packages missing.
        mambaad_kernels.onnx_export.ExportCheckError: the model does not compute what the module does.
    """
    if onnx_kwargs:
        raise TypeError("MambaAD's OpenVINO export takes no torch.onnx.export arguments; got "
                        f"{sorted(onnx_kwargs)}")
    exporter = _exporter()
    try:
        import openvino as ov
    except ImportError as err:
        raise ExportUnavailable(f"OpenVINO export needs the openvino package ({err}): pip install openvino") \
            from err
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    size = _size(module, input_size)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, cases = _write_onnx(module, Path(tmp) / "model.onnx", size, exporter)
        ov_model = ov.convert_model(str(Path(tmp) / "model.onnx"), **(ov_kwargs or {}))
    compression = CompressionType(compression_type) if compression_type is not None else None
    if compression in (None, CompressionType.FP16):
        compiled = ov.Core().compile_model(ov_model, "CPU", OPENVINO_CONFIG)
        for images, want in cases:
            got = list(compiled(images.numpy()).values())
            check_outputs(got, want, pipe.names, pipe.thresholds(), "OpenVINO")
    else:
        ov_model = module._compress_ov_model(ov_model, compression, datamodule, metric, task, max_drop)
    path = create_export_root(export_root, ExportType.OPENVINO) / f"{model_file_name}.xml"
    ov.save_model(ov_model, str(path), compress_to_fp16=compression == CompressionType.FP16)
    return path
