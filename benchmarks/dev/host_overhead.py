"""How much host time (Python, dispatch, autograd) does one fused-scan call cost, by entry point?

At a tiny shape the kernels do almost no work, so a call's wall time is what the host spends on
it: argument checks, backend choice, the x_proj GEMM launch, the op dispatch, autograd. On a GPU
that time matters whenever it exceeds the kernels' (the GPU waits for the host): MambaAD's stage 0
forward kernel is well under 0.3 ms on an H100.

Entry points, timed in interleaved rounds (median of the per-round means):

- ``hss_scan``: the public :func:`mambaad_kernels.hss_scan` (in eager mode it runs the eager
  twin of the op, ``fused._EagerScan``);
- ``via_op``: the same call with the eager twin switched off, so it goes through the registered
  op ``mambaad::hss_scan`` (what ``hss_scan`` ran before the twin existed, and what it still runs
  under torch.compile);
- ``kernels``: the shared implementation both call (``fused._forward``, and ``fused._backward``
  on a ones gradient for forward + backward) without autograd: the floor of the other two.

Each is timed forward only and forward + backward (``.sum().backward()`` on the output, inputs
requiring grad). On CUDA every call is followed by a synchronize (the kernels are tiny).

usage: python benchmarks/dev/host_overhead.py [--device cpu|cuda] [--backend B] [--rounds N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/

import floors  # noqa: E402
import scan_bench  # noqa: E402

import mambaad_kernels as mk  # noqa: E402
from mambaad_kernels import fused  # noqa: E402
from mambaad_kernels.backends import resolve_backend  # noqa: E402


def make_inputs(device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (1, 8, 4, 4) and SS2D-initialised parameters (K 8, N 4, R 2): kernels with nothing to do."""
    shape = floors.ScanShape(1, 8, 4, 4, k=8, n=4, r=2)
    return scan_bench.make_inputs(shape, torch.float32, torch.device(device), seed=0)


def _never(tensors) -> bool:
    return False


plain_eager = fused._plain_eager


def entry_points(x: torch.Tensor, params: list[torch.Tensor], backend: str, mode: str):
    hw = x.shape[-1]
    paths = mk.scan_paths(hw, hw, "hilbert", 8, x.device, dtype=torch.int32)

    def public():
        return mk.hss_scan(x, *params, backend=backend)

    def via_op():
        fused._plain_eager = _never
        try:
            return mk.hss_scan(x, *params, backend=backend)
        finally:
            fused._plain_eager = plain_eager

    def kernels():
        with torch.no_grad():
            out, x_dbl, states = fused._forward(x, *params, paths, backend, False, True)
            if mode == "fwdbwd":
                fused._backward(torch.ones_like(out), x, x_dbl, states, *params, paths, backend, False,
                                True)
        return out

    return {"hss_scan": public, "via_op": via_op, "kernels": kernels}


def time_calls(fns: dict, mode: str, device: torch.device, rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of the mean per-call time in microseconds, entry points interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn):
        out = fn()
        if mode == "fwdbwd" and out.requires_grad:
            out.sum().backward()
        sync()

    for fn in fns.values():  # warm-up
        for _ in range(20):
            run(fn)
    per_round = {name: [] for name in fns}
    for i in range(rounds):
        names = list(fns)
        names = names[i % len(names):] + names[:i % len(names)]
        for name in names:
            t0 = time.perf_counter()
            for _ in range(calls):
                run(fns[name])
            per_round[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: statistics.median(ts) for name, ts in per_round.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default=None, help="fused backend (default: the best for the device)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200, help="calls per entry point per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backend = resolve_backend(args.backend, device)
    if backend == "reference":
        raise SystemExit("host_overhead times a fused backend; none is available on " + str(device))
    x, params = make_inputs(args.device)
    result = {"device": str(device), "backend": backend, "torch": torch.__version__,
              "shape": list(x.shape), "threads": args.threads, "rounds": args.rounds,
              "calls": args.calls, "us_per_call": {}}
    print(f"# host time per call, {backend} backend on {device}, x {tuple(x.shape)}, "
          f"{args.rounds} rounds x {args.calls} calls, median of round means")
    print(f"{'mode':8} {'hss_scan':>10} {'via_op':>10} {'kernels':>10} {'via_op/hss_scan':>16}")
    for mode in ("fwd", "fwdbwd"):
        grad = mode == "fwdbwd"
        xs = x.clone().requires_grad_(grad)
        ps = [p.clone().requires_grad_(grad) for p in params]
        us = time_calls(entry_points(xs, ps, backend, mode), mode, device, args.rounds, args.calls)
        result["us_per_call"][mode] = us
        print(f"{mode:8} {us['hss_scan']:10.1f} {us['via_op']:10.1f} {us['kernels']:10.1f} "
              f"{us['via_op'] / us['hss_scan']:16.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
