"""Fused Triton kernels of the HSS scan (backend ``"triton"``): the kernel contract of
:mod:`mambaad_kernels.fused` (``scan_fwd``, ``scan_bwd``, ``states_shape``, ``SUPPORTED_DTYPES``).

Runs CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1`` (the tests). fp32, fp16, bf16
and fp64 inputs; the state and every accumulation are fp32 (fp64 for fp64 inputs).

Glossary as :mod:`mambaad_kernels.reference`: b batch, k direction (K), d channel of a direction
(Dk = D, or D / K for the grouped GSS scan), t step, p = paths[k, t] the grid position it reads, n
state (N, padded to NP), r dt rank (R, padded to BR).

Design
------
**Forward** (:mod:`.fwd`). Grid ``(ceil(Dk / BD), B K)``: a program owns one (b, k) and BD
channels and walks the path in chunks of BT steps. Per chunk it gathers, straight from the
original grid positions p: u ``(BT, BD)`` from x (any strides: channels-last arrives with
stride_d = 1), and the rows dt ``(BT, BR)``, B and C ``(BT, NP)`` of x_dbl. Then, all in registers
and fp32: ``z = dt @ dt_w^T + dt_b`` (a small dot), ``delta = softplus(z)``,
``decay = exp2(delta A log2 e)`` and ``inp = delta u B`` as ``(BT, NP, BD)`` tiles, the chunk's
states by ``tl.associative_scan`` over t with the affine combine, carried in from the previous
chunk, ``y = C . h + D u`` (the sum over n as a batched dot), stored to the original grid
positions. The state before every S-th chunk is stored as a checkpoint.

The layout Triton picks for the ``(BT, NP, BD)`` tiles keeps t inside each thread (BT registers
per (n, d)), so the scans are sequential register folds and ``tl.flip`` along t is a register
renaming; n and d are spread over lanes and warps. That is why every sum over n or d is a small
batched ``tl.dot`` (its operands go through shared memory once) rather than ``tl.sum`` (a
butterfly of log2(lanes) shuffles per element): in the sm_90 SASS of Triton 3.6, the backward's
loop drops from 79 to 45 instructions per state element. Triton's ``reverse=True`` scans shuffle
every value across lanes even when the scanned axis is thread-local (+20 per element), hence the
flips.

**Merge over directions, deterministic by default and always.** HSS with K > 1: each direction
writes its output to a per-direction fp32 partial ``(B, K, D, L)`` at the original positions and
a second kernel (:mod:`.reduce`) sums the K partials in fixed order k = 0 .. K-1 and casts. No
atomics anywhere, so every result is bit-identical run to run; ``deterministic=False`` is
accepted for the contract and changes nothing. GSS and K = 1 write the output directly.

**Backward** (:mod:`.bwd`). Same grid; chunks from last to first. For each checkpoint segment it
re-runs the segment forward from the checkpoint to get the state before each chunk (skipped when
S = 1, the default), then per chunk: recompute ``decay, inp`` and the states h (forward scan),
then the adjoint ``dh_t = g_t C_t + decay_{t+1} dh_{t+1}`` as a prefix scan of the time-flipped
chunk with a three-component combine (:func:`._common.suffix_combine`: it carries the segment's
first decay, so no shifted ``decay_{t+1}`` tile is needed), plus the carry
``q = decay_t0 dh_t0`` from the chunk after. ``decay_t h_{t-1}`` is ``h_t - inp_t`` (no division).
Then, with g = dout gathered like u::

    dC_t = sum_d g h_t                  dB_t = sum_d dh_t delta u         (batched dots over d)
    du   = delta (dh . B) + D g         ddelta = dh . (A decay h_{t-1}) + u (dh . B)   (dots over n)
    dA  += sum_t dh delta decay h_{t-1} (d_A_logs = dA A)     dz = ddelta sigmoid(z)
    d_dt = dz @ dt_w  (dot)    d_dt_w += dz^T @ dt  (dot)    d_dt_b += sum_t dz    dD += sum_t g u

Reductions across programs, all in fixed order: du per direction -> ``(B, K, D, L)`` partial ->
sum over k (HSS, K > 1); dx_dbl per channel block -> ``(B, K, ceil(Dk / BD), R + 2N, L)`` partial
-> sum over blocks (one block: written directly); parameter gradients per batch element -> sum
over b.

**Saved for the backward**: the checkpoints ``(B, K, ceil(L / (BT S)), Dk, N)`` fp32, i.e.
``B K Dk L N / (BT S)`` floats; with BT = 16, S = 1 on CUDA and N = 16 that is one float per
(b, k, d, t), ``O(B K D L)``. (fused.py also saves x_dbl.) No ``(B, K, D, L, N)`` tensor exists.

Arithmetic per state element (b, k, d, t, n), counted in the sm_90 SASS of the loop bodies
(Triton 3.6, fp32, BD = BT = NP = BR = 16): forward 18.4 instructions and 1.06 MUFU ops (one ex2 for
the decay; softplus and its gradient cost 2 per (t, d), amortised over n), 136 registers at 4 warps;
backward 42.6 instructions and 1.12 MUFU (the decays are recomputed once), 248 registers at 8
warps, no spills. The exponentials alone set the floor at ``B K D L N / 4.18e12 /s`` (132 SMs x 16
ex2 per clock x 1.98 GHz); issuing the instructions at 4 x 32 lanes per SM per clock puts the
forward near 18.4 x 16 / 128 = 2.3x that floor and the backward near 5.3x, if latency is hidden
(these are estimates from instruction counts, not measurements). The memory traffic (x and x_dbl
gathered through the path, the partials) is mostly overlapped by that compute, except the
fixed-order sums (:mod:`.bench` measures it all and prints the floors).

Tile sizes (:mod:`.launch`): CUDA ``BT = 16, BD = 16, S = 1``, 4 warps forward, 8 backward (at 4
the backward spills); N and R padded to 16 (every contracted dot side must be >= 16 in Triton
3.6). bf16 outputs are rounded to nearest even by hand (the interpreter truncates casts). The
interpreter runs sequences up to 64 steps as one chunk (its cost is per operation, not per
element) and :mod:`.interpret` vectorises its custom-combine scans and reductions.
Offsets that can exceed 2**31 (batch and channel strides, partial buffers) are int64.
"""

from __future__ import annotations

from .launch import SUPPORTED_DTYPES, chunk_len, scan_bwd, scan_fwd, states_shape

__all__ = ["SUPPORTED_DTYPES", "chunk_len", "scan_bwd", "scan_fwd", "states_shape"]
