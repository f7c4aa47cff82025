"""Export a model with ``mambaad.export`` and time it beside the eager model, on the CPU.

Reports the export (trace) time, the ``.pt2`` size, the load time, the check's relative error and,
per batch size, the median forward time of the eager model (``cpu`` backend) and of the loaded
program, run alternately. Random weights (no checkpoint needed).

    python benchmarks/export_bench.py --model mambaad --image-size 256 --batches 1 4 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

import mambaad
from mambaad.export import check_program, export_model, scan_nodes


def _times_ms(fn, x: torch.Tensor, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(x)
        times.append(1e3 * (time.perf_counter() - t))
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mambaad_test")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mambaad.create_model(args.model, pretrained=False, backend="cpu").eval()
    size = args.image_size
    t = time.perf_counter()
    program = export_model(model, size)
    export_s = time.perf_counter() - t
    rel_err = check_program(program, model, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt2")
        torch.export.save(program, path)
        mb = os.path.getsize(path) / 2**20
        t = time.perf_counter()
        loaded = torch.export.load(path)
        load_s = time.perf_counter() - t
    run = loaded.module()
    out = {"model": args.model, "image_size": size, "threads": torch.get_num_threads(),
           "scan_nodes": len(scan_nodes(program)), "export_s": round(export_s, 2), "pt2_mb": round(mb, 1),
           "load_s": round(load_s, 2), "rel_err": rel_err, "batches": {}}
    with torch.no_grad():
        for b in args.batches:
            x = torch.randn(b, 3, size, size)
            model(x), run(x)  # warm-up
            eager, exported = [], []
            for _ in range(args.reps):  # alternate, so that load changes hit both alike
                eager += _times_ms(model, x, 1)
                exported += _times_ms(run, x, 1)
            e, x_ms = statistics.median(eager), statistics.median(exported)
            out["batches"][b] = {"eager_ms": round(e, 1), "exported_ms": round(x_ms, 1),
                                 "exported_over_eager": round(x_ms / e, 3)}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
