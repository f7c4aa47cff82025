// Data preparation shared by the CPU forward and backward drivers: the lane layouts the scan loops
// read (channels innermost, so the variant's W channels are one vector load), the gathered x_dbl
// rows, and the parameters packed per vector of channels. All in the compute type T (float or
// double). Built for the default target, like the drivers; the scan loops are per ISA (kernels.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"
#include "cpu/kernels.h"

namespace mambaad::cpu {

// Every row of paths must be a permutation of [0, L): the merge writes every grid position once per
// direction, and a bad index would read out of bounds. Returns the inverse permutations, (K, L)
// int32: inv[k][paths[k][t]] = t.
inline at::Tensor paths_inverse(const char* op, const at::Tensor& paths) {
  const at::Tensor pc = paths.contiguous();
  const int64_t K = pc.size(0), L = pc.size(1);
  const int32_t* p = pc.data_ptr<int32_t>();
  at::Tensor inv = at::full({K, L}, -1, pc.options());
  int32_t* ip = inv.data_ptr<int32_t>();
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t t = 0; t < L; ++t) {
      const int64_t v = p[k * L + t];
      TORCH_CHECK_VALUE(v >= 0 && v < L && ip[k * L + v] < 0, op, ": paths[", k,
                        "] is not a permutation of 0 .. L - 1 (entry ", t, " is ", v, ")");
      ip[k * L + v] = static_cast<int32_t>(t);
    }
  }
  return inv;
}

// x (B, D, L), any strides and floating dtype -> (B, L, D + W) in T, channels innermost.
// The W padding channels of each row are left unwritten: the kernels mask them. x already in T
// with unit stride along L (the usual case): the variant's register transposes (run.to_lanes);
// otherwise converted one value at a time.
template <typename T>
at::Tensor to_lanes(const at::Tensor& x, const CpuGeometry& cg, const ScanLoops<T>& run) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  at::Tensor out = at::empty({B, L, cg.Dst}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* o = out.data_ptr<T>();
  const int64_t sb = x.stride(0), sd = x.stride(1), sl = x.stride(2);
  constexpr int64_t PT = kLaneTile, DT = 16;  // tile: positions x channels
  const int64_t npt = (L + PT - 1) / PT;
  if (x.scalar_type() == c10::CppTypeToScalarType<T>::value && sd == 1) {  // channels last: copy rows
    const T* xp = x.data_ptr<T>();
    at::parallel_for(0, B * L, 64, [&](int64_t begin, int64_t end) {
      for (int64_t bp = begin; bp < end; ++bp)
        std::copy_n(xp + bp / L * sb + bp % L * sl, D, o + bp * cg.Dst);
    });
    return out;
  }
  if (x.scalar_type() == c10::CppTypeToScalarType<T>::value && sl == 1) {
    const T* xp = x.data_ptr<T>();
    at::parallel_for(0, B * npt, 1, [&](int64_t begin, int64_t end) { run.to_lanes(xp, sb, sd, cg, o, begin, end); });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "to_lanes", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, B * npt, 1, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t b = idx / npt, p0 = (idx % npt) * PT, p1 = std::min(L, p0 + PT);
        const scalar_t* xb = xp + b * sb;
        T* ob = o + b * L * cg.Dst;
        for (int64_t d0 = 0; d0 < D; d0 += DT) {
          const int64_t d1 = std::min(D, d0 + DT);
          for (int64_t p = p0; p < p1; ++p)
            for (int64_t d = d0; d < d1; ++d) ob[p * cg.Dst + d] = static_cast<T>(xb[d * sd + p * sl]);
        }
      }
    });
  });
  return out;
}

// x_dbl (B, K, C, L) -> (B, K, L, C) in T, gathered in scan order with the rows reordered to
// [B (N) | C (N) | dt (R)]: out[b, k, t] holds x_dbl[b, k, :, paths[k, t]], B_t at offset 0, C_t at
// offset N and dt_t at offset 2N (constant offsets from a step's row when N is known at compile time).
// inv: the inverse paths (paths_inverse). By the variant's register transposes (run.gather_dbl),
// which read along L: an x_dbl with another stride there (the contract asks for a contiguous one)
// is made contiguous first. x_dbl is in T (check_scan_args).
template <typename T>
at::Tensor gather_dbl(const at::Tensor& x_dbl, const at::Tensor& inv, const CpuGeometry& cg, const ScanLoops<T>& run) {
  TORCH_INTERNAL_ASSERT(x_dbl.scalar_type() == c10::CppTypeToScalarType<T>::value);
  const at::Tensor xd = x_dbl.stride(3) == 1 ? x_dbl : x_dbl.contiguous();
  at::Tensor out = at::empty({cg.g.B, cg.g.K, cg.g.L, cg.C}, xd.options());
  const T* xp = xd.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const int32_t* ip = inv.data_ptr<int32_t>();  // (K, L) contiguous
  const int64_t sb = xd.stride(0), sk = xd.stride(1), sc = xd.stride(2);
  at::parallel_for(0, cg.g.B * cg.g.K, 1,
                   [&](int64_t begin, int64_t end) { run.gather_dbl(xp, sb, sk, sc, ip, cg, o, begin, end); });
  return out;
}

// The parameters packed per (k, vector of channels), see ParamVec (steps.h): (K, nvk, PS, W) in T.
template <typename T>
at::Tensor pack_params(const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs,
                       const at::Tensor& Ds, const CpuGeometry& cg) {
  const auto ct = c10::CppTypeToScalarType<T>::value;
  const at::Tensor w = dt_w.to(ct).contiguous(), bias = dt_b.to(ct).contiguous();
  const at::Tensor al = A_logs.to(ct).exp().neg_().contiguous(), dsk = Ds.to(ct).contiguous();  // A
  const T *wp = w.data_ptr<T>(), *bp = bias.data_ptr<T>(), *ap = al.data_ptr<T>(), *dp = dsk.data_ptr<T>();
  const int64_t K = cg.g.K, Dk = cg.g.Dk, N = cg.g.N, R = cg.g.R;
  const int64_t W = cg.W;
  at::Tensor pack = at::zeros({K, cg.nvk, cg.PS, W}, dt_w.options().dtype(ct));
  T* o = pack.data_ptr<T>();
  at::parallel_for(0, K * cg.nvk, 16, [&](int64_t begin, int64_t end) {  // one (k, v) per iteration
    for (int64_t kv = begin; kv < end; ++kv) {
      const int64_t k = kv / cg.nvk, v = kv % cg.nvk;
      T* base = o + kv * cg.PS * W;
      for (int i = 0; i < cg.nvalid(v); ++i) {
        const int64_t d = v * W + i, row = k * Dk + d;  // parameter row of (k, d)
        for (int64_t n = 0; n < N; ++n) {
          const T a = ap[row * N + n];
          base[n * W + i] = a * a_scale<T>();
          base[(N + n) * W + i] = a;
        }
        for (int64_t r = 0; r < R; ++r) base[(2 * N + r) * W + i] = wp[(k * Dk + d) * R + r];
        base[(2 * N + R) * W + i] = bp[k * Dk + d];
        base[(2 * N + R + 1) * W + i] = dp[row];
      }
    }
  });
  return pack;
}

}  // namespace mambaad::cpu
