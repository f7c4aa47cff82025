"""How fast are the CPU kernels alone, per instruction set, against the exp floor at the MambaAD stages?

Contenders, interleaved round by round in one process: a torch.exp loop over as many elements as the
shape has exponentials (the exp floor, measured), the extension's scan_fwd / scan_bwd alone
("kern_*"), the whole op mk.hss_scan(backend="cpu") with the x_proj GEMM ("op_*"), the chunked
PyTorch scan (benchmarks/chunked_scan.py) and one call of the sequential reference.
ISAS=avx512,avx2 times the kernels of each named instruction-set variant (issue 23) side by side
("kern_fwd@avx2", ...; the op rows use the first); default: the variant chosen for this CPU.

usage: THREADS=2 ROUNDS=7 REF=1 CHUNK=1 [SHAPES=0,3] [B=1] [ISAS=avx2,baseline] \
    python benchmarks/dev/cpu_kernel_bench.py
"""
import math, os, statistics, sys, time
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
sys.path[:0] = [os.path.dirname(HERE), HERE]
import torch
import mambaad_kernels as mk
from mambaad_kernels import cuda as ext, fused, reference
from floors import measure_cpu_exp_rate
from chunked_scan import chunked_hss_scan
from tests.parity import make_params, make_x

threads = int(os.environ.get("THREADS", "2"))
torch.set_num_threads(threads)
rounds = int(os.environ.get("ROUNDS", "7"))
do_ref = os.environ.get("REF", "1") == "1"
SHAPES = [(128, 64, 64), (256, 32, 32), (512, 16, 16), (1024, 8, 8)]
if os.environ.get("SHAPES"):
    SHAPES = [SHAPES[int(i)] for i in os.environ["SHAPES"].split(",")]
B, N, K = int(os.environ.get("B", "1")), 16, 8

CPU = {}
def timeit(fn, n, name=None):
    ts = []
    for _ in range(n):
        c0 = time.process_time(); t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        CPU.setdefault(name, []).append((time.process_time() - c0) / threads)
    return ts

def cpu_model():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()

ISAS = [s for s in os.environ.get("ISAS", "").split(",") if s] or [ext.cpu_isa()]
ext.set_cpu_isa(ISAS[0])
print(f"{cpu_model()}  threads {threads}  load {os.getloadavg()}  cpu kernels {', '.join(ISAS)}")
rate = measure_cpu_exp_rate()
print(f"exp rate {rate/1e9:.2f} G/s")
for d, h, w in SHAPES:
    L = h * w; r = math.ceil(d / 32)
    gen = torch.Generator().manual_seed(0)
    x = make_x(B, d, h, w, "cpu", torch.float32, generator=gen)
    params = make_params(d, N, r, K, False, "cpu", torch.float32, gen)
    xpw, dt_w, dt_b, A_logs, Ds = params
    paths = mk.scan_paths(h, w, "hilbert", K, dtype=torch.int32)
    x3 = x.flatten(2)
    x_dbl = fused.project(x3, xpw, False)
    out, states = ext.scan_fwd(x3, x_dbl, dt_w, dt_b, A_logs, Ds, paths, False, True)
    dout = torch.randn_like(out)
    ex = torch.rand(1 << 18) * -8; eo = torch.empty_like(ex); nrep = max(1, B * K * d * L * N // (1 << 18))
    def expf():
        for _ in range(nrep): torch.exp(ex, out=eo)
    def on(isa, fn):  # run fn with the kernels of variant isa
        def run():
            ext.set_cpu_isa(isa)
            return fn()
        return run
    kf = lambda: ext.scan_fwd(x3, x_dbl, dt_w, dt_b, A_logs, Ds, paths, False, True)
    kb = lambda: ext.scan_bwd(dout, x3, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, False, True)
    def kfb():
        o, s = kf(); ext.scan_bwd(dout, x3, x_dbl, s, dt_w, dt_b, A_logs, Ds, paths, False, True)
    xg = x.clone().requires_grad_(); pg = [p.clone().requires_grad_() for p in params]
    def opf():
        with torch.no_grad():
            mk.hss_scan(x, *params, method="hilbert", directions=K, backend="cpu")
    def opfb():
        o = mk.hss_scan(xg, *pg, method="hilbert", directions=K, backend="cpu")
        torch.autograd.grad(o, [xg, *pg], dout.view_as(o))
    def chf():
        with torch.no_grad():
            chunked_hss_scan(x, *params, method="hilbert", directions=K)
    def chfb():
        o = chunked_hss_scan(xg, *pg, method="hilbert", directions=K)
        torch.autograd.grad(o, [xg, *pg], dout.view_as(o))
    first = ISAS[0]
    cont = dict(exp_floor_ref=expf, kern_fwd=on(first, kf), kern_bwd=on(first, kb), kern_fwdbwd=on(first, kfb),
                op_fwd=on(first, opf), op_fwdbwd=on(first, opfb))
    for isa in ISAS[1:]:
        cont[f"kern_fwd@{isa}"], cont[f"kern_bwd@{isa}"] = on(isa, kf), on(isa, kb)
    if os.environ.get("CHUNK", "1") == "1":
        cont["chunk_fwd"] = chf
    if os.environ.get("CHUNK_BWD") == "1":
        cont["chunk_fwdbwd"] = chfb
    for f in cont.values():
        f()
    res = {k: [] for k in cont}
    CPU.clear()  # CPU times per shape
    for rd in range(rounds):
        names = list(cont)
        names = names[rd % len(names):] + names[:rd % len(names)]
        for nm in names:
            res[nm] += timeit(cont[nm], 1, nm)
    if do_ref:
        def rf():
            with torch.no_grad():
                reference.hss_scan(x, *params, method="hilbert", directions=K)
        res["ref_fwd"] = timeit(rf, 1)
    floor = B * K * d * L * N / rate
    print(f"\nB {B} D {d} {h}x{w} L {L} R {r}: exp floor fwd {floor*1e3:.2f} ms, fwd+bwd {2*floor*1e3:.2f} ms")
    for nm, ts in res.items():
        med, mn = statistics.median(ts), min(ts)
        cm = min(CPU.get(nm, [math.nan]))
        print(f"  {nm:13s} median {med*1e3:8.2f} ms  min {mn*1e3:8.2f} ms  median/fwd-floor {med/floor:6.2f}  min/fwd-floor {mn/floor:6.2f}  cpu/thr min {cm*1e3:8.2f} ms ({cm/floor:5.2f}x)")
    if "kern_fwd" in res and "kern_bwd" in res:  # issue 20's ratio, same instruction set, same run
        mf, mb = statistics.median(res["kern_fwd"]), statistics.median(res["kern_bwd"])
        cf, cb = min(CPU["kern_fwd"]), min(CPU["kern_bwd"])
        print(f"  kern_bwd / kern_fwd ({first}): median {mb/mf:5.2f}  cpu/thr min {cb/cf:5.2f}")
        for isa in ISAS[1:]:
            f2, b2 = statistics.median(res[f"kern_fwd@{isa}"]), statistics.median(res[f"kern_bwd@{isa}"])
            print(f"  {isa} / {first}: fwd median {f2/mf:5.2f}  bwd median {b2/mb:5.2f}; "
                  f"{isa} fwd / exp floor {f2/floor:5.2f}")
ext.set_cpu_isa("")
print(f"load {os.getloadavg()}")
