"""ONNX and OpenVINO files of a trained model: what ``mambaad export --format onnx / openvino``
writes and ``mambaad predict --model model.onnx / model.xml`` runs.

Both hold the function of the ``.pt2`` (:mod:`mambaad.export`): normalised images ``(B, 3, S, S)``
float32 -> ``(anomaly_map (B, 1, S, S), pred_score (B,))``, B dynamic, S the trained size, the
Gaussian blur and upsampling included, with every scan in standard ONNX operators
(:mod:`mambaad_kernels.portable`). They run with nothing but ``onnxruntime`` or ``openvino``
installed: no torch, no package of ours.

Metadata, the record of the ``.pt2``'s ``mambaad.json`` (image size, normalisation, model name, the
thresholds and map range ``mambaad eval`` stored, format version) as JSON: in the ONNX file's
``metadata_props`` under the key ``"mambaad"``; in the OpenVINO model's ``rt_info`` at
``["mambaad", "metadata"]`` (in the ``.xml``).

Precision: OpenVINO runs float32 models in bfloat16 on CPUs with bf16 units (AVX-512 BF16, AMX)
unless compiled with ``{"INFERENCE_PRECISION_HINT": "f32"}`` (:data:`OPENVINO_CONFIG`), which the
check here and ``mambaad predict`` pass; the weights are stored in float32 (not compressed to fp16).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mambaad_kernels.onnx_export import export_onnx, relative_error

from .export_base import FORMAT, MAX_REL_ERR_PORTABLE, AnomalyProgram, ExportError, check_images

META_KEY = "mambaad"  # ONNX metadata_props key; OpenVINO rt_info path [META_KEY, "metadata"]
OUTPUT_NAMES = ("anomaly_map", "pred_score")
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def runtime(fmt: str) -> Any:
    """The runtime package of a format (``onnx``: onnxruntime, ``openvino``: openvino), or an
    ExportError naming the pip command that installs it."""
    package = RUNTIME_PACKAGES[fmt]
    try:
        return __import__(package)
    except ImportError as err:
        raise ExportError(f"running or writing a {fmt} model needs {package}, which is not installed "
                          f"({err}): pip install {package}") from err


def _verdicts(scores: np.ndarray, thresholds: dict[str, Any]) -> dict[str, list[bool]]:
    image = (thresholds or {}).get("image") or {}
    return {name: [bool(s >= t) for s in scores] for name, t in image.items() if t is not None}


def _compare(got: list[tuple[np.ndarray, np.ndarray]], want: list[tuple[torch.Tensor, torch.Tensor]],
             meta: dict[str, Any], what: str) -> float:
    """The largest relative error of map and score; ExportError on a miss or a changed verdict."""
    worst = 0.0
    for (g_map, g_score), (w_map, w_score) in zip(got, want, strict=True):
        for name, g, w in (("anomaly map", g_map, w_map), ("pred_score", g_score, w_score)):
            err = relative_error(g, w)
            if not err <= MAX_REL_ERR_PORTABLE:
                raise ExportError(f"the {what} model's {name} differs from the checkpoint's by {err:.3g} "
                                  f"(relative; allowed {MAX_REL_ERR_PORTABLE:g}): not written")
            worst = max(worst, err)
        if _verdicts(g_score, meta.get("thresholds")) != _verdicts(w_score.numpy(), meta.get("thresholds")):
            raise ExportError(f"the {what} model calls an image normal / anomalous differently from the "
                              "checkpoint at a stored threshold: not written")
    return worst


def _eager(model: nn.Module, size: int) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    images = check_images(size)
    with torch.no_grad():
        return images, [tuple(AnomalyProgram(model)(x)) for x in images]


def write_onnx(model: nn.Module, size: int, path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the eval-mode ``model`` (fused ``cpu`` scans) as an ONNX file, checked with
    onnxruntime on :data:`~mambaad.export.CHECK_BATCHES` random batches (map, score and verdicts).

    Returns:
        The metadata written, with ``checked_rel_err``.
    """
    runtime("onnx")
    images, want = _eager(model, size)
    meta = dict(meta, runtime="onnxruntime", backend="portable")
    _export(model, images[0], path, meta, check=False)
    session = runtime("onnx").InferenceSession(path, providers=["CPUExecutionProvider"])
    try:
        got = [tuple(session.run(None, {session.get_inputs()[0].name: x.numpy()})) for x in images]
        meta["checked_rel_err"] = _compare(got, want, meta, "ONNX")
    except BaseException:
        os.remove(path)
        raise
    import onnx

    proto = onnx.load(path)
    _set_meta(proto, meta)
    onnx.save_model(proto, path)
    return meta


def write_openvino(model: nn.Module, size: int, path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the eval-mode ``model`` as an OpenVINO model (``path`` = the ``.xml``, the ``.bin``
    beside it; float32 weights) through ONNX, checked with OpenVINO (CPU, f32) like
    :func:`write_onnx`.

    Returns:
        The metadata written, with ``checked_rel_err``.
    """
    ov = runtime("openvino")
    images, want = _eager(model, size)
    meta = dict(meta, runtime="openvino", backend="portable")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        _export(model, images[0], onnx_path, meta, check=False)
        ov_model = ov.convert_model(onnx_path)
    compiled = ov.Core().compile_model(ov_model, "CPU", OPENVINO_CONFIG)
    got = [tuple(compiled(x.numpy()).values()) for x in images]
    meta["checked_rel_err"] = _compare(got, want, meta, "OpenVINO")
    ov_model.set_rt_info(json.dumps(meta), [META_KEY, "metadata"])
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ov.save_model(ov_model, path, compress_to_fp16=False)
    return meta


def _export(model: nn.Module, example: torch.Tensor, path: str, meta: dict[str, Any], check: bool) -> None:
    export_onnx(AnomalyProgram(model), example, path, output_names=OUTPUT_NAMES, check=check,
                metadata={META_KEY: json.dumps(meta)})


def _set_meta(proto: Any, meta: dict[str, Any]) -> None:
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            entry.value = json.dumps(meta)
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


def _check_meta(raw: str | None, path: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: unreadable {META_KEY} metadata: {err}") from err
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not a model of mambaad export (no {META_KEY!r} metadata with "
                          f"format={FORMAT!r}): export it with `mambaad export --checkpoint CKPT --output "
                          f"{os.path.basename(path)}`")
    return meta


def load_deployed(path: str, threads: int | None = None) -> tuple[Runner, dict[str, Any]]:
    """Open an ONNX (``.onnx``, onnxruntime) or OpenVINO (``.xml``) file of ``mambaad export``.

    Args:
        path: the file. threads: CPU threads of the runtime (None: its default).

    Returns:
        ``(run, meta)``: ``run(images)`` maps a float32 array ``(B, 3, S, S)`` to
        ``(anomaly_map (B, 1, S, S), pred_score (B,))`` arrays; ``meta`` is the stored record.

    Raises:
        FileNotFoundError: no such file. ExportError: the runtime is not installed, the file cannot
            be read, or it has no metadata of ours.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model not found: {path}")
    fmt = "openvino" if path.lower().endswith(".xml") else "onnx"
    rt = runtime(fmt)
    try:
        run, raw = (_onnx_runner if fmt == "onnx" else _openvino_runner)(rt, path, threads)
    except Exception as err:  # protobuf, parser and runtime errors of many kinds
        raise ExportError(f"cannot read exported model {path}: {err}") from err
    return run, _check_meta(raw, path)


def _onnx_runner(ort: Any, path: str, threads: int | None) -> tuple[Runner, str | None]:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = session.run(None, {name: images})
        return amap, score

    return run, session.get_modelmeta().custom_metadata_map.get(META_KEY)


def _openvino_runner(ov: Any, path: str, threads: int | None) -> tuple[Runner, str | None]:
    core = ov.Core()
    model = core.read_model(path)
    where = [META_KEY, "metadata"]
    raw = model.get_rt_info(where).astype(str) if model.has_rt_info(where) else None
    config = dict(OPENVINO_CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {}))
    compiled = core.compile_model(model, "CPU", config)

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = compiled(images).values()
        return amap, score

    return run, raw
