// The forward recurrence over one chunk of steps for one vector of channels, shared by the CPU
// forward and by the backward's recomputation (so the backward sees bit-identical states).
//
// Two phases per chunk, for instruction-level parallelism: (A) delta = softplus(dt_w . dt + dt_b)
// and u for every step of the chunk (the steps are independent, so the out-of-order core overlaps
// their long softplus chains); (B) the recurrence, whose only dependency between steps is
// h <- decay * h + du * B, one FMA per state.
#pragma once

#include <cstdint>

#include "cpu/prep.h"
#include "cpu/simd.h"
#include "cpu/state.h"

namespace mambaad::cpu {

// Phase A for steps [t0, t0 + nt): delta[i], u[i] (masked to the valid lanes) and, if sig is not
// null, sig[i] = softplus'(z). rows: x_dbl gathered in scan order from step t0 ((nt, C) rows,
// [B | C | dt] each, see gather_dbl);
// path: paths[k] from step t0; ub: u at grid position p is ub + p * Dst.
template <typename T>
inline void prepare_chunk(const ParamVec<T>& pv, const T* rows, int64_t C, int64_t N, int64_t R,
                          const int32_t* path,
                          int64_t nt, const T* ub, int64_t Dst, VecI<T> mask, Vec<T>* delta, Vec<T>* u,
                          Vec<T>* sig) {
  using V = Vec<T>;
  const V dtb = vload(pv.dt_b);
  for (int64_t i = 0; i < nt; ++i) {
    const T* row = rows + i * C + 2 * N;  // dt
    V z0 = dtb, z1{};
    int64_t r = 0;
    for (; r + 1 < R; r += 2) {  // two chains
      z0 += vload(pv.dt_w + r * kLanes) * row[r];
      z1 += vload(pv.dt_w + (r + 1) * kLanes) * row[r + 1];
    }
    if (r < R) z0 += vload(pv.dt_w + r * kLanes) * row[r];
    const V z = z0 + z1;
    delta[i] = sig ? Math<T>::softplus(z, sig[i]) : Math<T>::softplus(z);
    u[i] = vmask(vload(ub + path[i] * Dst), mask);
  }
}

// Phase B for steps [t0, t0 + nt), continuing the state h. With kOut, adds
// y = C_t . h_t + D u_t into acc[p * kLanes] at each step's grid position p. With kSave, stores
// h_t into hsave[(i + 1) * N] (the caller puts h_{t0 - 1} in row 0) and the decays into dsave[i * N],
// and adds the dC partials gr[i] * h_t[n] into dc[i * dc_stride + n] (for the backward, whose
// recomputation this is: dL/dy_t times the state, while the state is in a register).
template <typename T, int NT, bool kOut, bool kSave>
inline void forward_chunk(State<T, NT>& h, const ParamVec<T>& pv, const T* rows, int64_t C,
                          const int32_t* path, int64_t nt, const Vec<T>* delta, const Vec<T>* u, T* acc,
                          Vec<T>* hsave, Vec<T>* dsave, const Vec<T>* gr = nullptr, Vec<T>* dc = nullptr,
                          int64_t dc_stride = 0) {
  static_assert(!(kOut && kSave), "forward_chunk: the forward (kOut) or the recomputation (kSave)");
  using V = Vec<T>;
  const int64_t N = h.N;
  const V dsk = vload(pv.d_skip);
  for (int64_t i = 0; i < nt; ++i) {
    const T* Bt = rows + i * C;
    const T* Ct = Bt + N;
    const V dl = delta[i], du = dl * u[i];
    V y[4] = {V{}, V{}, V{}, V{}};  // four partial sums: short dependency chains
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      const V decay = Math<T>::decay(dl, vload(pv.a_scaled + n * kLanes));
      h[n] = step_decayed(h[n], decay, du, Bt[n]);
      if constexpr (kOut) y[n & 3] += h[n] * Ct[n];
      if constexpr (kSave) {
        hsave[(i + 1) * N + n] = h[n];
        dsave[i * N + n] = decay;
        dc[i * dc_stride + n] += gr[i] * h[n];
      }
    }
    if constexpr (kOut) {
      T* a = acc + static_cast<int64_t>(path[i]) * kLanes;
      vstore(a, vload(a) + (dsk * u[i] + ((y[0] + y[1]) + (y[2] + y[3]))));
    }
  }
}

}  // namespace mambaad::cpu
