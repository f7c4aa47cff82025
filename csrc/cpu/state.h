// The N state vectors of one vector of channels. With N known at compile time (NT > 0) they are a
// plain array that the fully unrolled state loops keep in registers; otherwise a heap array.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/simd.h"

namespace mambaad::cpu {

template <typename T, int NT>
struct StateStorage {
  Vec<T> v[NT];
  explicit StateStorage(int64_t) {}
};

template <typename T>
struct StateStorage<T, 0> {
  std::vector<Vec<T>> v;
  explicit StateStorage(int64_t n) : v(static_cast<size_t>(n)) {}
};

template <typename T, int NT>
struct State : StateStorage<T, NT> {
  int64_t N;

  explicit State(int64_t n) : StateStorage<T, NT>(n), N(NT > 0 ? NT : n) { zero(); }

  Vec<T>& operator[](int64_t n) { return this->v[n]; }

  void zero() {
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) this->v[n] = Vec<T>{};
  }

  // dst[lane * lane_stride + n] = h[n][lane] for the first nvalid lanes: states (.., Dk, J, N).
  void checkpoint(T* dst, int64_t lane_stride, int nvalid) {
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n)
      for (int i = 0; i < nvalid; ++i) dst[i * lane_stride + n] = this->v[n][i];
  }

  // The inverse of checkpoint; lanes past nvalid are zero.
  void restore(const T* src, int64_t lane_stride, int nvalid) {
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      Vec<T> h{};
      for (int i = 0; i < nvalid; ++i) h[i] = src[i * lane_stride + n];
      this->v[n] = h;
    }
  }
};

}  // namespace mambaad::cpu
