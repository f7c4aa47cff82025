"""How fast do the exported models run: MambaAD as eager PyTorch (fused ``cpu`` scans, or the
reference scan), as the ``.pt2`` program, in onnxruntime and in OpenVINO, on the CPU.

Two parts, each run side by side in one process (calls interleaved, medians), random weights:

1. **scan**: the HSS scan alone at MambaAD's four decoder stages (D_inner 1024 @ 8x8 .. 128 @ 64x64,
   N 16, K 8): the fused ``cpu`` op against the portable formulation (:mod:`mambaad_kernels.portable`)
   in eager PyTorch, onnxruntime and OpenVINO, with the formulation's bounds on each runtime,
   measured in the same run: ``exp_only``, its ``2 B K D L N`` exponentials at the runtime's best
   Exp rate (in cache or on a step's slice), which no runtime can beat with this graph; ``bound``,
   those and its ``12 B K D L N`` other element-wise operations at the rates of one Exp and one Mul
   on one step's ``(K, c, B, N, D)`` slice, which a runtime that runs every operator on its own
   (onnxruntime) cannot beat.
2. **model**: the whole model at ``--image-size`` for each encoder and batch size, each other path
   (``.pt2``, onnxruntime, OpenVINO, the reference scan) timed beside the eager fused model, one
   loaded at a time; the export costs (time, file size, check error) and, in a fresh process per
   file and batch, the resident memory of running the ONNX / OpenVINO file.

    python benchmarks/export_bench.py                         # the issue's setting (256 px, B 1 and 8)
    python benchmarks/export_bench.py --model mambaad_test --image-size 64 --batches 1 --encoders resnet18 \
        --scan-batches 1 --reps 1 --no-reference               # a quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mambaad  # noqa: E402
import mambaad_kernels as mk  # noqa: E402
from mambaad.deploy import load_deployed, write_onnx, write_openvino  # noqa: E402
from mambaad.export import check_program, export_metadata, export_model  # noqa: E402
from mambaad_kernels import portable  # noqa: E402
from mambaad_kernels.onnx_export import export_onnx, onnx_session, run_onnx  # noqa: E402

STAGES = ((1024, 8, 32), (512, 16, 16), (256, 32, 8), (128, 64, 4))  # D_inner, grid side, dt rank
N, K = 16, 8
EXPS, OTHER_OPS = 2, 12  # per (b, k, d, l, n) in the portable formulation (its module docstring)


def machine() -> dict:
    """The CPU's name, core count and the load average now."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": name, "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def interleaved(fns: dict[str, Callable[[], object]], reps: int, settle_s: float = 0.03) -> dict[str, float]:
    """Median milliseconds per call of each function, calls interleaved over ``reps`` rounds.

    Each timed call follows untimed calls of the same function for at least ``settle_s``: the
    previous runtime's worker threads spin for a while after its own call (onnxruntime's pool,
    torch's OpenMP) and would slow this one's; a pause instead of the calls would time a cold start.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in fns.items():
            end = time.perf_counter() + settle_s
            fn()
            while time.perf_counter() < end:
                fn()
            t = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


class _Scan(torch.nn.Module):
    """One HSS scan with fixed parameters, on a chosen backend (what export_onnx exports)."""

    def __init__(self, d: int, r: int, backend: str):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.backend = backend
        self.x_proj_weight = torch.nn.Parameter(torch.randn(K, r + 2 * N, d, generator=gen) * d ** -0.5)
        self.dt_projs_weight = torch.nn.Parameter(torch.randn(K, d, r, generator=gen) * r ** -0.5)
        self.dt_projs_bias = torch.nn.Parameter(torch.randn(K, d, generator=gen) - 4.0)
        self.A_logs = torch.nn.Parameter(torch.log(torch.arange(1, N + 1.0)).repeat(K * d, 1))
        self.Ds = torch.nn.Parameter(torch.ones(K * d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mk.hss_scan(x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                           self.Ds, backend=self.backend)


HOT = 1 << 16  # elements of a cache-resident tensor (256 KB)


def _op_rates(elements: int, threads: int, reps: int) -> dict[str, dict[str, float]]:
    """Elements per second of one ONNX Exp and one Mul over ``elements`` floats (the size of one
    step's slice), and of one Exp over :data:`HOT` floats (``Exp_hot``: the exponential's compute
    rate, the data in cache), in onnxruntime and OpenVINO: the best of ``reps`` calls, call
    overhead included."""
    import onnx
    import onnx.helper as oh
    import openvino as ov

    f = onnx.TensorProto.FLOAT
    out: dict[str, dict[str, float]] = {"onnxruntime": {}, "openvino": {}}
    core = ov.Core()
    for key, op, size in (("Exp", "Exp", elements), ("Mul", "Mul", elements), ("Exp_hot", "Exp", HOT)):
        x = -np.random.default_rng(0).random(size, dtype=np.float32)
        node = oh.make_node(op, ["x", "x"] if op == "Mul" else ["x"], ["y"])
        graph = oh.make_graph([node], op, [oh.make_tensor_value_info("x", f, [size])],
                              [oh.make_tensor_value_info("y", f, [size])])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "op.onnx")
            onnx.save_model(model, path)
            session = onnx_session(path, threads)
            compiled = core.compile_model(core.read_model(path), "CPU", _ov_config(threads))
            runs = {"onnxruntime": lambda: session.run(None, {"x": x}), "openvino": lambda: compiled(x)}
            for rt, fn in runs.items():
                fn()
                best = min(_timed(fn) for _ in range(reps))
                out[rt][key] = size / best
    return out


def _ov_config(threads: int) -> dict:
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def scan_part(batches: list[int], threads: int, reps: int, tmp: str) -> list[dict]:
    """Part 1 (module docstring): one row per stage and batch size (one export per stage)."""
    import openvino as ov

    rows = []
    for d, side, r in STAGES:
        if not batches:
            break
        length = side * side
        fused, port = _Scan(d, r, "cpu").eval(), _Scan(d, r, "portable").eval()
        port.load_state_dict(fused.state_dict())
        path = os.path.join(tmp, f"scan_{d}.onnx")
        t = time.perf_counter()
        info = export_onnx(port, torch.randn(1, d, side, side), path)
        export_s = time.perf_counter() - t
        session = onnx_session(path, threads)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU", _ov_config(threads))
        chunk = portable.default_chunk(length)
        for b in batches:
            x = torch.randn(b, d, side, side)
            xn = x.numpy()
            with torch.no_grad():
                ms = interleaved({"cpu": lambda: fused(x), "portable_eager": lambda: port(x),
                                  "onnxruntime": lambda: run_onnx(session, [x]),
                                  "openvino": lambda: compiled(xn)}, reps)
            elements = b * K * d * length * N
            rates = _op_rates(elements // chunk, threads, 20)
            bound = {rt: 1e3 * elements * (EXPS / v["Exp"] + OTHER_OPS / v["Mul"]) for rt, v in rates.items()}
            exp_only = {rt: 1e3 * elements * EXPS / max(v["Exp"], v["Exp_hot"]) for rt, v in rates.items()}
            row = {"batch": b, "d_inner": d, "grid": side, "chunk": chunk, "nodes": info["nodes"],
                   "export_s": round(export_s, 1), "ms": {k: round(v, 2) for k, v in ms.items()},
                   "bound_ms": {k: round(v, 2) for k, v in bound.items()},
                   "exp_only_ms": {k: round(v, 2) for k, v in exp_only.items()},
                   "rates_G_per_s": {rt: {op: round(v / 1e9, 2) for op, v in r.items()}
                                     for rt, r in rates.items()},
                   "max_rel_err_onnx": info["max_rel_err"]}
            row["x_bound"] = {rt: round(ms[rt] / bound[rt], 2) for rt in bound}
            row["x_exp_only"] = {rt: round(ms[rt] / exp_only[rt], 2) for rt in exp_only}
            row["x_fused"] = {k: round(v / ms["cpu"], 1) for k, v in ms.items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


PEAK_RSS = """
import numpy as np


def hwm_mb():  # this process's peak resident memory (VmHWM: not inherited across exec, unlike ru_maxrss)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) // 1024


path, batch, size, threads = {path!r}, {batch}, {size}, {threads}
if path.endswith(".xml"):
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {{"INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": "f32"}})
    run = lambda x: compiled(x)
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {{"images": x}})
before = hwm_mb()
run(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
print(before, hwm_mb())
"""


def peak_rss_mb(path: str, batch: int, size: int, threads: int) -> dict[str, int]:
    """Peak resident memory (MB) of a fresh process holding only the runtime (Linux: VmHWM), after
    loading an exported file and after one call on ``batch`` images (the first call: shapes are
    planned then)."""
    code = PEAK_RSS.format(path=path, threads=threads, batch=batch, size=size)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if res.returncode:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else str(res.returncode)}
    loaded, peak = map(int, res.stdout.split())
    return {"loaded_mb": loaded, "peak_mb": peak}


def model_part(args: argparse.Namespace, encoder: str, tmp: str) -> dict:
    """Part 2 (module docstring) for one encoder: each other path timed beside the eager ``cpu``
    model, interleaved, one path loaded at a time (an ONNX / OpenVINO session at batch 8 holds
    several GB)."""
    size = args.image_size
    torch.manual_seed(0)
    model = mambaad.create_model(args.model, pretrained=False, encoder=encoder, backend="cpu").eval()
    ckpt = {"model_name": args.model}
    out: dict = {"encoder": encoder, "model": args.model, "image_size": size, "exports": {}, "batches": {}}
    images = {b: torch.randn(b, 3, size, size) for b in args.batches}

    def pt2() -> Callable[[torch.Tensor], object]:
        t = time.perf_counter()
        program = export_model(model, size)
        out["exports"]["pt2"] = {"export_s": round(time.perf_counter() - t, 1),
                                 "rel_err": check_program(program, model, size)}
        return program.module()

    def deployed(write: Callable, suffix: str, name: str) -> Callable[[torch.Tensor], object]:
        path = os.path.join(tmp, f"{encoder}{suffix}")
        t = time.perf_counter()
        meta = write(model, size, path, export_metadata(ckpt, size, None))
        mb = sum(os.path.getsize(p) for p in (path, path[:-4] + ".bin") if os.path.exists(p)) / 2**20
        out["exports"][name] = {"export_s": round(time.perf_counter() - t, 1), "mb": round(mb, 1),
                                "rel_err": meta["checked_rel_err"],
                                "memory": {b: peak_rss_mb(path, b, size, args.threads) for b in args.batches}}
        run_file, _ = load_deployed(path, args.threads)
        return lambda x: run_file(x.numpy())

    def reference() -> Callable[[torch.Tensor], object]:
        ref = mambaad.create_model(args.model, pretrained=False, encoder=encoder, backend="reference").eval()
        ref.load_state_dict(model.state_dict())
        return ref

    builders = {"pt2": pt2, "onnxruntime": lambda: deployed(write_onnx, ".onnx", "onnxruntime"),
                "openvino": lambda: deployed(write_openvino, ".xml", "openvino"), "reference": reference}
    for name in [p for p in args.paths if p != "cpu"]:
        run = builders[name]()
        for b, x in images.items():
            if name == "reference" and b not in args.reference_batches:
                continue
            with torch.no_grad():
                ms = interleaved({"cpu": lambda: model(x), name: lambda: run(x)}, args.reps)
            row = out["batches"].setdefault(b, {})
            for k, v in ms.items():
                row.setdefault(k, []).append(round(v, 1))
            row[name + "_x_eager_cpu"] = round(ms[name] / ms["cpu"], 2)
            print(json.dumps({"encoder": encoder, "batch": b, "path": name, "ms": ms,
                              "x_eager_cpu": row[name + "_x_eager_cpu"],
                              "images_per_s": round(1e3 * b / ms[name], 2)}), flush=True)
        run = None  # free the session before the next path loads
        gc.collect()
    print(json.dumps({"encoder": encoder, "exports": out["exports"]}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mambaad")
    p.add_argument("--encoders", nargs="*", default=["mobilenetv2_tflite", "resnet34"],
                   help="empty: no model part")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--paths", nargs="+", default=["cpu", "reference", "pt2", "onnxruntime", "openvino"])
    p.add_argument("--reference-batches", type=int, nargs="*", default=[1],
                   help="batch sizes the reference scan runs at (it takes ~30 s per 256 px image)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--scan-batches", type=int, nargs="*", default=[1, 8], help="empty: no scan part")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch, onnxruntime and OpenVINO threads")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.no_reference:
        args.paths = [x for x in args.paths if x != "reference"]
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "args": vars(args)}
    print(json.dumps(result["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["scan"] = scan_part(args.scan_batches, args.threads, args.reps, tmp)
        result["models"] = [model_part(args, e, tmp) for e in args.encoders]
    result["machine_after"] = machine()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
