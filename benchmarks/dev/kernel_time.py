"""How much of a fused scan call's GPU wall time is kernel time, kernel by kernel, and how much host gaps?

scan_bench.py times a call with CUDA events, so its figure is the GPU's wall time from the call's
start to its end: when the host takes longer to issue a call than the GPU takes to run it, the
gaps count. This script separates the two, per MambaAD decoder stage, backend and mode:

- ``device ms``: the summed durations of the call's GPU activities (kernels, memsets, copies),
  from torch.profiler's device events, per call;
- ``wall ms``: CUDA events around one call, synchronised before it (no L2 flush, so the GPU is
  idle when the call starts and any host time shows as a gap);
- ``gap``: wall - device, the time the GPU waited for the host (or for its launch latency);
- the three longest kernels and their share, and the device time over the larger floor
  (``benchmarks/floors.py``), which is what a kernel change can still win.

``cuda-lanes`` is the cuda backend with ``MAMBAAD_CUDA_FWD=lanes`` (the experimental lane-sequential
forward kernel; the backward is the same), so the two forward kernels are compared in one run.

usage: python benchmarks/dev/kernel_time.py [--backends cuda cuda-lanes triton] [--batch 16] [--reps 10]
       [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository
sys.path.insert(0, str(HERE.parent))  # benchmarks/

import floors  # noqa: E402
import scan_bench  # noqa: E402

import mambaad_kernels as mk  # noqa: E402


def device_time_per_call(fn, reps: int) -> tuple[float, dict[str, float]]:
    """(device ms per call, {activity name: ms per call}) over ``reps`` profiled calls."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    per_name: dict[str, float] = defaultdict(float)
    for evt in prof.events():
        if evt.device_type == DeviceType.CUDA:
            per_name[evt.name] += evt.time_range.elapsed_us() / 1e3 / reps
    return sum(per_name.values()), dict(per_name)


def wall_time_per_call(fn, reps: int) -> float:
    """Median ms of one call between CUDA events, the GPU idle before each."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@contextlib.contextmanager
def forward_kernel(name: str):
    """MAMBAAD_CUDA_FWD=name for the duration (the CUDA host reads it on every call)."""
    old = os.environ.get("MAMBAAD_CUDA_FWD")
    os.environ["MAMBAAD_CUDA_FWD"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["MAMBAAD_CUDA_FWD"]
        else:
            os.environ["MAMBAAD_CUDA_FWD"] = old


def measure(shape: floors.ScanShape, label: str, mode: str, reps: int, exp_rate: float,
            bandwidth: float) -> dict:
    backend = "cuda" if label == "cuda-lanes" else label
    with forward_kernel("lanes" if label == "cuda-lanes" else "segments"):
        return _measure(shape, backend, label, mode, reps, exp_rate, bandwidth)


def _measure(shape: floors.ScanShape, backend: str, label: str, mode: str, reps: int, exp_rate: float,
             bandwidth: float) -> dict:
    x, params = scan_bench.make_inputs(shape, torch.float32, torch.device("cuda"), seed=0)
    grad = mode == "fwdbwd"
    leaves = [x, *params]
    for t in leaves:
        t.requires_grad_(grad)
    gout = torch.randn_like(x)

    def call():
        if grad:
            for t in leaves:
                t.grad = None
            mk.hss_scan(x, *params, backend=backend).backward(gout)
        else:
            with torch.no_grad():
                mk.hss_scan(x, *params, backend=backend)

    for _ in range(3):  # compile (Triton), load, warm the allocator
        call()
    dev_ms, per_name = device_time_per_call(call, reps)
    wall_ms = wall_time_per_call(call, reps)
    exps = floors.floor_exps(shape, mode)
    nbytes = floors.floor_bytes(shape, mode, elem=4)["total"]
    floor_ms = max(exps / exp_rate, nbytes / bandwidth) * 1e3
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:3]
    return {"backend": label, "mode": mode, "shape": [shape.b, shape.d, shape.h, shape.w],
            "r": shape.r, "device_ms": dev_ms, "wall_ms": wall_ms, "gap_ms": wall_ms - dev_ms,
            "floor_ms": floor_ms, "device_over_floor": dev_ms / floor_ms,
            "kernels_ms": per_name, "top": [[name, ms] for name, ms in top]}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["cuda", "cuda-lanes", "triton"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--bandwidth-gbs", type=float, default=3000.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernel_time.py needs a CUDA device (it reads the GPU's own timings)")
    device = torch.device("cuda")
    exp_rate, source = floors.gpu_exp_rate(device)
    if not exp_rate:
        raise SystemExit(f"no exp rate for this GPU ({source})")
    rows = []
    print(f"# {torch.cuda.get_device_name(device)}, B {args.batch}, N 16, K 8, hilbert, fp32, "
          f"{args.reps} calls; exp rate {exp_rate / 1e12:.2f} T/s ({source})")
    print(f"{'backend':10} {'D@grid':>10} {'mode':7} {'wall ms':>8} {'device ms':>9} {'gap ms':>7} "
          f"{'dev/floor':>9}  longest kernels (ms per call)")
    for d, side in scan_bench.STAGES:
        shape = floors.ScanShape(args.batch, d, side, side, k=8, n=16, r=scan_bench.dt_rank(d))
        for backend in args.backends:
            reason = mk.backends.unavailable_reason("cuda" if backend == "cuda-lanes" else backend, device)
            if reason:
                print(f"{backend:8} skipped: {reason}")
                continue
            for mode in scan_bench.MODES:
                row = measure(shape, backend, mode, args.reps, exp_rate, args.bandwidth_gbs * 1e9)
                rows.append(row)
                tops = ", ".join(f"{name[:40]} {ms:.3f}" for name, ms in row["top"])
                print(f"{backend:10} {f'{d}@{side}x{side}':>10} {mode:7} {row['wall_ms']:8.3f} "
                      f"{row['device_ms']:9.3f} {row['gap_ms']:7.3f} {row['device_over_floor']:9.1f}  "
                      f"{tops}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(device),
                                               "torch": torch.__version__, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
