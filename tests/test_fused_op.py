"""The op plumbing shared by every fused backend (mambaad_kernels.fused), checked with the plain
PyTorch implementation of the kernel contract (tests/kernel_contract.py) standing in for a kernel:
forward and gradients against the float64 reference, torch.library.opcheck, torch.compile."""

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels import fused, reference

from . import kernel_contract
from .parity import make_params, make_x, rel_err


@pytest.fixture
def contract(monkeypatch):
    monkeypatch.setattr(fused, "kernel_module", lambda name: kernel_contract)


def _inputs(grouped, dtype=torch.float64, layout="contiguous", k=8, d=8, h=3, w=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = make_x(2, d, h, w, "cpu", dtype, layout, gen)
    params = make_params(d, 4, 2, k, grouped, "cpu", torch.float64 if dtype == torch.float64 else torch.float32, gen)
    paths = mk.scan_paths(h, w, "hilbert", k, dtype=torch.int32)
    return x, params, paths


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_contract_matches_reference(contract, grouped, layout):
    x, params, paths = _inputs(grouped, layout=layout)
    x.requires_grad_()
    for p in params:
        p.requires_grad_()
    out, x_dbl, states = fused.hss_scan_op(x, *params, paths, "cpu", grouped, True)
    assert states.dtype == torch.float64 and states.shape == kernel_contract.states_shape(
        2, 8, params[1].shape[1], 15, 4, x.device)
    ref_in = [t.detach().clone().requires_grad_() for t in (x, *params)]
    ref = reference.hss_scan(*ref_in, method="hilbert", directions=8, grouped=grouped)
    assert rel_err(out, ref) < 1e-12
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for got, want in zip((x, *params), ref_in):
        assert rel_err(got.grad, want.grad) < 1e-10


def test_float32_and_bf16_through_the_op(contract):
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        x, params, paths = _inputs(False, dtype=dtype, seed=3)
        out, _, _ = fused.hss_scan_op(x, *params, paths, "cpu", False, True)
        assert out.dtype == dtype
        ref = reference.hss_scan(x.double(), *[p.double() for p in params], directions=8)
        assert rel_err(out, ref) < tol


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck(contract, grouped):
    x, params, paths = _inputs(grouped)
    args = (x.requires_grad_(), *[p.requires_grad_() for p in params], paths, "cpu", grouped, True)
    torch.library.opcheck(torch.ops.mambaad.hss_scan.default, args)


def test_torch_compile_one_node(contract):
    x, params, paths = _inputs(False, dtype=torch.float32)
    params = [p.requires_grad_() for p in params]

    def f(x, *ps):
        return fused.hss_scan_op(x, *ps, paths, "cpu", False, True)[0].square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(x, *params)
    grads = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(f(x, *params), params)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def _run_scan(x, params, paths, grouped, dout, eager, monkeypatch):
    """fused.scan on fresh leaves, forced through the eager twin or the registered op."""
    monkeypatch.setattr(fused, "_plain_eager", lambda tensors: eager)
    leaves = [t.detach().clone().requires_grad_() for t in (x, *params)]
    out = fused.scan(*leaves, paths, "cpu", grouped, True)
    assert (type(out.grad_fn).__name__ == "_EagerScanBackward") == eager
    (out * dout).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("grouped", [False, True])
def test_eager_twin_matches_the_op_bitwise(contract, monkeypatch, grouped):
    x, params, paths = _inputs(grouped, dtype=torch.float32, seed=21)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(22))
    out_op, grads_op = _run_scan(x, params, paths, grouped, dout, False, monkeypatch)
    out_tw, grads_tw = _run_scan(x, params, paths, grouped, dout, True, monkeypatch)
    assert torch.equal(out_op, out_tw)
    for a, b in zip(grads_op, grads_tw):
        assert a is not None and torch.equal(a, b)


def test_plain_eager_only_for_plain_tensors():
    x = torch.randn(2, 3)
    assert fused._plain_eager((x, torch.nn.Parameter(torch.randn(2))))
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        assert not fused._plain_eager((x,))
    with torch.device("cpu"):  # a torch function mode
        assert not fused._plain_eager((x,))

    class Sub(torch.Tensor):
        pass

    assert not fused._plain_eager((x.as_subclass(Sub),))


@pytest.mark.parametrize("eager", [True, False])
def test_autocast_does_not_reach_the_op(contract, monkeypatch, eager):
    """Under torch.autocast (AMP training) the op keeps x's dtype and computes in fp32: the same
    bits as without autocast, forward and gradients (x_dbl must stay fp32 for the kernels)."""
    x, params, paths = _inputs(False, dtype=torch.float32, seed=23)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(24))
    want, want_grads = _run_scan(x, params, paths, False, dout, eager, monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_grads = _run_scan(x, params, paths, False, dout, eager, monkeypatch)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    for a, b in zip(got_grads, want_grads):
        assert torch.equal(a, b)


def test_compile_traces_the_op_not_the_twin(contract):
    x, params, paths = _inputs(False, dtype=torch.float32, seed=25)
    targets = []

    def record(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    def f(x, *ps):
        return fused.scan(x, *ps, paths, "cpu", False, True).square().sum()

    got = torch.compile(f, backend=record, fullgraph=True)(x, *params)
    assert any("mambaad.hss_scan" in t for t in targets), targets
    torch.testing.assert_close(got, f(x, *params))
