"""Where does onnxruntime spend a portable scan's time: its profile of one exported HSS scan, summed
by operator type (ms per call, node count), beside the formulation's element-wise bound.

    python benchmarks/dev/ort_profile.py --stage 3 --batch 8     # 128 @ 64x64, batch 8
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnxruntime as ort  # noqa: E402

from export_bench import STAGES, _Scan  # noqa: E402
from mambaad_kernels.onnx_export import export_onnx  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    d, side, r = STAGES[args.stage]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scan.onnx")
        export_onnx(_Scan(d, r, "portable").eval(), torch.randn(1, d, side, side), path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        x = torch.randn(args.batch, d, side, side).numpy()
        name = session.get_inputs()[0].name
        for _ in range(args.calls + 1):
            session.run(None, {name: x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"]
    per_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op][0] += e["dur"] / 1e3 / (args.calls + 1)
            per_op[op][1] += 1 / (args.calls + 1)
    total = sum(v[0] for v in per_op.values())
    print(f"d_inner {d} @ {side}x{side}, batch {args.batch}, {args.threads} threads: model_run "
          f"{[round(e['dur'] / 1e3, 1) for e in runs]} ms, kernels {total:.1f} ms per call")
    for op, (ms, n) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
        print(f"{op:>20} {ms:9.2f} ms {100 * ms / total:5.1f} % {n:7.0f} nodes {1e3 * ms / max(n, 1):8.1f} us/node")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
