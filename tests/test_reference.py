"""The reference against independent constructions: the gather/merge, a per-element selective
scan, the authors' forward_core written with their own tensor operations, and gradcheck."""

import math

import numpy as np
import pytest
import torch
from hilbert import decode

import mambaad_kernels as mk
from mambaad_kernels import reference
from mambaad_kernels.paths import METHODS

from .parity import make_params


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (4, 4), (6, 9)])
def test_merge_of_scan_is_k_times_x(method, k, h, w):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    xs = reference.cross_scan(x, method, k)
    assert xs.shape == (2, k, 3, h * w)
    torch.testing.assert_close(reference.cross_merge(xs, h, w, method), k * x)


def _naive_scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    """Per-element float64 loops over b, d, l, n; B, C as (b, g, n, l)."""
    bsz, dim, length = u.shape
    n = A.shape[1]
    g = B.shape[1]
    out = torch.zeros(bsz, dim, length, dtype=torch.float64)
    last = torch.zeros(bsz, dim, n, dtype=torch.float64)
    for b in range(bsz):
        for d in range(dim):
            gi = d // (dim // g)
            h = [0.0] * n
            for t in range(length):
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                if softplus:
                    dt = math.log1p(math.exp(dt))
                y = 0.0
                for s in range(n):
                    h[s] = math.exp(dt * float(A[d, s])) * h[s] + dt * float(B[b, gi, s, t]) * float(u[b, d, t])
                    y += float(C[b, gi, s, t]) * h[s]
                if D is not None:
                    y += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zz = float(z[b, d, t])
                    y *= zz / (1 + math.exp(-zz))
                out[b, d, t] = y
            last[b, d] = torch.tensor(h, dtype=torch.float64)
    return out, last


@pytest.mark.parametrize("has_d,has_z,has_bias,softplus,groups,bc3", [
    (True, True, True, True, 2, False), (False, False, False, False, 1, False),
    (True, False, True, True, 4, False), (False, True, False, True, 1, True),
    (True, True, False, False, 1, True)])
def test_selective_scan_against_per_element_loop(has_d, has_z, has_bias, softplus, groups, bc3):
    bsz, dim, n, length = 2, 4, 3, 6
    u, delta = torch.randn(bsz, dim, length, dtype=torch.float64), torch.rand(bsz, dim, length, dtype=torch.float64)
    A = -torch.rand(dim, n, dtype=torch.float64) * 2
    B, C = torch.randn(bsz, groups, n, length, dtype=torch.float64), torch.randn(bsz, groups, n, length, dtype=torch.float64)
    D = torch.randn(dim, dtype=torch.float64) if has_d else None
    z = torch.randn(bsz, dim, length, dtype=torch.float64) if has_z else None
    bias = torch.randn(dim, dtype=torch.float64) if has_bias else None
    want, want_last = _naive_scan(u, delta, A, B, C, D, z, bias, softplus)
    args = (B[:, 0], C[:, 0]) if bc3 else (B, C)
    got, last = reference.selective_scan(u, delta, A, *args, D=D, z=z, delta_bias=bias,
                                         delta_softplus=softplus, return_last_state=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, want_last, rtol=1e-12, atol=1e-12)


def test_selective_scan_constant_bc_and_dtypes():
    bsz, dim, n, length = 1, 3, 2, 5
    u = torch.randn(bsz, dim, length)
    delta = torch.rand(bsz, dim, length)
    A = -torch.rand(dim, n)
    B, C = torch.randn(dim, n), torch.randn(dim, n)
    got = reference.selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double())
    # constant B, C: same as variable B, C repeated per step and per channel as groups
    Bv = B.double().t()[None, :, :, None].expand(bsz, n, dim, length).permute(0, 2, 1, 3)
    Cv = C.double().t()[None, :, :, None].expand(bsz, n, dim, length).permute(0, 2, 1, 3)
    want, _ = _naive_scan(u.double(), delta.double(), A.double(), Bv, Cv, None, None, None, False)
    torch.testing.assert_close(got, want)
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        out, last = reference.selective_scan(u.to(dt), delta.to(dt), A, B, C, return_last_state=True)
        assert out.dtype == dt and last.dtype == torch.float32


def _authors_forward_core(x, xpw, dtw, dtb, A_logs, Ds, method):
    """The authors' SS2D.forward_core for K = 8 on an n x n grid, written with their operations:
    scatter by the inverse index, transpose, rot90, flip; then per-direction projections, the
    float32 scan, and the scatters back. Square power-of-two grids only, as theirs."""
    b, d, n, _ = x.shape
    L, K = n * n, 8
    size = n
    t = np.arange(L)
    if method == "hilbert":
        bits = int(math.log2(size))
        locs = decode(t, 2, bits).astype(np.int64)
        flat = locs[:, 0] + locs[:, 1] * size
    else:
        flat = torch.arange(L).numpy()
    inv = torch.from_numpy(np.argsort(flat))
    index_flat = torch.from_numpy(flat.astype(np.int64))

    def encode(img):  # (b, d, l)
        return torch.zeros_like(img).scatter_(2, inv.expand(img.shape), img)

    def dec(img):
        return torch.zeros_like(img).scatter_(2, index_flat.expand(img.shape), img)

    xs = [encode(x.view(b, -1, L)), encode(torch.transpose(x, 2, 3).contiguous().view(b, -1, L)),
          encode(torch.rot90(x, 1, (2, 3)).contiguous().view(b, -1, L)),
          encode(torch.transpose(torch.rot90(x, 1, (2, 3)), 2, 3).contiguous().view(b, -1, L))]
    xs = torch.stack(xs, 1)
    xs = torch.cat([xs, torch.flip(xs, dims=[-1])], 1)  # (b, k, d, l)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, xpw)
    r, nst = dtw.shape[2], A_logs.shape[1]
    dts, Bs, Cs = torch.split(x_dbl, [r, nst, nst], 2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dtw)
    out = reference.selective_scan(xs.reshape(b, -1, L), dts.reshape(b, -1, L), -torch.exp(A_logs),
                                   Bs, Cs, Ds, delta_bias=dtb.reshape(-1), delta_softplus=True)
    out = out.view(b, K, -1, L)
    inv_y = torch.flip(out[:, 4:8], dims=[-1])
    ys = [dec(out[:, 0]), dec(inv_y[:, 0])]
    for o in (out[:, 1], inv_y[:, 1]):
        ys.append(torch.transpose(dec(o).view(b, -1, n, n), 2, 3).contiguous().view(b, -1, L))
    for o in (out[:, 2], inv_y[:, 2]):
        ys.append(torch.rot90(dec(o).view(b, -1, n, n), 3, (2, 3)).contiguous().view(b, -1, L))
    for o in (out[:, 3], inv_y[:, 3]):
        ys.append(torch.rot90(torch.transpose(dec(o).view(b, -1, n, n), 2, 3), 3, (2, 3)).contiguous().view(b, -1, L))
    return sum(ys).view(b, d, n, n)


@pytest.mark.parametrize("method,n", [("hilbert", 4), ("hilbert", 8), ("sweep", 4)])
def test_hss_scan_equals_authors_forward_core(method, n):
    x = torch.randn(2, 4, n, n, dtype=torch.float64)
    params = make_params(4, 4, 2, 8, False, "cpu", torch.float64)
    got = reference.hss_scan(x, *params, method=method, directions=8)
    torch.testing.assert_close(got, _authors_forward_core(x, *params, method))


@pytest.mark.parametrize("grouped", [False, True])
def test_hss_scan_gradcheck(grouped):
    torch.manual_seed(0)
    d = 8 if grouped else 2
    x = torch.randn(1, d, 3, 4, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in make_params(d, 2, 1, 8, grouped, "cpu", torch.float64)]
    fn = lambda *a: reference.hss_scan(*a, method="hilbert", directions=8, grouped=grouped)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


def test_hss_scan_dtypes():
    x = torch.randn(1, 4, 3, 3)
    params = make_params(4, 4, 2, 4, False, "cpu")
    ref = reference.hss_scan(x.double(), *params, directions=4)
    assert ref.dtype == torch.float64
    for dt in (torch.float16, torch.bfloat16):
        out = reference.hss_scan(x.to(dt), *params, directions=4)
        assert out.dtype == dt
        assert (out.double() - reference.hss_scan(x.to(dt).double(), *params, directions=4)).abs().max() < 0.05


def test_grouped_k1_equals_one_direction():
    """GSS with K = 1 is the one-direction HSS scan."""
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    params = make_params(6, 4, 2, 1, True, "cpu", torch.float64)
    torch.testing.assert_close(reference.hss_scan(x, *params, directions=1, grouped=True),
                               reference.hss_scan(x, *params, directions=1, grouped=False))


def test_grouped_channels_are_independent_directions():
    """GSS: group k of the output equals a one-direction scan of group k along direction k."""
    b, d, h, w, k, n, r = 1, 8, 3, 5, 4, 4, 2
    x = torch.randn(b, d, h, w, dtype=torch.float64)
    xpw, dtw, dtb, A_logs, Ds = make_params(d, n, r, k, True, "cpu", torch.float64)
    got = reference.hss_scan(x, xpw, dtw, dtb, A_logs, Ds, "scan", k, grouped=True)
    dk = d // k
    paths = mk.scan_paths(h, w, "scan", k)
    for g in range(k):
        xg = x[:, g * dk:(g + 1) * dk].flatten(2)[..., paths[g]]  # (b, dk, l) along direction g
        proj = torch.einsum("cj,bjl->bcl", xpw[g], xg)
        dts, Bs, Cs = torch.split(proj, [r, n, n], 1)
        y = reference.selective_scan(xg, torch.einsum("jr,brl->bjl", dtw[g], dts),
                                     -torch.exp(A_logs[g * dk:(g + 1) * dk]), Bs, Cs,
                                     Ds[g * dk:(g + 1) * dk], delta_bias=dtb[g], delta_softplus=True)
        want = torch.empty_like(y)
        want[..., paths[g]] = y
        torch.testing.assert_close(got[:, g * dk:(g + 1) * dk].flatten(2), want)

