"""Time the HSS scan on every backend beside the authors' path and the physical floors.

``python benchmarks/scan_bench.py`` (``make bench``) times, on the current device (CUDA if there is
one, else the CPU), every available backend of :func:`mambaad_kernels.hss_scan`, the authors' path
(:mod:`authors_path`: K gathers, einsums, mamba_ssm's selective scan or the sequential reference,
K scatters) and, on a CPU, the chunked PyTorch scan (:mod:`chunked_scan`), at MambaAD's four decoder
stage shapes (D_inner 1024 @ 8x8, 512 @ 16x16, 256 @ 32x32, 128 @ 64x64; N 16; K 8; Hilbert;
dt rank ceil(D_inner / 32)) with B 16 on a GPU and B 1 on a CPU, float32, forward and
forward + backward, for the HSS scan (MambaAD) and beside it the GSS scan (MMAD's grouped scan,
``hss_scan(..., grouped=True)``: 1/K of the SSM work; column ``gss/hss`` = GSS time / HSS time of
the same contender, about 1/K if the scan dominates; ``--scan hss`` or ``--scan gss`` for one of
them). It prints one table and writes JSON (``--json``, default ``runs/scan_bench_<device>.json``
in the repository).

Timing: every contender of one (shape, dtype, mode, scan) case runs in the same process,
interleaved: after a warm-up, rounds in which each contender runs once (fast ones several times, so
that each gets about as much time as the slowest), the order rotated every round, as many rounds as
fit in the time budget (``--budget-s`` per shape and mode, shared by the scans) but at least
``--min-rounds``. A contender whose first (on a GPU: second, after compilation) call takes at least
``--slow-call-s`` (default 1 s) has that call recorded as its first sample instead of warming up:
the sequential reference and the authors' path on it are timed from very few calls (column ``n``;
n = 1 is one call) so that the default run takes minutes, not tens of minutes. On a GPU every call
is timed with CUDA events and preceded by a write over a buffer twice the L2 size (cold caches); on
a CPU with ``time.perf_counter``. The median and the minimum of the calls are reported. A contender
that fails (raises, or runs out of memory) is recorded in the JSON's ``errors`` (``skipped``) and
the log, and the others go on; the exit status is then 1.

Floors (:mod:`floors`): minimum bytes / measured copy bandwidth, and ``B K D L N`` exponentials
(twice that with the backward) / the exp rate; ``frac_of_floor`` = median time / the larger floor.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import mambaad_kernels as mk  # noqa: E402
from mambaad_kernels.backends import kernel_module, unavailable_reason  # noqa: E402

import authors_path  # noqa: E402
import floors  # noqa: E402
from chunked_scan import chunked_hss_scan  # noqa: E402

STAGES = ((1024, 8), (512, 16), (256, 32), (128, 64))  # (D_inner, grid side) of the decoder stages
PRESETS = ("mambaad", "mambaad-b1", "mambaad-b2", "mambaad-b16", "tiny")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "fwdbwd")
FUSED = ("triton", "cpu", "cuda")
CONTENDERS = ("authors", "reference", "chunked", *FUSED)
SCANS = ("hss", "gss")
REQUIRED_TOP = ("device", "device_name", "torch", "triton", "cuda", "commit", "date", "command",
                "bandwidth_gbs", "exp_rate_per_s", "rows")
REQUIRED_ROW = ("backend", "scan", "shape", "dtype", "mode", "ms_median", "ms_min", "speedup_vs_authors",
                "floor_ms_memory", "floor_ms_exp", "frac_of_floor", "achieved_gbs", "achieved_exp_per_s",
                "peak_mem_mb", "samples")


# ---------------------------------------------------------------------------------------------
# Cases and inputs
# ---------------------------------------------------------------------------------------------


def dt_rank(d_inner: int) -> int:
    """MambaAD's dt rank: ceil(d_model / 16) with d_model = d_inner / 2."""
    return math.ceil(d_inner / 2 / 16)


def parse_shapes(specs: list[str], device: torch.device) -> list[tuple[int, int, int, int]]:
    """Preset names and ``B,D,H,W`` strings -> a list of (B, D, H, W)."""
    out = []
    for spec in specs:
        if spec in PRESETS:
            if spec == "tiny":
                out.append((1, 16, 8, 8))
                continue
            b = {"mambaad-b1": 1, "mambaad-b2": 2, "mambaad-b16": 16}.get(
                spec, 16 if device.type == "cuda" else 1)
            out += [(b, d, s, s) for d, s in STAGES]
            continue
        parts = spec.replace("x", ",").split(",")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise ValueError(f"--shapes: {spec!r} is neither a preset {PRESETS} nor B,D,H,W with "
                             "four positive integers")
        out.append(dims)
    return out


def make_inputs(shape: floors.ScanShape, dtype: torch.dtype, device: torch.device,
                seed: int, grouped: bool = False) -> tuple[Tensor, list[Tensor]]:
    """x ``(B, D, H, W)`` in ``dtype`` and the five float32 parameters, initialised as SS2D does.

    x_proj uniform in +-Dk^-0.5, dt_proj uniform in +-R^-0.5, dt bias = softplus^-1 of dt
    log-uniform in [1e-3, 1e-1], A_logs = log(1..N), Ds = 1; Dk = D, or D / K for GSS
    (``grouped``: each direction's parameters cover its own group of D / K channels).
    """
    g = torch.Generator().manual_seed(seed)
    s = shape
    if grouped and s.d % s.k:
        raise ValueError(f"GSS needs D divisible by K, got D {s.d}, K {s.k}")
    dk = s.d // s.k if grouped else s.d

    def uniform(*size, bound):
        return (torch.rand(*size, generator=g) * 2 - 1) * bound

    x = torch.randn(s.b, s.d, s.h, s.w, generator=g)
    dt = torch.exp(torch.rand(s.k, dk, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    params = [
        uniform(s.k, s.c, dk, bound=dk ** -0.5),  # x_proj_weight (k, r + 2n, dk)
        uniform(s.k, dk, s.r, bound=s.r ** -0.5),  # dt_projs_weight (k, dk, r)
        dt + torch.log(-torch.expm1(-dt)),  # dt_projs_bias (k, dk)
        torch.log(torch.arange(1, s.n + 1, dtype=torch.float32)).repeat(s.k * dk, 1),  # A_logs
        torch.ones(s.k * dk),  # Ds (k dk,)
    ]
    return x.to(device=device, dtype=dtype), [p.to(device) for p in params]


# ---------------------------------------------------------------------------------------------
# Contenders
# ---------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One thing timed: its label and ``run(x, params, grouped) -> out (B, D, H, W)``."""

    name: str
    kind: str  # "authors", "reference", "chunked" or "fused"
    run: Callable[[Tensor, list[Tensor], bool], Tensor]


def build_contenders(names: list[str], explicit: bool, device: torch.device, method: str, k: int,
                     dtype: torch.dtype) -> tuple[list[Contender], list[dict]]:
    """The contenders that can run here, and ``{"backend", "reason"}`` for those that cannot.

    A backend named on the command line that cannot run is an error; in the default set it is
    listed as skipped with its reason.
    """
    out, skipped = [], []
    for name in names:
        reason = None
        if name in FUSED:
            reason = unavailable_reason(name, device)
            if reason is None and name == "triton" and device.type == "cpu" and not explicit:
                reason = "Triton on the CPU is the interpreter, not a performance path"
            if reason is None:
                supported = getattr(kernel_module(name), "SUPPORTED_DTYPES", mk.ops.X_DTYPES)
                if dtype not in supported:
                    reason = f"no {dtype} support"
        if reason:
            if explicit:
                raise SystemExit(f"scan_bench: backend {name!r} cannot run on {device}: {reason}")
            skipped.append({"backend": name, "reason": reason})
            continue
        if name == "authors":
            impl = authors_path.scan_impl(device)
            out.append(Contender(f"authors({impl.label})", "authors",
                                 lambda x, p, g, impl=impl: authors_path.authors_hss_scan(
                                     x, *p, method=method, directions=k, impl=impl, grouped=g)))
        elif name == "chunked":
            out.append(Contender("chunked(torch)", "chunked",
                                 lambda x, p, g: chunked_hss_scan(x, *p, method=method, directions=k,
                                                                  grouped=g)))
        else:
            out.append(Contender(name, "reference" if name == "reference" else "fused",
                                 lambda x, p, g, name=name: mk.hss_scan(
                                     x, *p, method=method, directions=k, backend=name, grouped=g)))
    return out, skipped


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


class Timer:
    """Times one call in ms: CUDA events after an L2 flush on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flush = None
        if device.type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (64 << 20)
            self.flush = torch.empty(max(2 * l2, 64 << 20) // 4, dtype=torch.float32, device=device)

    def __call__(self, fn: Callable[[], object], pre: Callable[[], object] | None = None) -> float:
        if pre is not None:
            pre()  # untimed set-up (clearing gradients)
        if self.flush is None:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        self.flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


Call = tuple[Callable[[], object] | None, Callable[[], object]]  # (untimed set-up, timed call)


def interleaved(calls: dict[str, Call], timer: Timer, first_ms: dict[str, float], warmup: int,
                repeats: int, min_rounds: int, budget_s: float, slow_call_ms: float | None = None,
                failed: dict[str, BaseException] | None = None,
                min_samples: int = 5) -> dict[str, list[float]]:
    """Per-call times in ms of every callable, measured in interleaved, rotating rounds.

    ``first_ms`` is the time of a first call each callable already made; it counts as the first of
    ``warmup`` calls that are not recorded (the fastest of them is the callable's estimate), except
    that a first call of at least ``slow_call_ms`` is recorded as the callable's first sample
    (nothing that long needs warming up) and replaces one of its calls of round 0. Then R rounds,
    R = ``repeats`` cut down so the case takes about ``budget_s`` but at least ``min_rounds``; in
    a round a callable runs a quarter of (slowest estimate / its estimate) times, 1 to 10, so
    fast contenders get more samples for little time; one whose ``min_samples`` calls fit in half
    the budget runs often enough per round to get them.

    With a ``failed`` dict, a callable that raises is dropped (from the result too) and its
    exception stored there under its name, and the others go on; without one, the exception
    propagates.
    """
    calls = dict(calls)

    def timed(name: str) -> float | None:
        pre, fn = calls[name]
        if failed is None:
            return timer(fn, pre)
        try:
            return timer(fn, pre)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            failed[name] = exc
            return None

    recorded = {n for n in calls if slow_call_ms is not None and first_ms[n] >= slow_call_ms}
    est = {}
    for name in list(calls):
        ts = [first_ms[name]] + [timed(name) for _ in range(0 if name in recorded else warmup - 1)]
        if None in ts:
            del calls[name]
        else:
            est[name] = min(ts)
    if not calls:
        return {}
    slowest = max(est.values())
    mult = {name: max(1, min(10, int(0.25 * slowest / max(e, 1e-6)))) for name, e in est.items()}
    round_ms = sum(mult[n] * est[n] for n in calls)
    rounds = max(min_rounds, min(repeats, int(budget_s * 1e3 / max(round_ms, 1e-6))))
    for name in calls:  # a cheap callable gets min_samples even when the rounds are few
        if est[name] * min_samples <= 0.5 * budget_s * 1e3:
            mult[name] = max(mult[name], -(-min_samples // rounds))
    times: dict[str, list[float]] = {name: [first_ms[name]] if name in recorded else [] for name in calls}
    names = list(calls)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if name not in times:
                continue
            for _ in range(mult[name] - (i == 0 and name in recorded)):
                t = timed(name)
                if t is None:
                    del times[name]
                    break
                times[name].append(t)
    return times


def peak_memory_mb(fn: Callable[[], object], device: torch.device, input_bytes: int) -> float | None:
    """GPU only: inputs + the most memory one call holds at once (torch.cuda.max_memory_allocated)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base + input_bytes) / 2 ** 20


def rel_err(got: Tensor, ref: Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------------------------------
# One case: every contender on one (shape, dtype, mode)
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: torch.device
    method: str
    repeats: int
    min_rounds: int
    warmup: int
    budget_s: float
    seed: int
    bandwidth: float  # bytes/s
    exp_rate: float | None  # exp/s
    slow_call_ms: float | None  # a first call this long is recorded (see interleaved)


def run_case(shape: floors.ScanShape, dtype: torch.dtype, mode: str, contenders: list[Contender],
             cfg: Settings, timer: Timer, scan: str = "hss") -> tuple[list[dict], list[dict], list[dict]]:
    """Time every contender on one case. Returns (rows, errors, skipped): a contender that raises
    is an error, one that runs out of memory is skipped; either way the others go on."""
    device, grad, grouped = cfg.device, mode == "fwdbwd", scan == "gss"
    x, params = make_inputs(shape, dtype, device, cfg.seed, grouped)
    leaves = [x, *params]
    gout = torch.randn(x.shape, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device, dtype)
    input_bytes = sum(t.numel() * t.element_size() for t in leaves) + (gout.nbytes if grad else 0)
    for t in leaves:
        t.requires_grad_(grad)

    def clear_grads() -> None:
        for t in leaves:
            t.grad = None

    calls: dict[str, Call] = {}
    outputs: dict[str, Tensor] = {}
    first_ms: dict[str, float] = {}
    errors, skipped = [], []
    what = {"scan": scan, "shape": list(_dims(shape)), "dtype": _dname(dtype), "mode": mode}

    def fail(name: str, exc: BaseException) -> None:
        outputs.pop(name, None)
        if isinstance(exc, torch.OutOfMemoryError):
            skipped.append(dict(what, backend=name, reason="out of memory"))
        else:
            errors.append(dict(what, backend=name, error=f"{type(exc).__name__}: {exc}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"scan_bench: {name} failed on {scan} {_dims(shape)} {_dname(dtype)} {mode}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    for c in contenders:
        if grad:
            call: Call = (clear_grads, lambda c=c: c.run(x, params, grouped).backward(gout))
        else:
            call = (None, lambda c=c: _no_grad_run(c, x, params, grouped))
        try:  # a first call: does it run at all, its forward output for the error column, its time
            first_ms[c.name] = timer(lambda c=c, fn=call[1]: outputs.__setitem__(c.name, fn()), call[0])
            if grad:
                del outputs[c.name]
            if device.type == "cuda":  # the first call compiled (Triton) or loaded: time a second
                first_ms[c.name] = timer(call[1], call[0])
        except Exception as exc:  # noqa: BLE001 - reported; an error makes the run exit non-zero
            fail(c.name, exc)
            continue
        calls[c.name] = call
    failed: dict[str, BaseException] = {}
    times = interleaved(calls, timer, first_ms, cfg.warmup, cfg.repeats, cfg.min_rounds, cfg.budget_s,
                        cfg.slow_call_ms, failed) if calls else {}
    for name, exc in failed.items():
        fail(name, exc)
    kinds = {c.name: c.kind for c in contenders}
    authors = next((n for n in times if kinds[n] == "authors"), None)
    ref_name = next((n for n in outputs if kinds[n] == "reference"), authors if authors in outputs else None)
    nbytes = floors.floor_bytes(shape, mode, elem=torch.empty((), dtype=dtype).element_size(),
                                grouped=grouped)
    exps = floors.floor_exps(shape, mode, grouped=grouped)
    floor_mem = nbytes["total"] / cfg.bandwidth * 1e3
    floor_exp = exps / cfg.exp_rate * 1e3 if cfg.exp_rate else None
    floor = max(f for f in (floor_mem, floor_exp) if f is not None)
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        pre, fn = calls[name]
        if pre is not None:
            pre()
        try:
            peak = peak_memory_mb(fn, device, input_bytes)
        except Exception as exc:  # noqa: BLE001 - the timing stands; the peak is unknown
            print(f"scan_bench: peak memory of {name} not measured: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            peak = None
        err = (rel_err(outputs[name], outputs[ref_name])
               if ref_name and name in outputs and name != ref_name else None)
        rows.append({
            "backend": name, "kind": kinds[name], "scan": scan, "grouped": grouped,
            "shape": list(_dims(shape)), "k": shape.k, "n": shape.n, "r": shape.r, "method": cfg.method,
            "dtype": _dname(dtype), "mode": mode,
            "ms_median": med, "ms_min": min(ts), "samples": len(ts),
            "speedup_vs_authors": statistics.median(times[authors]) / med if authors else None,
            "floor_ms_memory": floor_mem, "floor_ms_exp": floor_exp, "frac_of_floor": med / floor,
            "floor_bytes": nbytes["total"], "floor_exps": exps,
            "achieved_gbs": nbytes["total"] / med / 1e6, "achieved_exp_per_s": exps / med * 1e3,
            "peak_mem_mb": peak, "max_rel_err": err, "err_vs": ref_name if err is not None else None,
            "gss_over_hss": None,
        })
    del x, params, leaves, gout, outputs, calls
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, errors, skipped


def _no_grad_run(c: Contender, x: Tensor, params: list[Tensor], grouped: bool) -> Tensor:
    with torch.no_grad():
        return c.run(x, params, grouped)


def _dims(s: floors.ScanShape) -> tuple[int, int, int, int]:
    return (s.b, s.d, s.h, s.w)


def _dname(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


# ---------------------------------------------------------------------------------------------
# Report: table and JSON
# ---------------------------------------------------------------------------------------------

COLUMNS = (  # (header, width, row -> text)
    ("backend", 24, lambda r: r["backend"]),
    ("scan", 4, lambda r: r["scan"]),
    ("B,D,HxW", 16, lambda r: "{},{},{}x{}".format(*r["shape"])),
    ("dtype", 5, lambda r: r["dtype"]),
    ("mode", 6, lambda r: r["mode"]),
    ("ms med", 10, lambda r: f"{r['ms_median']:.3f}"),
    ("ms min", 10, lambda r: f"{r['ms_min']:.3f}"),
    ("n", 4, lambda r: str(r["samples"])),
    ("x authors", 9, lambda r: "-" if r["speedup_vs_authors"] is None else f"{r['speedup_vs_authors']:.2f}"),
    ("GB/s", 8, lambda r: f"{r['achieved_gbs']:.3g}"),
    ("Gexp/s", 8, lambda r: f"{r['achieved_exp_per_s'] / 1e9:.3g}"),
    ("mem flr ms", 10, lambda r: f"{r['floor_ms_memory']:.4f}"),
    ("exp flr ms", 10, lambda r: "-" if r["floor_ms_exp"] is None else f"{r['floor_ms_exp']:.4f}"),
    ("x floor", 8, lambda r: f"{r['frac_of_floor']:.1f}"),
    ("peak MB", 8, lambda r: "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"),
    ("rel err", 8, lambda r: "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"),
    ("gss/hss", 7, lambda r: "-" if r.get("gss_over_hss") is None else f"{r['gss_over_hss']:.3f}"),
)


def format_row(row: dict | None) -> str:
    if row is None:
        return " ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w, _) in enumerate(COLUMNS))
    return " ".join(f"{f(row):>{w}}" if i else f"{f(row):<{w}}" for i, (_, w, f) in enumerate(COLUMNS))


def environment(device: torch.device) -> dict:
    """Device, versions, commit, date: the top of the JSON."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    try:  # the CPU kernels' instruction-set variant (issue 23), None without the extension
        from mambaad_kernels import cuda as ext

        cpu_isa = ext.cpu_isa()
    except (ValueError, RuntimeError):
        cpu_isa = None
    return {"device": device.type, "device_name": name, "cpu_isa": cpu_isa, "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def git_commit() -> str:
    """HEAD of the checkout (with ``+dirty`` when tracked files changed), or MAMBAAD_COMMIT."""
    if os.environ.get("MAMBAAD_COMMIT"):
        return os.environ["MAMBAAD_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - no git, or not a checkout (a copied tree)
        return "unknown"
    return head + ("+dirty" if dirty else "")


def validate(doc: dict) -> None:
    """Raise ValueError if the JSON document lacks a required key or has an inconsistent row."""
    missing = [k for k in REQUIRED_TOP if k not in doc]
    if missing:
        raise ValueError(f"scan_bench JSON: missing top-level keys {missing}")
    for i, row in enumerate(doc["rows"]):
        missing = [k for k in REQUIRED_ROW if k not in row]
        if missing:
            raise ValueError(f"scan_bench JSON: row {i} ({row.get('backend')}) misses {missing}")
        if (len(row["shape"]) != 4 or row["mode"] not in MODES or row["scan"] not in SCANS
                or not 0 < row["ms_min"] <= row["ms_median"] or row["samples"] < 1):
            raise ValueError(f"scan_bench JSON: row {i} is inconsistent: {row}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scan_bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available, else cpu)")
    p.add_argument("--backends", nargs="+", default=["auto"],
                   help="comma / space separated, from " + ", ".join(CONTENDERS) + "; 'auto' (default):"
                        " the authors' path, the reference, every fused backend available here, and"
                        " on a CPU the chunked PyTorch scan; 'all': everything, skipping what cannot run")
    p.add_argument("--shapes", nargs="+", default=["mambaad"],
                   help=f"presets {PRESETS} (mambaad: B 16 on a GPU, 1 on a CPU) or B,D,H,W")
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    p.add_argument("--mode", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--scan", nargs="+", default=list(SCANS), choices=SCANS,
                   help="hss (MambaAD's scan), gss (MMAD's grouped scan, grouped=True; needs D "
                        "divisible by K) or both (default), side by side")
    p.add_argument("--method", default="hilbert", choices=mk.METHODS)
    p.add_argument("--directions", type=int, default=8, choices=(1, 2, 4, 8), help="K")
    p.add_argument("--d-state", type=int, default=16, help="N")
    p.add_argument("--dt-rank", type=int, help="R (default ceil(D / 32), MambaAD's)")
    p.add_argument("--repeats", type=int, help="rounds at most (default 30 on a GPU, 5 on a CPU)")
    p.add_argument("--min-rounds", type=int,
                   help="rounds at least, whatever the budget (default 3 on a GPU, 1 on a CPU)")
    p.add_argument("--warmup", type=int,
                   help="calls before the recorded ones, >= 1, counting the first call; a slow first "
                        "call (--slow-call-s) ends the warm-up (default 3 on a GPU, 2 on a CPU)")
    p.add_argument("--budget-s", type=float,
                   help="about this many seconds of timed calls per shape and mode, shared by the "
                        "scans (--scan), beyond each contender's first calls (default 10 on a GPU, "
                        "4 on a CPU)")
    p.add_argument("--slow-call-s", type=float, default=1.0,
                   help="a first call (on a GPU the second, after compilation) at least this long is "
                        "recorded as a sample instead of being a warm-up (default 1; 0: never)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--bandwidth-gbs", type=float,
                   help="memory bandwidth for the floor (default: measured with a large copy)")
    p.add_argument("--exp-rate", type=float,
                   help="exp rate for the floor in G/s (default: the GPU's SFU rate, or measured on a CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="output file, '-' for none (default: runs/scan_bench_<device>.json in "
                                  "the repository, a git-ignored folder)")
    return p.parse_args(argv)


def contender_names(spec: list[str], device: torch.device) -> tuple[list[str], bool]:
    """The contender names asked for, and whether they were named (errors) or defaulted (skips)."""
    names = [n for item in spec for n in item.split(",") if n]
    if names in (["auto"], ["all"]):
        chunked = ["chunked"] if names == ["all"] or device.type == "cpu" else []
        return ["authors", "reference", *chunked, *FUSED], False
    bad = [n for n in names if n not in CONTENDERS]
    if bad:
        raise SystemExit(f"scan_bench: unknown backends {bad}; expected {CONTENDERS}, 'auto' or 'all'")
    return list(dict.fromkeys(names)), True


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 if a contender failed (the JSON lists the errors)."""
    return 1 if run(sys.argv[1:] if argv is None else argv)["errors"] else 0


def run(argv: list[str]) -> dict:
    """Parse ``argv``, time every case, print the table, write the JSON; returns the JSON document."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("scan_bench: --device cuda but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    try:
        shapes = parse_shapes(args.shapes, device)
    except ValueError as exc:
        raise SystemExit(f"scan_bench: {exc}") from None
    names, explicit = contender_names(args.backends, device)
    plan = {d: build_contenders(names, explicit, device, args.method, args.directions, DTYPES[d])
            for d in args.dtype}  # before anything slow: a named backend that cannot run fails here
    t_start = time.perf_counter()
    if args.bandwidth_gbs:
        bandwidth, bw_source = args.bandwidth_gbs * 1e9, "given (--bandwidth-gbs)"
    else:
        bandwidth, bw_source = floors.measure_copy_bandwidth(device), "measured: large tensor copy"
    if args.exp_rate:
        exp_rate, exp_source = args.exp_rate * 1e9, "given (--exp-rate)"
    elif gpu:
        exp_rate, exp_source = floors.gpu_exp_rate(device)
    else:
        exp_rate = floors.measure_cpu_exp_rate()
        exp_source = (f"measured: torch.exp on an L2-resident float32 tensor, "
                      f"{torch.get_num_threads()} threads")
    slow_s = args.slow_call_s if args.slow_call_s > 0 else None
    scans = list(dict.fromkeys(args.scan))
    budget_s = args.budget_s if args.budget_s is not None else (10.0 if gpu else 4.0)
    cfg = Settings(device, args.method, args.repeats or (30 if gpu else 5),
                   max(1, args.min_rounds if args.min_rounds is not None else (3 if gpu else 1)),
                   max(1, args.warmup if args.warmup is not None else (3 if gpu else 2)),
                   budget_s / len(scans), args.seed, bandwidth, exp_rate,
                   None if slow_s is None else slow_s * 1e3)
    doc = environment(device)
    doc.update({
        "command": shlex.join(["python", "benchmarks/scan_bench.py", *argv]),
        "bandwidth_gbs": bandwidth / 1e9, "bandwidth_source": bw_source,
        "exp_rate_per_s": exp_rate, "exp_rate_source": exp_source,
        "authors_scan": authors_path.scan_impl(device).source,
        "floor_model": "bytes: x once, x_dbl written + read, out once, params (+ the backward's reads "
                       "and writes); exps: B K D L N (x2 with backward); see benchmarks/floors.py",
        "settings": {"repeats": cfg.repeats, "min_rounds": cfg.min_rounds, "warmup": cfg.warmup,
                     "budget_s_per_shape_mode": budget_s, "scans": scans, "slow_call_s": slow_s,
                     "seed": cfg.seed,
                     "method": args.method, "directions": args.directions, "d_state": args.d_state},
        "rows": [], "skipped": [], "errors": [],
    })
    print(f"# {doc['device_name']} ({device}, {doc['threads']} threads) torch {doc['torch']} "
          f"triton {doc['triton']} cuda {doc['cuda']} commit {doc['commit']} cpu kernels {doc['cpu_isa']}")
    print(f"# bandwidth {bandwidth / 1e9:.1f} GB/s ({bw_source}); exp rate "
          f"{exp_rate / 1e9 if exp_rate else float('nan'):.2f} G/s ({exp_source})")
    print(f"# authors' scan: {doc['authors_scan']}")
    path = None if args.json == "-" else Path(args.json or REPO / "runs" / f"scan_bench_{device.type}.json")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    timer = Timer(device)
    header_done = False
    for dname in args.dtype:
        dtype = DTYPES[dname]
        contenders, skipped = plan[dname]
        doc["skipped"] += [dict(s, dtype=dname) for s in skipped]
        for b, d, h, w in shapes:
            shape = floors.ScanShape(b, d, h, w, k=args.directions, n=args.d_state,
                                     r=args.dt_rank or dt_rank(d))
            for mode in args.mode:
                case_rows: dict[str, list[dict]] = {}
                for scan in scans:
                    what = {"scan": scan, "shape": [b, d, h, w], "dtype": dname, "mode": mode}
                    if scan == "gss" and d % args.directions:
                        doc["skipped"].append(dict(what, backend="*", reason=f"GSS needs D divisible "
                                                                            f"by K = {args.directions}"))
                        continue
                    try:
                        rows, errors, oom = run_case(shape, dtype, mode, contenders, cfg, timer, scan)
                    except Exception as exc:  # noqa: BLE001 - e.g. the inputs do not fit: next case
                        print(f"scan_bench: case {what} failed: {type(exc).__name__}: {exc}",
                              file=sys.stderr, flush=True)
                        rows, errors, oom = [], [dict(what, backend="*", error=f"{type(exc).__name__}: "
                                                                               f"{exc}")], []
                    case_rows[scan] = rows
                    if scan == "gss":  # beside the HSS time of the same contender
                        hss = {r["backend"]: r["ms_median"] for r in case_rows.get("hss", [])}
                        for row in rows:
                            if row["backend"] in hss:
                                row["gss_over_hss"] = row["ms_median"] / hss[row["backend"]]
                    doc["skipped"] += oom
                    if not header_done:
                        print(format_row(None))
                        header_done = True
                    for row in rows:
                        print(format_row(row), flush=True)
                    doc["rows"] += rows
                    doc["errors"] += errors
                    write_json(doc, path, t_start, complete=False)  # partial results survive an interrupt
    write_json(doc, path, t_start, complete=True)
    if slow_s is not None:
        print(f"# n = samples: a contender whose first call took >= {slow_s:g} s is timed from fewer "
              f"calls (its first call recorded, rounds cut to the budget of {budget_s:g} s per shape "
              f"and mode, at least {cfg.min_rounds}); gss/hss = GSS time / HSS time, same contender")
    for e in doc["errors"]:
        print(f"# ERROR {e['backend']} {e['scan']} {e['shape']} {e['dtype']} {e['mode']}: {e['error']}")
    for sk in doc["skipped"]:
        where = " ".join(str(sk[k]) for k in ("scan", "shape", "dtype", "mode") if k in sk)
        print(f"# skipped {sk['backend']} ({where}): {sk['reason']}")
    print(f"# {len(doc['rows'])} rows in {doc['total_s']:.0f} s" + (f"; wrote {path}" if path else ""))
    return doc


def write_json(doc: dict, path: Path | None, t_start: float, complete: bool) -> None:
    doc["total_s"], doc["complete"] = time.perf_counter() - t_start, complete
    validate(doc)
    if path is not None:
        path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
