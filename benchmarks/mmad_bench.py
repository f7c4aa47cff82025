"""MMAD beside MambaAD: the two models' forward speed.

``model``: forward images/s of registered models (default ``mambaad`` and ``mmad``), eval mode,
``torch.inference_mode``, random weights (same seed), on every chosen backend, using
``benchmarks/model_bench.py``'s timing (:func:`model_bench.bench_path`). In every round each
(model, backend) gets its own warm-up + timed calls, the order rotated every round, so that the
load of a shared machine falls on all alike; the median and the minimum over rounds are reported,
with the load average. Compare rows of one run only.

The GSS scan beside the HSS scan is ``benchmarks/scan_bench.py --scan hss gss``.

Example::

    python benchmarks/mmad_bench.py model --models mambaad mmad --backends cpu reference --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import mambaad_kernels as mk  # noqa: E402


def _rotated(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)]


def _summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}


def bench_models(args: argparse.Namespace) -> list[dict]:
    import model_bench

    device = torch.device("cpu")
    contenders = [(m, b) for b in args.backends for m in args.models]  # (model, backend)
    secs: dict[tuple[str, str], list[float]] = {c: [] for c in contenders}
    for r in range(args.rounds):
        for name, backend in _rotated(contenders, r):
            margs = model_bench.parse_args(["--model", name, "--size", args.size, "--modes", "forward",
                                            "--warmup", str(args.warmup), "--iters", str(args.iters),
                                            "--seed", "0"])
            (row,) = model_bench.bench_path(margs, backend, device, args.batch)
            secs[(name, backend)].append(row["median_s"])
            print(f"# round {r} {name} {backend}: {args.batch / row['median_s']:.3f} images/s",
                  file=sys.stderr, flush=True)
    rows = [{"model": name, "backend": backend, "batch": args.batch, "size": args.size,
             "s_per_call": _summary(v), "images_per_s_median": args.batch / statistics.median(v),
             "images_per_s_best": args.batch / min(v)} for (name, backend), v in secs.items()]
    print("| model | backend | batch | size | s / call (median / min over rounds) | images/s (median) "
          "| images/s (best) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["s_per_call"]
        print(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['size']} | "
              f"{s['median']:.3f} / {s['min']:.3f} | {r['images_per_s_median']:.3f} | "
              f"{r['images_per_s_best']:.3f} |")
    for backend in args.backends:
        same = [r for r in rows if r["backend"] == backend]
        for r in same[1:]:
            print(f"{backend}: {r['model']} / {same[0]['model']} forward speed: "
                  f"{r['images_per_s_median'] / same[0]['images_per_s_median']:.2f}x (medians)")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mmad_bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="forward images/s of registered models, interleaved")
    m.add_argument("--models", nargs="+", default=["mambaad", "mmad"])
    m.add_argument("--backends", nargs="+", default=None,
                   help="scan backends (default: those available for CPU tensors, Triton excluded)")
    m.add_argument("--size", default="256")
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--warmup", type=int, default=1)
    m.add_argument("--iters", type=int, default=3)
    m.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    m.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.backends is None:
        args.backends = [b for b in mk.available_backends("cpu") if b != "triton"]
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"what": args.what, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "loadavg_start": os.getloadavg(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    print(f"{args.what}: torch {meta['torch']}, {meta['threads']} threads, {meta['cpu_count']} cores, "
          f"load {meta['loadavg_start'][0]:.1f}")
    rows = bench_models(args)
    meta["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {meta['loadavg_end'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    return rows


if __name__ == "__main__":
    main()
