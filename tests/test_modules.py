"""SS2D and HSSBlock: the authors' parameter names and shapes, initialization, any grid."""

import math

import pytest
import torch
import torch.nn.functional as F

from mambaad_kernels.modules import SS2D, HSSBlock


def _ss2d_count(c, n=16, k=8, ratio=2.0):
    d = int(ratio * c)
    r = math.ceil(c / 16)
    return (c * 2 * d  # in_proj
            + d * 9 + d  # depthwise conv 3x3 + bias
            + k * (r + 2 * n) * d  # x_proj_weight
            + k * d * r + k * d  # dt_projs_weight, dt_projs_bias
            + k * d * n + k * d  # A_logs, Ds
            + 2 * d  # out_norm
            + d * c)  # out_proj


def test_ss2d_names_shapes_and_count():
    c, n, k = 64, 16, 8
    m = SS2D(c, d_state=n, directions=k)
    d, r = 2 * c, math.ceil(c / 16)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * d, c), "conv2d.weight": (d, 1, 3, 3), "conv2d.bias": (d,),
        "x_proj_weight": (k, r + 2 * n, d), "dt_projs_weight": (k, d, r), "dt_projs_bias": (k, d),
        "A_logs": (k * d, n), "Ds": (k * d,), "out_norm.weight": (d,), "out_norm.bias": (d,),
        "out_proj.weight": (c, d),
    }
    assert sum(p.numel() for p in m.parameters()) == _ss2d_count(c)
    assert list(m.state_dict()) == list(shapes)  # no scan indices, no buffers


def test_hss_block_names_and_count():
    blk = HSSBlock(32, drop_path=0.1)
    names = [n for n, _ in blk.named_parameters()]
    assert names[:2] == ["ln_1.weight", "ln_1.bias"]
    assert all(n.startswith(("ln_1.", "self_attention.")) for n in names)
    assert sum(p.numel() for p in blk.parameters()) == _ss2d_count(32) + 2 * 32
    assert hasattr(blk, "drop_path")


def test_initialization():
    torch.manual_seed(0)
    m = SS2D(48, d_state=16)
    n = 16
    torch.testing.assert_close(m.A_logs, torch.log(torch.arange(1, n + 1.0)).expand_as(m.A_logs))
    assert torch.all(m.Ds == 1)
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    r = m.dt_rank
    assert m.dt_projs_weight.abs().max() <= r ** -0.5
    assert abs(m.in_proj.weight.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("h,w", [(8, 8), (5, 7), (1, 6), (12, 20)])
def test_hss_block_any_grid_forward_backward(h, w):
    blk = HSSBlock(16, d_state=4, backend="reference")
    x = torch.randn(2, h, w, 16, requires_grad=True)
    y = blk(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in blk.parameters())


@pytest.mark.parametrize("method,k", [("sweep", 1), ("scan", 2), ("zigzag", 4), ("zorder", 8)])
def test_methods_and_directions(method, k):
    m = SS2D(16, d_state=4, scan_method=method, directions=k, backend="reference")
    assert m.x_proj_weight.shape[0] == k
    assert m(torch.randn(1, 4, 6, 16)).shape == (1, 4, 6, 16)


def test_gss_block_parameters():
    from mambaad_kernels.modules import GSSBlock

    c, n, k = 32, 16, 8
    blk = GSSBlock(c, d_state=n, directions=k)
    d, r = 2 * c, math.ceil(c / 16)
    sa = blk.self_attention
    assert sa.x_proj_weight.shape == (k, r + 2 * n, d // k)
    assert sa.dt_projs_weight.shape == (k, d // k, r) and sa.dt_projs_bias.shape == (k, d // k)
    assert sa.A_logs.shape == (d, n) and sa.Ds.shape == (d,)
    # SS2D count with the per-direction parts divided by K
    assert sum(p.numel() for p in blk.parameters()) == (
        2 * c + c * 2 * d + d * 10 + k * (r + 2 * n) * (d // k) + k * (d // k) * (r + 1)
        + d * n + d + 2 * d + d * c)
    assert blk(torch.randn(1, 5, 6, c)).shape == (1, 5, 6, c)


def test_gss_k1_equals_one_direction_hss():
    from mambaad_kernels.modules import GSSBlock

    torch.manual_seed(0)
    gss = GSSBlock(16, d_state=4, directions=1, backend="reference")
    hss = HSSBlock(16, d_state=4, directions=1, backend="reference")
    hss.load_state_dict(gss.state_dict())
    x = torch.randn(2, 5, 7, 16)
    torch.testing.assert_close(gss(x), hss(x))
