"""The ``portable`` backend: the HSS / GSS scan in standard tensor operators, for export.

This is what an ONNX file or an OpenVINO model of a module on our scan computes (see
:func:`mambaad_kernels.export_onnx`): gathers, GEMMs, element-wise arithmetic, ``exp``, sums and
reshapes, nothing of this package, in a graph of about ``2 T + c`` steps per scan, not L. It also
runs eagerly (``backend="portable"``, any device, autograd through the operators), which is how the
tests check it against the float64 reference.

Formulation: a chunked scan in three passes, with no ``(B, K, D, L, N)`` tensor in memory. Shape
letters as in :mod:`mambaad_kernels.reference`; the L steps of a direction are cut into ``c``
chunks of ``T`` steps (padded at the end with ``delta = 0``: decay 1, input 0, outputs unchanged),
laid out step-major, ``(K, T, c, B, Dk)``, so that step t of every chunk is one slice; states are
``(K, c, B, N, Dk)``, channels innermost (a runtime's broadcasts then run over whole rows). Per
(b, k, d, n), with ``a_t = delta_t A <= 0``, the decay ``e_t = exp(max(a_t, F))`` and the input
``v_t = delta_t u_t B_t``:

1. **Chunk ends** (T steps, each over every chunk at once, independent of each other): the last
   state of each chunk from a zero start, ``sum_t exp(max(A s_t, F)) v_t`` with ``s_t`` the sum of
   delta after step t in the chunk (summed from the chunk's end, so no cancellation).
2. **Carries** (one step per chunk, on ``(K, B, N, Dk)``): the state entering chunk j,
   ``H_j = E_{j-1} H_{j-1} + h_end(j-1)``, ``H_0 = 0``, ``E_j = exp(max(A sum_t delta_t, F))``.
3. **Outputs** (T steps): ``h_t = e_t h_{t-1} + v_t`` from ``H_j``, ``y_t = C_t . h_t`` (a batched
   matrix-vector product).

Pass 1 is written as a sum of independent terms rather than the recurrence of pass 3 on purpose:
the two passes then share no sub-expression, which an exporter's or runtime's common-subexpression
elimination would otherwise merge, keeping every step's decays alive between the passes (the
``B K D L N`` floats this avoids: 2 GB at MambaAD's last stage at batch 8). The D skip is added on
the grid after the merge (``x sum_k D_k``: every direction reads the same x). :func:`default_chunk`
picks T near ``2 sqrt(L)``.

Operation count per (b, k, d, l, n), against the fused ``cpu`` kernel's: 2 exponentials (one per
pass) against the kernel's one (a polynomial 2^y); 12 other element-wise operations (pass 1: the
log-decay product, the clamp, two products for the term, its sum; pass 3: the log-decay product,
the clamp, the state's product, the input's product, the add, the C contraction) against the
kernel's 3 multiply-adds. Bytes: each operator reads and writes its ``(K, c, B, N, Dk)`` slice,
``B K D L N / T`` elements, so an operator run on its own moves 8 to 12 bytes per (b, k, d, l, n);
the fused kernel keeps the state in registers and moves ``O(B K D L)`` bytes in all. No runtime runs
this graph faster than its exponentials alone, nor, without fusing operators, than those 14
element-wise passes at its own element rates (measured against both: BENCHMARKS.md, "Export to ONNX
and OpenVINO").

Numerics: every exponent is <= 0 (``delta >= 0``, ``A < 0``), so nothing overflows, unlike the
one-pass ``exp(S_t) cumsum(exp(-S_s) v_s)`` form. Exponents are floored at ``F = -30``: a decay below
``exp(-30) = 9.4e-14`` is taken as 9.4e-14, a change of at most 9.4e-14 of the state's scale, far
below float32 rounding; it keeps every decay and every product ``e_t h`` of a state above 1e-25 in
the normal float range, so no runtime hits the slow path of subnormal arithmetic (x86 CPUs take
microcode assists on subnormal results unless flush-to-zero is set, and runtimes differ in that).
The state and all arithmetic are float32 (float64 for float64 inputs), the output in x's dtype.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from .paths import inverse_paths, scan_paths

LOG_DECAY_FLOOR = -30.0  # exponents are clamped here (see the module docstring)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def default_chunk(length: int) -> int:
    """The chunk length T: the power of two nearest ``2 sqrt(L)`` (16, 32, 64, 128 at L = 64, 256,
    1024, 4096). The graph holds about ``2 T + L / T`` steps (fewest near ``sqrt(L / 2)``); a larger
    T makes each step's slice, ``B K D L N / T`` elements, smaller and likelier to stay in cache. At
    64 x 64, T = 128 and 256 ran alike in onnxruntime and OpenVINO, and 256 doubled the export time
    (docs/notes/2026-12-06-portable-scan-export.md)."""
    return 1 << max(0, round(math.log2(2.0 * math.sqrt(max(1, length)))))


@functools.lru_cache(maxsize=256)
def step_indices(h: int, w: int, method: str, directions: int, grouped: bool, chunk: int,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """Index vectors for the step-major layout ``(K, T, c)`` of the chunked scan, and back.

    With ``L = h w`` cut into c chunks of T steps, sequence position ``l = j T + t`` of direction k
    sits at row ``(k T + t) c + j`` of a ``(K T c, ...)`` tensor.

    Returns:
        ``(gather, back, valid)``: ``gather (K T c,)`` reads that row from a ``(L, ...)`` tensor
        (HSS) or a ``(L K, ...)`` one whose row ``p K + k`` is channel group k at cell p (GSS);
        padded positions (``l >= L``) read row 0. ``back (K L,)``: row ``k L + p`` reads the
        ``(K T c, ...)`` row of cell p in direction k. ``valid``: float ``(1, T, c, 1, 1)``, 1 where
        ``l < L``, or None when T divides L. Cached, and built outside any tracing mode, so a
        tracer takes them as constants.
    """
    with torch.inference_mode(False), _disable_current_modes():
        paths = scan_paths(h, w, method, directions, device)  # (k, l)
        k, length = paths.shape
        nc = -(-length // chunk)
        pos = torch.arange(nc * chunk, device=device).reshape(nc, chunk).T  # (t, c): l = j T + t
        inside = pos < length
        read = paths[:, pos.clamp_max(length - 1)]  # (k, t, c)
        if grouped:
            read = read * k + torch.arange(k, device=device)[:, None, None]
        gather = torch.where(inside, read, 0).flatten()  # (k t c,)
        rows = torch.arange(k, device=device)[:, None] * (chunk * nc)  # (k, 1)
        l_of = inverse_paths(paths)  # (k, p): the sequence position of cell p
        back = (rows + (l_of % chunk) * nc + l_of // chunk).flatten()  # (k p,)
        valid = None if nc * chunk == length else inside.to(torch.float32)[None, :, :, None, None]
        return gather, back, valid


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` as ``relu(x) + log(1 + exp(-|x|))``: no overflow, absolute error about
    one float ulp of 1 (a runtime's own Softplus may be a slow scalar loop)."""
    return torch.relu(x) + torch.log(1 + torch.exp(-torch.abs(x)))


def _exporting() -> bool:
    """Whether torch.export is tracing (torch 2.4 has no ``torch.compiler.is_exporting``: False)."""
    probe = getattr(torch.compiler, "is_exporting", None)
    return bool(probe()) if probe is not None else False


def _after(h: Tensor | None, x: Tensor) -> Tensor:
    """``x`` made to depend on the state ``h`` in an exported graph (``x + 0 h[.., :1, :1]``, on
    ``x``'s small size), so that a runtime computes step t's decays and inputs only after step
    t - 1: without it onnxruntime runs the T steps' independent work side by side and holds
    many steps' slices at once (peak 6.9 GB for one scan at 64 x 64 at batch 4; 2.7 GB with this)."""
    if h is None or not _exporting():
        return x
    return x + h[..., :1, :1] * 0.0


def chunked_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
    """The selective scan of K directions by the three passes of the module docstring (no D skip),
    in the step-major layout ``(K, T, c, B, .)``: step t of every chunk is one slice.

    Args:
        u, delta: ``(K, T, c, B, Dk)``: inputs and step sizes (biased, softplus-ed; 0 on padding).
        A: ``(K, Dk, N)``, negative. Bm, Cm: ``(K, T, c, B, N)``.

    Returns:
        ``(K, T, c, B, Dk)``: ``y_t = C_t . h_t``.
    """
    # states (k, c, b, n, dk): the channels innermost, so that every operator's broadcasts are over
    # outer axes or of one value along a row of channels (runtimes vectorise both; a state axis of
    # 16 innermost would cut their loops into 16-element pieces)
    a = A.transpose(1, 2)[:, None, None]  # (k, 1, 1, n, dk)

    def decay(log_scale: Tensor) -> Tensor:  # (k, c, b, 1, dk) -> (k, c, b, n, dk)
        return torch.exp(torch.clamp_min(log_scale * a, LOG_DECAY_FLOOR))

    d_steps = delta[..., None, :].unbind(1)  # T x (k, c, b, 1, dk)
    du_steps = (delta * u)[..., None, :].unbind(1)  # T x (k, c, b, 1, dk)
    # the sum of delta after step t inside its chunk (pass 1's log-decay to the chunk's end), summed
    # from the chunk's end: each sum exact to rounding of itself (total - cumsum would cancel)
    after_steps = [torch.zeros_like(d_steps[-1])]  # (k, c, b, 1, dk)
    for d_t in d_steps[:0:-1]:
        after_steps.append(after_steps[-1] + d_t)
    after_steps.reverse()
    total = after_steps[0] + d_steps[0]  # (k, c, b, 1, dk)
    b_steps = Bm[..., None].unbind(1)  # T x (k, c, b, n, 1)
    c_steps = Cm[..., None, :].unbind(1)  # T x (k, c, b, 1, n)
    # 1. the last local state of every chunk from zero: sum_t exp(A sum_{s > t} delta_s) v_t, the
    #    steps' terms independent of each other
    h = None
    for after_t, du_t, b_t in zip(after_steps, du_steps, b_steps):
        after_t, du_t = _after(h, after_t), _after(h, du_t)
        term = decay(after_t) * du_t * b_t  # (k, c, b, n, dk)
        h = term if h is None else h + term
    # 2. the state entering each chunk
    chunk_decay = decay(total)  # (k, c, b, n, dk)
    carry = torch.zeros_like(h[:, 0])  # (k, b, n, dk)
    entering = []
    for decay_j, h_j in zip(chunk_decay.unbind(1), h.unbind(1)):
        entering.append(carry)
        carry = decay_j * carry + h_j  # (k, b, n, dk)
    h = torch.stack(entering, 1)  # (k, c, b, n, dk)
    # 3. the outputs, from the entering states
    ys = []
    for d_t, du_t, b_t, c_t in zip(d_steps, du_steps, b_steps, c_steps):
        d_t, du_t = _after(h, d_t), _after(h, du_t)
        h = h * decay(d_t) + du_t * b_t  # (k, c, b, n, dk)
        ys.append(torch.matmul(c_t, h)[..., 0, :])  # (k, c, b, dk)
    return torch.stack(ys, 1)  # (k, t, c, b, dk)


def hss_scan(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
             A_logs: Tensor, Ds: Tensor, method: str = "hilbert", directions: int = 8,
             grouped: bool = False, chunk: int | None = None) -> Tensor:
    """The HSS / GSS scan of :func:`mambaad_kernels.hss_scan` in standard operators.

    Args:
        x: ``(B, D, H, W)``; x_proj_weight ``(K, R + 2N, Dk)``; dt_projs_weight ``(K, Dk, R)``;
            dt_projs_bias ``(K, Dk)``; A_logs ``(K * Dk, N)``; Ds ``(K * Dk,)``; Dk = D, or D / K
            when ``grouped``.
        method, directions, grouped: as for :func:`mambaad_kernels.hss_scan`.
        chunk: T (default :func:`default_chunk` of L).

    Returns:
        ``(B, D, H, W)`` in x's dtype, differentiable by autograd.
    """
    b, d, h, w = x.shape
    k, length = directions, h * w
    dk, r = dt_projs_weight.shape[1:]
    n = A_logs.shape[1]
    t_len = min(chunk or default_chunk(length), length)
    nc = -(-length // t_len)
    gather, back, valid = step_indices(h, w, method, k, grouped, t_len, x.device)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(ct)
    rows = xc.reshape(b, d, length).permute(2, 0, 1)  # (l, b, d)
    if grouped:
        rows = rows.reshape(length, b, k, dk).transpose(1, 2).reshape(length * k, b, dk)  # (l k, b, dk)
    xs = rows.index_select(0, gather).reshape(k, t_len * nc * b, dk)  # (k, t c b, dk)
    x_dbl = torch.matmul(xs, x_proj_weight.to(ct).transpose(1, 2))  # (k, t c b, r + 2n)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)  # (k, t c b, r), (k, t c b, n) x2
    dts = torch.matmul(dts, dt_projs_weight.to(ct).transpose(1, 2))  # (k, t c b, dk)
    delta = softplus(dts + dt_projs_bias.to(ct)[:, None])  # (k, t c b, dk)
    steps = (k, t_len, nc, b, -1)
    delta = delta.reshape(steps)  # (k, t, c, b, dk)
    if valid is not None:
        delta = delta * valid.to(ct)  # no step on the padding: decay 1, input 0
    A = -torch.exp(A_logs.to(ct)).reshape(k, dk, n)  # (k, dk, n)
    y = chunked_scan(xs.reshape(steps), delta, A, bs.reshape(steps), cs.reshape(steps))
    grid = y.reshape(k * t_len * nc, b, dk).index_select(0, back).reshape(k, length, b, dk)
    if grouped:
        out = grid.permute(2, 0, 3, 1).reshape(b, d, h, w)  # group k in channels k dk ..
        skip = Ds.to(ct)  # (d,)
    else:
        out = grid.sum(0).permute(1, 2, 0).reshape(b, d, h, w)  # (b, d, h, w)
        skip = Ds.to(ct).reshape(k, dk).sum(0)  # (d,): every direction reads the same x
    return (out + xc * skip[None, :, None, None]).to(x.dtype)
