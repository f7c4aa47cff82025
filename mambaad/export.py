"""``mambaad export``: a checkpoint as a ``torch.export`` program (``.pt2``) that runs without this
package's model code, or (``--format onnx / openvino``, :mod:`mambaad.deploy`) as an ONNX file or an
OpenVINO model that runs without torch.

The file (``torch.export.save``) holds the eval-mode model, from the normalised image to the anomaly
map (encoder, bottleneck, decoder, cosine maps, upsampling, Gaussian blur), with its weights, as one
ExportedProgram on the CPU; every fused scan is one ``mambaad::hss_scan`` node of its graph. Beside
it, in the archive's extra files, ``mambaad.json`` records what a user needs to feed and read it
(:data:`META_NAME`: image size, normalisation, the thresholds and map range ``mambaad eval``
stored, the model, the torch version).

Contract of the program (``ep.module()(images)``):
    images: ``(B, 3, S, S)`` float32 on the CPU, RGB scaled to [0, 1] then normalised with the
        ImageNet mean and std (``mambaad.data.load_image`` does both); B any size >= 1 (dynamic),
        S the trained image size (fixed).
    returns: a tuple ``(anomaly_map (B, 1, S, S), pred_score (B,))``, float32.

At run time: torch (the version that exported it; a ``.pt2`` is not promised to load in other
versions) and ``import mambaad_kernels``, which registers the ``mambaad::hss_scan`` op; the op runs
the ``cpu`` backend of its compiled extension ``mambaad_kernels._C``. Nothing else of this package.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
import torch.nn as nn

from mambaad_kernels.onnx_export import relative_error

from .checkpoint import build_model, load_checkpoint
from .deploy import write_onnx, write_openvino
from .export_base import (BACKEND, CHECK_BATCHES, EXAMPLE_BATCH, FORMAT, MAX_REL_ERR,  # noqa: F401
                          MAX_REL_ERR_PORTABLE, META_NAME, AnomalyProgram, ExportError, check_images,
                          export_metadata)
from .runconfig import ExportConfig

SCAN_OP = "mambaad.hss_scan"


def scan_nodes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    """The ``mambaad::hss_scan`` call nodes of a program's graph (submodules' graphs included)."""
    nodes = []
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            nodes += [n for n in module.graph.nodes
                      if n.op == "call_function" and str(n.target).startswith(SCAN_OP + ".")]
    return nodes


def export_model(model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """Export an eval-mode model on the CPU with a dynamic batch dimension.

    Args:
        model: a MambaAD model on the CPU whose scans run a fused backend (``cpu``).
        image_size: side S of the square input.

    Returns:
        The ExportedProgram of :class:`AnomalyProgram` (input ``(B, 3, S, S)``, B symbolic).

    Raises:
        ExportError: the traced graph has no ``mambaad::hss_scan`` node (the model runs its scans
            on the reference backend).
    """
    wrapper = AnomalyProgram(model.eval())
    example = torch.randn(EXAMPLE_BATCH, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}},
                                      strict=False)
    if not scan_nodes(program):
        raise ExportError("the traced graph has no mambaad::hss_scan node: the model's scans did not run "
                          f"the fused {BACKEND!r} backend")
    return program


def check_program(program: torch.export.ExportedProgram, model: nn.Module, image_size: int,
                  batches: tuple[int, ...] = CHECK_BATCHES, seed: int = 0) -> float:
    """Run the program and the eager model on random images of each batch size; the largest relative
    error of the anomaly map (see :func:`relative_error`)."""
    module = program.module()
    worst = 0.0
    with torch.no_grad():
        for images in check_images(image_size, batches, seed):
            b = images.shape[0]
            got = module(images)[0]
            want = model(images).anomaly_map
            if got.shape != want.shape:
                raise ExportError(f"batch {b}: the exported program gives {tuple(got.shape)}, the model "
                                  f"{tuple(want.shape)}")
            worst = max(worst, relative_error(got, want))
    return worst


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Export ``cfg.checkpoint`` to ``cfg.output`` in its format and check it (module docstring).

    The file's model is run on :data:`CHECK_BATCHES` random batches beside the checkpoint's eager
    model (fused ``cpu`` scans) before it is written: a relative error of the anomaly map above
    :data:`MAX_REL_ERR` (``.pt2``) or :data:`MAX_REL_ERR_PORTABLE` (ONNX, OpenVINO: the score too,
    and the verdicts at the stored thresholds must agree) raises.

    Returns:
        The metadata written (``mambaad.json`` of a ``.pt2``, the ``mambaad`` record of ONNX /
        OpenVINO).

    Raises:
        ExportError: no fused scan node, the check failed, or a runtime package is missing.
            BackendUnavailable: the compiled extension's ``cpu`` backend is not built here.
    """
    cfg.check_required()
    fmt = cfg.output_format()
    ckpt = load_checkpoint(cfg.checkpoint)
    size = int(ckpt["image_size"])
    model = build_model(ckpt, BACKEND, "cpu").eval()
    if fmt != "pt2":
        write = write_onnx if fmt == "onnx" else write_openvino
        meta = write(model, size, cfg.output, export_metadata(ckpt, size, None))
        print(f"wrote {cfg.output} ({fmt}): {ckpt['model_name']}, input (B, 3, {size}, {size}), the scans in "
              f"standard ONNX operators; checked on batches {', '.join(map(str, CHECK_BATCHES))}: relative "
              f"error {meta['checked_rel_err']:.2e}", file=sys.stderr)
        return meta
    program = export_model(model, size)
    rel_err = check_program(program, model, size)
    if not rel_err <= MAX_REL_ERR:
        raise ExportError(f"the exported program's anomaly maps differ from the model's by {rel_err:.3g} "
                          f"(relative; allowed {MAX_REL_ERR:g})")
    meta = export_metadata(ckpt, size, rel_err)
    folder = os.path.dirname(os.path.abspath(cfg.output))
    os.makedirs(folder, exist_ok=True)
    torch.export.save(program, cfg.output, extra_files={META_NAME: json.dumps(meta, indent=1)})
    print(f"wrote {cfg.output}: {ckpt['model_name']}, input (B, 3, {size}, {size}), "
          f"{len(scan_nodes(program))} mambaad::hss_scan nodes; checked on batches "
          f"{', '.join(map(str, CHECK_BATCHES))}: relative error {rel_err:.2e}", file=sys.stderr)
    return meta


def load_exported(path: str) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """Read a ``.pt2`` of ``mambaad export`` and its metadata.

    Returns:
        ``(program, meta)``: ``program.module()`` is the callable (see the module docstring).

    Raises:
        FileNotFoundError: no such file. ExportError: not a ``torch.export`` archive of ``mambaad
            export``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model not found: {path}")
    extra = {META_NAME: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:  # zip, pickle and schema errors of many kinds
        raise ExportError(f"cannot read exported model {path}: {err}") from err
    try:
        meta = json.loads(extra[META_NAME]) if extra[META_NAME] else {}
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: unreadable {META_NAME}: {err}") from err
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not a mambaad export (no {META_NAME} with format={FORMAT!r})")
    return program, meta
