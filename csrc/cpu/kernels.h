// The interface between the CPU scan drivers (scan_fwd.cpp, scan_bwd.cpp: argument checks, layouts,
// threads, built once with the default flags) and the scan loops, which are compiled once per
// instruction set (isa_*.cpp, from the one source isa_kernels.h with the lane count W as a template
// parameter) and chosen at run time (dispatch.cpp). Nothing here includes ATen: the per-ISA
// translation units include this header and the standard headers before they switch the target, so
// that no inline code shared with other translation units is compiled for a wider instruction set.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "hss_math.h"

namespace mambaad::cpu {

// Derived sizes of one call, for a variant with W channels per vector.
struct CpuGeometry {
  ScanGeometry g;
  int64_t W;      // channels per SIMD vector (the variant's lane count)
  int64_t C;      // R + 2N rows of x_dbl
  int64_t Dst;    // row stride of the lane layouts: D + W (a vector load never leaves the row)
  int64_t nvk;    // vectors of channels per direction: ceil(Dk / W)
  int64_t PS;     // packed parameter values per vector of channels, W each
  int64_t chunk;  // checkpoint interval
  int64_t J;      // checkpoints: ceil(L / chunk)

  CpuGeometry(const ScanGeometry& geo, int64_t chunk_, int64_t lanes)
      : g(geo), W(lanes), C(geo.dbl_rows()), Dst(geo.D + lanes), nvk((geo.Dk + lanes - 1) / lanes),
        PS(2 * geo.N + geo.R + 2), chunk(chunk_), J(ScanGeometry::n_chunks(geo.L, chunk_)) {}

  int nvalid(int64_t v) const { return static_cast<int>(std::min<int64_t>(W, g.Dk - v * W)); }
};

// The factor the packed A carries (ParamVec::a_scaled): log2(e) for float, whose kernels take
// 2^(delta A log2 e) by a polynomial; 1 for double, which calls exp.
template <typename T>
constexpr T a_scale() {
  return sizeof(T) == sizeof(float) ? static_cast<T>(kLog2e) : T(1);
}

template <typename T>
struct FwdCtx {
  CpuGeometry cg;
  const T* xT;           // (B, L, Dst) x in lane layout
  const T* xdT;          // (B, K, L, C) x_dbl gathered in scan order
  const T* pack;         // packed parameters (prep.h)
  const int32_t* paths;  // (K, L)
  T* states;             // (B, K, Dk, J, N)
  T* out;                // (B, D, L) contiguous
};

template <typename T>
struct BwdCtx {
  CpuGeometry cg;
  const T* xT;           // (B, L, Dst) x in lane layout
  const T* gT;           // (B, L, Dst) dout in lane layout
  const T* xdT;          // (B, K, L, C) x_dbl gathered in scan order, rows [B | C | dt]
  const T* pack;         // packed parameters (prep.h)
  const int32_t* paths;  // (K, L)
  const int32_t* inv_paths;  // (K, L): inv_paths[k][paths[k][t]] = t
  const T* states;       // (B, K, Dk, J, N)
  T* pgrad;              // (B, K, nvk, N + R + 2, W): dA, d_dt_w, d_dt_b, d_Ds per batch
  int64_t G;             // channel groups per (b, k)
  // The call's batches run in waves of Bw (the last may be smaller), so that the wave's du stays
  // in the caches; b0: the wave's first batch. Tasks [0, nb * K * G) of a wave of nb batches.
  int64_t b0, Bw;
  T* dub;                // (Bw, KD, L, Dst) du at grid positions, KD = K (HSS) or 1 (grouped)
  T* dxdbl;              // (G, Bw, K, C, L): dx_dbl partials per channel group (the output from b0 if G = 1)
};

// Grid positions per item of ScanLoops::to_lanes.
inline constexpr int64_t kLaneTile = 64;

// Where param_grads writes: the gradients of dt_w (K * Dk, R), dt_b, A_logs (K * Dk, N) and Ds,
// contiguous.
template <typename T>
struct ParamGradOut {
  T* dt_w;
  T* dt_b;
  T* A_logs;
  T* Ds;
};

// The scan loops of one element type in one variant. Tasks are numbered as the drivers split them
// over threads: forward (b, [k when grouped,] channel vector), backward (b - b0, k, channel group).
template <typename T>
struct ScanLoops {
  // Forward tasks [begin, end): scan, merge the directions, write out and the checkpoints. acc:
  // L * W values of scratch.
  void (*fwd)(const FwdCtx<T>& c, int64_t begin, int64_t end, T* acc);
  // Bytes of scratch per thread for the backward (64-byte aligned), and the backward tasks.
  size_t (*bwd_scratch_bytes)(const CpuGeometry& cg, int64_t max_vectors);
  void (*bwd)(const BwdCtx<T>& c, int64_t begin, int64_t end, void* scratch);
  // dx = the sum over the KD direction rows of du (BwdCtx::dub), for the (batch, 64-position tile)
  // items [begin, end); tile: 64 * 64 values of scratch.
  void (*reduce_dx)(const T* dub, int64_t KD, const CpuGeometry& cg, T* dx, int64_t begin, int64_t end, T* tile);
  // The lane layout (prep.h: to_lanes) of x (B, D, L) already in T with unit stride along L (batch
  // and channel strides sb, sd): out (B, L, Dst), for the (batch, tile of kLaneTile positions)
  // items [begin, end).
  void (*to_lanes)(const T* x, int64_t sb, int64_t sd, const CpuGeometry& cg, T* out, int64_t begin, int64_t end);
  // x_dbl (B, K, C, L) in T with unit stride along L (batch, direction and row strides sb, sk, sc)
  // gathered in scan order with its rows reordered (prep.h: gather_dbl): out (B, K, L, C), for
  // the (b, k) items [begin, end); inv: the inverse paths.
  void (*gather_dbl)(const T* x_dbl, int64_t sb, int64_t sk, int64_t sc, const int32_t* inv, const CpuGeometry& cg,
                     T* out, int64_t begin, int64_t end);
  // The parameter gradients from the backward's per-batch partials (BwdCtx::pgrad, B of them) and
  // the packed parameters, for the (k, channel vector) items [begin, end).
  void (*param_grads)(const T* pgrad, const T* pack, const CpuGeometry& cg, ParamGradOut<T> out, int64_t begin,
                      int64_t end);
};

// One compiled variant (dispatch.cpp lists them).
struct IsaVariant {
  const char* name;       // "avx512", "avx2", "baseline" (x86-64), "neon" (aarch64), ...
  int lanes;              // W: float channels per vector
  bool automatic;         // chosen without being asked for when the CPU supports it
  bool (*supported)();    // does this CPU (and its OS) run it
  const ScanLoops<float>* f32;
  const ScanLoops<double>* f64;
};

// The loops of each variant, defined in isa_*.cpp (the x86 ones on x86-64 only).
#define MAMBAAD_DECLARE_ISA(ns)                  \
  namespace ns {                                 \
  extern const ScanLoops<float> loops_f32;       \
  extern const ScanLoops<double> loops_f64;      \
  }
MAMBAAD_DECLARE_ISA(baseline)
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#define MAMBAAD_X86_VARIANTS 1
MAMBAAD_DECLARE_ISA(avx2)
MAMBAAD_DECLARE_ISA(avx512)
MAMBAAD_DECLARE_ISA(avx2_16)
#endif
#undef MAMBAAD_DECLARE_ISA

}  // namespace mambaad::cpu
