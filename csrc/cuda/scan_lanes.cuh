// The lane-sequential forward kernel (experimental, opt-in: MAMBAAD_CUDA_FWD=lanes; design in
// scan.cu, section 7). One thread per (b, k, channel) walks the whole sequence with its 16 states
// in registers: no scan across lanes and no shuffles, 16 independent state chains per thread
// (benchmarks/dev/kernel_census.py counts 9.9 instructions per (t, n) step in sm_90 SASS, against 9.1
// to 12.6 for the segment kernels). The K directions
// run in different blocks, so HSS writes one (B, D, L) slice per direction, summed in k order
// afterwards (deterministic; K times the output in extra memory).
#pragma once

#include "scan_fwd.cuh"

namespace mambaad {
namespace scan {

constexpr int kLanesN = 16;  // the state size this kernel holds in registers (MambaAD's d_state)

// The forward's arguments (scan_fwd.cuh; out, acc and the segment kernels' flags unused) and where
// this kernel writes y.
template <typename T>
struct LanesArgs : FwdArgs<T, float> {
  float* y;               // slices: (K, B, D, L), direction k's y; else (B, D, L), the output
  int slices;             // y holds one slice per direction (HSS with K > 1)
};

// Shared-memory bytes of hss_fwd_lanes_kernel<T, G, CH>; the host uses the same formula.
template <int G, int CH>
constexpr int64_t lanes_smem_bytes(int R) {
  constexpr int CHP = CH + 4, UP = CH + 1;
  const int64_t c2 = R + 2 * kLanesN;
  const int64_t words = 2 * c2 * CHP + 2 * static_cast<int64_t>(G) * UP + static_cast<int64_t>(G) * (R | 1);
  return 2 * CH * 4 + ((words * 4 + 15) / 16) * 16;
}

template <typename T, int G, int CH>
struct LanesKernel {
  static constexpr int NT = G;          // one thread per channel
  static constexpr int CHP = CH + 4;    // x_dbl rows: 16-byte aligned, read as broadcasts
  static constexpr int UP = CH + 1;     // x / y rows, one per channel: an odd stride, so the lanes'
                                        // reads of one step hit distinct banks
  static_assert(CH % 4 == 0 && kStateChunk % CH == 0, "chunk: groups of 4 steps, divides the checkpoints");

  const LanesArgs<T>& p;
  int* idx_s;     // [2][CH]
  float* xd_s;    // [2][C2][CHP]
  float* u_s;     // [2][G][UP]: x, then y of the chunk
  float* dtw_s;   // [G][RP]
  int C2, RP;
  int b, k, dbase;

  MAMBAAD_DEV int64_t channel(int d) const {
    return p.grouped ? static_cast<int64_t>(k) * p.Dk + d : d;
  }

  // Stage chunk c into buffer buf: path indices, the C2 rows of x_dbl and the x of the block's
  // channels, each read at its original grid position (consecutive threads take consecutive steps).
  MAMBAAD_DEV void stage_chunk(int buf, int c) const {
    const int t0 = c * CH, tid = dev::tid();
    const float* xdbl = p.xdbl + (static_cast<int64_t>(b) * p.K + k) * C2 * p.L;
    const T* xb = p.x + static_cast<int64_t>(b) * p.sxb;
    for (int e = tid; e < CH; e += NT) {
      bool ok = false;
      const int pos = t0 + e < p.L ? path_at(p.paths, k, t0 + e, p.L, &ok) : 0;
      *MAMBAAD_SMEM(idx_s + buf * CH + e, 1) = ok ? pos : -1;
    }
    for (int e = tid; e < C2 * CH; e += NT) {
      const int r = e / CH, tt = e % CH;
      bool ok = false;
      const int pos = t0 + tt < p.L ? path_at(p.paths, k, t0 + tt, p.L, &ok) : 0;
      stage<float, float>(MAMBAAD_SMEM(xd_s + (buf * C2 + r) * CHP + tt, 1),
                          ok ? xdbl + static_cast<int64_t>(r) * p.L + pos : nullptr);
    }
    for (int e = tid; e < G * CH; e += NT) {
      const int cl = e / CH, tt = e % CH, d = dbase + cl;
      bool ok = false;
      const int pos = t0 + tt < p.L ? path_at(p.paths, k, t0 + tt, p.L, &ok) : 0;
      stage<T, float>(MAMBAAD_SMEM(u_s + (buf * G + cl) * UP + tt, 1),
                      ok && d < p.Dk ? xb + channel(d) * p.sxd + pos * p.sxl : nullptr);
    }
  }

  // y of the chunk, written at the original grid positions (lanes along steps).
  MAMBAAD_DEV void write_chunk(int buf, int c) const {
    for (int e = dev::tid(); e < G * CH; e += NT) {
      const int cl = e / CH, tt = e % CH, d = dbase + cl;
      if (c * CH + tt >= p.L || d >= p.Dk) continue;
      const int pos = *MAMBAAD_SMEM(idx_s + buf * CH + tt, 1);
      if (pos < 0) continue;
      int64_t o = (static_cast<int64_t>(b) * p.D + channel(d)) * p.L + pos;
      if (p.slices) o += static_cast<int64_t>(k) * p.B * p.D * p.L;
      p.y[o] = *MAMBAAD_SMEM(u_s + (buf * G + cl) * UP + tt, 1);
    }
  }

  MAMBAAD_DEV void run() {
    const int tid = dev::tid(), d = dbase + tid;
    const bool dvalid = d < p.Dk;
    const int64_t row = static_cast<int64_t>(k) * p.Dk + (dvalid ? d : 0);
    // this lane's parameters: A log2(e) and the states in registers, dt_w in shared memory
    float a2[kLanesN], h[kLanesN];
#pragma unroll
    for (int n = 0; n < kLanesN; ++n) {
      a2[n] = dvalid ? -acc_exp(p.alog[row * kLanesN + n]) * log2e<float>() : 0.f;
      h[n] = 0.f;
    }
    for (int r = 0; r < p.R; ++r) {
      *MAMBAAD_SMEM(dtw_s + tid * RP + r, 1) = dvalid ? p.dtw[row * p.R + r] : 0.f;
    }
    const float bias = dvalid ? p.dtb[row] : 0.f, dskip = dvalid ? p.ds[row] : 0.f;
    float* ckpt = p.states + ((static_cast<int64_t>(b) * p.K + k) * p.Dk + (dvalid ? d : 0)) * p.NS * kLanesN;

    const int nch = (p.L + CH - 1) / CH;
    stage_chunk(0, 0);
    dev::cp_async_commit();
    for (int c = 0; c < nch; ++c) {
      const int buf = c & 1;
      if (c + 1 < nch) stage_chunk(buf ^ 1, c + 1);
      dev::cp_async_commit();
      dev::cp_async_wait<1>();
      dev::sync_block();  // chunk c staged (and dt_w, at c = 0)
      const float* xd = xd_s + buf * C2 * CHP;
      float* urow = u_s + (buf * G + tid) * UP;
      for (int t4 = 0; t4 < CH; t4 += 4) {
        const int t = c * CH + t4;
        if (t >= p.L) break;
        if (t % kStateChunk == 0 && dvalid) {  // the state before step t, for the backward
#pragma unroll
          for (int n = 0; n < kLanesN; ++n) ckpt[(t / kStateChunk) * kLanesN + n] = h[n];
        }
        float z[4] = {bias, bias, bias, bias};
        for (int r = 0; r < p.R; ++r) {
          const float w = *MAMBAAD_SMEM(dtw_s + tid * RP + r, 1);
          float dt[4];
          load_items<4>(xd + r * CHP + t4, dt);
#pragma unroll
          for (int i = 0; i < 4; ++i) z[i] += w * dt[i];
        }
        float delta[4], du[4], y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float u = *MAMBAAD_SMEM(urow + t4 + i, 1);
          delta[i] = t + i < p.L ? softplus_fwd(z[i]) : 0.f;
          du[i] = delta[i] * u;
          y[i] = dskip * u;
        }
#pragma unroll
        for (int n = 0; n < kLanesN; ++n) {
          float bv[4], cv[4];
          load_items<4>(xd + (p.R + n) * CHP + t4, bv);
          load_items<4>(xd + (p.R + kLanesN + n) * CHP + t4, cv);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            h[n] = dev::ex2(delta[i] * a2[n]) * h[n] + du[i] * bv[i];
            y[i] += cv[i] * h[n];
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) *MAMBAAD_SMEM(urow + t4 + i, 1) = y[i];
      }
      dev::sync_block();  // every lane's y of chunk c is in u_s
      write_chunk(buf, c);
      dev::sync_block();  // buffer buf is free for chunk c + 2
    }
  }
};

template <typename T, int G, int CH>
MAMBAAD_KERNEL void MAMBAAD_BOUNDS(G) hss_fwd_lanes_kernel(const LanesArgs<T> args) {
  using K = LanesKernel<T, G, CH>;
  MAMBAAD_DYN_SMEM(smem);
  K kr{args};
  kr.C2 = args.R + 2 * kLanesN;
  kr.RP = odd(args.R);
  kr.idx_s = reinterpret_cast<int*>(smem);
  kr.xd_s = reinterpret_cast<float*>(smem + 2 * CH * 4);
  kr.u_s = kr.xd_s + 2 * kr.C2 * K::CHP;
  kr.dtw_s = kr.u_s + 2 * G * K::UP;
  kr.dbase = dev::bid_x() * G;
  kr.k = dev::bid_y();
  kr.b = dev::bid_z();
  kr.run();
}

}  // namespace scan
}  // namespace mambaad
