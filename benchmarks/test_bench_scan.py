"""The scan_bench.py cases under pytest-benchmark: ``pytest benchmarks --benchmark-only``.

Not part of ``make test``. One benchmark per (contender, scan, stage shape, mode) on the current
device (CUDA if there is one, else the CPU; B 16 on a GPU, B 1 on a CPU), float32, Hilbert, K 8,
N 16, the HSS scan and MMAD's grouped GSS scan; a contender that cannot run here is skipped with
its reason (Triton on a CPU: the interpreter is no benchmark). ``-k "cpu or chunked"`` picks
contenders; the sequential reference and the authors' path on it take seconds per call on a CPU. Rounds: ``MAMBAAD_BENCH_ROUNDS``
(default 20 on a GPU, 3 on a CPU), after one warm-up round; on a GPU each round starts with the
L2 flushed and ends with a synchronize, as in scan_bench.py. The floors of each case go into the
benchmark's ``extra_info`` (and so into ``--benchmark-json``).
"""

from __future__ import annotations

import os

import pytest
import torch

import floors
import scan_bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = scan_bench.parse_shapes(["mambaad"], DEVICE)
ROUNDS = int(os.environ.get("MAMBAAD_BENCH_ROUNDS", "20" if DEVICE.type == "cuda" else "3"))


@pytest.fixture(scope="module")
def timer() -> scan_bench.Timer:
    return scan_bench.Timer(DEVICE)


@pytest.mark.parametrize("mode", scan_bench.MODES)
@pytest.mark.parametrize("dims", SHAPES, ids=[f"{b}x{d}x{h}x{w}" for b, d, h, w in SHAPES])
@pytest.mark.parametrize("scan", scan_bench.SCANS)
@pytest.mark.parametrize("name", scan_bench.CONTENDERS)
def test_scan(benchmark, timer, name, scan, dims, mode):
    contenders, skipped = scan_bench.build_contenders([name], False, DEVICE, "hilbert", 8, torch.float32)
    if skipped:
        pytest.skip(f"{name}: {skipped[0]['reason']}")
    (contender,) = contenders
    b, d, h, w = dims
    shape = floors.ScanShape(b, d, h, w, k=8, n=16, r=scan_bench.dt_rank(d))
    grouped = scan == "gss"
    x, params = scan_bench.make_inputs(shape, torch.float32, DEVICE, seed=0, grouped=grouped)
    grad = mode == "fwdbwd"
    leaves = [t.requires_grad_(grad) for t in (x, *params)]
    gout = torch.randn(x.shape, device=DEVICE)

    def setup():
        for t in leaves:
            t.grad = None
        if timer.flush is not None:
            timer.flush.zero_()
            torch.cuda.synchronize(DEVICE)

    def call():
        if grad:
            contender.run(x, params, grouped).backward(gout)
        else:
            with torch.no_grad():
                contender.run(x, params, grouped)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    nbytes = floors.floor_bytes(shape, mode, grouped=grouped)["total"]
    benchmark.extra_info.update({"backend": contender.name, "scan": scan, "shape": list(dims), "mode": mode,
                                 "floor_bytes": nbytes,
                                 "floor_exps": floors.floor_exps(shape, mode, grouped=grouped)})
    benchmark.pedantic(call, setup=setup, rounds=ROUNDS, warmup_rounds=1, iterations=1)
