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
// extensions on the CPU). Only + - * / are used, so one definition serves scalars and vectors. ----

namespace mambaad {

// log2(e): exp(x) = 2^(x log2 e). The vectorised CPU kernel keeps A pre-scaled by it.
constexpr float kLog2e = 1.44269504088896341f;

// Lower clamp of the argument of the fast 2^y: 2^-125 is still a normal float, and a decay below
// it changes nothing at float precision.
constexpr float kExp2Min = -125.f;

// 2^f for f in [-1/2, 1/2] (float precision; T float or a float vector): a degree-6 polynomial
// fitted for relative error (2e-9 in exact arithmetic, under 1e-7 evaluated in float). The caller
// reduces the range: 2^y = 2^round(y) * 2^(y - round(y)).
template <typename T>
MAMBAAD_HD T exp2_reduced(T f) {
  T p = f * 1.53458124e-4f + 1.33999309e-3f;
  p = p * f + 9.61848907e-3f;
  p = p * f + 5.55032864e-2f;
  p = p * f + 2.40226462e-1f;
  p = p * f + 6.93147182e-1f;
  return p * f + 1.f;
}

// The same with a degree-5 polynomial, one multiply-add less (fitted for relative error: 9e-8 in
// exact arithmetic, 1.8e-7 evaluated in float). For the CPU backward's recomputation of the decays,
// where the operations per (t, n) step set the speed and rounding-level differences from the
// forward's states are far below the gradients' own rounding.
template <typename T>
MAMBAAD_HD T exp2_reduced_short(T f) {
  T p = f * 1.32646982e-3f + 9.67150927e-3f;
  p = p * f + 5.55073395e-2f;
  p = p * f + 2.40222424e-1f;
  p = p * f + 6.93147004e-1f;
  return p * f + 1.f;
}

// log(1 + e) for e in [0, 1] (float precision): with s = e / (2 + e) in [0, 1/3],
// log1p(e) = 2 atanh(s) = 2 s P(s^2), P a degree-4 polynomial fitted on [0, 1/9] (relative error
// 4e-9 exact, about 2e-7 in float). No cancellation for tiny e, unlike log(1 + e).
template <typename T>
MAMBAAD_HD T log1p_unit(T e) {
  const T s = e / (e + 2.f);
  const T v = s * s;
  T p = v * 1.40891671e-1f + 1.39803022e-1f;
  p = p * v + 2.00124547e-1f;
  p = p * v + 3.33331585e-1f;
  p = p * v + 1.f;
  return (s + s) * p;
}

// One recurrence step for one state lane given its decay = exp(delta A_n) and du = delta * u:
// returns h_t = decay * h_{t-1} + du * B_n.
template <typename T, typename S>
MAMBAAD_HD T step_decayed(T h_prev, T decay, T du, S b) {
  return decay * h_prev + du * b;
}

// Reverse-mode derivative of the step for one state lane n at step t (tests/kernel_contract.py).
// In: g = dL/dy_t, c = C_t[n], decay = exp(delta_t A_n), h_prev = h_{t-1}[n].
// dh: on entry decay_{t+1} * dh_{t+1} (zero after the last step); on exit decay_t * dh_t, the
// carry for step t - 1. Returns dh_t = dL/dh_t and sets q = dh_t * decay * h_prev. The caller
// accumulates, with u = u_t, delta = delta_t:
//   dB_t[n] += dh_t delta u;   dC_t[n] += g h_t;   du_t += delta dh_t B_t[n];
//   ddelta_t += A_n q + u dh_t B_t[n];   dA_n += delta q   (then dA_logs = A dA).
template <typename T, typename S>
MAMBAAD_HD T step_backward(T& dh, T g, S c, T decay, T h_prev, T& q) {
  const T dh_t = dh + g * c;
  q = dh_t * decay * h_prev;
  dh = dh_t * decay;
  return dh_t;
}

}  // namespace mambaad
