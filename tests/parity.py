"""The parity harness: random inputs for the HSS / GSS scan and the comparison with the float64
reference. Every fused backend is checked through these helpers (tests/test_parity.py), so adding a
backend is adding one value to BACKENDS."""

from __future__ import annotations

import math

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import reference

# backends under test, and the device each one runs its tensors on here
BACKENDS = ["reference", "triton", "cpu", "cuda", "portable"]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def backend_device(backend: str) -> torch.device:
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def require_backend(backend: str) -> torch.device:
    """The device to test ``backend`` on; skips the test with the reason if it cannot run here."""
    device = backend_device(backend)
    reason = mk.backends.unavailable_reason(backend, device)
    if reason:
        pytest.skip(f"backend {backend!r} unavailable on {device}: {reason}")
    return device


def make_params(d: int, n: int, r: int, k: int, grouped: bool, device, dtype=torch.float32,
                generator=None):
    """Random SS2D scan parameters, at scales like a trained model's (delta around 0.01 .. 1)."""
    dk = d // k if grouped else d
    g = generator

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)

    x_proj_weight = rand(k, r + 2 * n, dk, scale=dk ** -0.5)
    dt_projs_weight = rand(k, dk, r, scale=r ** -0.5)
    dt_projs_bias = rand(k, dk, scale=1.0, shift=-2.0)
    A_logs = torch.log(torch.rand(k * dk, n, generator=g) * 4 + 0.25).to(device=device, dtype=dtype)
    Ds = rand(k * dk)
    return [x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds]


def make_x(b, d, h, w, device, dtype, layout="contiguous", generator=None):
    """x (B, D, H, W) in one of three layouts: contiguous, channels_last (a permuted view),
    sliced (a non-flattenable strided view)."""
    if layout == "contiguous":
        return torch.randn(b, d, h, w, generator=generator).to(device=device, dtype=dtype)
    if layout == "channels_last":
        return torch.randn(b, h, w, d, generator=generator).to(device=device, dtype=dtype).permute(0, 3, 1, 2)
    if layout == "sliced":
        big = torch.randn(b, 2 * d, h, 2 * w + 1, generator=generator).to(device=device, dtype=dtype)
        return big[:, ::2, :, 1::2]
    raise ValueError(layout)


def rel_err(got: torch.Tensor, ref: torch.Tensor, scale: float = 0.0) -> float:
    """max |got - ref| / max(max |ref|, scale) (NaN anywhere gives inf).

    ``scale`` floors the denominator for a reference that is exactly zero, or nearly: the gradient
    of A_logs on a one-cell grid (the state before the only step is zero), where a backend's
    rounding noise would otherwise be divided by nothing.
    """
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(max(scale, 1e-30))).item()


def run_case(backend, *, b, d, h, w, n, r, k, method, dtype, grouped=False, layout="contiguous",
             param_dtype=torch.float32, backward=True, seed=None):
    """Run one case on ``backend`` and on the float64 reference; assert forward and gradients agree.

    Inputs are fresh random tensors (seeded from ``seed`` or torch's global RNG), and the backend's
    output buffers are poisoned with NaN (MAMBAAD_POISON=1) so unwritten elements fail the test.
    """
    device = require_backend(backend)
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2 ** 31))
    x = make_x(b, d, h, w, device, dtype, layout, gen).requires_grad_(backward)
    pdt = dtype if param_dtype is None else param_dtype
    params = [p.requires_grad_(backward) for p in make_params(d, n, r, k, grouped, device, pdt, gen)]
    out = mk.hss_scan(x, *params, method=method, directions=k, backend=backend, grouped=grouped)
    assert out.shape == (b, d, h, w) and out.dtype == dtype and out.device.type == device.type
    x64 = x.detach().double().requires_grad_(backward)
    p64 = [p.detach().double().requires_grad_(backward) for p in params]
    ref = reference.hss_scan(x64, *p64, method=method, directions=k, grouped=grouped)
    tol = TOL[dtype]
    err = rel_err(out, ref)
    assert err <= tol, f"{backend} forward: rel err {err:.3g} > {tol}"
    if not backward:
        return
    gout = torch.randn(b, d, h, w, generator=gen).to(device=device, dtype=dtype)
    (out.float() * gout.float()).sum().backward()
    (ref * gout.double()).sum().backward()
    names = ["x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"]
    # a gradient 1000x smaller than the largest one is compared at that floor (see rel_err)
    floor = 1e-3 * max(p.grad.abs().max().item() for p in [x64, *p64])
    for name, got, want in zip(names, [x, *params], [x64, *p64]):
        assert got.grad is not None, f"{backend}: no gradient for {name}"
        assert got.grad.shape == got.shape and got.grad.dtype == got.dtype
        gerr = rel_err(got.grad, want.grad, floor)
        assert gerr <= tol, f"{backend} grad {name}: rel err {gerr:.3g} > {tol}"
