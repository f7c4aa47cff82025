"""Time the Triton scan at MambaAD's decoder stages, print the floors, try tile configurations.

GPU only. One call does the whole job and writes JSON (the lead's one-call GPU script)::

    python -m mambaad_kernels.triton.bench --out $OUT/triton_bench.json            # default tiles
    python -m mambaad_kernels.triton.bench --sweep --out $OUT/triton_sweep.json    # + tile sweep

Rows: the four decoder stages (B 16; D_inner 1024 @ 8x8, 512 @ 16x16, 256 @ 32x32, 128 @ 64x64;
N 16; K 8; Hilbert; dt rank ceil(D_inner / 32)), fp32, HSS. Columns: forward and forward + backward
through ``mk.hss_scan`` (the custom op, x_proj GEMM included), the kernels alone, and the floors:

- bytes floor: the kernel must read x and x_dbl and write out (forward); read x, x_dbl, dout and
  write dx, dx_dbl (backward); at 3.0 TB/s.
- exp floor: B K D L N exponentials per pass (the forward's decays; the backward recomputes them
  once), at the H100 SXM MUFU rate 132 SMs x 16 ex2 / clock x 1.98 GHz = 4.18e12 / s.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

H100_EXP_RATE = 132 * 16 * 1.98e9  # ex2 / s: SMs x MUFU lanes per SM per clock x boost clock
HBM_BYTES_PER_S = 3.0e12
STAGES = [(1024, 8), (512, 16), (256, 32), (128, 64)]  # (D_inner, grid side)


def floors_us(b: int, d: int, l: int, k: int, n: int, r: int, itemsize: int = 4) -> dict[str, float]:
    """Forward and backward floors in microseconds (see the module docstring)."""
    x = b * d * l * itemsize
    xdbl = b * k * (r + 2 * n) * l * itemsize
    fwd_bytes = 2 * x + xdbl
    bwd_bytes = 3 * x + 2 * xdbl
    exps = b * k * d * l * n
    return {
        "fwd_bytes_us": fwd_bytes / HBM_BYTES_PER_S * 1e6,
        "fwd_exp_us": exps / H100_EXP_RATE * 1e6,
        "bwd_bytes_us": bwd_bytes / HBM_BYTES_PER_S * 1e6,
        "bwd_exp_us": exps / H100_EXP_RATE * 1e6,
    }


def _inputs(b, d, side, k, n, r, dtype, seed=0):
    from ..paths import scan_paths

    gen = torch.Generator(device="cuda").manual_seed(seed)
    dev = torch.device("cuda")
    x = torch.randn(b, d, side, side, device=dev, generator=gen).to(dtype)
    params = [
        torch.randn(k, r + 2 * n, d, device=dev, generator=gen) * d ** -0.5,
        torch.randn(k, d, r, device=dev, generator=gen) * r ** -0.5,
        torch.randn(k, d, device=dev, generator=gen) - 2.0,
        torch.log(torch.arange(1, n + 1, device=dev, dtype=torch.float32)).repeat(k * d, 1),
        torch.ones(k * d, device=dev),
    ]
    paths = scan_paths(side, side, "hilbert", k, dev, dtype=torch.int32)
    return x, params, paths


def time_stage(d: int, side: int, b: int = 16, k: int = 8, n: int = 16, dtype=torch.float32) -> dict:
    """Milliseconds for one stage with the launcher's current tile settings."""
    import triton.testing

    import mambaad_kernels as mk
    from mambaad_kernels.fused import project

    from . import launch

    r = math.ceil(d / 2 / 16)
    x, params, paths = _inputs(b, d, side, k, n, r, dtype)
    l = side * side
    x3 = x.flatten(2)
    x_dbl = project(x3, params[0], False)
    dtw, dtb, alog, ds = params[1:]
    out, states = launch.scan_fwd(x3, x_dbl, dtw, dtb, alog, ds, paths, False, True)
    g = torch.randn_like(x3)
    row = {"B": b, "D": d, "H": side, "W": side, "L": l, "K": k, "N": n, "R": r, "dtype": str(dtype)}
    row["kernel_fwd_ms"] = triton.testing.do_bench(
        lambda: launch.scan_fwd(x3, x_dbl, dtw, dtb, alog, ds, paths, False, True))
    row["kernel_bwd_ms"] = triton.testing.do_bench(
        lambda: launch.scan_bwd(g, x3, x_dbl, states, dtw, dtb, alog, ds, paths, False, True))
    row["op_fwd_ms"] = triton.testing.do_bench(lambda: mk.hss_scan(x, *params, backend="triton"))
    xg = x.detach().requires_grad_()
    pg = [p.detach().requires_grad_() for p in params]
    gout = torch.randn_like(x)

    def fwd_bwd():
        out = mk.hss_scan(xg, *pg, backend="triton")
        torch.autograd.grad(out, [xg, *pg], gout)

    row["op_fwd_bwd_ms"] = triton.testing.do_bench(fwd_bwd)
    fl = floors_us(b, d, l, k, n, r, torch.tensor([], dtype=dtype).element_size())
    row.update(fl)
    fwd_floor = max(fl["fwd_bytes_us"], fl["fwd_exp_us"]) / 1e3
    bwd_floor = max(fl["bwd_bytes_us"], fl["bwd_exp_us"]) / 1e3
    row["kernel_fwd_x_floor"] = row["kernel_fwd_ms"] / fwd_floor
    row["kernel_fwd_bwd_x_floor"] = (row["kernel_fwd_ms"] + row["kernel_bwd_ms"]) / (fwd_floor + bwd_floor)
    row["states_MB"] = states.numel() * states.element_size() / 1e6
    del out
    return row


# The configurations worth a GPU minute (all compile for sm_90 without spills in Triton 3.6, fp32):
# the default first, then one change at a time.
SWEEP = [
    dict(chunk=16, block_d=16, warps_fwd=4, warps_bwd=8, ckpt=1),
    dict(chunk=16, block_d=16, warps_fwd=8, warps_bwd=8, ckpt=1),
    dict(chunk=16, block_d=32, warps_fwd=4, warps_bwd=8, ckpt=1),
    dict(chunk=32, block_d=16, warps_fwd=8, warps_bwd=8, ckpt=1),
    dict(chunk=16, block_d=16, warps_fwd=4, warps_bwd=8, ckpt=2),
    dict(chunk=16, block_d=16, warps_fwd=4, warps_bwd=4, ckpt=1),
]


def _apply(cfg: dict) -> None:
    from . import launch

    launch.CHUNK["cuda"] = cfg["chunk"]
    launch.BLOCK_D["cuda"] = cfg["block_d"]
    launch.NUM_WARPS["fwd"] = cfg["warps_fwd"]
    launch.NUM_WARPS["bwd"] = cfg["warps_bwd"]
    launch.CKPT_CHUNKS["cuda"] = cfg["ckpt"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--sweep", action="store_true", help="also try the tile configurations")
    parser.add_argument("--stages", default="0,1,2,3", help="which decoder stages (0..3)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench: needs a CUDA device")
    from . import launch

    stages = [STAGES[int(i)] for i in args.stages.split(",")]
    result = {"device": torch.cuda.get_device_name(), "default": [], "sweep": []}
    default = dict(chunk=launch.CHUNK["cuda"], block_d=launch.BLOCK_D["cuda"],
                   warps_fwd=launch.NUM_WARPS["fwd"], warps_bwd=launch.NUM_WARPS["bwd"],
                   ckpt=launch.CKPT_CHUNKS["cuda"])
    for d, side in stages:
        row = time_stage(d, side)
        result["default"].append({**default, **row})
        print(json.dumps(result["default"][-1]), flush=True)
    if args.sweep:
        for cfg in SWEEP[1:]:
            _apply(cfg)
            for d, side in stages:
                try:
                    row = {**cfg, **time_stage(d, side)}
                except Exception as exc:  # noqa: BLE001 - record the failure, keep sweeping
                    row = {**cfg, "D": d, "H": side, "error": f"{type(exc).__name__}: {exc}"}
                result["sweep"].append(row)
                print(json.dumps(row), flush=True)
        _apply(default)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
