"""Faster custom-combine scans and reductions for the Triton interpreter (TRITON_INTERPRET=1).

The interpreter folds a scan or a reduction with a custom combine function one *element* at a
time in Python: for the ``(BT, NP, BD)`` tiles of the scan kernels that is thousands of combine
calls per chunk (``tl.flip`` reduces with a custom xor combine too), and the parity tests take
many minutes. :func:`enable_fast_scan` replaces

- the scan fold with a Hillis-Steele scan over whole tiles: for offsets 1, 2, 4, ... along the axis,
``acc[i] = combine(acc[i - offset], acc[i])`` for every ``i >= offset`` at once, so a chunk costs
``log2(BT)`` combine calls. The operands keep the interpreter's order (the earlier segment first;
reverse scans are flipped before and after by the interpreter itself, as before), so the
semantics are the same; only the association differs, like on a GPU, where scans are trees too.
Running the kernels' combine functions as a tree under the interpreter also checks their
associativity, which a sequential fold would not;
- the reduction fold with the same sequential fold done one *slice* at a time
  (``acc = combine(acc, x[i])`` on whole slices, i increasing): bit-identical to the original.

tests/test_triton.py compares both with the originals. They are applied once, lazily, the first
time a Triton scan kernel runs on CPU tensors, and touch only the interpreter's generic (custom
combine) paths; sum, min, max, cumsum and cumprod keep their numpy implementations.
"""

from __future__ import annotations

import numpy as np

_ORIGINAL = None


def _tree_scan(self, inputs):
    """Drop-in for ``triton.runtime.interpreter.ScanOps.generic_scan``: inclusive Hillis-Steele scan."""
    import triton.language as tl

    axis = self.axis
    acc = [arg.handle.data for arg in inputs]
    n = acc[0].shape[axis]
    pos_shape = [1] * acc[0].ndim
    pos_shape[axis] = n
    pos = np.arange(n).reshape(pos_shape)
    offset = 1
    while offset < n:
        # early[i] = acc[i - offset]; the first `offset` rows have no predecessor and are kept as is
        # (their combine results are computed on a dummy operand and dropped), so that the tiles
        # keep their power-of-two shapes.
        early = [np.roll(a, offset, axis=axis) for a in acc]
        with np.errstate(all="ignore"):
            ret = self.combine_fn.fn(*(self.to_tensor(e, arg.dtype) for e, arg in zip(early, inputs)),
                                     *(self.to_tensor(a, arg.dtype) for a, arg in zip(acc, inputs)))
        ret = ret if isinstance(ret, tuple) else (ret,)
        acc = [np.where(pos >= offset, np.broadcast_to(r.handle.data if isinstance(r, tl.core.tensor) else r,
                                                        a.shape), a).astype(a.dtype)
               for a, r in zip(acc, ret)]
        offset *= 2
    return [self.to_tensor(a, arg.dtype) for a, arg in zip(acc, inputs)]


def _slice_reduce(self, inputs):
    """Drop-in for ``triton.runtime.interpreter.ReduceOps.generic_reduce``: fold by slices."""
    import triton.language as tl

    original_axis = self.axis
    inputs, axis = self.unravel(inputs, self.axis)
    datas = [arg.handle.data for arg in inputs]
    acc = None
    for i in range(datas[0].shape[axis]):
        cur = tuple(self.to_tensor(np.take(d, i, axis=axis), arg.dtype) for d, arg in zip(datas, inputs))
        if acc is None:
            acc = cur
            continue
        ret = self.combine_fn.fn(*acc, *cur)
        ret = ret if isinstance(ret, tuple) else (ret,)
        acc = tuple(r if isinstance(r, tl.core.tensor) else self.to_tensor(np.asarray(r), a.dtype)
                    for r, a in zip(ret, inputs))
    out = []
    for a, arg in zip(acc, inputs):
        data = a.handle.data.reshape(np.take(datas[0], 0, axis=axis).shape)
        if self.keep_dims:
            ndim = datas[0].ndim
            data = np.expand_dims(data, axis) if original_axis is not None else data.reshape((1,) * ndim)
        elif original_axis is None:
            data = data.item()
        out.append(self.to_tensor(data, arg.dtype))
    return out


def enable_fast_scan() -> None:
    """Install :func:`_tree_scan` and :func:`_slice_reduce` in the interpreter (idempotent)."""
    global _ORIGINAL
    if _ORIGINAL is not None:
        return
    from triton.runtime import interpreter

    _ORIGINAL = (interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce)
    interpreter.ScanOps.generic_scan = _tree_scan
    interpreter.ReduceOps.generic_reduce = _slice_reduce


def originals():
    """The interpreter's own ``(generic_scan, generic_reduce)`` (for tests), or None if not patched."""
    return _ORIGINAL
