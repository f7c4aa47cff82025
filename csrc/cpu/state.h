// The N state vectors of one vector of channels. With N known at compile time (NT > 0) they are a
// plain array that the fully unrolled state loops keep in registers; otherwise a heap array.
// Per instruction set (namespace MAMBAAD_ISA), like simd.h.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace mambaad::cpu::MAMBAAD_ISA {

template <typename T, int NT, int W>
struct StateStorage {
  Vec<T, W> v[NT];
  explicit StateStorage(int64_t) {}
};

// N unknown at compile time: an array on the heap (new[] of the over-aligned vector type, not a
// std::vector, whose out-of-line members would be shared by name with another variant's).
template <typename T, int W>
struct StateStorage<T, 0, W> {
  Vec<T, W>* v;
  explicit StateStorage(int64_t n) : v(new Vec<T, W>[static_cast<size_t>(n)]) {}
  ~StateStorage() { delete[] v; }
  StateStorage(const StateStorage&) = delete;
  StateStorage& operator=(const StateStorage&) = delete;
};

template <typename T, int NT, int W>
struct State : StateStorage<T, NT, W> {
  int64_t N;

  explicit State(int64_t n) : StateStorage<T, NT, W>(n), N(NT > 0 ? NT : n) { zero(); }

  Vec<T, W>& operator[](int64_t n) { return this->v[n]; }

  void zero() {
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) this->v[n] = Vec<T, W>{};
  }

  // dst[lane * lane_stride + n] = h[n][lane] for the first nvalid lanes: states (.., Dk, J, N). W
  // states at a time by a transpose in registers (one vector store per lane), the rest one by one.
  void checkpoint(T* dst, int64_t lane_stride, int nvalid) {
    int64_t n0 = 0;
    for (; n0 + W <= N; n0 += W) {
      Vec<T, W> r[W];
#pragma GCC unroll 16
      for (int m = 0; m < W; ++m) r[m] = this->v[n0 + m];
      transpose_square<T, W>(r);
      for (int i = 0; i < nvalid; ++i) vstore<T, W>(dst + i * lane_stride + n0, r[i]);
    }
    if constexpr (NT % W != 0 || NT == 0)
      for (int64_t n = n0; n < N; ++n)
        for (int i = 0; i < nvalid; ++i) dst[i * lane_stride + n] = this->v[n][i];
  }

  // The inverse of checkpoint; lanes past nvalid are zero.
  void restore(const T* src, int64_t lane_stride, int nvalid) {
    int64_t n0 = 0;
    for (; n0 + W <= N; n0 += W) {
      Vec<T, W> r[W];
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) r[i] = i < nvalid ? vload<T, W>(src + i * lane_stride + n0) : Vec<T, W>{};
      transpose_square<T, W>(r);
#pragma GCC unroll 16
      for (int m = 0; m < W; ++m) this->v[n0 + m] = r[m];
    }
    if constexpr (NT % W != 0 || NT == 0)
      for (int64_t n = n0; n < N; ++n) {
        Vec<T, W> h{};
        for (int i = 0; i < nvalid; ++i) h[i] = src[i * lane_stride + n];
        this->v[n] = h;
      }
  }
};

}  // namespace mambaad::cpu::MAMBAAD_ISA
