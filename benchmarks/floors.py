"""The two physical floors of one HSS scan call, and the device rates they are divided by.

A call cannot take less time than the larger of two bounds: the bytes it must move divided by the
memory bandwidth, and the exponentials it must evaluate divided by the exp rate. Shape letters:
B batch, D channels (d_inner), L = H W positions, K directions, N state size, R dt rank,
C = R + 2N rows of the x_proj projection, ``e`` the element size of x's dtype, ``p`` that of the
parameters (4: float32).

**Bytes** (:func:`floor_bytes`), the minimum traffic to and from device memory under the kernel
contract of :mod:`mambaad_kernels.fused` (the x_proj GEMM runs outside the scan kernel):

forward
    - x read once: ``B D L e``. Assumption: the K direction passes over one (batch, channel block)
      and the projection share that one read through the caches (the slice of one block is small:
      L x 16 channels x 4 B = 256 KiB at L = 4096); a kernel that re-reads x from DRAM per
      direction moves up to K + 1 times this.
    - the projection x_dbl ``(B, K, C, L)`` written once (by the GEMM) and read once (by the scan):
      ``2 B K C L e``.
    - the output written once: ``B D L e`` (the K directions merged on chip or in L2, never a
      ``(B, K, D, L)`` intermediate in DRAM).
    - the parameters read once: ``(K C D + K D R + 2 K D + K D N) p``.
forward + backward: the forward, plus
    - dout read, x read again, x_dbl read again: ``(2 B D L + B K C L) e``;
    - d x_dbl written (float32, by the scan) and read (by the two GEMMs): ``2 B K C L 4``;
    - dx written: ``B D L e``; the parameter gradients written: the parameter bytes again (float32).
    Saved state checkpoints are design-dependent and not counted (a kernel may recompute them).

**GSS** (``grouped=True``, MMAD's grouped scan, :func:`mambaad_kernels.hss_scan` with
``grouped=True``): direction k scans only channel group k (D / K channels). The terms above keep
their form with the parameters of one direction per group, ``(C D + D R + 2 D + D N) p`` (no factor
K), and x_dbl is still ``(B, K, C, L)`` (each group projects its own D / K channels to C rows): so
the bytes barely change, while the exponentials drop K-fold to ``B D L N`` (``2 B D L N`` with the
backward). The output is each group's own channels, no sum over directions.

**Exponentials** (:func:`floor_exps`): the decay ``exp(delta A)`` of every (b, k, d, l, n):
``B K D L N`` in the forward. The backward needs every decay again and cannot have stored them
(the saved activations are O(B K D L), the decays are N times more), so forward + backward is
``2 B K D L N``. The softplus (an exp and a log per (b, k, d, l), 1/N of the above) is left out, so
the floor stays a lower bound.

**Rates**:

- memory bandwidth: measured by :func:`measure_copy_bandwidth`, a large device-to-device copy
  (``dst.copy_(src)``, 2 bytes moved per byte copied, best of several); the script can take a fixed
  figure instead (``--bandwidth-gbs``). H100 SXM (HBM3, 3.35 TB/s peak): a large copy measures
  about 3.0 TB/s, the figure the issues' H100 targets use (``--bandwidth-gbs 3000``).
- exp rate on a GPU (:func:`gpu_exp_rate`): the special function units evaluate ``ex2`` at
  16 per clock per SM on compute capability 5.x to 9.x (CUDA C++ Programming Guide, "Arithmetic
  Instructions" throughput table: 32-bit base-2 exponential), ``exp(x) = ex2(x log2 e)`` (the
  multiply runs on the FMA pipe). Rate = 16 x SMs x the SM clock (the peak clock the device
  reports): on an H100 SXM, 16 x 132 x 1.98 GHz = 4.18 T exp/s.
- exp rate on a CPU (:func:`measure_cpu_exp_rate`): the measured ``torch.exp`` rate on a float32
  tensor that stays in L2, for the current torch thread count T: the best of many calls, or T
  times the best single-thread call if that is more (robust on a shared machine). A fused kernel with a faster
  vectorised exponential can beat this "floor"; it is the rate of the exponential torch has.
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass

import torch

MUFU_EX2_PER_CLK_PER_SM = 16  # compute capability 5.x .. 9.x


@dataclass(frozen=True)
class ScanShape:
    """One HSS scan call: x ``(B, D, H, W)``, K directions, state N, dt rank R."""

    b: int
    d: int
    h: int
    w: int
    k: int = 8
    n: int = 16
    r: int = 4

    @property
    def l(self) -> int:  # noqa: E743 - the maths' letter
        return self.h * self.w

    @property
    def c(self) -> int:
        return self.r + 2 * self.n


def param_elems(s: ScanShape, grouped: bool = False) -> int:
    """x_proj_weight + dt_projs_weight + dt_projs_bias + A_logs + Ds elements (HSS: K D channels
    of parameters, GSS: D)."""
    kd = s.d if grouped else s.k * s.d
    return kd * s.c + kd * s.r + kd + kd * s.n + kd


def floor_bytes(s: ScanShape, mode: str, elem: int = 4, param_elem: int = 4,
                grouped: bool = False) -> dict[str, int]:
    """The minimum bytes one call moves, term by term (see the module docstring), and the total.

    Args:
        s: the shape.
        mode: ``"fwd"`` or ``"fwdbwd"``.
        elem: bytes per element of x (and of x_dbl, out, dout, dx).
        param_elem: bytes per parameter element.
        grouped: GSS instead of HSS (fewer parameters, the same activations).

    Returns:
        ``{term: bytes, ..., "total": bytes}``.
    """
    bdl, bkcl = s.b * s.d * s.l, s.b * s.k * s.c * s.l
    terms = {
        "x": bdl * elem,
        "x_dbl": 2 * bkcl * elem,
        "out": bdl * elem,
        "params": param_elems(s, grouped) * param_elem,
    }
    if mode == "fwdbwd":
        terms.update({
            "bwd_reads": (2 * bdl + bkcl) * elem,
            "dx_dbl": 2 * bkcl * 4,
            "dx": bdl * elem,
            "param_grads": param_elems(s, grouped) * 4,
        })
    elif mode != "fwd":
        raise ValueError(f"mode must be 'fwd' or 'fwdbwd', got {mode!r}")
    terms["total"] = sum(terms.values())
    return terms


def floor_exps(s: ScanShape, mode: str, grouped: bool = False) -> int:
    """``B K D L N`` decays for the forward (GSS: ``B D L N``), twice that for forward + backward."""
    if mode not in ("fwd", "fwdbwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwdbwd', got {mode!r}")
    return s.b * (1 if grouped else s.k) * s.d * s.l * s.n * (2 if mode == "fwdbwd" else 1)


# ---------------------------------------------------------------------------------------------
# Device rates
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_copy_bandwidth(device: torch.device | str, nbytes: int | None = None,
                           repeats: int = 10) -> float:
    """Copy bandwidth in bytes/s: the best of ``repeats`` copies of an ``nbytes`` float32 buffer.

    Counts read + write (2 x nbytes per copy). Defaults: 1 GiB on a GPU, 256 MiB on a CPU (both far
    beyond the last-level cache).
    """
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first-touch page faults, allocator
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def _best_exp_rate(x: torch.Tensor, out: torch.Tensor, repeats: int) -> float:
    for _ in range(10):
        torch.exp(x, out=out)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.exp(x, out=out)
        best = min(best, time.perf_counter() - t0)
    return x.numel() / best


def measure_cpu_exp_rate(numel: int = 1 << 18, repeats: int = 200) -> float:
    """``torch.exp`` float32 elements per second on an L2-resident tensor, for all torch threads.

    ``numel`` defaults to 256 Ki elements (1 MiB in, 1 MiB out: with two threads each works on
    half, inside one core's L2 on common x86 parts), large enough for torch to use every thread.
    The rate is the larger of the fastest of ``repeats`` calls with the current thread count and T
    times the fastest single-thread call (T threads): exp is embarrassingly parallel, and on a
    shared machine a multi-threaded call mostly measures waiting for a thread the OS descheduled
    (its median can be 100x lower than its best), which is no floor.
    """
    x = torch.rand(numel, dtype=torch.float32) * -8.0  # decays: exp of negative arguments
    out = torch.empty_like(x)
    threads = torch.get_num_threads()
    rate = _best_exp_rate(x, out, repeats)
    if threads > 1:
        try:
            torch.set_num_threads(1)
            rate = max(rate, threads * _best_exp_rate(x, out, repeats))
        finally:
            torch.set_num_threads(threads)
    return rate


def _nvidia_smi_max_sm_clock_hz(index: int) -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(index), "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip()
        return float(out.splitlines()[0]) * 1e6
    except Exception:  # noqa: BLE001 - no nvidia-smi, or an odd answer
        return None


def gpu_sm_clock_hz(device: torch.device | str) -> tuple[float | None, str]:
    """The peak SM clock in Hz and where it came from (torch, triton's driver, nvidia-smi)."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()

    def plausible(hz: float | None) -> bool:  # a unit mix-up shows as a clock far outside this
        return hz is not None and 3e8 <= hz <= 4e9

    khz = getattr(torch.cuda.get_device_properties(index), "clock_rate", 0) or 0  # cudaDeviceProp kHz
    if plausible(khz * 1e3):
        return khz * 1e3, "torch.cuda.get_device_properties().clock_rate"
    try:
        from triton.runtime import driver

        khz = driver.active.utils.get_device_properties(index).get("sm_clock_rate", 0)  # kHz
        if plausible(khz * 1e3):
            return khz * 1e3, "triton driver sm_clock_rate"
    except Exception:  # noqa: BLE001
        pass
    hz = _nvidia_smi_max_sm_clock_hz(index)
    return (hz, "nvidia-smi clocks.max.sm") if plausible(hz) else (None, "unknown")


def gpu_exp_rate(device: torch.device | str) -> tuple[float | None, str]:
    """MUFU ex2 throughput: 16 / clock / SM x SMs x the peak SM clock, and how it was computed."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    clock, source = gpu_sm_clock_hz(device)
    if clock is None:
        return None, "SM clock unknown: no exp floor"
    rate = MUFU_EX2_PER_CLK_PER_SM * props.multi_processor_count * clock
    return rate, (f"{MUFU_EX2_PER_CLK_PER_SM} ex2/clk/SM x {props.multi_processor_count} SMs x "
                  f"{clock / 1e9:.3f} GHz ({source}) = {rate / 1e12:.2f} T exp/s")
