"""Every backend against the float64 reference: forward and all six gradients.

Cases are tiny (B <= 2, D <= 8, L <= 64) so that the Triton interpreter runs them in CI; the GPU
cases at MambaAD shapes run the same checks when a CUDA device is there.
"""

import pytest
import torch

from mambaad_kernels.paths import METHODS

from .parity import BACKENDS, require_backend, run_case

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64

# (id, case): fp32 over every method and direction count, odd and degenerate grids, then dtypes,
# strided layouts, grouped (GSS) scans and parameters in x's dtype.
CASES = [
    *[(f"{m}-k8-5x7", dict(b=2, d=4, h=5, w=7, n=4, r=2, k=8, method=m, dtype=F32)) for m in METHODS],
    *[(f"hilbert-k{k}-4x4", dict(b=1, d=6, h=4, w=4, n=16, r=3, k=k, method="hilbert", dtype=F32))
      for k in (1, 2, 4)],
    ("zigzag-k4-3x8", dict(b=1, d=3, h=3, w=8, n=4, r=1, k=4, method="zigzag", dtype=F32)),
    ("hilbert-k8-1x1", dict(b=2, d=4, h=1, w=1, n=4, r=2, k=8, method="hilbert", dtype=F32)),
    ("scan-k8-1x9", dict(b=1, d=4, h=1, w=9, n=4, r=2, k=8, method="scan", dtype=F32)),
    ("hilbert-k8-8x8-n16", dict(b=1, d=8, h=8, w=8, n=16, r=4, k=8, method="hilbert", dtype=F32)),
    ("hilbert-k8-6x5-f16", dict(b=2, d=4, h=6, w=5, n=4, r=2, k=8, method="hilbert", dtype=F16)),
    ("hilbert-k8-6x5-bf16", dict(b=2, d=4, h=6, w=5, n=4, r=2, k=8, method="hilbert", dtype=BF16)),
    ("zorder-k4-4x6-bf16-pbf16", dict(b=1, d=4, h=4, w=6, n=4, r=2, k=4, method="zorder", dtype=BF16,
                                      param_dtype=None)),
    ("hilbert-k8-5x5-channels_last", dict(b=2, d=4, h=5, w=5, n=4, r=2, k=8, method="hilbert",
                                          dtype=F32, layout="channels_last")),
    ("sweep-k4-4x5-sliced", dict(b=2, d=3, h=4, w=5, n=4, r=2, k=4, method="sweep", dtype=F32,
                                 layout="sliced")),
    ("gss-hilbert-k8-5x6", dict(b=2, d=8, h=5, w=6, n=4, r=2, k=8, method="hilbert", dtype=F32,
                                grouped=True)),
    ("gss-scan-k4-4x4-bf16", dict(b=1, d=8, h=4, w=4, n=16, r=2, k=4, method="scan", dtype=BF16,
                                  grouped=True)),
    ("gss-zigzag-k2-3x5", dict(b=2, d=6, h=3, w=5, n=4, r=1, k=2, method="zigzag", dtype=F32,
                               grouped=True)),
]

# MambaAD shapes and an odd one, for the GPU (float64 reference on the GPU too).
GPU_CASES = [
    ("stage3-d128-64x64", dict(b=2, d=128, h=64, w=64, n=16, r=4, k=8, method="hilbert", dtype=F32)),
    ("stage0-d1024-8x8", dict(b=2, d=1024, h=8, w=8, n=16, r=32, k=8, method="hilbert", dtype=F32)),
    ("odd-d96-37x53", dict(b=1, d=96, h=37, w=53, n=16, r=3, k=8, method="hilbert", dtype=F32)),
    ("stage2-d256-32x32-bf16", dict(b=2, d=256, h=32, w=32, n=16, r=8, k=8, method="hilbert",
                                    dtype=BF16)),
    ("gss-d512-16x16", dict(b=2, d=512, h=16, w=16, n=16, r=16, k=8, method="hilbert", dtype=F32,
                            grouped=True)),
]

FUSED = [b for b in BACKENDS if b != "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_parity(backend, case, monkeypatch):
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case(backend, **case)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("case", [c for _, c in GPU_CASES], ids=[i for i, _ in GPU_CASES])
def test_parity_gpu(backend, case, monkeypatch):
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case(backend, **case)


@pytest.mark.parametrize("backend", FUSED)
def test_float64(backend):
    """Fused backends that take float64 inputs match the reference to float64 precision."""
    import mambaad_kernels as mk

    device = require_backend(backend)
    supported = getattr(mk.backends.kernel_module(backend), "SUPPORTED_DTYPES", ())
    if F64 not in supported:
        pytest.skip(f"backend {backend!r} does not support float64")
    run_case(backend, b=1, d=4, h=3, w=5, n=4, r=2, k=8, method="hilbert", dtype=F64,
             param_dtype=F64)
    assert device is not None


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic(backend):
    """Two runs on the same inputs give bit-identical outputs and gradients."""
    import mambaad_kernels as mk

    from .parity import make_params, make_x

    device = require_backend(backend)
    gen = torch.Generator().manual_seed(7)
    x = make_x(2, 8, 6, 6, device, F32, generator=gen)
    params = make_params(8, 4, 2, 8, False, device, generator=gen)
    gout = torch.randn(2, 8, 6, 6, generator=gen).to(device)

    def run():
        xs = x.clone().requires_grad_()
        ps = [p.clone().requires_grad_() for p in params]
        out = mk.hss_scan(xs, *ps, backend=backend, deterministic=True)
        (out * gout).sum().backward()
        return [out.detach(), xs.grad, *[p.grad for p in ps]]

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
