"""VMamba on the fused scan: state size N = 1 against N = 16, and a vmamba_tiny_s1l8 model step.

Two measurements, each interleaving its contenders round by round in one process (timings on a
shared machine are noisy: compare the ratios):

``nstate``: the op ``mk.hss_scan(method="sweep", directions=4)`` (x_proj GEMM + fused scan) at the
four stage shapes of vmamba_tiny_s1l8 at 224 px (D = 96 @ 56 x 56, 192 @ 28, 384 @ 14, 768 @ 7),
forward and forward + backward, with N = 1 (VMamba's released v2 models) and N = 16, each timed by
its fastest call (process CPU time by default). A step of one
channel along one direction costs about ``a + b N``; from the two N the fit gives ``a``, the per-step
cost that does not depend on N (gather, delta = softplus(W_dt dt + b), the D skip, the merge) and
``b``, the cost per state.

``scan``: SS2D's scan alone at those stage shapes, N = 1, ours against the torch-path baseline below.

``model``: vmamba_tiny_s1l8 (random weights, channel first) forward (eval, no grad) and training
step (forward, cross-entropy, backward) on our backend against a **plain-torch baseline written
here from VMamba's documented torch path** (not VMamba's code): CrossScan by transposes and flips
into ``(B, 4, D, L)``, the einsum projections, a step-by-step selective scan (VMamba's
``selective_scan_torch`` algorithm, its per-step slices taken by unbind), CrossMerge by the inverse
flips and transposes. On a CUDA device the baseline's scan is mamba_ssm's ``selective_scan_fn``
when it is installed (the path VMamba's authors run; benchmarks/authors_path.py finds it), labelled
by what ran. The CUDA path has not been run yet (no GPU was lent when this was written).

usage: python benchmarks/vmamba_bench.py nstate [--threads 1] [--rounds 5] [--batch 1] [--ns 1,2,4,8,16]
       python benchmarks/vmamba_bench.py scan [--threads 1] [--rounds 5] [--batch 1]
       python benchmarks/vmamba_bench.py model [--device cpu] [--batch 1] [--size 224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import mambaad_kernels as mk  # noqa: E402
from mambaad_kernels import vmamba as vm  # noqa: E402

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]  # vmamba_tiny_s1l8 at 224: (D, H = W)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(fns: dict, rounds: int, device: torch.device,
               cpu_times: dict | None = None) -> dict[str, list[float]]:
    """Wall seconds per call of each fn, one call of each per round, after one warm-up call each;
    the process CPU seconds of each call go to ``cpu_times`` when given."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - c0)
    return times


# ---------------------------------------------------------------------------------------------
# nstate: N = 1 beside N = 16
# ---------------------------------------------------------------------------------------------


def scan_params(d: int, n: int, r: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Random sweep-K=4 scan parameters at trained-model scales."""
    return [torch.randn(4, r + 2 * n, d, generator=gen) * d ** -0.5,
            torch.randn(4, d, r, generator=gen) * r ** -0.5,
            torch.randn(4, d, generator=gen) - 2.0,
            torch.log(torch.rand(4 * d, n, generator=gen) * 4 + 0.25),
            torch.randn(4 * d, generator=gen)]


def bench_nstate(args: argparse.Namespace) -> list[dict]:
    ns = sorted({1, 16, *args.ns})
    rows = []
    dev = torch.device("cpu")
    print("ns per channel-direction step (fastest call; the op: x_proj GEMM + fused scan)")
    for d, hw in STAGES:
        gen = torch.Generator().manual_seed(0)
        r = math.ceil(d / 16)
        x = torch.randn(args.batch, d, hw, hw, generator=gen)
        fns = {}
        for n in ns:
            params = [p.requires_grad_() for p in scan_params(d, n, r, gen)]
            xg = x.clone().requires_grad_()
            dout = torch.randn_like(x)

            def fwd(params=params):
                with torch.no_grad():
                    mk.hss_scan(x, *params, method="sweep", directions=4, backend="cpu")

            def fwd_bwd(params=params, xg=xg, dout=dout):
                out = mk.hss_scan(xg, *params, method="sweep", directions=4, backend="cpu")
                torch.autograd.backward(out, dout)

            fns[f"fwd N={n}"], fns[f"fwd+bwd N={n}"] = fwd, fwd_bwd
        cpu = {}
        wall = interleave(fns, args.rounds, dev, cpu)
        # the process CPU time of a call: on a shared machine, less disturbed than its wall time
        times = cpu if args.clock == "cpu" else wall
        steps = args.batch * 4 * d * hw * hw  # channel-direction steps
        row = {"D": d, "H": hw, "W": hw, "B": args.batch, "K": 4, "clock": args.clock, "all_s": times}
        for what in ("fwd", "fwd+bwd"):
            best = {n: min(times[f"{what} N={n}"]) for n in ns}
            a = (16 * best[1] - best[16]) / 15 / steps  # the fit t = steps (a + b N) through N = 1, 16
            b = (best[16] - best[1]) / 15 / steps
            row[what] = {"ms": {n: 1e3 * t for n, t in best.items()},
                         "ns_per_step": {n: 1e9 * t / steps for n, t in best.items()},
                         "ratio_N16_over_N1": best[16] / best[1],
                         "ns_per_step_fixed": 1e9 * a, "ns_per_step_per_state": 1e9 * b}
            per = "  ".join(f"N={n}: {1e9 * t / steps:5.2f}" for n, t in best.items())
            print(f"D={d:4d} {hw:2d}x{hw:<2d} {what:7s} | {per} | N=16/N=1 x{best[16] / best[1]:.2f} | "
                  f"fit a={1e9 * a:5.2f} ns + b={1e9 * b:4.2f} ns x N", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# model: vmamba_tiny_s1l8, ours against VMamba's documented torch path
# ---------------------------------------------------------------------------------------------


def loop_selective_scan(u, delta, A, B, C, D, delta_bias):  # noqa: N803 - the maths' names
    """VMamba's ``selective_scan_torch`` algorithm: u, delta ``(b, k d, l)``; A ``(k d, n)``;
    B, C ``(b, k, n, l)``; D, delta_bias ``(k d,)``; fp32 state, a Python loop over l."""
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    delta = F.softplus(delta + delta_bias[:, None])  # (b, kd, l)
    bb = B[:, :, None].expand(b, k, kd // k, n, l).reshape(b, kd, n, l)
    cc = C[:, :, None].expand(b, k, kd // k, n, l).reshape(b, kd, n, l)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))  # (b, kd, l, n)
    delta_bu = torch.einsum("bdl,bdnl,bdl->bdln", delta, bb, u)  # (b, kd, l, n)
    h = u.new_zeros(b, kd, n)
    ys = []
    # per-step slices by unbind: indexing [:, :, i] as VMamba's code does gives the same forward, but
    # its backward writes a zero-filled full-size gradient per step (quadratic in L)
    for da, dbu, c in zip(delta_a.unbind(2), delta_bu.unbind(2), cc.unbind(3)):
        h = da * h + dbu
        ys.append(torch.einsum("bdn,bdn->bd", h, c))
    return torch.stack(ys, dim=2) + u * D[:, None]


def torch_path_scan(self, x: torch.Tensor, scan_fn=loop_selective_scan) -> torch.Tensor:
    """SS2D.scan as VMamba's torch path runs it (cross2d only): ``(B, D, H, W) -> (B, D, H, W)``."""
    if self.forward_type.scan != "cross2d":
        raise ValueError("the torch-path baseline covers the cross2d forward types")
    b, d, h, w = x.shape
    n, r, l = self.d_state, self.dt_rank, h * w
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (b, 4, d, l): CrossScan
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
    ys = scan_fn(xs.reshape(b, -1, l).float(), dts.reshape(b, -1, l).float(), -torch.exp(self.A_logs.float()),
                 bs.float().contiguous(), cs.float().contiguous(), self.Ds.float(),
                 self.dt_projs_bias.float().reshape(-1)).view(b, 4, d, l)
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)  # CrossMerge
    y = y[:, 0] + y[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, l)
    return y.view(b, d, h, w).to(x.dtype)


def use_torch_path(model: torch.nn.Module, scan_fn) -> None:
    for m in model.modules():
        if isinstance(m, vm.SS2D):
            m.scan = types.MethodType(lambda self, x: torch_path_scan(self, x, scan_fn), m)


def bench_model(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = args.backend or ("cpu" if device.type == "cpu" else None)
    torch.manual_seed(0)
    ours = vm.vmamba_tiny_s1l8(backend=backend).to(device)
    base = vm.vmamba_tiny_s1l8().to(device)
    base.load_state_dict(ours.state_dict())
    if device.type == "cuda":
        from authors_path import scan_impl

        impl = scan_impl(device)
        base_label = f"VMamba torch path + {impl.label} scan ({impl.source})"
        use_torch_path(base, impl.fn)
    else:
        base_label = "VMamba torch path (plain-torch transcription, loop scan)"
        use_torch_path(base, loop_selective_scan)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    with torch.no_grad():
        ours.eval(), base.eval()
        err = ((ours(x) - base(x)).norm() / base(x).norm()).item()
    print(f"logits rel diff ours vs baseline (eval): {err:.2e}")

    def fwd(m):
        def run():
            m.eval()
            with torch.no_grad():
                m(x)
        return run

    def train(m):
        def run():
            m.train()
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), target).backward()
        return run

    label = f"ours ({mk.resolve_backend(backend, device)} backend)"
    cpu = {}
    times = interleave({f"fwd {label}": fwd(ours), "fwd baseline": fwd(base),
                        f"train {label}": train(ours), "train baseline": train(base)}, args.rounds, device,
                       cpu)
    rows = []
    for what in ("fwd", "train"):
        mine, theirs = f"{what} {label}", f"{what} baseline"
        t_ours, t_base = statistics.median(times[mine]), statistics.median(times[theirs])
        c_ours, c_base = statistics.median(cpu[mine]), statistics.median(cpu[theirs])
        rows.append({"what": what, "ours": label, "baseline": base_label, "ms_ours": 1e3 * t_ours,
                     "ms_baseline": 1e3 * t_base, "speedup": t_base / t_ours,
                     "cpu_ms_ours": 1e3 * c_ours, "cpu_ms_baseline": 1e3 * c_base,
                     "cpu_speedup": c_base / c_ours,
                     "all_ms_ours": [1e3 * t for t in times[mine]],
                     "all_ms_baseline": [1e3 * t for t in times[theirs]]})
        print(f"{what:5s} B={args.batch} {args.size}px median wall (process CPU) | {label} "
              f"{1e3 * t_ours:8.1f} "
              f"({1e3 * c_ours:8.1f}) ms | {base_label} {1e3 * t_base:8.1f} ({1e3 * c_base:8.1f}) ms | "
              f"x{t_base / t_ours:.1f} (x{c_base / c_ours:.1f})", flush=True)
    return [{"logits_rel_diff": err, "device": str(device)}, *rows]


def bench_scan(args: argparse.Namespace) -> list[dict]:
    """SS2D's scan alone (N = 1, vmamba_tiny_s1l8's stage shapes): ours against the torch path."""
    rows = []
    dev = torch.device("cpu")
    for d, hw in STAGES:
        torch.manual_seed(0)
        m = vm.SS2D(d_model=d, d_state=1, ssm_ratio=1.0, forward_type="v05_noz", channel_first=True,
                    backend="cpu")
        x = torch.randn(args.batch, d, hw, hw, requires_grad=True)
        dout = torch.randn_like(x)

        def run(fn, grad):
            def call():
                if grad:
                    torch.autograd.backward(fn(x), dout)
                else:
                    with torch.no_grad():
                        fn(x)
            return call

        ours, base = m.scan, (lambda t: torch_path_scan(m, t))
        cpu = {}
        interleave({"fwd ours": run(ours, False), "fwd base": run(base, False),
                    "fwd+bwd ours": run(ours, True), "fwd+bwd base": run(base, True)}, args.rounds, dev, cpu)
        row = {"D": d, "H": hw, "W": hw, "B": args.batch, "N": 1}
        for what in ("fwd", "fwd+bwd"):
            t_o, t_b = min(cpu[f"{what} ours"]), min(cpu[f"{what} base"])
            row[what] = {"cpu_ms_ours": 1e3 * t_o, "cpu_ms_baseline": 1e3 * t_b, "speedup": t_b / t_o}
            print(f"D={d:4d} {hw:2d}x{hw:<2d} {what:7s} | ours {1e3 * t_o:8.2f} ms | torch path "
                  f"{1e3 * t_b:8.2f} ms | x{t_b / t_o:.1f}  (process CPU, fastest call)", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("nstate", "scan", "model"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224, help="image side for 'model' (default 224)")
    p.add_argument("--device", help="for 'model': cpu or cuda (default: cuda if available)")
    p.add_argument("--backend", help="our scan backend for 'model' (default: cpu on the CPU, else the best)")
    p.add_argument("--ns", type=lambda v: [int(i) for i in v.split(",")], default=[1, 2, 4, 8, 16],
                   help="for 'nstate': state sizes (1 and 16 always; default 1,2,4,8,16)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="for 'nstate': the fastest call by process CPU time (default) or wall time")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}  load {os.getloadavg()}  torch {torch.__version__}", flush=True)
    rows = {"nstate": bench_nstate, "scan": bench_scan, "model": bench_model}[args.part](args)
    if args.json:
        out = {"part": args.part, "args": vars(args), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
