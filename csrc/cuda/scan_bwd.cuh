// Backward kernel of the fused HSS / GSS scan, and the deterministic reduction that finishes it.
// The design is written at the top of scan.cu.
#pragma once

#include "scan_common.cuh"

namespace mambaad {
namespace scan {

// Where a gradient that several blocks contribute to goes.
enum GradMode : int {
  kStore = 0,    // one block writes each element: store into the output
  kPartial = 1,  // one slice per contributor, summed in a fixed order by sum_slices_kernel
  kAtomic = 2,   // atomicAdd into a zeroed output (deterministic=False)
};

template <typename T, typename A>
struct BwdArgs {
  const T* dout;          // (B, D, L), element strides sgb, sgd, sgl
  int64_t sgb, sgd, sgl;
  const T* x;             // (B, D, L), element strides sxb, sxd, sxl
  int64_t sxb, sxd, sxl;
  const A* xdbl;          // (B, K, C2, L) contiguous in the compute type
  const A* states;        // (B, K, Dk, NS, N), NS = ceil(L / CH)
  const A* dtw;           // (K, Dk, R)
  const A* dtb;           // (K, Dk)
  const A* alog;          // (K * Dk, N)
  const A* ds;            // (K * Dk)
  const int32_t* paths;   // (K, L)
  A* dx;                  // kStore: (B, D, L); kPartial: (K, B, D, L); kAtomic: (B, D, L) zeroed
  A* dxdbl;               // kStore: (B, K, C2, L); kPartial: (NG, B, K, C2, L); kAtomic: zeroed
  A* p_dtw;               // (B, K * Dk * R): this batch element's share of d dt_projs_weight
  A* p_dA;                // (B, K * Dk * N): of d A_logs
  A* p_db;                // (B, K * Dk): of d dt_projs_bias
  A* p_dD;                // (B, K * Dk): of d Ds
  int B, D, L, K, Dk, R, N, NS, NG;
  int grouped;
  int dx_mode, dxdbl_mode;
  int g_channels_fast;    // dout has stride_d == 1: stage it with channels fastest
};

template <typename A, int NW, int LPC, int TI>
constexpr int64_t bwd_smem_bytes(int R, int N) {
  constexpr int CH = LPC * TI, G = NW * 32 / LPC, CHP = padded(CH);
  const int64_t c2 = R + 2 * N;
  int64_t words = c2 * CHP + 4 * static_cast<int64_t>(G) * CHP;    // chunk rows, g, sigma, reduce
  words += static_cast<int64_t>(G) * (4 * (N | 1) + 2 * (R | 1) + 2);
  return CH * 4 + ((words * static_cast<int64_t>(sizeof(A)) + 15) / 16) * 16;
}

template <typename T, typename A, int NW, int LPC, int TI>
struct BwdKernel {
  static constexpr int NT = NW * 32, CH = LPC * TI, CPW = 32 / LPC, G = NW * CPW;
  static constexpr int CHP = padded(CH);
  static_assert(LPC >= 2 && LPC <= 32 && (LPC & (LPC - 1)) == 0, "lanes per channel: power of 2");
  static_assert(TI == 4 || TI == 8 || TI == 16 || TI == 32, "items per lane");

  const BwdArgs<T, A>& p;
  int* idx_s;     // [CH]
  A* xd_s;        // [C2][CHP]
  A* g_s;         // [G][CHP]: dout, then d x of the chunk
  A* sg_s;        // [G][CHP]: sigmoid(z), then d z
  A* red_s;       // [2][G][CHP]: per-channel d B, d C of one state n
  A* h0_s;        // [G][NP]: checkpoint state at the chunk start
  A* carry_s;     // [G][NP]: A_bar dh at the first step of the chunk after this one
  A* dA_s;        // [G][NP]: d A accumulated over the block's chunks
  A* a2_s;        // [G][NP]: A * log2(e)
  A* dtw_s;       // [G][RP]
  A* dtwacc_s;    // [G][RP]: d dt_projs_weight accumulated over chunks
  A* dtb_s;       // [G]
  A* ds_s;        // [G]
  int C2, RP, NP;
  int b, k, g, dbase;

  MAMBAAD_DEV int64_t channel(int d) const {
    return p.grouped ? static_cast<int64_t>(k) * p.Dk + d : d;
  }

  MAMBAAD_DEV void load_params() const {
    load_channel_params<G, NT>(p, k, dbase, RP, NP, dtw_s, a2_s, dtb_s, ds_s, dtwacc_s, carry_s, dA_s);
  }

  // Stage chunk c: path indices, the C2 rows of x_dbl and dout of the block's channels gathered
  // through the path, and the checkpoint state of every channel at the chunk start.
  MAMBAAD_DEV void stage_chunk(int c) const {
    const int t0 = c * CH, tid = dev::tid();
    const A* xdbl = p.xdbl + (static_cast<int64_t>(b) * p.K + k) * C2 * p.L;
    const T* gb = p.dout + static_cast<int64_t>(b) * p.sgb;
    constexpr int SPAN = NT < CH ? NT : CH, TPS = NT / SPAN;
    const int sub = tid / SPAN;
    for (int tt = tid % SPAN; tt < CH; tt += SPAN) {
      const int t = t0 + tt;
      bool ok = false;
      const int pos = t < p.L ? path_at(p.paths, k, t, p.L, &ok) : 0;
      if (sub == 0) *MAMBAAD_SMEM(idx_s + tt, 1) = ok ? pos : -1;
      for (int r = sub; r < C2; r += TPS) {
        stage<A, A>(MAMBAAD_SMEM(xd_s + r * CHP + pad(tt), 1),
                    ok ? xdbl + static_cast<int64_t>(r) * p.L + pos : nullptr);
      }
      if (!p.g_channels_fast) {
        for (int cl = sub; cl < G; cl += TPS) {
          const int d = dbase + cl;
          stage<T, A>(MAMBAAD_SMEM(g_s + cl * CHP + pad(tt), 1),
                      ok && d < p.Dk ? gb + channel(d) * p.sgd + pos * p.sgl : nullptr);
        }
      }
    }
    if (p.g_channels_fast) {
      for (int e = tid; e < G * CH; e += NT) {
        const int cl = e % G, tt = e / G, t = t0 + tt, d = dbase + cl;
        bool ok = false;
        const int pos = t < p.L ? path_at(p.paths, k, t, p.L, &ok) : 0;
        stage<T, A>(MAMBAAD_SMEM(g_s + cl * CHP + pad(tt), 1),
                    ok && d < p.Dk ? gb + channel(d) * p.sgd + pos * p.sgl : nullptr);
      }
    }
    for (int e = tid; e < G * p.N; e += NT) {
      const int cl = e / p.N, n = e % p.N, d = dbase + cl;
      const int64_t row = (static_cast<int64_t>(b) * p.K + k) * p.Dk + d;
      stage<A, A>(MAMBAAD_SMEM(h0_s + cl * NP + n, 1),
                  d < p.Dk ? p.states + (row * p.NS + c) * p.N + n : nullptr);
    }
  }

  // x at the lane's steps, read from global memory through the staged path indices.
  MAMBAAD_DEV void load_u(int jt, int tbase, int d, A (&u)[TI]) const {
    const T* xb = p.x + static_cast<int64_t>(b) * p.sxb + channel(d) * p.sxd;
#pragma unroll
    for (int i = 0; i < TI; ++i) {
      const int pos = *MAMBAAD_SMEM(idx_s + jt + i, 1);
      u[i] = (d < p.Dk && tbase + i < p.L && pos >= 0) ? load_as<A>(xb + pos * p.sxl) : A(0);
    }
  }

  MAMBAAD_DEV A* dxdbl_at(int row, int pos) const {
    const int64_t bk = static_cast<int64_t>(b) * p.K + k;
    int64_t o = (bk * C2 + row) * p.L + pos;
    if (p.dxdbl_mode == kPartial) o += static_cast<int64_t>(g) * p.B * p.K * C2 * p.L;
    return p.dxdbl + o;
  }

  MAMBAAD_DEV void put(A* dst, A v, int mode) const {
    if (mode == kAtomic) {
      dev::atomic_add(dst, v);
    } else {
      *dst = v;
    }
  }

  // Sum the per-channel d B and d C of state n over the block's channels (fixed order) and write
  // them to rows R + n and R + N + n of d x_dbl at the original grid positions.
  MAMBAAD_DEV void reduce_bc(int c, int n) const {
    constexpr int ENTRIES = 2 * CH;
    constexpr int SPLIT = NT >= ENTRIES ? (NT / ENTRIES > 32 ? 32 : NT / ENTRIES) : 1;
    constexpr int USED = SPLIT * ENTRIES < NT ? SPLIT * ENTRIES : NT;
    for (int base = 0; base < ENTRIES * SPLIT; base += USED) {
      const int v = base + dev::tid();
      const bool active = dev::tid() < USED && v < ENTRIES * SPLIT;
      const int e = v / SPLIT, part = v % SPLIT;
      const int which = e / CH, tt = e % CH;
      A s = A(0);
      if (active) {
        const A* col = red_s + which * G * CHP + pad(tt);
        for (int cl = part; cl < G; cl += SPLIT) s += *MAMBAAD_SMEM(col + cl * CHP, 1);
      }
#pragma unroll
      for (int off = 1; off < SPLIT; off <<= 1) s += dev::shfl_xor(s, off, SPLIT);
      const int t = c * CH + tt;
      if (active && part == 0 && t < p.L) {
        const int pos = *MAMBAAD_SMEM(idx_s + tt, 1);
        if (pos >= 0) put(dxdbl_at(p.R + which * p.N + n, pos), s, p.dxdbl_mode);
      }
    }
  }

  MAMBAAD_DEV void compute_chunk(int c, A& db_acc, A& dD_acc) const {
    const int lane = dev::tid() & 31, cl = (dev::tid() >> 5) * CPW + lane / LPC, j = lane % LPC;
    const int d = dbase + cl;
    const int jt = j * TI, tbase = c * CH + jt;
    A* grow = g_s + cl * CHP + pad(jt);
    A* sgrow = sg_s + cl * CHP + pad(jt);

    A delta[TI], du[TI], dub[TI], dda[TI];
    A sum_delta = A(0);
    {
      A z[TI], u[TI], gv[TI], sg[TI];
      const A bias = *MAMBAAD_SMEM(dtb_s + cl, 1);
#pragma unroll
      for (int i = 0; i < TI; ++i) z[i] = bias;
      for (int r = 0; r < p.R; ++r) {
        const A w = *MAMBAAD_SMEM(dtw_s + cl * RP + r, 1);
        A dt[TI];
        load_items<TI>(xd_s + r * CHP + pad(jt), dt);
#pragma unroll
        for (int i = 0; i < TI; ++i) z[i] += w * dt[i];
      }
      load_u(jt, tbase, d, u);
      load_items<TI>(grow, gv);
#pragma unroll
      for (int i = 0; i < TI; ++i) {
        const bool valid = tbase + i < p.L;
        A sp, sgi;
        softplus_grad2(z[i], sp, sgi);
        delta[i] = valid ? sp : A(0);
        sg[i] = valid ? sgi : A(0);
        du[i] = delta[i] * u[i];
        dub[i] = A(0);
        dda[i] = A(0);
        sum_delta += delta[i];
        dD_acc += gv[i] * u[i];
      }
      store_items<TI>(sgrow, sg);
    }

    for (int n = 0; n < p.N; ++n) {
      const A a2 = *MAMBAAD_SMEM(a2_s + cl * NP + n, 1);
      const A an = a2 * ln2<A>();  // A_n
      const A* brow = xd_s + (p.R + n) * CHP + pad(jt);
      const A* crow = xd_s + (p.R + p.N + n) * CHP + pad(jt);
      A a[TI], h[TI];
      // P1: decays and input terms of the lane's steps; s = state after them from h = 0
      A s = A(0);
#pragma unroll
      for (int q = 0; q < TI; q += 4) {
        A bv[4];
        load_items<4>(brow + q, bv);
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
          const int i = q + ii;
          a[i] = dev::ex2(delta[i] * a2);
          h[i] = du[i] * bv[ii];
          s = a[i] * s + h[i];
        }
      }
      // scan 1: the state before the lane's first step, from the checkpoint of the chunk
      const A lane_prod = dev::ex2(a2 * sum_delta);
      A prod = lane_prod;
#pragma unroll
      for (int off = 1; off < LPC; off <<= 1) {
        const A pp = dev::shfl_up(prod, off, LPC);
        const A sp = dev::shfl_up(s, off, LPC);
        if (j >= off) {
          s = prod * sp + s;
          prod = prod * pp;
        }
      }
      const A h0 = *MAMBAAD_SMEM(h0_s + cl * NP + n, 1);
      A hin = dev::shfl_up(prod * h0 + s, 1, LPC);
      if (j == 0) hin = h0;
      // P2: the states h_t after each step
      {
        A hc = hin;
#pragma unroll
        for (int i = 0; i < TI; ++i) {
          hc = a[i] * hc + h[i];
          h[i] = hc;
        }
      }
      // P3: reverse recurrence dh_t = g_t C_t + A_bar_{t+1} dh_{t+1}. A lane maps the value X
      // arriving from its right (A_bar dh of the next step) to X_out = A_bar_0 dh_0 at its first
      // step: X_out = lane_prod X + a_0 sr, sr = sum_i (prod_{m=1..i} a_m) g_i C_i.
      A sr = A(0);
#pragma unroll
      for (int q = TI - 4; q >= 0; q -= 4) {
        A gv[4], cv[4];
        load_items<4>(grow + q, gv);
        load_items<4>(crow + q, cv);
#pragma unroll
        for (int ii = 3; ii >= 0; --ii) {
          const int i = q + ii;
          sr = gv[ii] * cv[ii] + (i + 1 < TI ? a[i + 1] * sr : A(0));
        }
      }
      // scan 2: compose with the lanes to the right (a suffix scan)
      A sp2 = a[0] * sr, pp2 = lane_prod;
#pragma unroll
      for (int off = 1; off < LPC; off <<= 1) {
        const A pn = dev::shfl_down(pp2, off, LPC);
        const A sn = dev::shfl_down(sp2, off, LPC);
        if (j + off < LPC) {
          sp2 = pp2 * sn + sp2;
          pp2 = pp2 * pn;
        }
      }
      const A xchunk = *MAMBAAD_SMEM(carry_s + cl * NP + n, 1);
      const A xout = pp2 * xchunk + sp2;
      A xr = dev::shfl_down(xout, 1, LPC);
      if (j == LPC - 1) xr = xchunk;
      const A first = dev::shfl_idx(xout, 0, LPC);
      dev::sync_warp();  // every lane has read carry_s[cl][n]
      if (j == 0) *MAMBAAD_SMEM(carry_s + cl * NP + n, 1) = first;
      // P4: dh of each step, backwards, and everything that needs it (a recomputed here)
      A da_lane = A(0);
#pragma unroll
      for (int q = TI - 4; q >= 0; q -= 4) {
        A gv[4], cv[4], bv[4], dbp[4], dcp[4];
        load_items<4>(grow + q, gv);
        load_items<4>(crow + q, cv);
        load_items<4>(brow + q, bv);
#pragma unroll
        for (int ii = 3; ii >= 0; --ii) {
          const int i = q + ii;
          const A ai = dev::ex2(delta[i] * a2);
          A w;  // dh_t A_bar_t h_{t-1}; xr becomes A_bar_t dh_t, the value entering step t - 1
          const A dh = step_backward(xr, gv[ii], cv[ii], ai, i > 0 ? h[i - 1] : hin, w);
          dda[i] += an * w;
          da_lane += delta[i] * w;
          dub[i] += dh * bv[ii];
          dbp[ii] = dh * du[i];
          dcp[ii] = gv[ii] * h[i];
        }
        store_items<4>(red_s + cl * CHP + pad(jt) + q, dbp);
        store_items<4>(red_s + (G + cl) * CHP + pad(jt) + q, dcp);
      }
#pragma unroll
      for (int off = LPC / 2; off > 0; off >>= 1) da_lane += dev::shfl_xor(da_lane, off, LPC);
      if (j == 0) *MAMBAAD_SMEM(dA_s + cl * NP + n, 1) += da_lane;
      dev::sync_block();
      reduce_bc(c, n);
      dev::sync_block();
    }

    // d x (through u) and d z of the lane's steps, over g and sigma in shared memory
    {
      A u[TI], gv[TI], sg[TI];
      load_u(jt, tbase, d, u);
      load_items<TI>(grow, gv);
      load_items<TI>(sgrow, sg);
      const A dskip = *MAMBAAD_SMEM(ds_s + cl, 1);
#pragma unroll
      for (int i = 0; i < TI; ++i) {
        const A dz = (dda[i] + u[i] * dub[i]) * sg[i];
        db_acc += dz;
        gv[i] = delta[i] * dub[i] + dskip * gv[i];
        sg[i] = dz;
      }
      store_items<TI>(grow, gv);
      store_items<TI>(sgrow, sg);
    }
  }

  // After compute_chunk and a barrier: d x of the chunk, the d dt rows of d x_dbl, d dt_w.
  MAMBAAD_DEV void write_chunk(int c) const {
    const int tid = dev::tid();
    for (int e = tid; e < G * CH; e += NT) {
      const int cl = e / CH, tt = e % CH, t = c * CH + tt, d = dbase + cl;
      if (t >= p.L || d >= p.Dk) continue;
      const int pos = *MAMBAAD_SMEM(idx_s + tt, 1);
      if (pos < 0) continue;
      const A v = *MAMBAAD_SMEM(g_s + cl * CHP + pad(tt), 1);
      int64_t o = (static_cast<int64_t>(b) * p.D + channel(d)) * p.L + pos;
      if (p.dx_mode == kPartial) o += static_cast<int64_t>(k) * p.B * p.D * p.L;
      put(p.dx + o, v, p.dx_mode);
    }
    // d dt[t, r] = sum over the block's channels of dz[c, t] dt_w[c, r]
    for (int e = tid; e < CH * p.R; e += NT) {
      const int tt = e % CH, r = e / CH, t = c * CH + tt;
      A s = A(0);
      for (int cl = 0; cl < G; ++cl) {
        s += *MAMBAAD_SMEM(sg_s + cl * CHP + pad(tt), 1) * *MAMBAAD_SMEM(dtw_s + cl * RP + r, 1);
      }
      if (t < p.L) {
        const int pos = *MAMBAAD_SMEM(idx_s + tt, 1);
        if (pos >= 0) put(dxdbl_at(r, pos), s, p.dxdbl_mode);
      }
    }
    // d dt_w[c, r] += sum over the chunk's steps of dz[c, t] dt[r, t] (both zero past L)
    for (int e = tid; e < G * p.R; e += NT) {
      const int cl = e / p.R, r = e % p.R;
      const A* zr = sg_s + cl * CHP;
      const A* dr = xd_s + r * CHP;
      A s = A(0);
      for (int t4 = 0; t4 < CH; t4 += 4) {
        A zv[4], dv[4];
        load_items<4>(zr + pad(t4), zv);
        load_items<4>(dr + pad(t4), dv);
        s += zv[0] * dv[0] + zv[1] * dv[1] + zv[2] * dv[2] + zv[3] * dv[3];
      }
      *MAMBAAD_SMEM(dtwacc_s + cl * RP + r, 1) += s;
    }
  }

  MAMBAAD_DEV void run() {
    load_params();
    const int nch = (p.L + CH - 1) / CH;
    A db_acc = A(0), dD_acc = A(0);
    for (int c = nch - 1; c >= 0; --c) {
      stage_chunk(c);
      dev::cp_async_commit();
      dev::cp_async_wait<0>();
      dev::sync_block();
      compute_chunk(c, db_acc, dD_acc);
      dev::sync_block();
      write_chunk(c);
      dev::sync_block();
    }
    // parameter gradients of this batch element: sum the lanes of each channel, then write
    const int lane = dev::tid() & 31, cl = (dev::tid() >> 5) * CPW + lane / LPC, j = lane % LPC;
#pragma unroll
    for (int off = LPC / 2; off > 0; off >>= 1) {
      db_acc += dev::shfl_xor(db_acc, off, LPC);
      dD_acc += dev::shfl_xor(dD_acc, off, LPC);
    }
    const int64_t kd0 = static_cast<int64_t>(b) * p.K * p.Dk + static_cast<int64_t>(k) * p.Dk;
    if (j == 0 && dbase + cl < p.Dk) {
      p.p_db[kd0 + dbase + cl] = db_acc;
      p.p_dD[kd0 + dbase + cl] = dD_acc;
    }
    for (int e = dev::tid(); e < G * p.R; e += NT) {
      const int c2 = e / p.R, r = e % p.R, d = dbase + c2;
      if (d < p.Dk) p.p_dtw[(kd0 + d) * p.R + r] = *MAMBAAD_SMEM(dtwacc_s + c2 * RP + r, 1);
    }
    for (int e = dev::tid(); e < G * p.N; e += NT) {
      const int c2 = e / p.N, n = e % p.N, d = dbase + c2;
      const A an = *MAMBAAD_SMEM(a2_s + c2 * NP + n, 1) * ln2<A>();
      if (d < p.Dk) p.p_dA[(kd0 + d) * p.N + n] = *MAMBAAD_SMEM(dA_s + c2 * NP + n, 1) * an;
    }
  }
};

template <typename T, typename A, int NW, int LPC, int TI>
MAMBAAD_KERNEL void MAMBAAD_BOUNDS(NW * 32) hss_bwd_kernel(const BwdArgs<T, A> args) {
  using K = BwdKernel<T, A, NW, LPC, TI>;
  MAMBAAD_DYN_SMEM(smem);
  K kr{args};
  kr.C2 = args.R + 2 * args.N;
  kr.RP = odd(args.R);
  kr.NP = odd(args.N);
  kr.idx_s = reinterpret_cast<int*>(smem);
  kr.xd_s = reinterpret_cast<A*>(smem + K::CH * 4);
  kr.g_s = kr.xd_s + kr.C2 * K::CHP;
  kr.sg_s = kr.g_s + K::G * K::CHP;
  kr.red_s = kr.sg_s + K::G * K::CHP;
  kr.h0_s = kr.red_s + 2 * K::G * K::CHP;
  kr.carry_s = kr.h0_s + K::G * kr.NP;
  kr.dA_s = kr.carry_s + K::G * kr.NP;
  kr.a2_s = kr.dA_s + K::G * kr.NP;
  kr.dtw_s = kr.a2_s + K::G * kr.NP;
  kr.dtwacc_s = kr.dtw_s + K::G * kr.RP;
  kr.dtb_s = kr.dtwacc_s + K::G * kr.RP;
  kr.ds_s = kr.dtb_s + K::G;
  kr.g = dev::bid_x();
  kr.k = dev::bid_y();
  kr.b = dev::bid_z();
  kr.dbase = kr.g * K::G;
  kr.run();
}

// out_s[i] = sum over slices s < S of in_s[s * n + i], in the order s = 0, 1, ...: the fixed-order
// reductions that make the backward deterministic (over directions for d x, over channel groups
// for d x_dbl, over the batch for the parameter gradients).
template <typename A>
struct SumSegment {
  const A* in;
  A* out;
  int64_t n;
  int slices;
};

template <typename A>
struct SumArgs {
  SumSegment<A> seg[6];
  int nseg;
};

template <typename A>
MAMBAAD_KERNEL void MAMBAAD_BOUNDS(256) sum_slices_kernel(const SumArgs<A> args, int64_t total) {
  const int64_t stride = static_cast<int64_t>(256) * dev::grid_x();
  for (int64_t e = static_cast<int64_t>(dev::bid_x()) * 256 + dev::tid(); e < total; e += stride) {
    int64_t i = e;
    int s = 0;
    while (s + 1 < args.nseg && i >= args.seg[s].n) i -= args.seg[s++].n;
    const SumSegment<A>& sg = args.seg[s];
    A acc = A(0);
    for (int q = 0; q < sg.slices; ++q) acc += sg.in[static_cast<int64_t>(q) * sg.n + i];
    sg.out[i] = acc;
  }
}

}  // namespace scan
}  // namespace mambaad
