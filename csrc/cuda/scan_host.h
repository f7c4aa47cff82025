// Host side of the CUDA scan kernels: argument checks, output allocation (NaN-poisoned under
// MAMBAAD_POISON=1), the choice of a kernel configuration and the launches. The same code drives
// the real kernels (scan.cu, nvcc) and the CPU emulation of them (emulate.cc, -DMAMBAAD_EMU).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

#include "common.h"
#include "launch.h"

#if defined(MAMBAAD_EMU)
#include "launch_impl.cuh"  // the emulator build compiles the kernels here
#else
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>
#endif

namespace mambaad {
namespace scan {

// Which configuration to launch: -1 chooses by shape; 0 the main one for the shape; 1 the small
// fallback (128 threads, little shared memory); 2 (forward) the lane-sequential kernel. The
// emulator tests force each.
struct LaunchOptions {
  int config = -1;
};

// The forward kernel a call with config -1 gets: the segment kernels (scan_fwd.cuh), or with
// MAMBAAD_CUDA_FWD=lanes the experimental lane-sequential one (scan_lanes.cuh) where it applies
// (N = 16, fp32 / fp16 / bf16; other calls keep the segment kernels).
inline bool lanes_requested() {
  const char* v = std::getenv("MAMBAAD_CUDA_FWD");
  if (v == nullptr || *v == 0 || std::strcmp(v, "segments") == 0) return false;
  TORCH_CHECK_VALUE(std::strcmp(v, "lanes") == 0,
                    "MAMBAAD_CUDA_FWD must be 'segments' (the default) or 'lanes', got '", v, "'");
  return true;
}

// Argument checks: csrc/common.h's (shared with the CPU kernels; x_dbl in the compute dtype), plus
// what the CUDA kernels add: the device type, no empty input, and the grid and index limits.
inline ScanGeometry check_args(const char* op, const at::Tensor& x, const at::Tensor& x_dbl,
                               const at::Tensor& dt_w, const at::Tensor& dt_b,
                               const at::Tensor& A_logs, const at::Tensor& Ds, const at::Tensor& paths,
                               bool grouped, at::DeviceType device_type) {
  TORCH_CHECK_VALUE(x.device().type() == device_type, op, ": x must be on a ",
                    c10::DeviceTypeName(device_type), " device, got ", x.device());
  const ScanGeometry g = check_scan_args(op, x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped);
  TORCH_CHECK_VALUE(g.B > 0 && g.D > 0 && g.L > 0, op, ": x has no elements, shape ", x.sizes());
  TORCH_CHECK_VALUE(g.B <= 65535 && g.K <= 65535, op, ": B and K must be at most 65535, got B = ",
                    g.B, ", K = ", g.K);
  TORCH_CHECK_VALUE(g.L < (int64_t{1} << 30) && g.Dk < (int64_t{1} << 30) && g.dbl_rows() <= 4096,
                    op, ": L and D must be below 2^30 and R + 2N at most 4096");
  return g;
}

// A tensor in the accumulation type, contiguous (no copy when it already is).
inline at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

// The fields FwdArgs and BwdArgs share: x, the projection, the parameters in the accumulation type
// (contiguous), the paths and the geometry.
template <typename T, typename A, typename Args>
void set_common(Args& a, const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& w,
                const at::Tensor& bsv, const at::Tensor& al, const at::Tensor& dsv,
                const at::Tensor& paths, const ScanGeometry& g, int64_t ns, bool grouped) {
  a.x = x.data_ptr<T>();
  a.sxb = x.stride(0);
  a.sxd = x.stride(1);
  a.sxl = x.stride(2);
  a.xdbl = x_dbl.data_ptr<A>();
  a.dtw = w.data_ptr<A>();
  a.dtb = bsv.data_ptr<A>();
  a.alog = al.data_ptr<A>();
  a.ds = dsv.data_ptr<A>();
  a.paths = paths.data_ptr<int32_t>();
  a.B = static_cast<int>(g.B);
  a.D = static_cast<int>(g.D);
  a.L = static_cast<int>(g.L);
  a.K = static_cast<int>(g.K);
  a.Dk = static_cast<int>(g.Dk);
  a.R = static_cast<int>(g.R);
  a.N = static_cast<int>(g.N);
  a.NS = static_cast<int>(ns);
  a.grouped = grouped;
}

// ---- device properties ---------------------------------------------------------------------------
#if defined(MAMBAAD_EMU)
inline int64_t smem_limit(const at::Tensor&) {
  const char* v = std::getenv("MAMBAAD_EMU_SMEM_LIMIT");
  return v ? std::atoll(v) : 227 * 1024 - 1024;  // the H100's, as smem_limit() below gives it
}
inline int sm_count(const at::Tensor&) { return 4; }
#else
// The opt-in dynamic shared memory per block (232448 bytes on the H100, 166912 on the A100), less
// 1 KB: cuobjdump reports 1 KB of static shared memory for the sm_90 kernels, and static plus
// dynamic must fit the opt-in limit, else cudaFuncSetAttribute fails instead of the host falling
// back to a smaller configuration. Our largest configuration needs 215 KB at MambaAD's stage 0.
inline int64_t smem_limit(const at::Tensor& x) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, x.get_device()));
  return static_cast<int64_t>(v) - 1024;
}
inline int sm_count(const at::Tensor& x) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, x.get_device()));
  return v;
}
#endif

// ---- forward -------------------------------------------------------------------------------------
template <typename T, typename A, int NW, int LPC, int TI>
bool try_fwd(FwdArgs<T, A> a, const at::Tensor& x, int64_t limit) {
  using Kn = FwdKernel<T, A, NW, LPC, TI>;
  static_assert(kStateChunk % TI == 0, "a checkpoint must start a lane's steps");
  const int64_t acc_bytes = static_cast<int64_t>(Kn::G) * a.L * static_cast<int64_t>(sizeof(A));
  const int64_t with_acc = fwd_smem_bytes<A, NW, LPC, TI>(a.R, a.N, a.L, true);
  a.acc_in_smem = with_acc <= limit && acc_bytes <= 64 * 1024;
  const int64_t smem =
      a.acc_in_smem ? with_acc : fwd_smem_bytes<A, NW, LPC, TI>(a.R, a.N, a.L, false);
  if (smem > limit) return false;
  at::Tensor ws;  // freed after the launch: the caching allocator orders reuse on the stream
  if (a.acc_in_smem) {
    a.acc = nullptr;
  } else if (std::is_same_v<T, A>) {
    a.acc = reinterpret_cast<A*>(a.out);
  } else {
    ws = alloc_output({a.B, a.D, a.L}, compute_dtype(x.scalar_type()), x.device());
    a.acc = ws.template data_ptr<A>();
  }
  const int64_t gpd = (a.Dk + Kn::G - 1) / Kn::G;
  a.groups_per_dir = static_cast<int>(gpd);
  const int64_t gx = a.grouped ? gpd * a.K : gpd;
  TORCH_CHECK(gx < (int64_t{1} << 31), "mambaad::scan_fwd (cuda): too many channel groups");
  launch_fwd<T, A, NW, LPC, TI>(a, Grid{static_cast<unsigned>(gx), static_cast<unsigned>(a.B), 1},
                                smem);
  return true;
}

// The configurations: lanes per channel LPC and steps per lane TI set the chunk LPC * TI; the main
// ones have 16 warps; the fallback <4, 8, 8> needs the least shared memory.
template <typename T, typename A>
void run_fwd(const FwdArgs<T, A>& a, const at::Tensor& x, const LaunchOptions& opt) {
  const int64_t limit = smem_limit(x);
  bool done = false;
  if constexpr (!std::is_same_v<A, double>) {
    if (opt.config <= 0) {
      if (a.L <= 64) {
        done = try_fwd<T, A, 16, 4, 16>(a, x, limit);
      } else if (a.L <= 128) {
        done = try_fwd<T, A, 16, 8, 16>(a, x, limit);
      } else {
        // 16 lanes x 16 steps per channel issue 9.6 instructions per (t, n) step against 12.6 for
        // 32 x 8 (benchmarks/dev/kernel_census.py, sm_90 SASS: one shuffle level less, over twice the
        // steps), but hold twice the channels per block: take them while that still gives most
        // SMs a block (one 512-thread block fits an SM either way) and the block's accumulator
        // still fits shared memory (64 KB: L <= 512)
        constexpr int G16 = FwdKernel<T, A, 16, 16, 16>::G;
        const int64_t blocks = int64_t{a.B} * ((a.Dk + G16 - 1) / G16) * (a.grouped ? a.K : 1);
        const bool acc_fits = int64_t{G16} * a.L * static_cast<int64_t>(sizeof(A)) <= 64 * 1024;
        if (acc_fits && 10 * blocks >= 9 * int64_t{sm_count(x)}) {
          done = try_fwd<T, A, 16, 16, 16>(a, x, limit);
        }
        if (!done) done = try_fwd<T, A, 16, 32, 8>(a, x, limit);
      }
    }
  }
  if (!done) done = try_fwd<T, A, 4, 8, 8>(a, x, limit);
  TORCH_CHECK(done, "mambaad::scan_fwd (cuda): R + 2N = ", a.R + 2 * a.N,
              " needs more shared memory than the device has (", limit, " bytes per block)");
}

// The lane-sequential forward: one 128-thread block per (group of 128 channels, k, b). HSS with
// K > 1 writes one fp32 slice per direction, summed in k order by sum_slices_kernel; 16-bit
// outputs go through an fp32 buffer.
template <typename T>
void run_fwd_lanes(const FwdArgs<T, float>& f, const at::Tensor& x, at::Tensor& out) {
  const int64_t smem = lanes_smem_bytes<kLanesG, kLanesCH>(f.R);
  const int64_t limit = smem_limit(x);
  TORCH_CHECK(smem <= limit, "mambaad::scan_fwd (cuda, lanes): R = ", f.R, " needs ", smem,
              " bytes of shared memory, the device has ", limit);
  LanesArgs<T> a{f};
  a.slices = !f.grouped && f.K > 1;
  const int64_t n = int64_t{f.B} * f.D * f.L;
  at::Tensor out32 = std::is_same_v<T, float> ? out : alloc_output({f.B, f.D, f.L}, at::kFloat, x.device());
  at::Tensor ys;
  if (a.slices) {
    ys = alloc_output({f.K, f.B, f.D, f.L}, at::kFloat, x.device());
    a.y = ys.data_ptr<float>();
  } else {
    a.y = out32.data_ptr<float>();
  }
  const int64_t groups = (int64_t{f.Dk} + kLanesG - 1) / kLanesG;
  TORCH_CHECK(groups < (int64_t{1} << 31), "mambaad::scan_fwd (cuda, lanes): too many channel groups");
  launch_fwd_lanes<T, kLanesG, kLanesCH>(
      a, Grid{static_cast<unsigned>(groups), static_cast<unsigned>(f.K), static_cast<unsigned>(f.B)}, smem);
  if (a.slices) {
    SumArgs<float> sum{};
    sum.seg[0] = SumSegment<float>{a.y, out32.data_ptr<float>(), n, f.K};
    sum.nseg = 1;
    const int64_t blocks = std::min<int64_t>((n + 255) / 256, int64_t{8} * sm_count(x));
    launch_sum<float>(sum, n, static_cast<unsigned>(blocks));
  }
  if constexpr (!std::is_same_v<T, float>) out.copy_(out32);
}

// The forward of one call: the lane-sequential kernel when forced (config 2) or asked for
// (MAMBAAD_CUDA_FWD=lanes) and it applies, else the segment kernels.
template <typename T, typename A>
void forward(const FwdArgs<T, A>& a, const at::Tensor& x, at::Tensor& out, const LaunchOptions& opt) {
  if constexpr (std::is_same_v<A, float>) {
    TORCH_CHECK(a.N == kLanesN || opt.config != 2, "mambaad::scan_fwd (cuda): the lane-sequential "
                "kernel needs N = ", kLanesN, ", got ", a.N);
    if (a.N == kLanesN && (opt.config == 2 || (opt.config < 0 && lanes_requested()))) {
      run_fwd_lanes<T>(a, x, out);
      return;
    }
  }
  run_fwd<T, A>(a, x, opt);
}

inline std::tuple<at::Tensor, at::Tensor> scan_fwd_impl(
    const at::Tensor& x, const at::Tensor& x_dbl_in, const at::Tensor& dt_w, const at::Tensor& dt_b,
    const at::Tensor& A_logs, const at::Tensor& Ds, const at::Tensor& paths_in, bool grouped,
    bool /*deterministic: the forward merge always has a fixed order*/, at::DeviceType device_type,
    const LaunchOptions& opt = {}) {
  const char* op = "mambaad::scan_fwd (cuda)";
  const ScanGeometry g = check_args(op, x, x_dbl_in, dt_w, dt_b, A_logs, Ds, paths_in, grouped,
                                    device_type);
  const auto dt = x.scalar_type(), acc = compute_dtype(dt);
  const int64_t ns = ScanGeometry::n_chunks(g.L, kStateChunk);
  at::Tensor out = alloc_output({g.B, g.D, g.L}, dt, x.device());
  at::Tensor states = alloc_output({g.B, g.K, g.Dk, ns, g.N}, acc, x.device());
  const at::Tensor x_dbl = as_acc(x_dbl_in, acc), paths = paths_in.contiguous();
  const at::Tensor w = as_acc(dt_w, acc), bsv = as_acc(dt_b, acc), al = as_acc(A_logs, acc),
                   dsv = as_acc(Ds, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "mambaad_scan_fwd_cuda", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    FwdArgs<T, A> a{};
    set_common<T, A>(a, x, x_dbl, w, bsv, al, dsv, paths, g, ns, grouped);
    a.out = out.data_ptr<T>();
    a.states = states.data_ptr<A>();
    a.x_channels_fast = x.stride(1) == 1 && g.D > 1;
    forward<T, A>(a, x, out, opt);
  });
  return {out, states};
}

// ---- backward ------------------------------------------------------------------------------------
// The slices a backward call sums after its main kernel, kept alive until that sum is launched.
template <typename A>
struct BwdWork {
  at::Tensor dx_part, dxdbl_part;
  SumArgs<A> sums{};
};

template <typename A>
void add_sum(BwdWork<A>& w, const A* in, A* out, int64_t n, int64_t slices) {
  w.sums.seg[w.sums.nseg++] = SumSegment<A>{in, out, n, static_cast<int>(slices)};
}

template <typename T, typename A, int NW, int LPC, int TI>
bool try_bwd(BwdArgs<T, A> a, const at::Tensor& x, int64_t limit, bool det,
             at::Tensor& dx, at::Tensor& dx_dbl, BwdWork<A>& w) {
  using Kn = BwdKernel<T, A, NW, LPC, TI>;
  // A chunk starts from the checkpoint of its index: the chunk is the checkpoint interval, or a
  // shorter chunk holds the whole sequence (one chunk, from the checkpoint at t = 0).
  static_assert(Kn::CH <= kStateChunk && kStateChunk % Kn::CH == 0, "chunk vs checkpoint interval");
  if (Kn::CH != kStateChunk && a.L > Kn::CH) return false;
  const int64_t smem = bwd_smem_bytes<A, NW, LPC, TI>(a.R, a.N);
  if (smem > limit) return false;
  const auto acc = std::is_same_v<A, double> ? at::kDouble : at::kFloat;
  const int64_t B = a.B, D = a.D, L = a.L, K = a.K, Dk = a.Dk, C2 = a.R + 2 * a.N;
  const int64_t ng = (Dk + Kn::G - 1) / Kn::G;
  TORCH_CHECK(ng <= 65535, "mambaad::scan_bwd (cuda): too many channel groups");
  a.NG = static_cast<int>(ng);
  // d x: one writer per element for GSS or K == 1; else one slice per direction (or atomics)
  if (a.grouped || K == 1) {
    a.dx_mode = kStore;
    a.dx = dx.data_ptr<A>();
  } else if (det) {
    a.dx_mode = kPartial;
    w.dx_part = alloc_output({K, B, D, L}, acc, x.device());
    a.dx = w.dx_part.template data_ptr<A>();
    add_sum(w, a.dx, dx.data_ptr<A>(), B * D * L, K);
  } else {
    a.dx_mode = kAtomic;
    dx.zero_();
    a.dx = dx.data_ptr<A>();
  }
  // d x_dbl: one writer when one block holds all the channels of a direction; else one slice per
  // channel group (or atomics)
  if (ng == 1) {
    a.dxdbl_mode = kStore;
    a.dxdbl = dx_dbl.data_ptr<A>();
  } else if (det) {
    a.dxdbl_mode = kPartial;
    w.dxdbl_part = alloc_output({ng, B, K, C2, L}, acc, x.device());
    a.dxdbl = w.dxdbl_part.template data_ptr<A>();
    add_sum(w, a.dxdbl, dx_dbl.data_ptr<A>(), B * K * C2 * L, ng);
  } else {
    a.dxdbl_mode = kAtomic;
    dx_dbl.zero_();
    a.dxdbl = dx_dbl.data_ptr<A>();
  }
  launch_bwd<T, A, NW, LPC, TI>(
      a, Grid{static_cast<unsigned>(ng), static_cast<unsigned>(K), static_cast<unsigned>(B)}, smem);
  return true;
}

template <typename T, typename A>
void run_bwd(const BwdArgs<T, A>& a, const at::Tensor& x, bool det, at::Tensor& dx,
             at::Tensor& dx_dbl, BwdWork<A>& w, const LaunchOptions& opt) {
  const int64_t limit = smem_limit(x);
  bool done = false;
  if constexpr (std::is_same_v<A, double>) {
    done = try_bwd<T, A, 4, 16, 8>(a, x, limit, det, dx, dx_dbl, w);
  } else {
    if (opt.config <= 0) {
      // L <= 64 (MambaAD's 8 x 8 stage): a 64-step chunk, so no lane scans masked steps
      if (a.L <= 64) done = try_bwd<T, A, 16, 8, 8>(a, x, limit, det, dx, dx_dbl, w);
      if (!done) done = try_bwd<T, A, 16, 8, 16>(a, x, limit, det, dx, dx_dbl, w);
    }
    if (!done) done = try_bwd<T, A, 4, 8, 16>(a, x, limit, det, dx, dx_dbl, w);
  }
  TORCH_CHECK(done, "mambaad::scan_bwd (cuda): R + 2N = ", a.R + 2 * a.N,
              " needs more shared memory than the device has (", limit, " bytes per block)");
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd_impl(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl_in, const at::Tensor& states,
    const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds,
    const at::Tensor& paths_in, bool grouped, bool deterministic, at::DeviceType device_type,
    const LaunchOptions& opt = {}) {
  const char* op = "mambaad::scan_bwd (cuda)";
  const ScanGeometry g = check_args(op, x, x_dbl_in, dt_w, dt_b, A_logs, Ds, paths_in, grouped,
                                    device_type);
  check_bwd_args(op, dout, x, states, g, kStateChunk);
  const auto dt = x.scalar_type(), acc = compute_dtype(dt);
  const int64_t C2 = g.dbl_rows();
  const at::Tensor x_dbl = as_acc(x_dbl_in, acc), paths = paths_in.contiguous();
  const auto dev = x.device();
  at::Tensor dx = alloc_output({g.B, g.D, g.L}, acc, dev);
  at::Tensor dx_dbl = alloc_output({g.B, g.K, C2, g.L}, acc, dev);
  const int64_t kd = g.K * g.Dk;
  at::Tensor pbuf = alloc_output({g.B * kd * (g.R + g.N + 2)}, acc, dev);  // per-batch slices
  at::Tensor d_dt_w = alloc_output({g.K, g.Dk, g.R}, acc, dev);
  at::Tensor d_dt_b = alloc_output({g.K, g.Dk}, acc, dev);
  at::Tensor d_A = alloc_output({kd, g.N}, acc, dev);
  at::Tensor d_D = alloc_output({kd}, acc, dev);
  const at::Tensor w = as_acc(dt_w, acc), bsv = as_acc(dt_b, acc), al = as_acc(A_logs, acc),
                   dsv = as_acc(Ds, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "mambaad_scan_bwd_cuda", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    BwdArgs<T, A> a{};
    a.dout = dout.data_ptr<T>();
    a.sgb = dout.stride(0);
    a.sgd = dout.stride(1);
    a.sgl = dout.stride(2);
    set_common<T, A>(a, x, x_dbl, w, bsv, al, dsv, paths, g, states.size(3), grouped);
    a.states = states.data_ptr<A>();
    A* pb = pbuf.data_ptr<A>();
    a.p_dtw = pb;
    a.p_dA = a.p_dtw + g.B * kd * g.R;
    a.p_db = a.p_dA + g.B * kd * g.N;
    a.p_dD = a.p_db + g.B * kd;
    a.g_channels_fast = dout.stride(1) == 1 && g.D > 1;
    BwdWork<A> work;
    run_bwd<T, A>(a, x, deterministic, dx, dx_dbl, work, opt);
    // parameter gradients: sum the per-batch slices (always in batch order)
    add_sum(work, a.p_dtw, d_dt_w.data_ptr<A>(), kd * g.R, g.B);
    add_sum(work, a.p_dA, d_A.data_ptr<A>(), kd * g.N, g.B);
    add_sum(work, a.p_db, d_dt_b.data_ptr<A>(), kd, g.B);
    add_sum(work, a.p_dD, d_D.data_ptr<A>(), kd, g.B);
    int64_t total = 0;
    for (int s = 0; s < work.sums.nseg; ++s) total += work.sums.seg[s].n;
    const int64_t blocks = std::min<int64_t>((total + 255) / 256, int64_t{8} * sm_count(x));
    launch_sum<A>(work.sums, total, static_cast<unsigned>(blocks));
  });
  return {dx, dx_dbl, d_dt_w, d_dt_b, d_A, d_D};
}

}  // namespace scan
}  // namespace mambaad
