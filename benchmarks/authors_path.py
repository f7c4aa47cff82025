"""The authors' path: the multi-direction scan the way MambaAD's code runs it, as the baseline.

What MambaAD users run today (SPEC, "The multi-direction scan"), written here from those facts:

1. **Gather**: K materialised copies of the feature map, one per scan path: ``(B, K, D, L)``.
2. **Projections**: two einsums, x_proj on every copy -> dt (R), B (N), C (N) per direction, then
   dt_proj -> delta ``(B, K, D, L)``.
3. **Selective scan**: one call over the ``(B, K D, L)`` sequences in float32, with
   ``delta_softplus=True``, the dt bias, D skip, and B / C in K groups ``(B, K, N, L)``:
   mamba_ssm's ``selective_scan_fn`` (its CUDA kernels) when it imports, else mamba-ssm's compiled
   extension ``selective_scan_cuda`` called through :class:`MambaSelectiveScan` (the same fwd / bwd
   calls as mamba_ssm's autograd Function, without importing the rest of mamba_ssm), else, on the
   CPU or without mamba-ssm, the sequential :func:`mambaad_kernels.reference.selective_scan`,
   labelled ``authors(reference-scan)``: never reported as mamba_ssm.
4. **Scatter and sum**: each direction's output put back on the grid (K scatters into K
   materialised maps) and the K summed.

Not part of the package: the package fuses all of this; this module only exists to time the
baseline. ``python benchmarks/authors_path.py --print-build-dir`` prints where
``benchmarks/build_mamba_ssm.sh`` puts the extension for this interpreter and torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mambaad_kernels import reference  # noqa: E402
from mambaad_kernels.paths import scan_paths  # noqa: E402

BUILD_DIR_ENV = "MAMBA_SS_DIR"


def default_build_dir() -> Path:
    """Where build_mamba_ssm.sh puts ``selective_scan_cuda`` for this Python and torch build."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    return REPO / ".carry" / "selective_scan_cuda" / tag


@dataclass(frozen=True)
class ScanImpl:
    """The selective scan the authors' path runs: its label, function and where it comes from."""

    label: str  # "mamba_ssm" or "reference-scan"
    fn: Callable[..., Tensor]
    source: str


class MambaSelectiveScan(torch.autograd.Function):
    """mamba-ssm's CUDA selective scan through its extension's ``fwd`` / ``bwd``, no z, no state out.

    The calls follow mamba_ssm's ``SelectiveScanFn`` (mamba-ssm 2.x): ``fwd(u, delta, A, B, C, D,
    z, delta_bias, delta_softplus) -> (out, x, ...)`` with ``x`` the per-chunk states it saves;
    ``bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z)
    -> (du, ddelta, dA, dB, dC, dD, ddelta_bias, ...)``. Inputs need a unit last stride; B and C
    are 4-D ``(B, G, N, L)``.
    """

    @staticmethod
    def forward(ctx, ext, u, delta, A, B, C, D, delta_bias):  # noqa: N803 - the maths' names
        u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C))
        D = D.contiguous()
        out, states, *_ = ext.fwd(u, delta, A, B, C, D, None, delta_bias, True)
        ctx.ext = ext
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *_ = ctx.ext.bwd(
            u, delta, A, B, C, D, None, delta_bias, dout, states, None, None, True, False)
        return None, du, ddelta, dA, dB, dC, dD, ddelta_bias


def _mamba_ssm_fn() -> ScanImpl | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - any import failure means: not this way
        return None
    import mamba_ssm

    def fn(u, delta, A, B, C, D, delta_bias):  # noqa: N803
        return selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias,
                                 delta_softplus=True)

    return ScanImpl("mamba_ssm", fn, f"mamba_ssm {getattr(mamba_ssm, '__version__', '?')} "
                                     "selective_scan_fn")


def _extension_fn() -> ScanImpl | None:
    for where in (os.environ.get(BUILD_DIR_ENV), str(default_build_dir())):
        if where and Path(where).is_dir() and where not in sys.path:
            sys.path.append(where)
    try:
        ext = importlib.import_module("selective_scan_cuda")
    except Exception:  # noqa: BLE001
        return None

    def fn(u, delta, A, B, C, D, delta_bias):  # noqa: N803
        return MambaSelectiveScan.apply(ext, u, delta, A, B, C, D, delta_bias)

    return ScanImpl("mamba_ssm", fn, f"mamba-ssm's selective_scan_cuda extension ({ext.__file__}), "
                                     "fwd / bwd called by benchmarks/authors_path.py")


def _reference_fn(u, delta, A, B, C, D, delta_bias):  # noqa: N803
    return reference.selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True)


REFERENCE_SCAN = ScanImpl("reference-scan", _reference_fn,
                          "mambaad_kernels.reference.selective_scan (sequential PyTorch, not mamba_ssm)")


def scan_impl(device: torch.device | str) -> ScanImpl:
    """The selective scan the authors' path uses on ``device``: mamba_ssm on CUDA when it is there."""
    if torch.device(device).type == "cuda":
        for find in (_mamba_ssm_fn, _extension_fn):
            impl = find()
            if impl is not None:
                return impl
    return REFERENCE_SCAN


def authors_hss_scan(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor,
                     A_logs: Tensor, Ds: Tensor, method: str = "hilbert", directions: int = 8,
                     impl: ScanImpl | None = None, grouped: bool = False) -> Tensor:
    """The HSS scan as the authors' code runs it: K gathers, einsums, one selective scan, K scatters.

    With ``grouped=True``, MMAD's GSS the same unfused way (MMAD publishes no code, so this is the
    authors' recipe applied to the grouped op): K gathers of one channel group each, the einsums
    per group, one selective scan over the D channels (group k with direction k's B and C), and K
    scatters of each group back into its own channels (no sum).

    Args:
        x: ``(B, D, H, W)``.
        x_proj_weight: ``(K, R + 2N, Dk)``; dt_projs_weight: ``(K, Dk, R)``; dt_projs_bias:
            ``(K, Dk)``; A_logs: ``(K * Dk, N)``; Ds: ``(K * Dk,)``; Dk = D, or D / K when grouped.
        method, directions: scan method and K.
        impl: the selective scan (default :func:`scan_impl` for x's device).
        grouped: GSS instead of HSS.

    Returns:
        ``(B, D, H, W)`` in x's dtype; the scan and the merge run in float32.
    """
    impl = impl or scan_impl(x.device)
    b, d, h, w = x.shape
    l, k = h * w, directions
    n, r = A_logs.shape[1], dt_projs_weight.shape[2]
    dk = d // k if grouped else d  # channels one direction scans
    paths = scan_paths(h, w, method, k, x.device)  # (k, l)
    flat = x.reshape(b, d, l)  # (b, d, l)
    chans = [slice(i * dk, (i + 1) * dk) if grouped else slice(None) for i in range(k)]
    xs = torch.stack([flat[:, chans[i], paths[i]] for i in range(k)], dim=1)  # (b, k, dk, l): K copies
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight.to(x.dtype))  # (b, k, r + 2n, l)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)  # (b, k, r, l), (b, k, n, l) x2
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight.to(x.dtype))  # (b, k, dk, l)
    y = impl.fn(
        xs.float().reshape(b, k * dk, l),  # (b, k dk, l)
        dts.float().reshape(b, k * dk, l),  # (b, k dk, l)
        -torch.exp(A_logs.float()),  # (k dk, n)
        bs.float().contiguous(),  # (b, k, n, l): K groups of dk channels
        cs.float().contiguous(),  # (b, k, n, l)
        Ds.float(),  # (k dk,)
        dt_projs_bias.float().reshape(-1),  # (k dk,)
    ).view(b, k, dk, l)  # (b, k, dk, l)
    if grouped:  # K scatters, each into its own channels
        out = y.new_zeros(b, d, l)
        for i in range(k):
            out[:, chans[i]] = y.new_zeros(b, dk, l).index_copy(2, paths[i], y[:, i])
        return out.view(b, d, h, w).to(x.dtype)  # (b, d, h, w)
    grids = [y.new_zeros(b, d, l).index_copy(2, paths[i], y[:, i]) for i in range(k)]  # K scatters
    return torch.stack(grids, dim=1).sum(1).view(b, d, h, w).to(x.dtype)  # (b, d, h, w)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-build-dir", action="store_true",
                        help="print where build_mamba_ssm.sh puts selective_scan_cuda for this torch")
    args = parser.parse_args(argv)
    if args.print_build_dir:
        print(default_build_dir())
    else:
        impl = scan_impl("cuda" if torch.cuda.is_available() else "cpu")
        print(f"authors({impl.label}): {impl.source}")


if __name__ == "__main__":
    main()
