// SIMD helpers of the CPU scan kernels: GCC / Clang vector extensions of W lanes (the compiler emits
// SSE2, AVX2, AVX-512 or NEON from them, as the including translation unit's target says), a
// vectorised 2^y and softplus for float, and per-lane scalar libm for double (the float64 path
// exists for gradcheck, not for speed).
//
// A vector holds W channels of one direction (the kernels vectorise over channels, looping over the
// N states with the state in registers), so one step needs no horizontal reduction.
//
// Only for the per-ISA translation units (isa_*.cpp through isa_kernels.h): everything is in the
// namespace MAMBAAD_ISA, so that the variants' templates are distinct symbols.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "hss_math.h"

#if !defined(MAMBAAD_ISA)
#error "cpu/simd.h is compiled per instruction set: include it through cpu/isa_kernels.h"
#endif

namespace mambaad::cpu::MAMBAAD_ISA {

// This variant's copy of the per-lane maths (exp2_reduced, log1p_unit, step_decayed,
// step_backward), compiled for its target: see lane_math.h.
#include "lane_math.h"

template <typename T, int W>
struct VecTraits {
  typedef T V __attribute__((vector_size(W * sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I
      __attribute__((vector_size(W * sizeof(T))));
};

template <typename T, int W>
using Vec = typename VecTraits<T, W>::V;  // W values of T
template <typename T, int W>
using VecI = typename VecTraits<T, W>::I;  // lane masks: all ones or zero

template <typename T, int W>
inline Vec<T, W> vload(const T* p) {
  Vec<T, W> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, int W>
inline void vstore(T* p, Vec<T, W> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Store the first n lanes only (n <= W).
template <typename T, int W>
inline void vstore_n(T* p, Vec<T, W> v, int n) {
  if (n == W) {
    vstore<T, W>(p, v);
    return;
  }
  for (int i = 0; i < n; ++i) p[i] = v[i];
}

// Whether vstream<T, W> is a non-temporal store: one whole 64-byte line per vector (AVX-512, float).
template <typename T, int W>
inline constexpr bool kStreamStore =
#if MAMBAAD_ISA_AVX512
    std::is_same_v<T, float> && W == 16;
#else
    false;
#endif

// Store a vector past the caches where kStreamStore (p 64-byte aligned): for rows written once at
// scattered places and read back by a later pass, whose lines need not be read for ownership first
// nor evict the working set. A plain store otherwise. stream_fence orders these stores before the
// thread's later ones (before another thread reads them).
template <typename T, int W>
inline void vstream(T* p, Vec<T, W> v) {
#if MAMBAAD_ISA_AVX512
  if constexpr (kStreamStore<T, W>) {
    _mm512_stream_ps(p, (__m512)v);
    return;
  }
#endif
  vstore<T, W>(p, v);
}

inline void stream_fence() {
#if MAMBAAD_ISA_AVX512
  _mm_sfence();
#endif
}

template <typename T, int W>
inline Vec<T, W> vsplat(T s) {
  return Vec<T, W>{} + s;
}

// Mask with the first n lanes set.
template <typename T, int W>
inline VecI<T, W> lane_mask(int n) {
  VecI<T, W> m;
  for (int i = 0; i < W; ++i) m[i] = i < n ? -1 : 0;
  return m;
}

// Lanes outside the mask become +0 (whatever they held, NaN included).
template <typename V, typename I>
inline V vmask(V v, I m) {
  return (V)((I)v & m);
}

// max(a, b), NaN in a propagates. One vmaxps where the variant has it, instead of the compare and
// blend GCC makes of the generic form (maxps returns its second operand when either is NaN: a goes
// second).
template <typename V>
inline V vmax(V a, V b) {
#if MAMBAAD_ISA_AVX512
  if constexpr (sizeof(V) == 64 && std::is_same_v<decltype(a[0] + 0), float>)
    return (V)_mm512_mask_max_ps((__m512)b, (__mmask16)0xffff, (__m512)b, (__m512)a);  // no undefined source
#endif
#if MAMBAAD_ISA_AVX2
  if constexpr (sizeof(V) == 32 && std::is_same_v<decltype(a[0] + 0), float>)
    return (V)_mm256_max_ps((__m256)b, (__m256)a);
#endif
  return a < b ? b : a;
}

// |a|: clear the sign bits.
template <int W>
inline Vec<float, W> vabs(Vec<float, W> a) {
  return (Vec<float, W>)((VecI<float, W>)a & 0x7fffffff);
}
template <int W>
inline Vec<double, W> vabs(Vec<double, W> a) {
  return (Vec<double, W>)((VecI<double, W>)a & 0x7fffffffffffffffLL);
}

namespace detail {

// One stage of transpose_square: rows i and j = i + H exchange their off-diagonal H x H blocks
// (lane e of row i with e & H set takes row j's lane e - H, and row j's lane e without it row i's
// lane e + H). Two-source shuffles with constant indices.
template <int H, typename V, typename I, std::size_t... E>
inline void swap_blocks(V& a, V& b, std::index_sequence<E...>) {
  constexpr int W = sizeof...(E);
#if defined(__clang__)
  const V lo = __builtin_shufflevector(a, b, ((E & H) ? int(W + E - H) : int(E))...);
  const V hi = __builtin_shufflevector(a, b, ((E & H) ? int(W + E) : int(E + H))...);
#else
  const V lo = __builtin_shuffle(a, b, I{((E & H) ? int(W + E - H) : int(E))...});
  const V hi = __builtin_shuffle(a, b, I{((E & H) ? int(W + E) : int(E + H))...});
#endif
  a = lo;
  b = hi;
}

template <int H, typename T, int W>
inline void transpose_stage(Vec<T, W>* r) {
  if constexpr (H < W) {
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i)
      if (!(i & H)) swap_blocks<H, Vec<T, W>, VecI<T, W>>(r[i], r[i + H], std::make_index_sequence<W>{});
    transpose_stage<2 * H, T, W>(r);
  }
}

}  // namespace detail

// In place: r[i][e] <- r[e][i] for the W x W matrix of the W vectors r[0 .. W) (log2 W stages of W
// shuffles, each swapping one bit of the row index with the same bit of the lane index).
template <typename T, int W>
inline void transpose_square(Vec<T, W>* r) {
  detail::transpose_stage<1, T, W>(r);
}

template <typename T, int W>
inline T hsum(Vec<T, W> v) {
  T s = v[0];
  for (int i = 1; i < W; ++i) s += v[i];
  return s;
}

#if MAMBAAD_ISA_AVX2
// The lane sums of 8 vectors of 8 floats, as one vector: out[j] = sum of the lanes of v[j].
inline Vec<float, 8> transpose_sum8(const Vec<float, 8>* v) {
  const __m256 h01 = _mm256_hadd_ps((__m256)v[0], (__m256)v[1]);
  const __m256 h23 = _mm256_hadd_ps((__m256)v[2], (__m256)v[3]);
  const __m256 h45 = _mm256_hadd_ps((__m256)v[4], (__m256)v[5]);
  const __m256 h67 = _mm256_hadd_ps((__m256)v[6], (__m256)v[7]);
  const __m256 a = _mm256_hadd_ps(h01, h23);  // [v0..v3 partial sums of lanes 0-3 | of lanes 4-7]
  const __m256 b = _mm256_hadd_ps(h45, h67);
  return (Vec<float, 8>)_mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// The same for 8 vectors of 16 floats: the two halves of each added first.
inline Vec<float, 8> transpose_sum8(const Vec<float, 16>* v) {
  Vec<float, 8> halves[8];
  for (int j = 0; j < 8; ++j) {
    Vec<float, 8> lo, hi;
    std::memcpy(&lo, &v[j], sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v[j]) + sizeof(lo), sizeof(hi));
    halves[j] = lo + hi;
  }
  return transpose_sum8(halves);
}
#endif

// out[j] += the sum of the lanes of v[j], for j < n.
template <typename T, int W>
inline void add_lane_sums(const Vec<T, W>* v, int64_t n, T* out) {
  int64_t j = 0;
#if MAMBAAD_ISA_AVX2
  if constexpr (std::is_same_v<T, float> && (W == 8 || W == 16)) {
    for (; j + 8 <= n; j += 8) vstore<float, 8>(out + j, vload<float, 8>(out + j) + transpose_sum8(v + j));
    if (j < n) {  // fewer than 8 left: pad with zero vectors
      Vec<float, W> pad[8] = {};
      for (int64_t m = j; m < n; ++m) pad[m - j] = v[m];
      const Vec<float, 8> sums = transpose_sum8(pad);
      for (int64_t m = j; m < n; ++m) out[m] += sums[m - j];
      return;
    }
  }
#endif
  for (; j < n; ++j) out[j] += hsum<T, W>(v[j]);
}

// Per-type maths. decay(delta, a_s) = exp(delta * A) where a_s is A pre-scaled by a_scale<T>();
// softplus(z) and, for the backward, its derivative sigmoid(z), torch's threshold 20 included.
template <typename T, int W>
struct Math;

template <int W>
struct Math<float, W> {
  using V = Vec<float, W>;
  using I = VecI<float, W>;

  // 2^y for y <= 0 (clamped at kExp2Min): round-to-nearest by the 1.5 * 2^23 trick, the
  // polynomial on the remainder, and the integer part added to the exponent bits.
  template <bool kShort = false>
  static inline V exp2(V y) {
    y = vmax(y, vsplat<float, W>(kExp2Min));
    const V shifter = vsplat<float, W>(12582912.f);  // 1.5 * 2^23: y + shifter holds round(y) in its low bits
    const V t = y + shifter;
    const V n = t - shifter;
    const V p = kShort ? exp2_reduced_short(y - n) : exp2_reduced(y - n);
    return (V)((I)p + ((I)t << 23));  // exponent += round(y); (0x4B400000 << 23) wraps to 0
  }

  static inline V decay(V delta, V a_scaled) { return exp2(delta * a_scaled); }

  // The backward's recomputed decay: the short polynomial (exp2_reduced_short), 9 of the 10
  // FMA-pipe operations of the forward's (t, n) step instead of 10 (see BENCHMARKS.md, issue 20).
  static inline V decay_recompute(V delta, V a_scaled) { return exp2<true>(delta * a_scaled); }

  // softplus(z) = max(z, 0) + log1p(exp(-|z|)) (equals z to float precision above 20, like torch).
  static inline V softplus(V z) {
    const V e = exp2(vabs<W>(z) * -kLog2e);
    return vmax(z, V{}) + log1p_unit(e);
  }

  // softplus(z) and sigmoid(z) = softplus'(z) from one exponential.
  static inline V softplus(V z, V& sig) {
    const V e = exp2(vabs<W>(z) * -kLog2e);
    const V r = 1.f / (1.f + e);
    sig = z >= 0 ? r : e * r;
    return vmax(z, V{}) + log1p_unit(e);
  }
};

template <int W>
struct Math<double, W> {
  using V = Vec<double, W>;

  static inline V decay(V delta, V a) {
    V out;
    for (int i = 0; i < W; ++i) out[i] = std::exp(delta[i] * a[i]);
    return out;
  }

  static inline V decay_recompute(V delta, V a) { return decay(delta, a); }

  static inline V softplus(V z) {
    V out;
    for (int i = 0; i < W; ++i) out[i] = mambaad::softplus(z[i]);
    return out;
  }

  static inline V softplus(V z, V& sig) {
    V out;
    for (int i = 0; i < W; ++i) {
      out[i] = mambaad::softplus(z[i]);
      sig[i] = mambaad::softplus_grad(z[i]);
    }
    return out;
  }
};

}  // namespace mambaad::cpu::MAMBAAD_ISA
