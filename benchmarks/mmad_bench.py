"""MMAD beside MambaAD: the grouped (GSS) scan vs the HSS scan, and the two models' forward speed.

``scan``: at MambaAD's four decoder stage shapes (D_inner 1024 @ 8x8, 512 @ 16x16, 256 @ 32x32,
128 @ 64x64; N 16; K 8; Hilbert; R = ceil(D_inner / 32); B 1 on a CPU), every chosen backend runs
:func:`mambaad_kernels.hss_scan` with ``grouped=False`` (HSS) and ``grouped=True`` (GSS), forward
(``torch.inference_mode``) or forward + backward, parameters from :class:`SS2D`'s own init. With
``--parts`` the fused backends' two pieces are timed too: the x_proj GEMM
(:func:`mambaad_kernels.fused.project`) and the kernel's ``scan_fwd`` alone. The SSM work of GSS
is 1 / K of HSS's, so ``gss/hss`` near 0.125 is the ideal.

``model``: forward images/s of registered models (default ``mambaad`` and ``mmad``), eval mode,
``torch.inference_mode``, random weights (same seed), on every chosen backend, using
``benchmarks/model_bench.py``'s timing (:func:`model_bench.bench_path`).

Both interleave: in every round each contender runs once (``scan``) or gets its own
warm-up + timed calls (``model``), the order rotated every round, so that the load of a shared
machine falls on all alike; the median and the minimum over rounds are reported, with the load
average. Compare rows of one run only.

Examples::

    python benchmarks/mmad_bench.py scan --backends cpu --threads 2 --rounds 7 --parts
    python benchmarks/mmad_bench.py model --models mambaad mmad --backends cpu reference --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import mambaad_kernels as mk  # noqa: E402
from mambaad_kernels import fused  # noqa: E402
from mambaad_kernels.backends import kernel_module  # noqa: E402
from mambaad_kernels.modules import SS2D  # noqa: E402
from mambaad_kernels.paths import scan_paths  # noqa: E402

STAGES = ((1024, 8), (512, 16), (256, 32), (128, 64))  # (D_inner, grid side) of the decoder stages
K, N, METHOD = 8, 16, "hilbert"


def _rotated(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)]


def _summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}


def _scan_calls(d: int, side: int, backend: str, mode: str, parts: bool) -> dict[str, Callable[[], object]]:
    """name -> a zero-argument call, for HSS and GSS (and their parts) at one stage shape."""
    torch.manual_seed(0)
    x = torch.randn(1, d, side, side)
    calls: dict[str, Callable[[], object]] = {}
    for kind, grouped in (("hss", False), ("gss", True)):
        m = SS2D(d // 2, d_state=N, scan_method=METHOD, directions=K, grouped=grouped)
        params = [m.x_proj_weight, m.dt_projs_weight, m.dt_projs_bias, m.A_logs, m.Ds]
        if mode == "fwd":
            ps = [p.detach() for p in params]

            def fwd(ps=ps, grouped=grouped):
                with torch.inference_mode():
                    mk.hss_scan(x, *ps, METHOD, K, backend=backend, grouped=grouped)

            calls[kind] = fwd
        else:
            xg = x.clone().requires_grad_()
            gout = torch.randn_like(x)

            def fwdbwd(params=params, grouped=grouped, xg=xg, gout=gout):
                out = mk.hss_scan(xg, *params, METHOD, K, backend=backend, grouped=grouped)
                grads = torch.autograd.grad(out, [xg, *params], gout)
                return grads

            calls[kind] = fwdbwd
        if parts and mode == "fwd" and backend != "reference":
            x3 = x.flatten(2)
            ps = [p.detach() for p in params]
            paths = scan_paths(side, side, METHOD, K, x.device, dtype=torch.int32)
            x_dbl = fused.project(x3, ps[0], grouped)
            ext = kernel_module(backend)
            calls[f"{kind}:project"] = lambda x3=x3, w=ps[0], g=grouped: fused.project(x3, w, g)
            calls[f"{kind}:kernel"] = (lambda x3=x3, xd=x_dbl, ps=ps, paths=paths, g=grouped, ext=ext:
                                       ext.scan_fwd(x3, xd, *ps[1:], paths, g, True))
    return calls


def bench_scan(args: argparse.Namespace) -> list[dict]:
    rows = []
    for d, side in STAGES:
        for backend in args.backends:
            for mode in args.modes:
                calls = _scan_calls(d, side, backend, mode, args.parts)
                for fn in calls.values():  # warm-up: paths, caches, first-call costs
                    fn()
                times: dict[str, list[float]] = {name: [] for name in calls}
                for r in range(args.rounds):
                    for name in _rotated(list(calls), r):
                        t0 = time.perf_counter()
                        calls[name]()
                        times[name].append((time.perf_counter() - t0) * 1e3)
                stats = {name: _summary(v) for name, v in times.items()}
                row = {"shape": f"{d}@{side}x{side}", "backend": backend, "mode": mode,
                       "ms": stats, "gss_over_hss_median": stats["gss"]["median"] / stats["hss"]["median"],
                       "gss_over_hss_min": stats["gss"]["min"] / stats["hss"]["min"]}
                rows.append(row)
                print(f"# {row['shape']} {backend} {mode}: hss {stats['hss']['median']:.2f} ms, "
                      f"gss {stats['gss']['median']:.2f} ms", file=sys.stderr, flush=True)
    print("| stage shape (D_inner@grid) | backend | mode | HSS ms (median / min) | GSS ms (median / min) "
          "| GSS / HSS (median / min) | ideal 1/K |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        h, g = r["ms"]["hss"], r["ms"]["gss"]
        print(f"| {r['shape']} | {r['backend']} | {r['mode']} | {h['median']:.2f} / {h['min']:.2f} | "
              f"{g['median']:.2f} / {g['min']:.2f} | {r['gss_over_hss_median']:.3f} / "
              f"{r['gss_over_hss_min']:.3f} | {1 / K:.3f} |")
    parted = [r for r in rows if "hss:kernel" in r["ms"]]
    if parted:
        print("\n| stage shape | backend | part | HSS ms (median / min) | GSS ms (median / min) "
              "| GSS / HSS (min) |")
        print("|---|---|---|---|---|---|")
        for r in parted:
            for part in ("project", "kernel"):
                h, g = r["ms"][f"hss:{part}"], r["ms"][f"gss:{part}"]
                print(f"| {r['shape']} | {r['backend']} | {part} | {h['median']:.2f} / {h['min']:.2f} | "
                      f"{g['median']:.2f} / {g['min']:.2f} | {g['min'] / h['min']:.3f} |")
    return rows


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
    s = sub.add_parser("scan", help="GSS vs HSS scan at the four stage shapes")
    s.add_argument("--backends", nargs="+", default=None,
                   help="backends (default: those available for CPU tensors, Triton excluded: interpreter)")
    s.add_argument("--modes", nargs="+", default=["fwd"], choices=("fwd", "fwdbwd"))
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--parts", action="store_true", help="also time the x_proj GEMM and the kernel alone")
    m = sub.add_parser("model", help="forward images/s of registered models, interleaved")
    m.add_argument("--models", nargs="+", default=["mambaad", "mmad"])
    m.add_argument("--backends", nargs="+", default=None,
                   help="scan backends (default: those available for CPU tensors, Triton excluded)")
    m.add_argument("--size", default="256")
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--warmup", type=int, default=1)
    m.add_argument("--iters", type=int, default=3)
    for q in (s, m):
        q.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
        q.add_argument("--json", help="write the results here")
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
    rows = bench_scan(args) if args.what == "scan" else bench_models(args)
    meta["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {meta['loadavg_end'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    return rows


if __name__ == "__main__":
    main()
