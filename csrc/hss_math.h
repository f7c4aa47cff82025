// Per-element maths of the fused HSS scan, shared by the CPU (C++) and CUDA kernels.
//
// Everything here is __host__ __device__ under nvcc and plain inline under a C++ compiler, so the
// CPU tests exercise the same index mapping, softplus and step arithmetic the CUDA kernels run.
//
// Notation (as mambaad_kernels/reference.py and tests/kernel_contract.py):
//   b batch, k direction (K), d channel within a direction (Dk = D, or D / K when grouped),
//   l / t sequence step, p = paths[k, t] the grid position it reads, n state (N), r dt rank (R).
//   Input/output channel of (k, d): d (HSS) or k * Dk + d (grouped GSS). Parameter row: k * Dk + d.
//
//   z_t = dt_w[k, d, :] . x_dbl[b, k, :R, p] + dt_b[k, d];   delta_t = softplus(z_t)
//   h_t = exp(delta_t * A_n) * h_{t-1} + delta_t * B_t[n] * u_t,   A_n = -exp(A_logs[row, n])
//   y_t = sum_n C_t[n] h_t[n] + Ds[row] * u_t,   merged into out[b, channel, p] (summed over k)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MAMBAAD_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
// Always inlined: the CPU kernels are compiled once per instruction set (csrc/cpu/isa_*.cpp), and an
// out-of-line copy of one of these, kept by the linker from one variant, would serve all of them.
#define MAMBAAD_HD inline __attribute__((always_inline))
#else
#define MAMBAAD_HD inline
#endif

namespace mambaad {

// torch.nn.functional.softplus with its default threshold: z for z > 20, log1p(exp(z)) otherwise.
MAMBAAD_HD float softplus(float z) { return z > 20.f ? z : log1pf(expf(z)); }
MAMBAAD_HD double softplus(double z) { return z > 20.0 ? z : log1p(exp(z)); }

// d softplus / dz = sigmoid(z) (torch returns 1 above the threshold; sigmoid(20) = 1 - 2e-9).
MAMBAAD_HD float softplus_grad(float z) { return z > 20.f ? 1.f : 1.f / (1.f + expf(-z)); }
MAMBAAD_HD double softplus_grad(double z) { return z > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-z)); }

// State checkpoint interval of the CPU kernel (mambaad_kernels.cuda.CPU_STATE_CHUNK must match;
// the extension exports it as _C.CPU_STATE_CHUNK and a test compares the two).
constexpr int64_t kCpuStateChunk = 64;

// The geometry of one call, with the index maps every kernel uses.
struct ScanGeometry {
  int64_t B, D, L, K, Dk, R, N;
  bool grouped;

  MAMBAAD_HD int64_t channel(int64_t k, int64_t d) const { return grouped ? k * Dk + d : d; }
  MAMBAAD_HD int64_t param_row(int64_t k, int64_t d) const { return k * Dk + d; }
  MAMBAAD_HD int64_t dbl_rows() const { return R + 2 * N; }
  MAMBAAD_HD static int64_t n_chunks(int64_t L, int64_t chunk) { return (L + chunk - 1) / chunk; }
};

// One recurrence step for one state lane: h <- exp(delta A) h + delta B u. Returns the decay
// exp(delta A), which the backward needs again.
template <typename T>
MAMBAAD_HD T step(T& h, T delta, T a, T b, T u) {
  const T decay = exp(delta * a);
  h = decay * h + delta * b * u;
  return decay;
}

}  // namespace mambaad

// ---- Generic per-lane maths: T is float, double or a SIMD vector of them (GCC / Clang vector
// extensions on the CPU). Only + - * / are used, so one definition serves scalars and vectors.
// The templates are in lane_math.h, which the CPU scan loops include again per instruction set. ----

namespace mambaad {

// log2(e): exp(x) = 2^(x log2 e). The vectorised CPU kernel keeps A pre-scaled by it.
constexpr float kLog2e = 1.44269504088896341f;

// Lower clamp of the argument of the fast 2^y: 2^-125 is still a normal float, and a decay below
// it changes nothing at float precision.
constexpr float kExp2Min = -125.f;

#include "lane_math.h"  // exp2_reduced, exp2_reduced_short, log1p_unit, step_decayed, step_backward

}  // namespace mambaad
