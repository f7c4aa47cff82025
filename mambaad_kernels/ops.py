"""The public op: :func:`hss_scan`, with its input checks and the one backend dispatcher."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import portable, reference
from .backends import kernel_module, resolve_backend
from .paths import check_directions, check_method, scan_paths

X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _fail(msg: str) -> None:
    raise ValueError(f"hss_scan: {msg}")


def check_inputs(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
                 A_logs: Tensor, Ds: Tensor, method: str, directions: int, grouped: bool) -> None:
    """Raise ValueError / TypeError with a clear message when the arguments do not fit together."""
    check_method(method)
    check_directions(directions)
    if not isinstance(x, Tensor) or x.dim() != 4:
        _fail(f"x must be a 4-D tensor (B, D, H, W), got {getattr(x, 'shape', type(x))}")
    b, d, h, w = x.shape
    if h == 0 or w == 0:
        _fail(f"the grid is empty (H = {h}, W = {w})")
    if b == 0 or d == 0:
        _fail(f"x has no elements to scan (B = {b}, D = {d})")
    if x.dtype not in X_DTYPES:
        raise TypeError(f"hss_scan: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    k = directions
    if grouped and d % k:
        _fail(f"grouped scan needs D = {d} divisible by the {k} directions")
    dk = d // k if grouped else d
    params = {"x_proj_weight": x_proj_weight, "dt_projs_weight": dt_projs_weight,
              "dt_projs_bias": dt_projs_bias, "A_logs": A_logs, "Ds": Ds}
    for name, p in params.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"hss_scan: {name} must be a tensor, got {type(p).__name__}")
        if p.device != x.device:
            _fail(f"{name} is on {p.device} but x is on {x.device}")
        if p.dtype not in (torch.float32, x.dtype):
            raise TypeError(f"hss_scan: {name} must be float32 or x's dtype ({x.dtype}), got {p.dtype}")
    if A_logs.dim() != 2:
        _fail(f"A_logs must be (K * Dk, N), got {tuple(A_logs.shape)}")
    n = A_logs.shape[1]
    if dt_projs_weight.dim() != 3:
        _fail(f"dt_projs_weight must be (K, Dk, R), got {tuple(dt_projs_weight.shape)}")
    r = dt_projs_weight.shape[2]
    expected = {
        "x_proj_weight": (k, r + 2 * n, dk),
        "dt_projs_weight": (k, dk, r),
        "dt_projs_bias": (k, dk),
        "A_logs": (k * dk, n),
        "Ds": (k * dk,),
    }
    what = "GSS: Dk = D / K" if grouped else "HSS: Dk = D"
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            _fail(f"{name} has shape {tuple(params[name].shape)}, expected {shape} "
                  f"(K = {k} directions, D = {d}, R = {r}, N = {n}; {what})")
    if n == 0 or r == 0:
        _fail(f"N = {n} and R = {r} must be positive")


def hss_scan(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
             A_logs: Tensor, Ds: Tensor, method: str = "hilbert", directions: int = 8,
             backend: str | None = None, grouped: bool = False,
             deterministic: bool = True) -> Tensor:
    """Multi-direction selective scan of a feature map (the core of SS2D), on a chosen backend.

    The maths is :func:`mambaad_kernels.reference.hss_scan`: gather x along K scan paths, project
    each sequence (x_proj -> dt, B, C; dt_proj + bias, softplus -> delta), run the selective scan
    with A = -exp(A_logs) and the D skip, put each direction back on the grid and sum the K. With
    ``grouped=True`` (MMAD's GSS), channel group k is scanned along direction k only, no sum.

    Args:
        x: ``(B, D, H, W)``, float32 / float16 / bfloat16 / float64, any strides.
        x_proj_weight: ``(K, R + 2N, Dk)``; dt_projs_weight: ``(K, Dk, R)``;
            dt_projs_bias: ``(K, Dk)``; A_logs: ``(K * Dk, N)``; Ds: ``(K * Dk,)``;
            float32 or x's dtype, on x's device. Dk = D, or D / K when grouped.
        method: ``"sweep", "scan", "zorder", "zigzag", "hilbert"``.
        directions: K in 1, 2, 4, 8.
        backend: ``"reference", "triton", "cpu", "cuda", "portable"`` or None (``MAMBAAD_BACKEND``,
            else the best available for x's device). A named backend that cannot run raises.
        grouped: GSS instead of HSS.
        deterministic: ask fused backends for bit-stable results run to run (the default).

    Returns:
        ``(B, D, H, W)`` in x's dtype; the state is float32 (float64 for float64 inputs).
    """
    check_inputs(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, method, directions,
                 grouped)
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return reference.hss_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                                  method, directions, grouped)
    if name == "portable":
        return portable.hss_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                                 method, directions, grouped)
    supported = getattr(kernel_module(name), "SUPPORTED_DTYPES", X_DTYPES)
    if x.dtype not in supported:
        raise TypeError(f"hss_scan: backend {name!r} does not support {x.dtype} inputs "
                        f"(it supports {', '.join(map(str, supported))})")
    _, _, h, w = x.shape
    paths = scan_paths(h, w, method, directions, x.device, dtype=torch.int32)
    from .fused import scan  # registers mambaad::hss_scan on first use

    return scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, paths, name, grouped,
                deterministic)


def dt_rank_for(d_model: int) -> int:
    """The authors' dt rank: ``ceil(d_model / 16)``."""
    return math.ceil(d_model / 16)
