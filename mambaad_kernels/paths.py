"""Scan paths: the order in which a multi-direction scan visits the cells of an (h, w) grid.

A path is a LongTensor ``(L,)``, ``L = h * w``: element ``t`` is the **row-major flat index in the
original (h, w) grid** of the cell that sequence position ``t`` reads. Gathering a feature map
``x.flatten(-2)[..., path]`` gives the sequence a direction scans; scattering a sequence back with
``out[..., path] = seq`` undoes it.

Directions (the authors' order, SPEC "The multi-direction scan"):

==========  =====================================================================
direction   oriented grid, flattened row-major, then reordered along the method
==========  =====================================================================
0           identity                         (h, w)
1           transpose                        (w, h)
2           ``torch.rot90(k=1, dims=(-2, -1))``  (w, h)
3           transpose of that rot90          (h, w)
4..7        0..3 with the sequence reversed
==========  =====================================================================

Methods reorder the oriented grid of shape (rows, cols) along:

- ``"sweep"``: row-major.
- ``"scan"``: snake (boustrophedon): row-major with odd rows reversed.
- ``"zorder"``: Morton order, col from the even bits and row from the odd bits of the code; on
  other shapes, the Morton order of the cells that exist.
- ``"zigzag"``: anti-diagonals ``i = row + col``; on even ``i`` the cells in decreasing row, on odd
  ``i`` in increasing row.
- ``"hilbert"``: on a power-of-two square exactly the curve of numpy-hilbert-curve
  (``loc = decode(t, 2, log2 n)``, ``col = loc[0]``, ``row = loc[1]``), so the authors'
  checkpoints keep their meaning; on any other shape a generalized Hilbert curve (recursive
  halving of the longer side, as in J. Cervený's "gilbert" construction) whose steps all go to a
  neighbouring cell, with an occasional diagonal step where an odd side forces one.

Paths are built once per (h, w, method, directions, device, dtype) and cached; they are plain
tensors, never parameters or buffers, so they never enter a state dict.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils._python_dispatch import _disable_current_modes

METHODS = ("sweep", "scan", "zorder", "zigzag", "hilbert")
DIRECTION_ROWS = {1: (0,), 2: (0, 4), 4: (0, 1, 4, 5), 8: (0, 1, 2, 3, 4, 5, 6, 7)}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown scan method {method!r}; expected one of {METHODS}")


def check_directions(directions: int) -> None:
    if directions not in DIRECTION_ROWS:
        raise ValueError(f"directions must be one of {tuple(DIRECTION_ROWS)}, got {directions!r}")


def _check_grid(h: int, w: int) -> None:
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1 x 1 with integer sides, got {h} x {w}")


# ---------------------------------------------------------------------------------------------
# Orders over a (rows, cols) grid: each returns an int64 array of row-major flat indices.
# ---------------------------------------------------------------------------------------------


def _sweep_order(rows: int, cols: int) -> np.ndarray:
    return np.arange(rows * cols, dtype=np.int64)


def _snake_order(rows: int, cols: int) -> np.ndarray:
    grid = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Put bit j of v at bit 2 j (v < 2**31)."""
    out = np.zeros_like(v)
    for j in range(31):
        out |= ((v >> j) & 1) << (2 * j)
    return out


def _zorder_order(rows: int, cols: int) -> np.ndarray:
    r, c = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    code = _spread_bits(c) | (_spread_bits(r) << 1)  # col on even bits, row on odd bits
    return np.argsort(code, kind="stable").astype(np.int64)


def _zigzag_order(rows: int, cols: int) -> np.ndarray:
    out = []
    for i in range(rows + cols - 1):
        lo, hi = max(0, i - cols + 1), min(i, rows - 1)
        r = np.arange(hi, lo - 1, -1) if i % 2 == 0 else np.arange(lo, hi + 1)
        out.append(r * cols + (i - r))
    return np.concatenate(out).astype(np.int64)


def _hilbert_square(bits: int) -> np.ndarray:
    """Hilbert curve on a 2**bits square, as (col, row) per step; numpy-hilbert-curve's orientation.

    Skilling's transpose form ("Programming the Hilbert curve", AIP Conf. Proc. 707, 2004): the
    index is split into two bit-planes, Gray-decoded, then the excess rotations are undone level
    by level, all vectorised over every index at once.
    """
    n = 1 << bits
    t = np.arange(n * n, dtype=np.int64)
    # transpose form: axis a gets the index bits at positions 2 j + (1 - a), most significant first
    x = [np.zeros_like(t), np.zeros_like(t)]
    for j in range(bits):
        x[0] |= ((t >> (2 * j + 1)) & 1) << j
        x[1] |= ((t >> (2 * j)) & 1) << j
    # Gray decode across the two axes
    carry = x[1] >> 1
    x[1] ^= x[0]
    x[0] ^= carry
    # undo the excess work, from the second-lowest level up
    q = 2
    while q < n:
        p = q - 1
        for a in (1, 0):
            set_ = (x[a] & q) != 0
            x[0] = np.where(set_, x[0] ^ p, x[0])  # invert the low bits of axis 0
            swap = np.where(set_, 0, (x[0] ^ x[a]) & p)  # or exchange low bits with axis a
            x[0] ^= swap
            x[a] ^= swap
        q <<= 1
    return np.stack([x[0], x[1]], axis=1)  # (n*n, 2): loc[0] = col, loc[1] = row


def _gilbert(rows: int, cols: int) -> np.ndarray:
    """Generalized Hilbert curve over any rectangle, as (col, row) per step.

    Split the rectangle, spanned by a major axis ``a`` and a minor axis ``b`` from corner ``p``,
    either in two along ``a`` (when it is much longer) or in three (a first half along ``b``, the
    rest along ``a``, then back), keeping each part's major side even where possible so the parts
    join at neighbouring cells. Explicit stack, no recursion limit.
    """
    out = np.empty((rows * cols, 2), dtype=np.int64)
    n = 0
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    # (px, py, ax, ay, bx, by): corner, major vector, minor vector (x = col, y = row)
    stack = [(0, 0, cols, 0, 0, rows) if cols >= rows else (0, 0, 0, rows, cols, 0)]
    while stack:
        px, py, ax, ay, bx, by = stack.pop()
        w, h = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = sign(ax), sign(ay), sign(bx), sign(by)
        if h == 1 or w == 1:  # a straight run along the longer of the two
            sx, sy, m = (dax, day, w) if h == 1 else (dbx, dby, h)
            for i in range(m):
                out[n] = (px + i * sx, py + i * sy)
                n += 1
            continue
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        if 2 * w > 3 * h:
            if abs(ax2 + ay2) % 2 and w > 2:
                ax2, ay2 = ax2 + dax, ay2 + day
            parts = [(px, py, ax2, ay2, bx, by), (px + ax2, py + ay2, ax - ax2, ay - ay2, bx, by)]
        else:
            if abs(bx2 + by2) % 2 and h > 2:
                bx2, by2 = bx2 + dbx, by2 + dby
            parts = [
                (px, py, bx2, by2, ax2, ay2),
                (px + bx2, py + by2, ax, ay, bx - bx2, by - by2),
                (px + (ax - dax) + (bx2 - dbx), py + (ay - day) + (by2 - dby), -bx2, -by2,
                 -(ax - ax2), -(ay - ay2)),
            ]
        stack.extend(reversed(parts))
    return out


def _hilbert_order(rows: int, cols: int) -> np.ndarray:
    if rows == cols and rows & (rows - 1) == 0:
        loc = _hilbert_square(rows.bit_length() - 1)
    else:
        loc = _gilbert(rows, cols)
    return (loc[:, 1] * cols + loc[:, 0]).astype(np.int64)


_ORDERS = {
    "sweep": _sweep_order,
    "scan": _snake_order,
    "zorder": _zorder_order,
    "zigzag": _zigzag_order,
    "hilbert": _hilbert_order,
}


def _oriented(h: int, w: int, base: int) -> np.ndarray:
    """Original flat indices of the oriented grid for base direction 0..3, shape (rows, cols)."""
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    if base == 0:
        return grid
    if base == 1:
        return grid.T
    rot = np.rot90(grid, k=1)  # same as torch.rot90(k=1, dims=(-2, -1))
    return rot if base == 2 else rot.T


@functools.lru_cache(maxsize=None)
def _path_np(h: int, w: int, method: str, direction: int) -> np.ndarray:
    base = direction % 4
    grid = _oriented(h, w, base)  # (rows, cols) of original flat indices
    rows, cols = grid.shape
    path = grid.reshape(-1)[_ORDERS[method](rows, cols)]  # (L,)
    if direction >= 4:
        path = path[::-1]
    path = np.ascontiguousarray(path)
    path.setflags(write=False)
    return path


def scan_path(h: int, w: int, method: str = "hilbert", direction: int = 0) -> torch.Tensor:
    """One direction's path over an (h, w) grid.

    Args:
        h, w: grid height and width (any sizes >= 1).
        method: one of ``"sweep", "scan", "zorder", "zigzag", "hilbert"``.
        direction: 0..7 (see the module docstring).

    Returns:
        LongTensor ``(L,)``, ``L = h * w``, on the CPU: element t is the row-major flat index in
        the original grid of the cell that sequence position t reads.
    """
    _check_grid(h, w)
    check_method(method)
    if direction not in range(8):
        raise ValueError(f"direction must be in 0..7, got {direction!r}")
    return torch.from_numpy(_path_np(int(h), int(w), method, int(direction)).copy())


@functools.lru_cache(maxsize=256)
def _paths_cached(h: int, w: int, method: str, directions: int, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    rows = [_path_np(h, w, method, k) for k in DIRECTION_ROWS[directions]]
    # a cached inference tensor could never be saved for backward; a first call under tracing
    # (torch.export, make_fx: a fake or proxy dispatch mode is active) must still cache a real tensor,
    # which the tracer then takes as a constant
    with torch.inference_mode(False), _disable_current_modes():
        return torch.from_numpy(np.stack(rows)).to(device=device, dtype=dtype)


def _as_device(device: torch.device | str | None) -> torch.device:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def scan_paths(h: int, w: int, method: str = "hilbert", directions: int = 8,
               device: torch.device | str | None = None, *,
               dtype: torch.dtype = torch.long) -> torch.Tensor:
    """The K paths a K-direction scan uses, in the authors' row order.

    ``directions`` K picks rows: K=1 -> [0], K=2 -> [0, 4], K=4 -> [0, 1, 4, 5], K=8 -> [0..7].
    Parameters indexed by k (x_proj_weight, dt_projs_*, A_logs, Ds) follow this row order.

    The result is cached per (h, w, method, directions, device, dtype) and shared between calls:
    treat it as read-only.

    Returns:
        ``(K, L)`` index tensor (int64 unless ``dtype`` says otherwise) on ``device``.
    """
    _check_grid(h, w)
    check_method(method)
    check_directions(directions)
    if dtype not in (torch.long, torch.int32):
        raise ValueError(f"path dtype must be torch.long or torch.int32, got {dtype}")
    return _paths_cached(int(h), int(w), method, int(directions), _as_device(device), dtype)


def inverse_paths(paths: torch.Tensor) -> torch.Tensor:
    """``inv[k, p]`` = the sequence position at which direction k reads grid cell p."""
    inv = torch.empty_like(paths)
    pos = torch.arange(paths.shape[-1], device=paths.device, dtype=paths.dtype)
    return inv.scatter_(-1, paths, pos.expand_as(paths).contiguous())
