// Data preparation shared by the CPU forward and backward kernels: the lane layouts the scan loops
// read (channels innermost, so kLanes channels are one vector load), the gathered x_dbl rows, and
// the parameters packed per vector of channels. All in the compute type T (float or double).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "cpu/simd.h"

namespace mambaad::cpu {

// Derived sizes of one call, for the CPU kernels.
struct CpuGeometry {
  ScanGeometry g;
  int64_t C;      // R + 2N rows of x_dbl
  int64_t Dst;    // row stride of the lane layouts: D + kLanes (a vector load never leaves the row)
  int64_t nvk;    // vectors of channels per direction: ceil(Dk / kLanes)
  int64_t PS;     // packed parameter values per vector of channels, kLanes each
  int64_t chunk;  // checkpoint interval
  int64_t J;      // checkpoints: ceil(L / chunk)

  CpuGeometry(const ScanGeometry& geo, int64_t chunk_)
      : g(geo), C(geo.dbl_rows()), Dst(geo.D + kLanes), nvk((geo.Dk + kLanes - 1) / kLanes),
        PS(2 * geo.N + geo.R + 2), chunk(chunk_), J(ScanGeometry::n_chunks(geo.L, chunk_)) {}

  int nvalid(int64_t v) const { return static_cast<int>(std::min<int64_t>(kLanes, g.Dk - v * kLanes)); }
};

// Packed parameters of one vector of channels (direction k, channels d = v * kLanes + lane):
// kLanes values each of A * kAScale [N], A [N], dt_w [R], dt_b, Ds; zero in the lanes past Dk.
template <typename T>
struct ParamVec {
  const T* a_scaled;
  const T* a;
  const T* dt_w;
  const T* dt_b;
  const T* d_skip;

  ParamVec(const T* pack, const CpuGeometry& cg, int64_t k, int64_t v) {
    const T* base = pack + (k * cg.nvk + v) * cg.PS * kLanes;
    a_scaled = base;
    a = base + cg.g.N * kLanes;
    dt_w = base + 2 * cg.g.N * kLanes;
    dt_b = dt_w + cg.g.R * kLanes;
    d_skip = dt_b + kLanes;
  }
};

// Every row of paths must be a permutation of [0, L): the merge writes every grid position once per
// direction, and a bad index would read out of bounds.
inline void check_paths_permutation(const char* op, const at::Tensor& paths) {
  const at::Tensor pc = paths.contiguous();
  const int64_t K = pc.size(0), L = pc.size(1);
  const int32_t* p = pc.data_ptr<int32_t>();
  std::vector<char> seen(static_cast<size_t>(L));
  for (int64_t k = 0; k < K; ++k) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t v = p[k * L + t];
      TORCH_CHECK_VALUE(v >= 0 && v < L && !seen[v], op, ": paths[", k,
                        "] is not a permutation of 0 .. L - 1 (entry ", t, " is ", v, ")");
      seen[v] = 1;
    }
  }
}

// x (B, D, L), any strides and floating dtype -> (B, L, D + kLanes) in T, channels innermost.
// The kLanes padding channels of each row are left unwritten: the kernels mask them.
template <typename T>
at::Tensor to_lanes(const at::Tensor& x, const CpuGeometry& cg) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  at::Tensor out = at::empty({B, L, cg.Dst}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* o = out.data_ptr<T>();
  const int64_t sb = x.stride(0), sd = x.stride(1), sl = x.stride(2);
  constexpr int64_t PT = 64, DT = 16;  // tile: positions x channels
  const int64_t npt = (L + PT - 1) / PT;
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
template <typename T>
at::Tensor gather_dbl(const at::Tensor& x_dbl, const at::Tensor& paths, const CpuGeometry& cg) {
  const int64_t B = cg.g.B, K = cg.g.K, L = cg.g.L, C = cg.C, R = cg.g.R;
  at::Tensor out = at::empty({B, K, L, C}, x_dbl.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* o = out.data_ptr<T>();
  const at::Tensor pc = paths.contiguous();
  const int32_t* pp = pc.data_ptr<int32_t>();
  const int64_t sb = x_dbl.stride(0), sk = x_dbl.stride(1), sc = x_dbl.stride(2), sl = x_dbl.stride(3);
  AT_DISPATCH_FLOATING_TYPES(x_dbl.scalar_type(), "gather_dbl", [&] {  // float32 / float64
    const scalar_t* xp = x_dbl.data_ptr<scalar_t>();
    at::parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bk = begin; bk < end; ++bk) {
        const int64_t b = bk / K, k = bk % K;
        const int32_t* path = pp + k * L;
        T* ob = o + bk * L * C;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* row = xp + b * sb + k * sk + c * sc;
          const int64_t col = c < R ? C - R + c : c - R;  // dt rows go last
          for (int64_t t = 0; t < L; ++t) ob[t * C + col] = static_cast<T>(row[path[t] * sl]);
        }
      }
    });
  });
  return out;
}

// The parameters packed per (k, vector of channels), see ParamVec: (K, nvk, PS, kLanes) in T.
template <typename T>
at::Tensor pack_params(const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs,
                       const at::Tensor& Ds, const CpuGeometry& cg) {
  const auto ct = c10::CppTypeToScalarType<T>::value;
  const at::Tensor w = dt_w.to(ct).contiguous(), bias = dt_b.to(ct).contiguous();
  const at::Tensor al = A_logs.to(ct).exp().neg_().contiguous(), dsk = Ds.to(ct).contiguous();  // A
  const T *wp = w.data_ptr<T>(), *bp = bias.data_ptr<T>(), *ap = al.data_ptr<T>(), *dp = dsk.data_ptr<T>();
  const int64_t K = cg.g.K, Dk = cg.g.Dk, N = cg.g.N, R = cg.g.R;
  at::Tensor pack = at::zeros({K, cg.nvk, cg.PS, kLanes}, dt_w.options().dtype(ct));
  T* o = pack.data_ptr<T>();
  at::parallel_for(0, K * cg.nvk, 16, [&](int64_t begin, int64_t end) {  // one (k, v) per iteration
    for (int64_t kv = begin; kv < end; ++kv) {
      const int64_t k = kv / cg.nvk, v = kv % cg.nvk;
      T* base = o + kv * cg.PS * kLanes;
      for (int i = 0; i < cg.nvalid(v); ++i) {
        const int64_t d = v * kLanes + i, row = k * Dk + d;  // parameter row of (k, d)
        for (int64_t n = 0; n < N; ++n) {
          const T a = ap[row * N + n];
          base[n * kLanes + i] = a * static_cast<T>(Math<T>::kAScale);
          base[(N + n) * kLanes + i] = a;
        }
        for (int64_t r = 0; r < R; ++r) base[(2 * N + r) * kLanes + i] = wp[(k * Dk + d) * R + r];
        base[(2 * N + R) * kLanes + i] = bp[k * Dk + d];
        base[(2 * N + R + 1) * kLanes + i] = dp[row];
      }
    }
  });
  return pack;
}

}  // namespace mambaad::cpu
