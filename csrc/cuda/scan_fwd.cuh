// Forward kernel of the fused HSS / GSS scan. The design (block and lane mapping, staging, the
// in-chunk scan, the merge of the K directions, the checkpoints) is written at the top of scan.cu.
#pragma once

#include "scan_common.cuh"

namespace mambaad {
namespace scan {

template <typename T, typename A>
struct FwdArgs {
  const T* x;             // (B, D, L), element strides sxb, sxd, sxl
  int64_t sxb, sxd, sxl;
  const A* xdbl;          // (B, K, C2, L) contiguous in the compute type, C2 = R + 2N
  const A* dtw;           // (K, Dk, R)
  const A* dtb;           // (K, Dk)
  const A* alog;          // (K * Dk, N)
  const A* ds;            // (K * Dk)
  const int32_t* paths;   // (K, L)
  T* out;                 // (B, D, L) contiguous
  A* acc;                 // (B, D, L) fp32 / fp64 accumulator in global memory (may alias out)
  A* states;              // (B, K, Dk, NS, N): the state before step s * kStateChunk
  int B, D, L, K, Dk, R, N, NS;
  int grouped;            // GSS: direction k owns channels k * Dk .. (k + 1) * Dk
  int groups_per_dir;     // blocks along the channels of one direction (HSS: of all D)
  int acc_in_smem;        // accumulate in shared memory (G x L) instead of acc
  int x_channels_fast;    // x has stride_d == 1: stage it with channels fastest
};

// Shared-memory bytes of hss_fwd_kernel<...> for a call; the host uses the same formula.
template <typename A, int NW, int LPC, int TI>
constexpr int64_t fwd_smem_bytes(int R, int N, int L, bool acc_in_smem) {
  constexpr int CH = LPC * TI, G = NW * 32 / LPC, CHP = padded(CH);
  const int64_t c2 = R + 2 * N;
  int64_t words = 2 * c2 * CHP + 2 * static_cast<int64_t>(G) * CHP;         // chunk rows, x / y
  words += static_cast<int64_t>(G) * ((R | 1) + 2 + 2 * (N | 1));             // parameters, carry
  if (acc_in_smem) words += static_cast<int64_t>(G) * L;
  return 2 * CH * 4 + ((words * static_cast<int64_t>(sizeof(A)) + 15) / 16) * 16;
}

template <typename T, typename A, int NW, int LPC, int TI>
struct FwdKernel {
  static constexpr int NT = NW * 32;       // threads per block
  static constexpr int CH = LPC * TI;      // steps per chunk
  static constexpr int CPW = 32 / LPC;     // channels per warp
  static constexpr int G = NW * CPW;       // channels per block
  static constexpr int CHP = padded(CH);   // padded row length
  static_assert(LPC >= 2 && LPC <= 32 && (LPC & (LPC - 1)) == 0, "lanes per channel: power of 2");
  static_assert(TI == 4 || TI == 8 || TI == 16 || TI == 32, "items per lane");

  const FwdArgs<T, A>& p;
  int* idx_s;     // [2][CH]
  A* xd_s;        // [2][C2][CHP]
  A* u_s;         // [2][G][CHP]: x, then y of the chunk
  A* dtw_s;       // [G][RP]
  A* dtb_s;       // [G]
  A* ds_s;        // [G]
  A* a2_s;        // [G][NP]: A * log2(e)
  A* carry_s;     // [G][NP]: the state at the start of the chunk being scanned
  A* acc_s;       // [G][L] or nullptr
  int C2, RP, NP;
  int b, kbeg, kend, dbase;

  MAMBAAD_DEV int64_t channel(int k, int d) const {
    return p.grouped ? static_cast<int64_t>(k) * p.Dk + d : d;
  }

  // Stage chunk c of direction k into buffer buf: path indices, the C2 rows of x_dbl and the x of
  // the block's channels, gathered through the path (no gathered copy in global memory).
  MAMBAAD_DEV void stage_chunk(int buf, int k, int c) const {
    const int t0 = c * CH, tid = dev::tid();
    const A* xdbl = p.xdbl + (static_cast<int64_t>(b) * p.K + k) * C2 * p.L;
    const T* xb = p.x + static_cast<int64_t>(b) * p.sxb;
    constexpr int SPAN = NT < CH ? NT : CH;   // steps one pass of the block covers
    constexpr int TPS = NT / SPAN;            // threads per step
    const int sub = tid / SPAN;
    for (int tt = tid % SPAN; tt < CH; tt += SPAN) {
      const int t = t0 + tt;
      bool ok = false;
      const int pos = t < p.L ? path_at(p.paths, k, t, p.L, &ok) : 0;
      if (sub == 0) *MAMBAAD_SMEM(idx_s + buf * CH + tt, 1) = ok ? pos : -1;
      for (int r = sub; r < C2; r += TPS) {
        stage<A, A>(MAMBAAD_SMEM(xd_s + (buf * C2 + r) * CHP + pad(tt), 1),
                    ok ? xdbl + static_cast<int64_t>(r) * p.L + pos : nullptr);
      }
      if (!p.x_channels_fast) {
        for (int cl = sub; cl < G; cl += TPS) {
          const int d = dbase + cl;
          const bool v = ok && d < p.Dk;
          stage<T, A>(MAMBAAD_SMEM(u_s + (buf * G + cl) * CHP + pad(tt), 1),
                      v ? xb + channel(k, d) * p.sxd + pos * p.sxl : nullptr);
        }
      }
    }
    if (p.x_channels_fast) {  // consecutive threads read consecutive channels of one position
      for (int e = tid; e < G * CH; e += NT) {
        const int cl = e % G, tt = e / G, t = t0 + tt, d = dbase + cl;
        bool ok = false;
        const int pos = t < p.L ? path_at(p.paths, k, t, p.L, &ok) : 0;
        const bool v = ok && d < p.Dk;
        stage<T, A>(MAMBAAD_SMEM(u_s + (buf * G + cl) * CHP + pad(tt), 1),
                    v ? xb + channel(k, d) * p.sxd + pos * p.sxl : nullptr);
      }
    }
  }

  // Per-channel parameters of direction k; the scan of each channel restarts from h = 0.
  MAMBAAD_DEV void load_params(int k) const {
    load_channel_params<G, NT>(p, k, dbase, RP, NP, dtw_s, a2_s, dtb_s, ds_s, static_cast<A*>(nullptr),
                               carry_s, static_cast<A*>(nullptr));
  }

  // The scan of one chunk for this lane's channel: TI consecutive steps per lane, LPC lanes per
  // channel. Leaves y of the lane's steps in u_s (over its own x).
  MAMBAAD_DEV void compute_chunk(int buf, int k, int c) const {
    const int lane = dev::tid() & 31, cl = (dev::tid() >> 5) * CPW + lane / LPC, j = lane % LPC;
    const int d = dbase + cl;
    const bool cvalid = d < p.Dk;
    const int jt = j * TI, tbase = c * CH + jt;
    const A* xd = xd_s + buf * C2 * CHP;
    A* urow = u_s + (buf * G + cl) * CHP + pad(jt);

    // delta = softplus(dt_w . dt + dt_b) of the lane's steps, from the staged dt rows (R <= any)
    A z[TI], delta[TI], du[TI], y[TI], u[TI];
    const A bias = *MAMBAAD_SMEM(dtb_s + cl, 1);
#pragma unroll
    for (int i = 0; i < TI; ++i) z[i] = bias;
    for (int r = 0; r < p.R; ++r) {
      const A w = *MAMBAAD_SMEM(dtw_s + cl * RP + r, 1);
      A dt[TI];
      load_items<TI>(xd + r * CHP + pad(jt), dt);
#pragma unroll
      for (int i = 0; i < TI; ++i) z[i] += w * dt[i];
    }
    load_items<TI>(urow, u);
    const A dskip = *MAMBAAD_SMEM(ds_s + cl, 1);
    A sum_delta = A(0);
#pragma unroll
    for (int i = 0; i < TI; ++i) {
      delta[i] = tbase + i < p.L ? softplus_fwd(z[i]) : A(0);
      du[i] = delta[i] * u[i];
      y[i] = dskip * u[i];
      sum_delta += delta[i];
    }

    // the lane whose first step starts a checkpoint interval saves its incoming states
    A* ckpt = nullptr;
    if (cvalid && tbase < p.L && tbase % kStateChunk == 0) {
      const int64_t row = (static_cast<int64_t>(b) * p.K + k) * p.Dk + d;
      ckpt = p.states + (row * p.NS + tbase / kStateChunk) * p.N;
    }

    for (int n = 0; n < p.N; ++n) {
      const A a2 = *MAMBAAD_SMEM(a2_s + cl * NP + n, 1);
      A bv[TI], a[TI], hb[TI];
      load_items<TI>(xd + (p.R + n) * CHP + pad(jt), bv);
      // local reduce of the lane's steps from h = 0: S = h after its last step
      A s = A(0);
#pragma unroll
      for (int i = 0; i < TI; ++i) {
        a[i] = dev::ex2(delta[i] * a2);
        hb[i] = du[i] * bv[i];
        s = a[i] * s + hb[i];
      }
      A prod = dev::ex2(a2 * sum_delta);  // the product of the lane's decays
      // inclusive scan of (prod, s) over the channel's LPC lanes: (P1, S1) then (P2, S2) is
      // (P1 P2, P2 S1 + S2)
#pragma unroll
      for (int off = 1; off < LPC; off <<= 1) {
        const A pp = dev::shfl_up(prod, off, LPC);
        const A sp = dev::shfl_up(s, off, LPC);
        if (j >= off) {
          s = prod * sp + s;
          prod = prod * pp;
        }
      }
      const A carry = *MAMBAAD_SMEM(carry_s + cl * NP + n, 1);
      const A incl = prod * carry + s;           // state after the lane's last step
      A h = dev::shfl_up(incl, 1, LPC);          // state before the lane's first step
      if (j == 0) h = carry;
      if (ckpt != nullptr) ckpt[n] = h;
      const A last = dev::shfl_idx(incl, LPC - 1, LPC);
      dev::sync_warp();  // every lane has read carry_s[cl][n]
      if (j == 0) *MAMBAAD_SMEM(carry_s + cl * NP + n, 1) = last;
      A cv[TI];
      load_items<TI>(xd + (p.R + p.N + n) * CHP + pad(jt), cv);
#pragma unroll
      for (int i = 0; i < TI; ++i) {
        h = a[i] * h + hb[i];
        y[i] += cv[i] * h;
      }
    }
    store_items<TI>(urow, y);
  }

  // out[b, ch, path[t]] (+)= y: lanes along consecutive steps, so the writes of a warp land on a
  // compact patch of the grid for local paths (Hilbert, z-order, snake). A chunk has G CH = NT TI
  // elements, TI per thread, NT apart. With the accumulator in global memory (out itself, or the
  // fp32 workspace) a thread issues the reads of 4 elements before their writes: in a plain loop
  // each write may alias the next read as far as the compiler knows, so every element would wait
  // for its own global read. (Batches of 4, not TI: holding TI pointers made the TI = 16
  // configurations spill.)
  MAMBAAD_DEV A* merge_dst(int buf, int k, int c, int e, A& v) const {
    const int cl = e / CH, tt = e % CH, t = c * CH + tt, d = dbase + cl;
    v = *MAMBAAD_SMEM(u_s + (buf * G + cl) * CHP + pad(tt), 1);
    if (t >= p.L || d >= p.Dk) return nullptr;
    const int pos = *MAMBAAD_SMEM(idx_s + buf * CH + tt, 1);
    if (pos < 0) return nullptr;
    return p.acc_in_smem ? MAMBAAD_SMEM(acc_s + static_cast<int64_t>(cl) * p.L + pos, 1)
                         : p.acc + (static_cast<int64_t>(b) * p.D + channel(k, d)) * p.L + pos;
  }

  MAMBAAD_DEV void merge_chunk(int buf, int k, int c, bool first) const {
    static_assert(G * CH == NT * TI && TI % 4 == 0, "a chunk is TI elements per thread");
    if (p.acc_in_smem || first) {
      for (int e = dev::tid(); e < G * CH; e += NT) {
        A v;
        A* dst = merge_dst(buf, k, c, e, v);
        if (dst != nullptr) *dst = first ? v : *dst + v;
      }
      return;
    }
#pragma unroll 1
    for (int i0 = 0; i0 < TI; i0 += 4) {
      A* dst[4];
      A val[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) dst[j] = merge_dst(buf, k, c, dev::tid() + (i0 + j) * NT, val[j]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (dst[j] != nullptr) val[j] += *dst[j];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (dst[j] != nullptr) *dst[j] = val[j];
      }
    }
  }

  MAMBAAD_DEV void run() {
    const int nch = (p.L + CH - 1) / CH;
    const int total = (kend - kbeg) * nch;
    stage_chunk(0, kbeg, 0);
    dev::cp_async_commit();
    int it = 0;
    for (int k = kbeg; k < kend; ++k) {
      for (int c = 0; c < nch; ++c, ++it) {
        const int buf = it & 1;
        if (it + 1 < total) {  // prefetch the next chunk into the other buffer
          stage_chunk(buf ^ 1, c + 1 < nch ? k : k + 1, c + 1 < nch ? c + 1 : 0);
        }
        dev::cp_async_commit();
        if (c == 0) load_params(k);
        dev::cp_async_wait<1>();
        dev::sync_block();
        compute_chunk(buf, k, c);
        dev::sync_block();
        merge_chunk(buf, k, c, k == kbeg);
        dev::sync_block();
      }
    }
    // Write out from the accumulator when it is not out itself.
    const bool direct = !p.acc_in_smem && static_cast<void*>(p.acc) == static_cast<void*>(p.out);
    if (direct) return;
    for (int64_t e = dev::tid(); e < static_cast<int64_t>(G) * p.L; e += NT) {
      const int cl = static_cast<int>(e / p.L), l = static_cast<int>(e % p.L), d = dbase + cl;
      if (d >= p.Dk) continue;
      const int64_t ch = channel(kbeg, d);
      const int64_t o = (static_cast<int64_t>(b) * p.D + ch) * p.L + l;
      const A v = p.acc_in_smem ? *MAMBAAD_SMEM(acc_s + e, 1) : p.acc[o];
      p.out[o] = store_as<T>(v);
    }
  }
};

template <typename T, typename A, int NW, int LPC, int TI>
MAMBAAD_KERNEL void MAMBAAD_BOUNDS(NW * 32) hss_fwd_kernel(const FwdArgs<T, A> args) {
  using K = FwdKernel<T, A, NW, LPC, TI>;
  MAMBAAD_DYN_SMEM(smem);
  K kr{args};
  kr.C2 = args.R + 2 * args.N;
  kr.RP = odd(args.R);
  kr.NP = odd(args.N);
  kr.idx_s = reinterpret_cast<int*>(smem);
  kr.xd_s = reinterpret_cast<A*>(smem + 2 * K::CH * 4);
  kr.u_s = kr.xd_s + 2 * kr.C2 * K::CHP;
  kr.dtw_s = kr.u_s + 2 * K::G * K::CHP;
  kr.dtb_s = kr.dtw_s + K::G * kr.RP;
  kr.ds_s = kr.dtb_s + K::G;
  kr.a2_s = kr.ds_s + K::G;
  kr.carry_s = kr.a2_s + K::G * kr.NP;
  kr.acc_s = args.acc_in_smem ? kr.carry_s + K::G * kr.NP : nullptr;
  kr.b = dev::bid_y();
  if (args.grouped) {
    kr.kbeg = dev::bid_x() / args.groups_per_dir;
    kr.kend = kr.kbeg + 1;
    kr.dbase = (dev::bid_x() % args.groups_per_dir) * K::G;
  } else {
    kr.kbeg = 0;
    kr.kend = args.K;
    kr.dbase = dev::bid_x() * K::G;
  }
  kr.run();
}

}  // namespace scan
}  // namespace mambaad
