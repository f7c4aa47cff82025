// SIMD helpers of the CPU scan kernels: GCC / Clang vector extensions (the compiler emits AVX2 or
// AVX-512 from them under -march=native), a vectorised 2^y and softplus for float, and per-lane
// scalar libm for double (the float64 path exists for gradcheck, not for speed).
//
// A vector holds kLanes channels of one direction (the kernels vectorise over channels, looping
// over the N states with the state in registers), so one step needs no horizontal reduction.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "hss_math.h"

namespace mambaad::cpu {

// 8 lanes of 32 bytes for float on every x86 machine (AVX2; AVX-512 machines run the same code
// with 32 vector registers), so that one tested code path serves them all.
inline constexpr int kLanes = 8;

template <typename T>
struct VecTraits;
template <>
struct VecTraits<float> {
  typedef float V __attribute__((vector_size(kLanes * sizeof(float))));
  typedef int32_t I __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct VecTraits<double> {
  typedef double V __attribute__((vector_size(kLanes * sizeof(double))));
  typedef int64_t I __attribute__((vector_size(kLanes * sizeof(double))));
};

template <typename T>
using Vec = typename VecTraits<T>::V;  // kLanes values of T
template <typename T>
using VecI = typename VecTraits<T>::I;  // lane masks: all ones or zero

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Store the first n lanes only (n <= kLanes).
template <typename T>
inline void vstore_n(T* p, Vec<T> v, int n) {
  if (n == kLanes) {
    vstore(p, v);
    return;
  }
  for (int i = 0; i < n; ++i) p[i] = v[i];
}

template <typename T>
inline Vec<T> vsplat(T s) {
  return Vec<T>{} + s;
}

// Mask with the first n lanes set.
template <typename T>
inline VecI<T> lane_mask(int n) {
  VecI<T> m;
  for (int i = 0; i < kLanes; ++i) m[i] = i < n ? -1 : 0;
  return m;
}

// Lanes outside the mask become +0 (whatever they held, NaN included).
template <typename V, typename I>
inline V vmask(V v, I m) {
  return (V)((I)v & m);
}

// max(a, b), NaN in a propagates.
template <typename V>
inline V vmax(V a, V b) {
  return a < b ? b : a;
}

// One vmaxps instead of the compare-and-blend GCC makes of the generic form (maxps returns its
// second operand when either is NaN: a goes second so that NaN propagates).
#if defined(__AVX__)
inline Vec<float> vmax(Vec<float> a, Vec<float> b) { return (Vec<float>)_mm256_max_ps((__m256)b, (__m256)a); }
#endif

// |a|: clear the sign bits.
inline Vec<float> vabs(Vec<float> a) { return (Vec<float>)((VecI<float>)a & 0x7fffffff); }
inline Vec<double> vabs(Vec<double> a) { return (Vec<double>)((VecI<double>)a & 0x7fffffffffffffffLL); }

template <typename T>
inline T hsum(Vec<T> v) {
  T s = v[0];
  for (int i = 1; i < kLanes; ++i) s += v[i];
  return s;
}

#if defined(__AVX__)
// The lane sums of 8 float vectors, as one vector: out[j] = sum of the lanes of v[j].
inline Vec<float> transpose_sum8(const Vec<float>* v) {
  const __m256 h01 = _mm256_hadd_ps((__m256)v[0], (__m256)v[1]);
  const __m256 h23 = _mm256_hadd_ps((__m256)v[2], (__m256)v[3]);
  const __m256 h45 = _mm256_hadd_ps((__m256)v[4], (__m256)v[5]);
  const __m256 h67 = _mm256_hadd_ps((__m256)v[6], (__m256)v[7]);
  const __m256 a = _mm256_hadd_ps(h01, h23);  // [v0..v3 partial sums of lanes 0-3 | of lanes 4-7]
  const __m256 b = _mm256_hadd_ps(h45, h67);
  return (Vec<float>)_mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
#endif

// out[j] += the sum of the lanes of v[j], for j < n.
template <typename T>
inline void add_lane_sums(const Vec<T>* v, int64_t n, T* out) {
  int64_t j = 0;
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 8 <= n; j += 8) vstore(out + j, vload(out + j) + transpose_sum8(v + j));
    if (j < n) {  // fewer than 8 left: pad with zero vectors
      Vec<float> pad[8] = {};
      for (int64_t m = j; m < n; ++m) pad[m - j] = v[m];
      const Vec<float> sums = transpose_sum8(pad);
      for (int64_t m = j; m < n; ++m) out[m] += sums[m - j];
      return;
    }
  }
#endif
  for (; j < n; ++j) out[j] += hsum<T>(v[j]);
}

// Per-type maths. decay(delta, a_s) = exp(delta * A) where a_s is A pre-scaled by kAScale;
// softplus(z) and, for the backward, its derivative sigmoid(z), torch's threshold 20 included.
template <typename T>
struct Math;

template <>
struct Math<float> {
  using V = Vec<float>;
  using I = VecI<float>;
  static constexpr float kAScale = kLog2e;  // the kernels store A * log2(e)

  // 2^y for y <= 0 (clamped at kExp2Min): round-to-nearest by the 1.5 * 2^23 trick, the
  // polynomial on the remainder, and the integer part added to the exponent bits.
  static inline V exp2(V y) {
    y = vmax(y, vsplat(kExp2Min));
    const V shifter = vsplat(12582912.f);  // 1.5 * 2^23: y + shifter holds round(y) in its low bits
    const V t = y + shifter;
    const V n = t - shifter;
    const V p = exp2_reduced(y - n);
    return (V)((I)p + ((I)t << 23));  // exponent += round(y); (0x4B400000 << 23) wraps to 0
  }

  static inline V decay(V delta, V a_scaled) { return exp2(delta * a_scaled); }

  // softplus(z) = max(z, 0) + log1p(exp(-|z|)) (equals z to float precision above 20, like torch).
  static inline V softplus(V z) {
    const V e = exp2(vabs(z) * -kLog2e);
    return vmax(z, V{}) + log1p_unit(e);
  }

  // softplus(z) and sigmoid(z) = softplus'(z) from one exponential.
  static inline V softplus(V z, V& sig) {
    const V e = exp2(vabs(z) * -kLog2e);
    const V r = 1.f / (1.f + e);
    sig = z >= 0 ? r : e * r;
    return vmax(z, V{}) + log1p_unit(e);
  }
};

template <>
struct Math<double> {
  using V = Vec<double>;
  static constexpr double kAScale = 1.0;

  static inline V decay(V delta, V a) {
    V out;
    for (int i = 0; i < kLanes; ++i) out[i] = std::exp(delta[i] * a[i]);
    return out;
  }

  static inline V softplus(V z) {
    V out;
    for (int i = 0; i < kLanes; ++i) out[i] = mambaad::softplus(z[i]);
    return out;
  }

  static inline V softplus(V z, V& sig) {
    V out;
    for (int i = 0; i < kLanes; ++i) {
      out[i] = mambaad::softplus(z[i]);
      sig[i] = mambaad::softplus_grad(z[i]);
    }
    return out;
  }
};

}  // namespace mambaad::cpu
