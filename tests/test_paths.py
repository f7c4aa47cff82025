"""Scan paths: permutations, inverses, the authors' construction on 2^n squares, locality."""

import numpy as np
import pytest
import torch
from hilbert import decode  # numpy-hilbert-curve, the authors' Hilbert construction

import mambaad_kernels as mk
from mambaad_kernels.paths import METHODS

GRIDS = [(1, 1), (1, 7), (6, 1), (2, 2), (3, 5), (4, 4), (5, 7), (8, 8), (7, 4), (16, 9), (48, 80),
         (37, 53)]


def _rc(path, w):
    return np.divmod(np.asarray(path), w)


def _independent_order(method, n):
    """The method's order over an n x n grid (n a power of two), as the authors build it."""
    t = np.arange(n * n)
    if method == "sweep":
        return t
    if method == "scan":
        g = t.reshape(n, n).copy()
        g[1::2] = g[1::2, ::-1]
        return g.reshape(-1)
    if method == "zorder":
        col = sum(((t >> (2 * j)) & 1) << j for j in range(16))
        row = sum(((t >> (2 * j + 1)) & 1) << j for j in range(16))
        return row * n + col
    if method == "zigzag":
        out = []
        for i in range(2 * n - 1):
            cells = [(r, i - r) for r in range(n) if 0 <= i - r < n]
            out += [r * n + c for r, c in (sorted(cells, reverse=True) if i % 2 == 0 else sorted(cells))]
        return np.array(out)
    if method == "hilbert":
        loc = decode(t, 2, int(np.log2(n))).astype(np.int64) if n > 1 else np.zeros((1, 2), np.int64)
        return loc[:, 1] * n + loc[:, 0]  # col = loc[0], row = loc[1]
    raise ValueError(method)


def _oriented_torch(n, base):
    g = torch.arange(n * n).view(n, n)
    return [g, g.t(), torch.rot90(g, 1, (-2, -1)), torch.rot90(g, 1, (-2, -1)).t()][base].reshape(-1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("h,w", GRIDS)
def test_permutation_and_inverse(method, h, w):
    paths = mk.scan_paths(h, w, method)
    assert paths.shape == (8, h * w) and paths.dtype == torch.long
    for k in range(8):
        assert torch.equal(paths[k].sort().values, torch.arange(h * w))
    inv = mk.inverse_paths(paths)
    ar = torch.arange(h * w).expand(8, -1)
    assert torch.equal(torch.gather(paths, 1, inv), ar) and torch.equal(torch.gather(inv, 1, paths), ar)
    for k in range(4):
        assert torch.equal(paths[k + 4], paths[k].flip(0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_authors_construction_on_power_of_two_squares(method, n):
    order = torch.from_numpy(_independent_order(method, n))
    for k in range(8):
        want = _oriented_torch(n, k % 4)[order]
        if k >= 4:
            want = want.flip(0)
        assert torch.equal(mk.scan_path(n, n, method, k), want), (method, n, k)


def test_documented_first_steps():
    rc = lambda m: [tuple(x) for x in np.stack(_rc(mk.scan_path(4, 4, m, 0)[:5], 4), 1).tolist()]  # noqa: E731
    assert rc("hilbert") == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0)]
    assert rc("zorder") == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]
    assert rc("zigzag") == [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1)]
    assert rc("scan") == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3)]
    assert rc("sweep") == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]


def test_orientations_over_own_shape():
    """Direction 1 walks the transposed grid row-major: down the original columns."""
    h, w = 3, 5
    assert mk.scan_path(h, w, "sweep", 1).tolist() == torch.arange(h * w).view(h, w).t().reshape(-1).tolist()
    rot = torch.rot90(torch.arange(h * w).view(h, w), 1, (-2, -1))
    assert mk.scan_path(h, w, "sweep", 2).tolist() == rot.reshape(-1).tolist()
    assert mk.scan_path(h, w, "sweep", 3).tolist() == rot.t().reshape(-1).tolist()


@pytest.mark.parametrize("method", ["scan", "zigzag", "hilbert"])
@pytest.mark.parametrize("h,w", [(3, 5), (5, 7), (7, 4), (16, 9), (1, 7), (48, 80), (37, 53), (6, 10)])
def test_neighbour_steps(method, h, w):
    for k in range(8):
        r, c = _rc(mk.scan_path(h, w, method, k), w)
        dr, dc = np.abs(np.diff(r)), np.abs(np.diff(c))
        assert (np.maximum(dr, dc) == 1).all(), (method, h, w, k)  # every step to a neighbour
        if method == "scan":
            assert ((dr + dc) == 1).all()
        if method == "hilbert":  # diagonal steps only where an odd side forces one
            assert ((dr + dc) == 2).sum() <= max(h, w)


def test_scan_paths_rows_and_cache():
    full = mk.scan_paths(6, 6, "hilbert", 8)
    for k, rows in {1: [0], 2: [0, 4], 4: [0, 1, 4, 5]}.items():
        assert torch.equal(mk.scan_paths(6, 6, "hilbert", k), full[rows])
    assert mk.scan_paths(6, 6, "hilbert", 8) is full  # cached, not rebuilt
    i32 = mk.scan_paths(6, 6, "hilbert", 8, dtype=torch.int32)
    assert i32.dtype == torch.int32 and torch.equal(i32.long(), full)
    assert mk.scan_paths(6, 6, "hilbert", 8, "meta").device.type == "meta"


@pytest.mark.parametrize("bad", [dict(method="spiral"), dict(directions=3), dict(h=0), dict(w=-1)])
def test_invalid_arguments(bad):
    args = dict(h=4, w=4, method="hilbert", directions=8) | bad
    with pytest.raises(ValueError):
        mk.scan_paths(args["h"], args["w"], args["method"], args["directions"])
    with pytest.raises(ValueError):
        mk.scan_path(4, 4, "hilbert", 8)
