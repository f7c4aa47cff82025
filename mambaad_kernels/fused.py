"""The fused HSS scan as one torch op, ``mambaad::hss_scan``, shared by every fused backend.

This file is the one place where the op, its fake (meta) implementation and its autograd are
registered. In plain eager mode :func:`scan` (what :func:`mambaad_kernels.hss_scan` calls) runs
the op's eager twin, an autograd.Function over the same forward and backward functions, which
skips the custom-op dispatch; under torch.compile, modes or tensor subclasses it calls the op.
The op ignores an enclosing ``torch.autocast``: inputs keep their dtypes and the state is fp32.
A fused backend is a module (``mambaad_kernels.triton``, ``mambaad_kernels.cuda``)
with three functions, the *kernel contract*:

``scan_fwd(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic) -> (out, states)``
    x ``(B, D, L)`` in fp32 / fp16 / bf16 (fp64 where the backend supports it), any strides;
    x_dbl ``(B, K, R + 2N, L)`` contiguous, float32 (float64 for float64 inputs) whatever x's
    dtype: the x_proj projection at the **original** grid positions (it is pointwise in l, so it
    commutes with the gather; for half inputs it comes from a half GEMM with fp32 output on CUDA,
    so dt, B and C are not rounded to half); dt_w ``(K, Dk, R)``,
    dt_b ``(K, Dk)``, A_logs ``(K * Dk, N)``, Ds ``(K * Dk,)``: contiguous, fp32 or x's dtype;
    paths ``(K, L)`` int32 contiguous. ``Dk`` = D (HSS) or D / K (``grouped``, GSS: direction k
    scans channels ``k * Dk .. (k + 1) * Dk`` and writes them back without a sum).
    Returns out ``(B, D, L)`` contiguous in x's dtype, and ``states``: the state checkpoints
    saved for the backward, of shape ``states_shape(B, K, Dk, L, N, x.device)``, float32
    (float64 for float64 inputs).

``scan_bwd(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic)``
    ``-> (dx, dx_dbl, d_dt_w, d_dt_b, d_A_logs, d_Ds)``: dout ``(B, D, L)`` any strides; dx
    ``(B, D, L)`` (the gradient through u only; fp32 or x's dtype); dx_dbl ``(B, K, R + 2N, L)``
    fp32; parameter gradients fp32 in the parameters' shapes.

``states_shape(B, K, Dk, L, N, device) -> tuple[int, ...]``: the checkpoint shape for tensors on
``device`` (the fake op needs it; a backend may checkpoint differently per device type).

What stays here, common to all backends: the x_proj GEMM (before the kernel) and its two
gradients (after it), the dtype casts of the gradients, and the shape bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

from .backends import kernel_module

_FUSED = ("triton", "cpu", "cuda")


def _flat(x: Tensor) -> Tensor:
    """(B, D, H, W) -> (B, D, L), a view whenever the strides allow (channels-last does)."""
    return x.flatten(2)


@functools.lru_cache(maxsize=None)
def _cuda_half_gemm_fp32_out() -> bool:
    """Whether this torch has bmm with ``out_dtype`` (half operands, fp32 result) on CUDA."""
    a = torch.ones(1, 2, 2, device="cuda", dtype=torch.bfloat16)
    try:
        return torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


def project(x3: Tensor, x_proj_weight: Tensor, grouped: bool) -> Tensor:
    """x_dbl = x_proj(x) at every grid position: ``(B, D, L) -> (B, K, R + 2N, L)``.

    The result is float32 (float64 for float64 x). Half x on CUDA: a half GEMM with fp32 output
    (tensor cores, no fp32 copy of x) where torch has it; elsewhere the GEMM runs in the result
    dtype on an upcast copy of x. An enclosing ``torch.autocast`` must not change this (the
    kernels need x_dbl in the compute dtype): the callers run it under :func:`_autocast_off`.
    """
    b, d, l = x3.shape
    k, c, dk = x_proj_weight.shape
    ct = torch.float64 if x3.dtype == torch.float64 else torch.float32
    half = x3.dtype in (torch.float16, torch.bfloat16)
    xs = x3.reshape(b * k, dk, l) if grouped else x3  # (b k, dk, l) or (b, d, l)
    if half and x3.is_cuda and _cuda_half_gemm_fp32_out():
        w = x_proj_weight.to(x3.dtype)  # (k, c, dk)
        w = w.expand(b, k, c, dk).reshape(b * k, c, dk) if grouped else w.reshape(1, k * c, d).expand(b, -1, -1)
        out = torch.bmm(w, xs, out_dtype=torch.float32)
    else:
        w = x_proj_weight.to(ct)
        if grouped:
            out = torch.bmm(w.expand(b, k, c, dk).reshape(b * k, c, dk), xs.to(ct))
        else:
            out = torch.matmul(w.reshape(k * c, d), xs.to(ct))  # (b, k c, l)
    return out.reshape(b, k, c, l).contiguous()


def _autocast_off(device: torch.device):
    """A context that turns an enabled ``torch.autocast`` off for ``device``'s type (else a no-op).

    The op keeps its inputs' dtypes and computes in fp32 (fp64) whatever autocast says: the
    kernels need x_dbl in the compute dtype, and the GEMMs around them choose their own precision.
    """
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _forward(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
             A_logs: Tensor, Ds: Tensor, paths: Tensor, backend: str, grouped: bool,
             deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The forward of both entry points: ``(out (B, D, H, W), x_dbl, states)``."""
    b, d, h, w = x.shape
    x3 = _flat(x)
    with _autocast_off(x.device):
        x_dbl = project(x3, x_proj_weight, grouped)
        out, states = kernel_module(backend).scan_fwd(
            x3, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths, grouped, deterministic)
    return out.view(b, d, h, w), x_dbl, states


def _backward(dout: Tensor, x: Tensor, x_dbl: Tensor, states: Tensor, x_proj_weight: Tensor,
              dt_projs_weight: Tensor, dt_projs_bias: Tensor, A_logs: Tensor, Ds: Tensor,
              paths: Tensor, backend: str, grouped: bool,
              deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of both entry points: gradients of x and the five parameters."""
    b, d, h, w = x.shape
    x3 = _flat(x)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # gradient arithmetic
    with _autocast_off(x.device):
        dx_u, dx_dbl, d_dt_w, d_dt_b, d_A, d_D = kernel_module(backend).scan_bwd(
            _flat(dout), x3, x_dbl, states, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths,
            grouped, deterministic)
        dx_dbl, wf, xf = dx_dbl.to(ct), x_proj_weight.to(ct), x3.to(ct)  # wf (k, c, dk)
        if grouped:
            k = wf.shape[0]
            xg = xf.reshape(b, k, d // k, h * w)  # (b, k, dk, l)
            d_xpw = torch.einsum("bkcl,bkjl->kcj", dx_dbl, xg)
            dx_proj = torch.einsum("bkcl,kcj->bkjl", dx_dbl, wf).reshape(b, d, h * w)
        else:
            d_xpw = torch.einsum("bkcl,bdl->kcd", dx_dbl, xf)
            dx_proj = torch.einsum("bkcl,kcd->bdl", dx_dbl, wf)
        dx = (dx_u.to(ct) + dx_proj).to(x.dtype).view(b, d, h, w)
    return (dx, d_xpw.to(x_proj_weight.dtype), d_dt_w.to(dt_projs_weight.dtype),
            d_dt_b.to(dt_projs_bias.dtype), d_A.to(A_logs.dtype), d_D.to(Ds.dtype))


def _check_backend(backend: str) -> None:
    if backend not in _FUSED:
        raise ValueError(f"mambaad::hss_scan runs fused backends {_FUSED}, got {backend!r}")


# The schemas are spelled out: torch 2.4 cannot infer them from this module's string annotations.
_FWD_SCHEMA = ("(Tensor x, Tensor x_proj_weight, Tensor dt_projs_weight, Tensor dt_projs_bias, "
               "Tensor A_logs, Tensor Ds, Tensor paths, str backend, bool grouped, bool deterministic) "
               "-> (Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dout, Tensor x, Tensor x_dbl, Tensor states, Tensor x_proj_weight, "
               "Tensor dt_projs_weight, Tensor dt_projs_bias, Tensor A_logs, Tensor Ds, Tensor paths, "
               "str backend, bool grouped, bool deterministic) "
               "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("mambaad::hss_scan", mutates_args=(), schema=_FWD_SCHEMA)
def hss_scan_op(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
                A_logs: Tensor, Ds: Tensor, paths: Tensor, backend: str, grouped: bool,
                deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Fused HSS / GSS scan. Returns ``(out (B, D, H, W), x_dbl, states)``.

    ``x_dbl`` and ``states`` are the activations saved for the backward (not differentiable):
    the projection ``(B, K, R + 2N, L)`` and the backend's state checkpoints (float32; float64
    for float64 inputs).
    """
    _check_backend(backend)
    return _forward(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths, backend,
                    grouped, deterministic)


@hss_scan_op.register_fake
def _(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths, backend, grouped,
      deterministic):
    _check_backend(backend)
    b, d, h, w = x.shape
    k, c, dk = x_proj_weight.shape
    shape = kernel_module(backend).states_shape(b, k, dk, h * w, A_logs.shape[1], x.device)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.new_empty(b, d, h, w), x.new_empty(b, k, c, h * w, dtype=ct), x.new_empty(shape, dtype=ct))


@torch.library.custom_op("mambaad::hss_scan_backward", mutates_args=(), schema=_BWD_SCHEMA)
def hss_scan_backward_op(dout: Tensor, x: Tensor, x_dbl: Tensor, states: Tensor,
                         x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
                         A_logs: Tensor, Ds: Tensor, paths: Tensor, backend: str, grouped: bool,
                         deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`hss_scan_op`'s ``out`` for x and the five parameters."""
    _check_backend(backend)
    return _backward(dout, x, x_dbl, states, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                     paths, backend, grouped, deterministic)


@hss_scan_backward_op.register_fake
def _(dout, x, x_dbl, states, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths,
      backend, grouped, deterministic):
    return (torch.empty_like(x), torch.empty_like(x_proj_weight), torch.empty_like(dt_projs_weight),
            torch.empty_like(dt_projs_bias), torch.empty_like(A_logs), torch.empty_like(Ds))


def _setup_context(ctx, inputs, output):
    x, x_proj_weight, dt_w, dt_b, A_logs, Ds, paths, backend, grouped, deterministic = inputs
    _, x_dbl, states = output
    ctx.save_for_backward(x, x_dbl, states, x_proj_weight, dt_w, dt_b, A_logs, Ds, paths)
    ctx.config = (backend, grouped, deterministic)


def _op_backward(ctx, dout, _dx_dbl, _dstates):
    x, x_dbl, states, x_proj_weight, dt_w, dt_b, A_logs, Ds, paths = ctx.saved_tensors
    grads = hss_scan_backward_op(dout, x, x_dbl, states, x_proj_weight, dt_w, dt_b,
                                 A_logs, Ds, paths, *ctx.config)
    return (*grads, None, None, None, None)


hss_scan_op.register_autograd(_op_backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The eager-mode twin of ``mambaad::hss_scan``: the same :func:`_forward` and :func:`_backward`,
    called without the custom-op dispatch, which costs about 0.1 ms of Python per call (measured
    in BENCHMARKS.md, "Host overhead"): on a GPU that is longer than the whole forward kernel at
    MambaAD's small stages. :func:`scan` takes it only where nothing needs the op itself (no
    torch.compile tracing, no dispatch or function modes, no tensor subclasses or functorch
    wrappers): then both give bit-identical results (autocast included: both run the GEMMs with
    it off).
    """

    @staticmethod
    def forward(ctx, x, x_proj_weight, dt_w, dt_b, A_logs, Ds, paths, backend, grouped,
                deterministic):
        out, x_dbl, states = _forward(x, x_proj_weight, dt_w, dt_b, A_logs, Ds, paths, backend,
                                      grouped, deterministic)
        ctx.save_for_backward(x, x_dbl, states, x_proj_weight, dt_w, dt_b, A_logs, Ds, paths)
        ctx.config = (backend, grouped, deterministic)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        return (*_backward(dout, *ctx.saved_tensors, *ctx.config), None, None, None, None)


_PLAIN = (Tensor, torch.nn.Parameter)


def _plain_eager(tensors: tuple[Tensor, ...]) -> bool:
    """Whether a call may skip the custom-op dispatch (see :class:`_EagerScan`)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() \
            or torch._C._len_torch_function_stack():
        return False
    for t in tensors:
        if type(t) not in _PLAIN or torch._C._functorch.is_functorch_wrapped_tensor(t):
            return False
    return True


def scan(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
         A_logs: Tensor, Ds: Tensor, paths: Tensor, backend: str, grouped: bool,
         deterministic: bool) -> Tensor:
    """The fused scan's ``out`` ``(B, D, H, W)``, differentiable: through :class:`_EagerScan` in
    plain eager mode, else through the registered op ``mambaad::hss_scan`` (what torch.compile
    traces as one node). Arguments as for :func:`hss_scan_op`; checked by the caller.
    """
    args = (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths)
    if _plain_eager(args):
        return _EagerScan.apply(*args, backend, grouped, deterministic)
    return hss_scan_op(*args, backend, grouped, deterministic)[0]
