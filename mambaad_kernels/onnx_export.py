"""ONNX export of any module built on the scan, with the scan in standard operators.

:func:`export_onnx` traces the module with every scan on the ``portable`` backend
(:mod:`mambaad_kernels.portable`: gathers, GEMMs, element-wise arithmetic, sums; a graph whose size
grows with ``sqrt(L)``, not L), through ``torch.onnx.export`` (the dynamo exporter, which needs
``onnx`` and ``onnxscript``), and checks the file with ``onnxruntime`` against the module's own
eager output, on the backends the module was set to run, before it returns. Every node of the file
is in the default ONNX domain: it runs in a plain ``onnxruntime`` (or OpenVINO, which reads ONNX)
with nothing of this package or of torch installed.

A module's scans are found by their ``backend`` attribute (:class:`mambaad_kernels.modules.SS2D`,
the VMamba SS2D, and any module of the user's that passes ``self.backend`` to
:func:`mambaad_kernels.hss_scan`); a scan called otherwise cannot be exported and makes the export
fail with that reason.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .backends import BACKENDS

MAX_REL_ERR = 1e-4  # max |onnxruntime - eager| / max |eager| per output, fp32
PORTABLE = "portable"


class ExportCheckError(RuntimeError):
    """The exported file does not compute what the module does (the message gives the errors)."""


def require(module: str, package: str | None = None) -> Any:
    """Import an optional package, or raise ImportError naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = package or module
        raise ImportError(f"{module} is needed for this and is not installed ({err}): pip install {package} "
                          "(or pip install 'mambaad[deploy]' for every export and runtime package)") from err


def relative_error(got: Any, want: Tensor) -> float:
    """``max |got - want| / max |want|`` in float64 (got: a tensor or an array)."""
    got = torch.as_tensor(got).double()
    want = want.detach().double()
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


@contextlib.contextmanager
def portable_scans(module: nn.Module) -> Iterator[int]:
    """Run every scan of ``module`` on the portable backend inside the block; yields their number.

    The scans are the submodules with a ``backend`` attribute (None or a backend name); each gets
    its own value back on exit.
    """
    saved = [(m, m.backend) for m in module.modules()
             if hasattr(m, "backend") and (m.backend is None or m.backend in BACKENDS)]
    try:
        for m, _ in saved:
            m.backend = PORTABLE
        yield len(saved)
    finally:
        for m, backend in saved:
            m.backend = backend


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _flat_outputs(out: Any) -> list[Tensor]:
    leaves = torch.utils._pytree.tree_leaves(out)
    if not leaves or not all(isinstance(t, Tensor) for t in leaves):
        raise TypeError("export_onnx: the module must return a tensor, or a tuple / NamedTuple / list of "
                        f"tensors, got {type(out).__name__}")
    return leaves


def _batched(inputs: tuple[Tensor, ...], size: int) -> tuple[Tensor, ...]:
    """The inputs with their batch (dim 0) cycled to ``size`` rows (real values, another batch size)."""
    return tuple(t[torch.arange(size) % t.shape[0]] for t in inputs)


def _check_inputs(module: nn.Module, example: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    inputs = (example,) if isinstance(example, Tensor) else tuple(example)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("export_onnx: example must be a tensor or a tuple of tensors (the module's "
                        "positional inputs)")
    batches = {t.shape[0] if t.dim() else None for t in inputs}
    if None in batches or len(batches) != 1:
        raise ValueError("export_onnx: every input needs the same batch size in dim 0, got shapes "
                         f"{[tuple(t.shape) for t in inputs]}")
    devices = {t.device.type for t in inputs} | {p.device.type for p in module.parameters()} \
        | {b.device.type for b in module.buffers()}
    if devices != {"cpu"}:
        raise ValueError(f"export_onnx exports on the CPU: move the module and the example there "
                         f"(module.cpu()), found tensors on {sorted(devices)}")
    return inputs


def onnx_session(path: str, threads: int | None = None) -> Any:
    """An ``onnxruntime`` CPU session of an ONNX file (``threads``: intra-op threads, None: all)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: Sequence[Tensor]) -> list[Any]:
    """Run a session on tensors (converted to numpy arrays in the file's input order)."""
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.detach().numpy() for n, t in zip(names, inputs, strict=True)})


def foreign_nodes(model: Any) -> list[str]:
    """Nodes of an ONNX ModelProto outside the default domain, and local functions (should be none)."""
    bad = [f"{n.op_type} (domain {n.domain!r})" for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    bad += [f"function {f.name} (domain {f.domain!r})" for f in model.functions]
    return bad


def export_onnx(module: nn.Module, example: Tensor | Sequence[Tensor], path: str | os.PathLike, *,
                dynamic_batch: bool = True, metadata: dict[str, str] | None = None,
                output_names: Sequence[str] | None = None, max_rel_err: float = MAX_REL_ERR,
                check: bool = True) -> dict[str, Any]:
    """Write ``module`` as one ONNX file whose scans are standard operators, and check it.

    Args:
        module: an ``nn.Module`` on the CPU built on :func:`mambaad_kernels.hss_scan` (HSSBlock,
            GSSBlock, the VMamba modules, a whole MambaAD model, ...); exported in eval mode (its
            train / eval flags are restored afterwards).
        example: the module's positional input(s), ``(B, ...)`` each, on the CPU.
        path: the ``.onnx`` file to write (one file, weights inside).
        dynamic_batch: dim 0 of every input and output symbolic (any batch size), else fixed.
        metadata: strings written to the file's ``metadata_props``.
        output_names: names of the graph's outputs (default: the exporter's).
        max_rel_err: allowed ``max |onnx - eager| / max |eager|`` per output.
        check: run the file with onnxruntime against the module (False: for a caller that checks
            the file on another runtime itself, as ``mambaad export --format openvino`` does).

    Returns:
        ``{"path", "nodes", "op_types", "scans", "checked_batches", "max_rel_err"}``: the file, its
        node count and operator types, how many scan modules were exported, and the largest
        relative error of onnxruntime against the eager module over the checked batch sizes (the
        example's, and another one when ``dynamic_batch``; None without ``check``).

    Raises:
        ImportError: onnx, onnxscript or onnxruntime is missing (the message names the pip command).
        ExportCheckError: a node outside the default domain, or onnxruntime's outputs differ from
            the module's by more than ``max_rel_err`` (the file is removed).
        ValueError, TypeError: inputs not on the CPU, or not tensors with one batch size.
    """
    onnx = require("onnx")
    require("onnxscript")
    if check:
        require("onnxruntime")
    inputs = _check_inputs(module, example)
    path = os.fspath(path)
    batch = inputs[0].shape[0]
    checks = [inputs] + ([_batched(inputs, batch + 2)] if dynamic_batch else [])
    checks = checks if check else []
    with _eval_mode(module), torch.no_grad():
        wants = [_flat_outputs(module(*c)) for c in checks]  # the module's own backends
        traced = _batched(inputs, 2) if dynamic_batch and batch == 1 else inputs  # a batch of 1 specialises
        dims = tuple({0: torch.export.Dim("batch")} if dynamic_batch else None for _ in traced)
        with portable_scans(module) as scans, _quiet_exporter():
            program = torch.onnx.export(module, traced, dynamo=True, dynamic_shapes=dims,
                                        output_names=list(output_names) if output_names else None,
                                        optimize=False, verbose=False)
    model = _light_optimize(program.model)
    foreign = foreign_nodes(model)
    if foreign:
        raise ExportCheckError("the exported graph has nodes outside the default ONNX domain: "
                               f"{', '.join(sorted(set(foreign)))}")
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    onnx.save_model(model, path)
    try:
        worst = check_file(path, checks, wants, max_rel_err) if check else None
    except BaseException:
        os.remove(path)
        raise
    return {"path": path, "nodes": len(model.graph.node),
            "op_types": sorted({n.op_type for n in model.graph.node}), "scans": scans,
            "checked_batches": [c[0].shape[0] for c in checks], "max_rel_err": worst}


def check_file(path: str, checks: list[tuple[Tensor, ...]], wants: list[list[Tensor]],
               max_rel_err: float = MAX_REL_ERR) -> float:
    """Run an ONNX file with onnxruntime on each input tuple; the largest relative error against
    ``wants`` (the module's flat outputs per tuple). Raises ExportCheckError above ``max_rel_err``."""
    session = onnx_session(path)
    worst = 0.0
    for inputs, want in zip(checks, wants, strict=True):
        got = run_onnx(session, inputs)
        if len(got) != len(want):
            raise ExportCheckError(f"the ONNX file gives {len(got)} outputs, the module {len(want)}")
        for i, (g, w) in enumerate(zip(got, want)):
            err = relative_error(g, w)
            if not err <= max_rel_err:
                raise ExportCheckError(
                    f"output {i} of the ONNX file (batch {inputs[0].shape[0]}) differs from the module's "
                    f"by {err:.3g} (max |diff| / max |module|; allowed {max_rel_err:g}); file removed")
            worst = max(worst, err)
    return worst


def _light_optimize(model: Any) -> Any:
    """Inline functions, fold constants (sequence operators of unbind / split into Split among them),
    drop what is unused: the ONNX ModelProto. torch.onnx's own ``optimize=True`` adds onnxscript's
    pattern rewriter, whose time grows much faster than the graph (over 20 minutes for MambaAD at
    256 x 256, 107 s for one scan at 64 x 64 against 25 s for half its nodes) and which the
    runtimes' own graph optimisations make up for."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript import optimizer

    folding = optimizer.constant_folding
    fold = folding.FoldConstantsPass(shape_inference=True,
                                     input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                     output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    passes = ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager([fold,
                               common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                               common.RemoveUnusedOpsetsPass()], steps=2, early_stop=True),
        common.IdentityEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )
    passes(model)
    return ir.serde.serialize_model(model)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's progress prints go to a null stream (its warnings still show)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
