"""Whole-model benchmark: MambaAD inference images/s and train-step time per scan path.

Paths: every scan backend available on the device (``auto``, or named ones), and ``authors``: the
same model with its scans run the way the authors' code runs them (8 gathered copies, einsums,
one selective scan, 8 scatters; mamba_ssm's kernels on CUDA when importable, else the sequential
reference scan, labelled ``authors(reference-scan)``; see ``benchmarks/authors_path.py``).
Every path gets the same weights (same seed) and the same inputs.

- forward: eval mode, ``torch.inference_mode``; images/s = batch / median seconds per call.
- train: one AdamW step (lr 0.005 x batch / 16, weight decay 1e-4): forward, MSE x 5 loss,
  backward, gradient clipping at 5, step; median seconds per step.

Prints a markdown table and writes JSON (``--json``) with the device, commit, threads and load
average: CPU figures on a shared machine are noisy, compare rows of one run.

Examples::

    python benchmarks/model_bench.py --device cpu --batch 1 --warmup 1 --iters 2
    python benchmarks/model_bench.py --device cuda --batch 16 --paths auto authors --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for where in (REPO, REPO / "benchmarks"):
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))

import mambaad  # noqa: E402
import mambaad_kernels.modules as kernel_modules  # noqa: E402
from mambaad_kernels import available_backends  # noqa: E402

AUTHORS = "authors"


@contextlib.contextmanager
def authors_scans(device: torch.device) -> Iterator[str]:
    """Run every SS2D scan through the authors' path while inside; yields the path's label."""
    from authors_path import authors_hss_scan, scan_impl

    impl = scan_impl(device)
    original = kernel_modules.hss_scan

    def scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, method="hilbert",  # noqa: N803
             directions=8, backend=None, grouped=False, deterministic=True):
        if grouped:
            raise NotImplementedError("the authors' path here is MambaAD's HSS scan, not MMAD's GSS")
        return authors_hss_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, method,
                                directions, impl=impl)

    kernel_modules.hss_scan = scan
    try:
        yield f"{AUTHORS}({impl.label})"
    finally:
        kernel_modules.hss_scan = original


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(iters):
        _sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "cpu_s": statistics.median(cpus),
            "iters": iters}


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_path(args: argparse.Namespace, path: str, device: torch.device, batch: int) -> list[dict]:
    backend = "reference" if path == AUTHORS else path
    torch.manual_seed(args.seed)
    model = mambaad.create_model(args.model, backend=backend).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randn(batch, 3, *args.size, generator=gen).to(device)
    rows = []
    with authors_scans(device) if path == AUTHORS else contextlib.nullcontext(path) as label:
        if "forward" in args.modes:
            model.eval()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def forward() -> None:
                with torch.inference_mode():
                    model(images)

            t = _time(forward, device, args.warmup, args.iters)
            rows.append({"path": label, "mode": "forward", "batch": batch, **t,
                         "images_per_s": batch / t["median_s"], **_peak_memory(device)})
        if "train" in args.modes:
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=0.005 * batch / 16, betas=(0.9, 0.999), weight_decay=1e-4)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                enc, dec = model(images)
                mambaad.reconstruction_loss(enc, dec).backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()

            t = _time(step, device, args.warmup, args.iters)
            rows.append({"path": label, "mode": "train", "batch": batch, **t,
                         "images_per_s": batch / t["median_s"], **_peak_memory(device)})
    return rows


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="model_bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mambaad", help="registered model name (default mambaad)")
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available, else cpu)")
    p.add_argument("--paths", nargs="+", default=["auto"],
                   help="scan backends, 'auto' (all available here) and/or 'authors'")
    p.add_argument("--size", default="256", help="H or HxW (multiples of 32; default 256)")
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--modes", nargs="+", default=["forward", "train"], choices=("forward", "train"))
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument("--iters", type=int, default=3, help="timed calls (the median is reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    h, _, w = args.size.partition("x")
    args.size = (int(h), int(w or h))
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    paths: list[str] = []
    for name in args.paths:
        for p in available_backends(device) if name == "auto" else [name]:
            if p not in paths:
                paths.append(p)
    meta = {"device": _device_name(device), "device_type": device.type, "model": args.model,
            "size": list(args.size), "commit": _commit(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "loadavg_start": os.getloadavg(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    rows: list[dict] = []
    for batch in args.batch:
        for path in paths:
            rows += bench_path(args, path, device, batch)
            r = rows[-1]
            print(f"# done {r['path']} batch {batch}", file=sys.stderr, flush=True)
    meta["loadavg_end"] = os.getloadavg()
    mem_key = "peak_gpu_mib" if device.type == "cuda" else "process_peak_rss_mib"
    print(f"{args.model} {args.size[0]}x{args.size[1]} on {meta['device']} ({meta['threads']} threads), "
          f"commit {meta['commit']}, load {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}")
    print(f"| path | mode | batch | median s | cpu s | images/s | {mem_key} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['mode']} | {r['batch']} | {r['median_s']:.3f} | {r['cpu_s']:.3f} | "
              f"{r['images_per_s']:.3f} | {r[mem_key]:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
