// The forward recurrence over one chunk of steps for one vector of channels, shared by the CPU
// forward and by the backward's recomputation (which evaluates the decays with the shorter
// polynomial: its states are the forward's to float rounding, not bit for bit).
//
// Two phases per chunk, for instruction-level parallelism: (A) delta = softplus(dt_w . dt + dt_b)
// and u for every step of the chunk (the steps are independent, so the out-of-order core overlaps
// their long softplus chains); (B) the recurrence, whose only dependency between steps is
// h <- decay * h + du * B, one FMA per state.
#pragma once

#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "cpu/state.h"

namespace mambaad::cpu::MAMBAAD_ISA {

// Packed parameters of one vector of channels (direction k, channels d = v * W + lane), as
// pack_params (prep.h) lays them out: W values each of A * a_scale [N], A [N], dt_w [R], dt_b, Ds;
// zero in the lanes past Dk.
template <typename T, int W>
struct ParamVec {
  const T* a_scaled;
  const T* a;
  const T* dt_w;
  const T* dt_b;
  const T* d_skip;

  ParamVec(const T* pack, const CpuGeometry& cg, int64_t k, int64_t v) {
    const T* base = pack + (k * cg.nvk + v) * cg.PS * W;
    a_scaled = base;
    a = base + cg.g.N * W;
    dt_w = base + 2 * cg.g.N * W;
    dt_b = dt_w + cg.g.R * W;
    d_skip = dt_b + W;
  }
};

// Prefetch, for reading (kWrite false) or for writing, the W values at base of each of the rows
// path[0 .. nt) of an (L, Dst) array (row p at base + p * Dst).
template <typename T, int W, bool kWrite = false>
inline void prefetch_rows(const T* base, const int32_t* path, int64_t nt, int64_t Dst) {
  for (int64_t i = 0; i < nt; ++i) {
    const T* p = base + static_cast<int64_t>(path[i]) * Dst;
    __builtin_prefetch(p, kWrite, 3);
    const T* last = p + (W - 1);  // the W values may straddle two cache lines
    if ((reinterpret_cast<uintptr_t>(p) >> 6) != (reinterpret_cast<uintptr_t>(last) >> 6))
      __builtin_prefetch(last, kWrite, 3);
  }
}

// Phase A for steps [t0, t0 + nt): delta[i], u[i] (masked to the valid lanes) and, if sig is not
// null, sig[i] = softplus'(z). rows: x_dbl gathered in scan order from step t0 ((nt, C) rows,
// [B | C | dt] each, see gather_dbl);
// path: paths[k] from step t0; ub: u at grid position p is ub + p * Dst.
template <typename T, int W>
inline void prepare_chunk(const ParamVec<T, W>& pv, const T* rows, int64_t C, int64_t N, int64_t R,
                          const int32_t* path,
                          int64_t nt, const T* ub, int64_t Dst, VecI<T, W> mask, Vec<T, W>* delta,
                          Vec<T, W>* u, Vec<T, W>* sig) {
  using V = Vec<T, W>;
  const V dtb = vload<T, W>(pv.dt_b);
  for (int64_t i = 0; i < nt; ++i) {
    const T* row = rows + i * C + 2 * N;  // dt
    V z0 = dtb, z1{};
    int64_t r = 0;
    for (; r + 1 < R; r += 2) {  // two chains
      z0 += vload<T, W>(pv.dt_w + r * W) * row[r];
      z1 += vload<T, W>(pv.dt_w + (r + 1) * W) * row[r + 1];
    }
    if (r < R) z0 += vload<T, W>(pv.dt_w + r * W) * row[r];
    const V z = z0 + z1;
    delta[i] = sig ? Math<T, W>::softplus(z, sig[i]) : Math<T, W>::softplus(z);
    u[i] = vmask(vload<T, W>(ub + path[i] * Dst), mask);
  }
}

// Phase B for steps [t0, t0 + nt), continuing the state h: adds y = C_t . h_t + D u_t into
// acc[p * W] at each step's grid position p.
template <typename T, int NT, int W>
inline void forward_chunk(State<T, NT, W>& h, const ParamVec<T, W>& pv, const T* rows, int64_t C,
                          const int32_t* path, int64_t nt, const Vec<T, W>* delta, const Vec<T, W>* u,
                          T* acc) {
  using V = Vec<T, W>;
  const int64_t N = h.N;
  const V dsk = vload<T, W>(pv.d_skip);
  for (int64_t i = 0; i < nt; ++i) {
    const T* Bt = rows + i * C;
    const T* Ct = Bt + N;
    const V dl = delta[i], du = dl * u[i];
    V y[4] = {V{}, V{}, V{}, V{}};  // four partial sums: short dependency chains
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      const V decay = Math<T, W>::decay(dl, vload<T, W>(pv.a_scaled + n * W));
      h[n] = step_decayed(h[n], decay, du, Bt[n]);
      y[n & 3] += h[n] * Ct[n];
    }
    T* a = acc + static_cast<int64_t>(path[i]) * W;
    vstore<T, W>(a, vload<T, W>(a) + (dsk * u[i] + ((y[0] + y[1]) + (y[2] + y[3]))));
  }
}

// The backward's phase B for the states [n0, n0 + nb) only (nb = NB when NB > 0; the states of a
// channel are independent). The forward's arithmetic except the decays' shorter polynomial
// (Math::decay_recompute), so the forward's values to float rounding.
// h (nb) holds h_{t0 - 1} on entry. Stores h_t into hsave[(i + 1) * nb] (the caller puts
// h_{t0 - 1} in row 0) and the decays into dsave[i * nb], and adds the dC partials gr[i] * h_t[n]
// into dc[i * dc_stride + n - n0] (dL/dy_t times the state, while the state is in a register), or
// stores them there (kAdd false: the first of the vectors summed there).
template <typename T, int NB, int W, bool kAdd>
inline void recompute_block(Vec<T, W>* h, const ParamVec<T, W>& pv, const T* rows, int64_t C, int64_t n0,
                            int64_t nb, int64_t nt, const Vec<T, W>* delta, const Vec<T, W>* u,
                            const Vec<T, W>* gr, Vec<T, W>* hsave, Vec<T, W>* dsave, Vec<T, W>* dc,
                            int64_t dc_stride) {
  using V = Vec<T, W>;
  const int64_t w = NB > 0 ? NB : nb;
  V hr[NB > 0 ? NB : 1];
  V* hv = NB > 0 ? hr : h;  // a register array when the width is known at compile time
  if constexpr (NB > 0) {
#pragma GCC unroll 16
    for (int64_t m = 0; m < NB; ++m) hr[m] = h[m];
  }
  for (int64_t i = 0; i < nt; ++i) {
    const T* Bt = rows + i * C + n0;
    const V dl = delta[i], du = dl * u[i], g = gr[i];
#pragma GCC unroll 16
    for (int64_t m = 0; m < w; ++m) {
      const V decay = Math<T, W>::decay_recompute(dl, vload<T, W>(pv.a_scaled + (n0 + m) * W));
      hv[m] = step_decayed(hv[m], decay, du, Bt[m]);
      hsave[(i + 1) * w + m] = hv[m];
      dsave[i * w + m] = decay;
      dc[i * dc_stride + m] = kAdd ? dc[i * dc_stride + m] + g * hv[m] : g * hv[m];
    }
  }
}

}  // namespace mambaad::cpu::MAMBAAD_ISA
