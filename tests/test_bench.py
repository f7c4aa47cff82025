"""The benchmark's own checks (fast): scan_bench.py end to end on a tiny shape, its JSON, the floors
arithmetic, and the two baselines it times (the authors' path, the chunked scan) against the
float64 reference, forward and gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambaad_kernels import reference

from .parity import make_params, make_x, rel_err

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path[:0] = [str(BENCH), str(BENCH / "dev")]  # the benchmarks, and the development probes

import authors_path  # noqa: E402
import floors  # noqa: E402
import scan_bench  # noqa: E402
from chunked_scan import chunked_hss_scan, default_chunk  # noqa: E402

TINY = ["--device", "cpu", "--threads", "1", "--shapes", "1,8,4,5",
        "--backends", "authors,reference,chunked", "--repeats", "2", "--min-rounds", "1",
        "--budget-s", "0.2", "--bandwidth-gbs", "10", "--exp-rate", "2"]


def test_scan_bench_end_to_end(tmp_path):
    """The script as a user runs it: exit 0, a table on stdout, JSON with every required key."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH / "scan_bench.py"), *TINY, "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "authors(reference-scan)" in proc.stdout and "chunked(torch)" in proc.stdout
    doc = json.loads(out.read_text())
    scan_bench.validate(doc)
    for key in ("device", "torch", "commit", "date", "command", "rows", "triton", "cuda", "device_name"):
        assert key in doc
    assert doc["device"] == "cpu" and doc["bandwidth_gbs"] == 10 and doc["exp_rate_per_s"] == 2e9
    assert doc["errors"] == []
    assert "--shapes 1,8,4,5" in doc["command"]
    rows = doc["rows"]
    assert {(r["backend"], r["mode"], r["scan"]) for r in rows} == {
        (b, m, s) for b in ("authors(reference-scan)", "reference", "chunked(torch)")
        for m in scan_bench.MODES for s in scan_bench.SCANS}
    assert all("mamba_ssm" not in r["backend"] for r in rows)
    for r in rows:
        assert r["shape"] == [1, 8, 4, 5] and r["dtype"] == "fp32" and r["samples"] >= 1
        hss = next(h for h in rows if (h["backend"], h["mode"], h["scan"]) == (r["backend"], r["mode"], "hss"))
        if r["scan"] == "gss":  # GSS beside HSS: its time over the same contender's HSS time
            assert r["grouped"] and r["gss_over_hss"] == pytest.approx(r["ms_median"] / hss["ms_median"])
            assert r["floor_exps"] * 8 == hss["floor_exps"]
        else:
            assert r["gss_over_hss"] is None
        assert 0 < r["ms_min"] <= r["ms_median"]
        floor = max(r["floor_ms_memory"], r["floor_ms_exp"])
        assert r["frac_of_floor"] == pytest.approx(r["ms_median"] / floor)
        assert r["achieved_exp_per_s"] == pytest.approx(r["floor_exps"] / r["ms_median"] * 1e3)
        assert r["peak_mem_mb"] is None  # CPU
        authors = next(a for a in rows if (a["mode"], a["scan"], a["kind"]) == (r["mode"], r["scan"], "authors"))
        assert r["speedup_vs_authors"] == pytest.approx(authors["ms_median"] / r["ms_median"])
        if r["mode"] == "fwd" and r["kind"] != "reference":
            assert r["err_vs"] == "reference" and r["max_rel_err"] < 1e-5


def test_scan_bench_in_process_options(tmp_path, monkeypatch):
    """Options reach the rows (dtype, mode, method, K, N, R, scan); '--json -' writes no file."""
    monkeypatch.chdir(tmp_path)
    args = ["--device", "cpu", "--shapes", "2,4,3,5", "--backends", "chunked", "--dtype", "bf16",
            "--mode", "fwd", "--method", "zigzag", "--directions", "4", "--d-state", "4",
            "--dt-rank", "3", "--scan", "gss", "--repeats", "1", "--min-rounds", "1", "--budget-s", "0",
            "--bandwidth-gbs", "5", "--exp-rate", "1", "--json", "-"]
    doc = scan_bench.run(args)
    (row,) = doc["rows"]
    assert (row["backend"], row["dtype"], row["mode"], row["method"]) == ("chunked(torch)", "bf16", "fwd",
                                                                          "zigzag")
    assert (row["shape"], row["k"], row["n"], row["r"], row["scan"]) == ([2, 4, 3, 5], 4, 4, 3, "gss")
    assert row["speedup_vs_authors"] is None and row["max_rel_err"] is None  # nothing to compare with
    assert row["gss_over_hss"] is None  # no HSS row beside it
    assert row["floor_exps"] == 2 * 4 * 15 * 4 and list(tmp_path.iterdir()) == []  # B D L N: GSS


def test_a_failing_contender_is_recorded_and_the_others_go_on(monkeypatch, capsys):
    """One contender that raises (here the chunked scan) leaves an error in the JSON and the log,
    the other rows are there, and the exit status is 1; a GSS case on D not divisible by K is
    skipped with its reason."""
    def broken(*args, **kwargs):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(scan_bench, "chunked_hss_scan", broken)
    args = ["--device", "cpu", "--threads", "1", "--shapes", "1,4,2,3", "--backends", "authors,chunked,reference",
            "--mode", "fwd", "--repeats", "1", "--min-rounds", "1", "--budget-s", "0", "--bandwidth-gbs", "5",
            "--exp-rate", "1", "--json", "-"]
    doc = scan_bench.run(args)
    assert [(e["backend"], e["scan"], e["error"]) for e in doc["errors"]] == [
        ("chunked(torch)", "hss", "RuntimeError: kaputt")]
    assert {r["backend"] for r in doc["rows"]} == {"authors(reference-scan)", "reference"}
    assert any(s["scan"] == "gss" and "divisible" in s["reason"] for s in doc["skipped"])
    out = capsys.readouterr()
    assert "ERROR chunked(torch)" in out.out and "kaputt" in out.err
    assert scan_bench.main(args) == 1


def test_interleaved_drops_a_callable_that_fails_midway():
    calls_made = {"ok": 0, "bad": 0}

    def call(name):
        calls_made[name] += 1
        if name == "bad" and calls_made[name] >= 3:
            raise ValueError("third call fails")
        return 1.0

    calls = {name: (None, lambda name=name: call(name)) for name in calls_made}
    failed = {}
    times = scan_bench.interleaved(calls, lambda fn, pre=None: fn(), {"ok": 1.0, "bad": 1.0}, warmup=2,
                                   repeats=3, min_rounds=3, budget_s=1.0, failed=failed, min_samples=1)
    assert list(times) == ["ok"] and len(times["ok"]) == 3
    assert list(failed) == ["bad"] and isinstance(failed["bad"], ValueError)
    with pytest.raises(ValueError):  # without a failed dict, the exception propagates
        calls_made["bad"] = 0
        scan_bench.interleaved(calls, lambda fn, pre=None: fn(), {"ok": 1.0, "bad": 1.0}, warmup=2,
                               repeats=3, min_rounds=3, budget_s=1.0)


def test_parse_shapes_presets():
    cpu, stages = torch.device("cpu"), [(1024, 8, 8), (512, 16, 16), (256, 32, 32), (128, 64, 64)]
    assert scan_bench.parse_shapes(["mambaad"], cpu) == [(1, *s) for s in stages]
    assert scan_bench.parse_shapes(["mambaad-b16", "3,5,7,9"], cpu) == [(16, *s) for s in stages] + [
        (3, 5, 7, 9)]
    assert [scan_bench.dt_rank(d) for d, _, _ in stages] == [32, 16, 8, 4]


def test_validate_catches_missing_keys():
    with pytest.raises(ValueError, match="top-level"):
        scan_bench.validate({"rows": []})


def test_floors_by_hand():
    s = floors.ScanShape(b=2, d=3, h=4, w=5, k=8, n=16, r=2)  # L 20, C 34
    params = 8 * 34 * 3 + 8 * 3 * 2 + 8 * 3 + 8 * 3 * 16 + 8 * 3
    fwd = floors.floor_bytes(s, "fwd", elem=4)
    assert fwd == {"x": 2 * 3 * 20 * 4, "x_dbl": 2 * 2 * 8 * 34 * 20 * 4, "out": 2 * 3 * 20 * 4,
                   "params": params * 4, "total": (2 * 120 + 2 * 10880 + params) * 4}
    both = floors.floor_bytes(s, "fwdbwd", elem=2)
    bdl, bkcl = 2 * 3 * 20, 2 * 8 * 34 * 20
    assert both["total"] == (bdl + 2 * bkcl + bdl) * 2 + params * 4 + (2 * bdl + bkcl) * 2 + 2 * bkcl * 4 \
        + bdl * 2 + params * 4
    assert floors.floor_exps(s, "fwd") == 2 * 8 * 3 * 20 * 16
    assert floors.floor_exps(s, "fwdbwd") == 2 * floors.floor_exps(s, "fwd")
    g = floors.ScanShape(b=2, d=16, h=4, w=5, k=8, n=16, r=2)  # GSS: 2 channels per direction
    g_params = 34 * 16 + 16 * 2 + 16 + 16 * 16 + 16  # one direction's parameters per channel
    assert floors.param_elems(g, grouped=True) == g_params
    assert floors.floor_bytes(g, "fwd", grouped=True)["total"] == (2 * (2 * 16 * 20) + 2 * 2 * 8 * 34 * 20
                                                                    + g_params) * 4
    assert floors.floor_exps(g, "fwd", grouped=True) * 8 == floors.floor_exps(g, "fwd") == 2 * 8 * 16 * 20 * 16
    with pytest.raises(ValueError):
        floors.floor_bytes(s, "bwd")


def test_measured_cpu_rates_are_positive():
    assert floors.measure_copy_bandwidth("cpu", nbytes=1 << 20, repeats=2) > 0
    assert floors.measure_cpu_exp_rate(numel=1 << 12, repeats=3) > 0


@pytest.mark.parametrize("method,k,h,w,chunk,grouped", [
    ("hilbert", 8, 5, 7, None, False), ("zigzag", 4, 4, 4, 3, False), ("scan", 2, 1, 9, 4, False),
    ("sweep", 1, 1, 1, None, False), ("hilbert", 8, 4, 6, None, True), ("zorder", 4, 3, 5, 2, True)])
def test_baselines_match_the_reference(method, k, h, w, chunk, grouped):
    """The chunked scan (odd chunk splits included) and the authors' path, HSS and GSS: forward
    and all six gradients against the float64 reference."""
    gen = torch.Generator().manual_seed(h * 100 + w)
    d = 16 if grouped else 4
    x = make_x(2, d, h, w, "cpu", torch.float64, generator=gen).requires_grad_()
    params = [p.requires_grad_() for p in make_params(d, 4, 2, k, grouped, "cpu", torch.float64, gen)]
    want = reference.hss_scan(x, *params, method=method, directions=k, grouped=grouped)
    gout = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, [x, *params], gout)
    for name, fn in [("chunked", lambda: chunked_hss_scan(x, *params, method=method, directions=k,
                                                          chunk=chunk, grouped=grouped)),
                     ("authors", lambda: authors_path.authors_hss_scan(
                         x, *params, method=method, directions=k, impl=authors_path.REFERENCE_SCAN,
                         grouped=grouped))]:
        got = fn()
        if name == "authors":  # the authors' scan runs in float32, as they run it
            tol = 1e-5
        else:
            tol = 1e-12
        assert rel_err(got, want) <= tol, name
        for g, w_ in zip(torch.autograd.grad(got, [x, *params], gout), want_grads):
            assert rel_err(g, w_) <= 10 * tol, name


def test_chunked_scan_float32_long_decay():
    """Strong decays over long chunks: the cumulative decay underflows to 0 without NaN / inf."""
    gen = torch.Generator().manual_seed(1)
    x = make_x(1, 3, 16, 16, "cpu", torch.float32, generator=gen)
    params = make_params(3, 16, 2, 8, False, "cpu", torch.float32, gen)
    params[2] = params[2] + 4.0  # delta around 2, A down to -4.25: a 64-step chunk decays to ~exp(-500)
    want = reference.hss_scan(x.double(), *[p.double() for p in params])
    got = chunked_hss_scan(x, *params, chunk=64)
    assert torch.isfinite(got).all() and rel_err(got, want) < 1e-5
    assert [default_chunk(n) for n in (1, 64, 256, 1024, 4096, 100)] == [1, 4, 8, 8, 16, 4]


def test_authors_scan_impl_on_cpu_is_the_reference():
    impl = authors_path.scan_impl("cpu")
    assert impl.label == "reference-scan" and "mamba_ssm" not in impl.label
    assert authors_path.default_build_dir().parent.name == "selective_scan_cuda"


@pytest.mark.gpu
def test_authors_path_with_mamba_ssm_matches_the_reference():
    """On a GPU with mamba-ssm's kernels (installed, or built by benchmarks/build_mamba_ssm.sh)."""
    impl = authors_path.scan_impl("cuda")
    if impl.label != "mamba_ssm":
        pytest.skip("mamba_ssm / selective_scan_cuda not importable: run benchmarks/build_mamba_ssm.sh")
    gen = torch.Generator().manual_seed(0)
    x = make_x(2, 64, 16, 16, "cuda", torch.float32, generator=gen).requires_grad_()
    params = [p.requires_grad_() for p in make_params(64, 16, 4, 8, False, "cuda", torch.float32, gen)]
    got = authors_path.authors_hss_scan(x, *params, impl=impl)
    x64 = x.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    want = reference.hss_scan(x64, *p64)
    assert rel_err(got, want) <= 1e-4
    gout = torch.randn(got.shape, generator=gen).cuda()
    for g, w_ in zip(torch.autograd.grad(got, [x, *params], gout),
                     torch.autograd.grad(want, [x64, *p64], gout.double())):
        assert rel_err(g, w_) <= 1e-3


def test_interleaved_rounds_and_samples():
    """Rounds rotate the order, fast callables get more samples, the budget caps the rounds but
    never below min_rounds, and the first call counts as a warm-up (not recorded)."""
    cost = {"slow": 100.0, "mid": 30.0, "fast": 1.0}
    order = []

    def timer(fn, pre=None):
        return fn()

    calls = {name: (None, lambda name=name: order.append(name) or cost[name]) for name in cost}
    times = scan_bench.interleaved(calls, timer, dict(cost), warmup=2, repeats=50, min_rounds=3,
                                   budget_s=0.5, min_samples=1)
    # warm-up: one more call each (warmup 2, the first given); then 500 ms / (100 + 30 + 10) = 3 rounds
    assert order[:3] == ["slow", "mid", "fast"]
    assert {k: len(v) for k, v in times.items()} == {"slow": 3, "mid": 3, "fast": 30}
    rounds = order[3:]  # round 0: slow, mid, 10 x fast; round 1 starts one later: mid, ...
    assert rounds[:3] == ["slow", "mid", "fast"] and rounds[12:14] == ["mid", "fast"]
    few = scan_bench.interleaved(calls, timer, dict(cost), warmup=1, repeats=50, min_rounds=2,
                                 budget_s=0.0)
    assert len(few["slow"]) == 2
    # min_samples: mid's 5 calls (150 ms) fit in half the budget, so it runs twice a round
    many = scan_bench.interleaved(calls, timer, dict(cost), warmup=1, repeats=50, min_rounds=3,
                                  budget_s=0.5, min_samples=5)
    assert {k: len(v) for k, v in many.items()} == {"slow": 3, "mid": 6, "fast": 30}


def test_interleaved_records_a_slow_first_call():
    cost = {"slow": 100.0, "fast": 1.0}
    counts = {name: 0 for name in cost}

    def call(name):
        counts[name] += 1
        return cost[name]

    calls = {name: (None, lambda name=name: call(name)) for name in cost}
    times = scan_bench.interleaved(calls, lambda fn, pre=None: fn(), dict(cost), warmup=3, repeats=50,
                                   min_rounds=3, budget_s=0.0, slow_call_ms=50.0)
    # slow: its first call is sample 1, no warm-up, rounds 1 and 2 add two; fast: 2 warm-ups, 3 x 10
    assert counts == {"slow": 2, "fast": 2 + 30} and len(times["slow"]) == 3 and times["slow"][0] == 100.0


def test_host_overhead_script(tmp_path):
    """host_overhead.py times the three entry points forward and forward + backward on the cpu
    backend and writes them (a positive time each; the eager twin is checked against the op in
    test_fused_op.py)."""
    import host_overhead
    from mambaad_kernels.backends import unavailable_reason

    reason = unavailable_reason("cpu", "cpu")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "host.json"
    doc = host_overhead.main(["--rounds", "2", "--calls", "3", "--json", str(out)])
    assert doc["backend"] == "cpu" and json.loads(out.read_text()) == doc
    for mode in ("fwd", "fwdbwd"):
        assert set(doc["us_per_call"][mode]) == {"hss_scan", "via_op", "kernels"}
        assert all(t > 0 for t in doc["us_per_call"][mode].values())
    assert host_overhead.fused._plain_eager is host_overhead.plain_eager  # restored after via_op


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_kernel_time_needs_a_gpu():
    import kernel_time

    with pytest.raises(SystemExit, match="needs a CUDA device"):
        kernel_time.main([])


@pytest.mark.parametrize("fmt", ["sass", "ptx"])
def test_kernel_census_covers_every_fp32_configuration(fmt):
    """kernel_census.py finds one state loop per fp32 kernel configuration that launch.h
    instantiates (and the lane-sequential kernel's), with an exponential per (t, n) step of a pass
    and plausible instruction counts, from the machine code and from the PTX."""
    import re
    import shutil

    import kernel_census

    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    if fmt == "sass" and kernel_census.cuobjdump() is None:
        pytest.skip("no cuobjdump (neither the CUDA toolkit's nor triton's)")
    launch = (kernel_census.REPO / "csrc" / "cuda" / "launch.h").read_text()
    want = set()
    for kind in ("fwd", "bwd"):
        macro = re.search(rf"#define MAMBAAD_{kind.upper()}_CONFIGS_F32\(X, T\)(.*?)\n(?!\s)", launch, re.S)
        want |= {(kind, tuple(map(int, m))) for m in re.findall(r"X\(T, float, (\d+), (\d+), (\d+)\)",
                                                               macro.group(1))}
    lanes = re.search(r"kLanesG = (\d+), kLanesCH = (\d+)", launch)
    want.add(("fwd-lanes", (int(lanes.group(1)), int(lanes.group(2)))))
    rows = kernel_census.main(["--ptx"] if fmt == "ptx" else [])
    assert {(r["kernel"], tuple(r["config"])) for r in rows} == want
    for r in rows:
        per_pass = 4 * 16 if r["kernel"] == "fwd-lanes" else r["config"][2]  # (t, n) steps per pass
        assert r["format"] == fmt and r["ex2"] >= per_pass, r
        assert 5 < r["per_step"] < 100 and 0 < r["dt_per_r"] < 1, r
