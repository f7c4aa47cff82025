// Pieces shared by the forward and backward scan kernels: the padded shared-memory layout of a
// chunk, vector loads of a lane's items, the gather-staging of one element, and value conversions.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "device.cuh"
#include "hss_math.h"

namespace mambaad {
namespace scan {

// Steps between two saved states (the chunk of the backward kernel). Must equal
// mambaad_kernels.cuda.CUDA_STATE_CHUNK, which gives the states shape to the fake op.
constexpr int kStateChunk = 128;

// A chunk row of CH steps is stored with 4 pad elements after every 32: pad(t) = t + 4 (t / 32).
// A lane reads its TI consecutive items (TI in 4, 8, 16, 32 divides 32, so they never straddle a
// pad) with 16-byte vector loads. Lane j of a channel starts at float j TI + 4 (j TI / 32), i.e.
// in 16-byte bank group (j TI / 4 + j TI / 32) mod 8: for TI = 4, 8, 16, 32 the 8 lanes of a
// quarter-warp get groups {j}, {0,2,4,6,1,3,5,7}, {0,4,1,5,2,6,3,7}, {j}: all distinct, so the
// loads of one row are free of bank conflicts (lanes of other channels reading the same row get
// the same addresses: a broadcast).
MAMBAAD_DEV int pad(int t) { return t + ((t >> 5) << 2); }
constexpr int padded(int ch) { return ch + ((ch + 31) / 32) * 4; }

// Odd row strides for per-channel parameter rows read by lanes of different channels at once.
MAMBAAD_DEV int odd(int n) { return n | 1; }

template <typename V>
MAMBAAD_DEV V to_acc(float v) { return static_cast<V>(v); }

template <typename A, typename T>
MAMBAAD_DEV A load_as(const T* p) {
  if constexpr (std::is_same_v<T, A>) {
    return *p;
  } else {
    return static_cast<A>(static_cast<float>(*p));
  }
}

template <typename T, typename A>
MAMBAAD_DEV T store_as(A v) {
  if constexpr (std::is_same_v<T, A>) {
    return v;
  } else {
    return static_cast<T>(static_cast<float>(v));
  }
}

// Copy one element src (type T) into shared dst (type A) for a chunk being staged. Same-type
// 4- and 8-byte elements go through cp.async (complete at the next cp_async_wait); 16-bit ones are
// loaded and converted now; a null src stages a zero (a step past L, or a masked channel).
template <typename T, typename A>
MAMBAAD_DEV void stage(A* dst, const T* src) {
  if (src == nullptr) {
    *dst = A(0);
  } else if constexpr (std::is_same_v<T, A> && sizeof(A) == 4) {
    dev::cp_async4(dst, src);
  } else if constexpr (std::is_same_v<T, A> && sizeof(A) == 8) {
    dev::cp_async8(dst, src);
  } else {
    *dst = load_as<A>(src);
  }
}

// Load TI consecutive values from a 16-byte aligned shared address.
template <int TI, typename A>
MAMBAAD_DEV void load_items(const A* p, A (&out)[TI]) {
  static_assert(TI % 4 == 0, "items per lane must be a multiple of 4");
#if defined(MAMBAAD_EMU)
  if (reinterpret_cast<uintptr_t>(p) % 16) emu::fail("unaligned 16-byte shared-memory load");
  for (int i = 0; i < TI; ++i) out[i] = *MAMBAAD_SMEM(p + i, 1);
#else
  if constexpr (std::is_same_v<A, float>) {
#pragma unroll
    for (int i = 0; i < TI; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + i);
      out[i] = v.x;
      out[i + 1] = v.y;
      out[i + 2] = v.z;
      out[i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < TI; i += 2) {
      const double2 v = *reinterpret_cast<const double2*>(p + i);
      out[i] = v.x;
      out[i + 1] = v.y;
    }
  }
#endif
}

template <int TI, typename A>
MAMBAAD_DEV void store_items(A* p, const A (&in)[TI]) {
#if defined(MAMBAAD_EMU)
  if (reinterpret_cast<uintptr_t>(p) % 16) emu::fail("unaligned 16-byte shared-memory store");
  for (int i = 0; i < TI; ++i) *MAMBAAD_SMEM(p + i, 1) = in[i];
#else
  if constexpr (std::is_same_v<A, float>) {
#pragma unroll
    for (int i = 0; i < TI; i += 4) {
      *reinterpret_cast<float4*>(p + i) = make_float4(in[i], in[i + 1], in[i + 2], in[i + 3]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < TI; i += 2) {
      *reinterpret_cast<double2*>(p + i) = make_double2(in[i], in[i + 1]);
    }
  }
#endif
}

// Read a path entry; an index outside [0, L) (a malformed path) is treated as a masked step, so a
// bad path gives wrong numbers but never an out-of-bounds access.
MAMBAAD_DEV int path_at(const int32_t* paths, int64_t k, int t, int L, bool* ok) {
  const int p = dev::ldg(paths + k * L + t);
  *ok = static_cast<unsigned>(p) < static_cast<unsigned>(L);
  return *ok ? p : 0;
}

MAMBAAD_DEV float acc_exp(float x) { return expf(x); }
MAMBAAD_DEV double acc_exp(double x) { return exp(x); }

// delta = softplus(z) (torch's, threshold 20) and its derivative sigmoid(z), from one exponential
// e = exp(-|z|) in (0, 1]: softplus = max(z, 0) + log1p(e) with hss_math.h's log1p_unit (no
// cancellation for small e, unlike log(1 + e)), sigmoid = (z >= 0 ? 1 : e) / (1 + e).
MAMBAAD_DEV void softplus_grad2(float z, float& sp, float& sg) {
  const float e = dev::ex2(-fabsf(z) * kLog2e);
  sp = z > 20.f ? z : fmaxf(z, 0.f) + log1p_unit(e);
  const float r = 1.f / (1.f + e);
  sg = z > 20.f ? 1.f : (z >= 0.f ? r : e * r);
}
MAMBAAD_DEV void softplus_grad2(double z, double& sp, double& sg) {
  sp = softplus(z);
  sg = softplus_grad(z);
}
MAMBAAD_DEV float softplus_fwd(float z) {
  const float e = dev::ex2(-fabsf(z) * kLog2e);
  return z > 20.f ? z : fmaxf(z, 0.f) + log1p_unit(e);
}
MAMBAAD_DEV double softplus_fwd(double z) { return softplus(z); }

// log2(e) and ln(2) in the accumulation type.
template <typename A>
MAMBAAD_DEV A log2e() { return A(1.4426950408889634); }
template <typename A>
MAMBAAD_DEV A ln2() { return A(0.6931471805599453); }

// The per-channel parameters of direction k for the G channels dbase .. dbase + G - 1 into shared
// memory, zero past Dk and in the padding of a row: dt_w rows (stride RP), A_n log2(e) (stride
// NP), the dt bias and D. The kernel's per-channel accumulators are zeroed in the same passes:
// zr (stride RP), zn0 and zn1 (stride NP); a null one is skipped.
template <int G, int NT, typename A, typename Args>
MAMBAAD_DEV void load_channel_params(const Args& p, int k, int dbase, int RP, int NP, A* dtw_s,
                                     A* a2_s, A* dtb_s, A* ds_s, A* zr, A* zn0, A* zn1) {
  for (int e = dev::tid(); e < G * RP; e += NT) {
    const int cl = e / RP, r = e % RP, d = dbase + cl;
    const bool v = d < p.Dk && r < p.R;
    *MAMBAAD_SMEM(dtw_s + e, 1) = v ? p.dtw[(static_cast<int64_t>(k) * p.Dk + d) * p.R + r] : A(0);
    if (zr != nullptr) *MAMBAAD_SMEM(zr + e, 1) = A(0);
  }
  for (int e = dev::tid(); e < G * NP; e += NT) {
    const int cl = e / NP, n = e % NP, d = dbase + cl;
    const bool v = d < p.Dk && n < p.N;
    const int64_t row = static_cast<int64_t>(k) * p.Dk + d;
    *MAMBAAD_SMEM(a2_s + e, 1) = v ? -acc_exp(p.alog[row * p.N + n]) * log2e<A>() : A(0);
    if (zn0 != nullptr) *MAMBAAD_SMEM(zn0 + e, 1) = A(0);
    if (zn1 != nullptr) *MAMBAAD_SMEM(zn1 + e, 1) = A(0);
  }
  for (int cl = dev::tid(); cl < G; cl += NT) {
    const int d = dbase + cl;
    const int64_t row = static_cast<int64_t>(k) * p.Dk + d;
    *MAMBAAD_SMEM(dtb_s + cl, 1) = d < p.Dk ? p.dtb[row] : A(0);
    *MAMBAAD_SMEM(ds_s + cl, 1) = d < p.Dk ? p.ds[row] : A(0);
  }
}

}  // namespace scan
}  // namespace mambaad
