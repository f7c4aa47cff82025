// The scan loops of the CPU kernels, one source for every instruction set: each isa_*.cpp switches
// the compiler's target, defines MAMBAAD_ISA (the namespace), MAMBAAD_ISA_LANES (W, float channels
// per vector) and the MAMBAAD_ISA_* feature switches simd.h reads, then includes this file, which
// defines that variant's ScanLoops (kernels.h) for float and double.
//
// Forward: one task = (batch b, vector of W channels[, direction k when grouped]). The task scans its
// channels along each direction in turn, the N states of every channel in registers (vectorised
// over the channels: no horizontal sum per step), and adds each direction's y into a task-local
// (L, W) accumulator at the grid position the step reads: the merge over k happens in a fixed
// order inside one task, so the result is deterministic and needs no atomics or (B, K, D, L)
// buffer. Per step: delta = softplus(dt_w . dt + dt_b) on the fly, N decays exp(delta A) by a
// polynomial 2^y, the state update, y = C . h + D u. The dt/B/C rows of a direction are gathered
// once per call in scan order (prep.h), so a step reads one contiguous row shared by all channels.
//
// Backward: a reverse scan with the states recomputed chunk by chunk from the forward's checkpoints
// (never a (B, K, D, L, N) tensor). One task = (batch b, direction k, group of channel vectors).
// For each checkpoint chunk, last to first, and each vector of W channels in the task: recompute
// the chunk's states and decays from the checkpoint with the forward's arithmetic (steps.h), adding
// the dC terms on the way, and run the reverse recurrence (hss_math.h: step_backward), 8 states at
// a time with their states or adjoints in registers, dh carried across chunks. The sums over
// channels (dB, dC and d_dt, the gradient of x_dbl) are first summed over the task's vectors as
// whole vectors, (chunk, 2N + R) of them, reduced over the lanes once per chunk (not per step and
// vector) and written in x_dbl's layout by tiles of grid positions once the task is done (through
// the inverse path: no scattered stores); the rows of u, dL/dy and du a (vector, chunk) touches are
// prefetched while the one before runs. The sum over directions of dx goes through a per-direction
// buffer reduced after the scan (scan_bwd.cpp; with AVX-512 written by whole-line stores past the
// caches), and the parameter gradients through per-batch partials (param_grads). Every sum has a
// fixed order: the result is deterministic and independent of the number of threads (the channel
// grouping depends on the shapes and W only).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cpu/kernels.h"
#include "cpu/simd.h"
#include "cpu/state.h"
#include "cpu/steps.h"

#if !defined(MAMBAAD_ISA) || !defined(MAMBAAD_ISA_LANES)
#error "define MAMBAAD_ISA and MAMBAAD_ISA_LANES before including cpu/isa_kernels.h"
#endif

namespace mambaad::cpu::MAMBAAD_ISA {

inline constexpr int kW = MAMBAAD_ISA_LANES;

template <typename T, int NT, int W>
struct Fwd {
  using V = Vec<T, W>;

  // Direction k, channel vector v of batch b: scan all L steps, add y into acc (L, W) at grid
  // positions, write the checkpoints.
  static void scan(const FwdCtx<T>& c, int64_t b, int64_t k, int64_t v, T* acc) {
    const ScanGeometry& g = c.cg.g;
    const int64_t N = NT > 0 ? NT : g.N, C = c.cg.C, L = g.L, J = c.cg.J, chunk = c.cg.chunk;
    const ParamVec<T, W> pv(c.pack, c.cg, k, v);
    const int nvalid = c.cg.nvalid(v);
    const VecI<T, W> mask = lane_mask<T, W>(nvalid);
    const T* ub = c.xT + b * L * c.cg.Dst + g.channel(k, v * W);  // u at grid position p: ub + p * Dst
    const T* xd = c.xdT + (b * g.K + k) * L * C;
    const int32_t* path = c.paths + k * L;
    T* st = c.states + ((b * g.K + k) * g.Dk + v * W) * J * N;
    V delta[kCpuStateChunk], u[kCpuStateChunk];
    State<T, NT, W> h(N);
    for (int64_t j = 0; j < J; ++j) {
      h.checkpoint(st + j * N, J * N, nvalid);
      const int64_t t0 = j * chunk, nt = std::min(L, t0 + chunk) - t0;
      prepare_chunk<T, W>(pv, xd + t0 * C, C, N, g.R, path + t0, nt, ub, c.cg.Dst, mask, delta, u, nullptr);
      forward_chunk<T, NT, W>(h, pv, xd + t0 * C, C, path + t0, nt, delta, u, acc);
    }
  }

  static void tasks(const FwdCtx<T>& c, int64_t begin, int64_t end, T* acc) {
    const ScanGeometry& g = c.cg.g;
    const int64_t KG = g.grouped ? g.K : 1, nvk = c.cg.nvk, L = g.L;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / (KG * nvk), kg = idx / nvk % KG, v = idx % nvk;
      for (int64_t e = 0; e < L * W; ++e) acc[e] = T(0);
      const int64_t k0 = g.grouped ? kg : 0, k1 = g.grouped ? kg + 1 : g.K;
      for (int64_t k = k0; k < k1; ++k) scan(c, b, k, v, acc);  // fixed order over k
      const int64_t ch0 = g.channel(k0, v * W);
      for (int i = 0; i < c.cg.nvalid(v); ++i) {
        T* o = c.out + (b * g.D + ch0 + i) * L;
        for (int64_t p = 0; p < L; ++p) o[p] = acc[p * W + i];
      }
    }
  }
};

// Per-thread scratch of the backward, carved from one 64-byte aligned block (the driver allocates
// it: no allocation, and no standard container of vector types, in the per-ISA code).
template <typename T, int W>
struct BwdScratch {
  using V = Vec<T, W>;
  static constexpr int64_t kBlock = 8;  // states per block of the reverse recurrence (Bwd)
  // part: (chunk, C) vector partials of [dB | dC | d_dt] per step, summed over the task's channel
  // vectors (lanes reduced once per chunk); sums: (L, C), part's lanes summed, for every step of
  // the task in scan order (written in x_dbl's layout once the task's scan is done). dz: (vectors,
  // chunk) d loss / d z_t of each of the task's vectors in the chunk, for the d_dt partials
  // (Bwd::dt_partials).
  V *hbuf, *decay, *delta, *sig, *u, *gr, *dz, *dot, *dda, *part, *dh_carry;
  T* sums;

  // Lays the buffers out from base (nullptr: only count); returns the bytes used.
  size_t layout(char* base, const CpuGeometry& cg, int64_t max_vectors) {
    size_t off = 0;
    auto take = [&](auto*& p, int64_t count) {
      using E = std::remove_reference_t<decltype(*p)>;
      p = base ? reinterpret_cast<E*>(base + off) : nullptr;
      off += (static_cast<size_t>(count) * sizeof(E) + 63) / 64 * 64;
    };
    const int64_t ch = cg.chunk;
    take(hbuf, (ch + 1) * kBlock);
    take(decay, ch * kBlock);
    take(delta, ch);
    take(sig, ch);
    take(u, ch);
    take(gr, ch);
    take(dz, max_vectors * ch);
    take(dot, ch);
    take(dda, ch);
    take(part, ch * cg.C);
    take(dh_carry, max_vectors * cg.g.N);
    take(sums, cg.g.L * cg.C);
    return off;
  }
};

template <typename T, int NT, int W>
struct Bwd {
  using V = Vec<T, W>;
  using Scratch = BwdScratch<T, W>;
  // States per block of the reverse recurrence: the block's adjoints stay in registers (8 of the
  // 16 vector registers of AVX2; all N at once would spill them at every step).
  static constexpr int64_t kBlock = Scratch::kBlock;

  // The reverse recurrence of states [n0, n0 + nb) over the chunk's nt steps, last to first: dh
  // carried in registers; adds the dB partials into part (kAdd false, the task's first vector:
  // stores them), dA into gA, and the step's sums over the block's states of dh_t B_t[n] (dot)
  // and A_n q (dda), stored (first block) or added.
  template <int64_t NB, bool kAdd>
  static inline void reverse_block(Scratch& s, const ParamVec<T, W>& pv, const T* xd, int64_t C, int64_t N,
                                   int64_t n0, int64_t nb, int64_t nt, V* dh_carry, T* gA, bool first) {
    const int64_t w = NB > 0 ? NB : nb;
    V dh[kBlock] = {};
#pragma GCC unroll 8
    for (int64_t m = 0; m < w; ++m) dh[m] = dh_carry[n0 + m];
    for (int64_t i = nt - 1; i >= 0; --i) {
      const T* Bt = xd + i * C + n0;
      const T* Ct = Bt + N;
      const V gr = s.gr[i], delta = s.delta[i], du = delta * s.u[i];
      const V* dec = s.decay + i * w;  // the block's rows (recompute_block)
      const V* hprev = s.hbuf + i * w;
      V* part = s.part + i * C + n0;
      V dot{}, dda{};
#pragma GCC unroll 8
      for (int64_t m = 0; m < w; ++m) {
        V q;
        const V dht = step_backward(dh[m], gr, Ct[m], dec[m], hprev[m], q);
        part[m] = kAdd ? part[m] + dht * du : dht * du;
        dot += dht * Bt[m];
        dda += q * vload<T, W>(pv.a + (n0 + m) * W);
        T* g = gA + (n0 + m) * W;
        vstore<T, W>(g, vload<T, W>(g) + q * delta);
      }
      if (first) {
        s.dot[i] = dot;
        s.dda[i] = dda;
      } else {
        s.dot[i] += dot;
        s.dda[i] += dda;
      }
    }
#pragma GCC unroll 8
    for (int64_t m = 0; m < w; ++m) dh_carry[n0 + m] = dh[m];
  }

  // Whether a vector's du, nvalid channels from p in rows Dst apart, goes to dub by whole-line
  // stores past the caches (vstream): du is written once, at the path's scattered rows, and read
  // only by reduce_dx after the scan (a (Bw, K, L, D) buffer larger than the caches at the large
  // grids), so its lines need not be read for ownership nor evict the scan's working set.
  static bool streams_du(const T* p, int nvalid, int64_t Dst) {
    return kStreamStore<T, W> && nvalid == W && reinterpret_cast<uintptr_t>(p) % 64 == 0 &&
           Dst * static_cast<int64_t>(sizeof(T)) % 64 == 0;
  }

  // One chunk [t0, t0 + nt) of vector v: recompute (adding the dC partials), reverse by blocks of
  // states, then the per-step gradients of delta and the parameters. nxt_v, nxt_j: the (vector,
  // chunk) the task runs next (nxt_v < 0: none), whose rows are prefetched.
  static void chunk(const BwdCtx<T>& c, Scratch& s, int64_t b, int64_t k, int64_t v, int64_t j,
                    V* dh_carry, V* dzv, bool first_vector, int64_t nxt_v, int64_t nxt_j) {
    const ScanGeometry& g = c.cg.g;
    const int64_t N = NT > 0 ? NT : g.N, R = g.R, C = c.cg.C, L = g.L, J = c.cg.J, Dst = c.cg.Dst;
    const int64_t t0 = j * c.cg.chunk, nt = std::min(L, t0 + c.cg.chunk) - t0;
    const ParamVec<T, W> pv(c.pack, c.cg, k, v);
    const int nvalid = c.cg.nvalid(v);
    const VecI<T, W> mask = lane_mask<T, W>(nvalid);
    const int64_t ch0 = g.channel(k, v * W);
    const T* ub = c.xT + b * L * Dst + ch0;
    const T* gb = c.gT + b * L * Dst + ch0;
    T* dub = c.dub + ((b - c.b0) * (g.grouped ? 1 : g.K) + (g.grouped ? 0 : k)) * L * Dst + ch0;
    const T* xd = c.xdT + (b * g.K + k) * L * C + t0 * C;  // rows of the chunk
    const int32_t* path = c.paths + k * L + t0;
    const T* st = c.states + ((b * g.K + k) * g.Dk + v * W) * J * N;
    T* pg = c.pgrad + ((b * g.K + k) * c.cg.nvk + v) * (N + R + 2) * W;

    // The rows of u, dL/dy and du the task's next (vector, chunk) reads and writes, requested a
    // whole chunk of work ahead: the path's order defeats the hardware prefetchers. (du's, unless
    // they are streamed: then no line is read before it is written.)
    if (nxt_v >= 0) {
      const int64_t nt0 = nxt_j * c.cg.chunk, nnt = std::min(L, nt0 + c.cg.chunk) - nt0;
      const int64_t shift = g.channel(k, nxt_v * W) - ch0;
      const int32_t* npath = c.paths + k * L + nt0;
      prefetch_rows<T, W>(ub + shift, npath, nnt, Dst);
      prefetch_rows<T, W>(gb + shift, npath, nnt, Dst);
      if (!streams_du(dub + shift, c.cg.nvalid(nxt_v), Dst))
        prefetch_rows<T, W, true>(dub + shift, npath, nnt, Dst);
    }

    // Per step: delta, u, sig and dL/dy_t.
    for (int64_t i = 0; i < nt; ++i) s.gr[i] = vmask(vload<T, W>(gb + path[i] * Dst), mask);
    prepare_chunk<T, W>(pv, xd, C, N, R, path, nt, ub, Dst, mask, s.delta, s.u, s.sig);
    State<T, NT, W> h0(N);
    h0.restore(st + j * N, J * N, nvalid);

    // kBlock states at a time (N / kBlock blocks; with N unknown at compile time the last may be
    // narrower): recompute the block's states h[t0 - 1 .. t0 + nt - 1] (hbuf rows 0 .. nt) and
    // decays (the forward's values to float rounding: Math::decay_recompute), adding the dC
    // partials g_t h_t into part meanwhile; then the block's reverse recurrence. The task's first
    // vector stores its dB / dC partials instead (part is not zeroed per chunk). dA accumulates in
    // pg's first N slots.
    for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
      const int64_t nb = std::min(kBlock, N - n0);
      for (int64_t m = 0; m < nb; ++m) s.hbuf[m] = h0[n0 + m];
      auto block = [&](auto nbc, auto add) {  // nbc: NB (kBlock, or 0 for a narrower last block)
        constexpr int64_t NB = decltype(nbc)::value;
        constexpr bool kAdd = decltype(add)::value;
        recompute_block<T, NB, W, kAdd>(&h0[n0], pv, xd, C, n0, nb, nt, s.delta, s.u, s.gr, s.hbuf, s.decay,
                                        s.part + N + n0, C);
        reverse_block<NB, kAdd>(s, pv, xd, C, N, n0, nb, nt, dh_carry, pg, n0 == 0);
      };
      using Full = std::integral_constant<int64_t, kBlock>;
      using Part = std::integral_constant<int64_t, 0>;
      if (nb == kBlock)
        first_vector ? block(Full{}, std::false_type{}) : block(Full{}, std::true_type{});
      else
        first_vector ? block(Part{}, std::false_type{}) : block(Part{}, std::true_type{});
    }

    // Per step: dz = d loss / d z_t, du (into dub at the step's grid position), d_dt_b and d_Ds.
    const V dsk = vload<T, W>(pv.d_skip);
    const bool stream = streams_du(dub, nvalid, Dst);
    V gdtb{}, gD{};
    for (int64_t i = 0; i < nt; ++i) {
      const V gr = s.gr[i], u = s.u[i];
      const V dz = (s.dda[i] + u * s.dot[i]) * s.sig[i];
      dzv[i] = dz;
      const V du = gr * dsk + s.delta[i] * s.dot[i];
      if (stream)
        vstream<T, W>(dub + path[i] * Dst, du);
      else
        vstore_n<T, W>(dub + path[i] * Dst, du, nvalid);
      gdtb += dz;
      gD += gr * u;
    }
    vstore<T, W>(pg + (N + R) * W, vload<T, W>(pg + (N + R) * W) + gdtb);
    vstore<T, W>(pg + (N + R + 1) * W, vload<T, W>(pg + (N + R + 1) * W) + gD);

    // d_dt_w, in registers 8 dt rows at a time (the d_dt partials: dt_partials, once the task's
    // vectors are done).
    for (int64_t r0 = 0; r0 < R; r0 += 8) {
      const int64_t nr = std::min<int64_t>(8, R - r0);
      V w[8];
      for (int64_t m = 0; m < nr; ++m) w[m] = vload<T, W>(pg + (N + r0 + m) * W);
      for (int64_t i = 0; i < nt; ++i) {
        const V dz = dzv[i];
        const T* dt = xd + i * C + 2 * N + r0;
        for (int64_t m = 0; m < nr; ++m) w[m] += dz * dt[m];
      }
      for (int64_t m = 0; m < nr; ++m) vstore<T, W>(pg + (N + r0 + m) * W, w[m]);
    }
  }

  // The d_dt partials of steps [i0, i0 + IB) and dt rows [r0, r0 + RB): part[i, 2N + r] = the sum
  // over the task's vectors v, in order, of dz_v[i] * dt_w_v[r]. The IB x RB sums stay in registers
  // (the sums and their order are those of adding vector by vector into part, without a load and a
  // store of part per multiply-add).
  template <int64_t IB, int64_t RB>
  static inline void dt_tile(const BwdCtx<T>& c, Scratch& s, int64_t k, int64_t v0, int64_t v1, int64_t i0,
                             int64_t r0) {
    const int64_t chunk = c.cg.chunk, C = c.cg.C, N = c.cg.g.N;
    V acc[IB][RB] = {};
    for (int64_t v = v0; v < v1; ++v) {
      const ParamVec<T, W> pv(c.pack, c.cg, k, v);
      const V* dz = s.dz + (v - v0) * chunk + i0;
      V dtw[RB];
#pragma GCC unroll 4
      for (int64_t m = 0; m < RB; ++m) dtw[m] = vload<T, W>(pv.dt_w + (r0 + m) * W);
#pragma GCC unroll 4
      for (int64_t ii = 0; ii < IB; ++ii) {
        const V d = dz[ii];
#pragma GCC unroll 4
        for (int64_t m = 0; m < RB; ++m) acc[ii][m] += d * dtw[m];
      }
    }
#pragma GCC unroll 4
    for (int64_t ii = 0; ii < IB; ++ii)
#pragma GCC unroll 4
      for (int64_t m = 0; m < RB; ++m) s.part[(i0 + ii) * C + 2 * N + r0 + m] = acc[ii][m];
  }

  static void dt_partials(const BwdCtx<T>& c, Scratch& s, int64_t k, int64_t v0, int64_t v1, int64_t nt) {
    const int64_t R = c.cg.g.R;
    constexpr int64_t IB = 4, RB = 2;  // 8 sums, 2 dt_w rows and a dz: 11 of AVX2's 16 vector registers
    int64_t r0 = 0;
    for (; r0 + RB <= R; r0 += RB) {
      int64_t i0 = 0;
      for (; i0 + IB <= nt; i0 += IB) dt_tile<IB, RB>(c, s, k, v0, v1, i0, r0);
      for (; i0 < nt; ++i0) dt_tile<1, RB>(c, s, k, v0, v1, i0, r0);
    }
    for (; r0 < R; ++r0)
      for (int64_t i0 = 0; i0 < nt; ++i0) dt_tile<1, 1>(c, s, k, v0, v1, i0, r0);
  }

  static void tasks(const BwdCtx<T>& c, int64_t begin, int64_t end, void* scratch) {
    const ScanGeometry& g = c.cg.g;
    const int64_t G = c.G, nvk = c.cg.nvk, C = c.cg.C, L = g.L, N = g.N, R = g.R;
    const int64_t max_vectors = (nvk + G - 1) / G;
    Scratch s;
    s.layout(static_cast<char*>(scratch), c.cg, max_vectors);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t bw = idx / (g.K * G), b = c.b0 + bw, k = idx / G % g.K, gi = idx % G;
      const int64_t v0 = gi * nvk / G, v1 = (gi + 1) * nvk / G;
      for (int64_t e = 0; e < max_vectors * N; ++e) s.dh_carry[e] = V{};
      T* dst = c.dxdbl + ((gi * c.Bw + bw) * g.K + k) * C * L;
      for (int64_t j = c.cg.J - 1; j >= 0; --j) {
        const int64_t t0 = j * c.cg.chunk, nt = std::min(L, t0 + c.cg.chunk) - t0;
        for (int64_t v = v0; v < v1; ++v)
          chunk(c, s, b, k, v, j, s.dh_carry + (v - v0) * N, s.dz + (v - v0) * c.cg.chunk, v == v0,
                v + 1 < v1 ? v + 1 : (j > 0 ? v0 : -1), v + 1 < v1 ? j : j - 1);
        dt_partials(c, s, k, v0, v1, nt);
        // Lanes summed (rows [B | C | dt] per step), kept in scan order.
        T* sums = s.sums + t0 * C;
        for (int64_t e = 0; e < nt * C; ++e) sums[e] = T(0);
        for (int64_t i = 0; i < nt; ++i) add_lane_sums<T, W>(s.part + i * C, C, sums + i * C);
      }
      // x_dbl's gradient in its layout, rows [dt | B | C] of L grid positions, a tile of PT
      // positions (a cache line of each row, at least W) at a time: each position's step through
      // the inverse path, W x W blocks (W positions, W of the C columns) transposed in registers.
      const int32_t* inv = c.inv_paths + k * L;
      constexpr int64_t PT = std::max<int64_t>(W, 64 / sizeof(T));  // a multiple of W
      auto out_row = [&](int64_t cc) { return dst + (cc < 2 * N ? R + cc : cc - 2 * N) * L; };
      for (int64_t p0 = 0; p0 < L; p0 += PT) {
        const int64_t np = std::min<int64_t>(PT, L - p0), nw = np / W * W;  // nw: in whole blocks
        const T* src[PT];
        for (int64_t q = 0; q < np; ++q) src[q] = s.sums + static_cast<int64_t>(inv[p0 + q]) * C;
        int64_t c0 = 0;
        for (; c0 + W <= C; c0 += W) {
          for (int64_t q0 = 0; q0 < nw; q0 += W) {
            V r[W];
#pragma GCC unroll 16
            for (int q = 0; q < W; ++q) r[q] = vload<T, W>(src[q0 + q] + c0);
            transpose_square<T, W>(r);
#pragma GCC unroll 16
            for (int m = 0; m < W; ++m) vstore<T, W>(out_row(c0 + m) + p0 + q0, r[m]);
          }
          for (int64_t cc = c0; cc < c0 + W; ++cc)
            for (int64_t q = nw; q < np; ++q) out_row(cc)[p0 + q] = src[q][cc];
        }
        for (int64_t cc = c0; cc < C; ++cc) {
          T* row = out_row(cc) + p0;
          for (int64_t q = 0; q < np; ++q) row[q] = src[q][cc];
        }
      }
    }
    stream_fence();  // du's streamed stores, before reduce_dx reads them on other threads
  }
};

// The entry points of the table: N = 16 float (MambaAD's) with the states in registers, any other
// shape through the general loops.
template <typename T>
void fwd_tasks(const FwdCtx<T>& c, int64_t begin, int64_t end, T* acc) {
  if (std::is_same_v<T, float> && c.cg.g.N == 16)
    Fwd<T, 16, kW>::tasks(c, begin, end, acc);
  else
    Fwd<T, 0, kW>::tasks(c, begin, end, acc);
}

template <typename T>
size_t bwd_scratch_bytes(const CpuGeometry& cg, int64_t max_vectors) {
  BwdScratch<T, kW> s;
  return s.layout(nullptr, cg, max_vectors);
}

template <typename T>
void bwd_tasks(const BwdCtx<T>& c, int64_t begin, int64_t end, void* scratch) {
  if (std::is_same_v<T, float> && c.cg.g.N == 16)
    Bwd<T, 16, kW>::tasks(c, begin, end, scratch);
  else
    Bwd<T, 0, kW>::tasks(c, begin, end, scratch);
}

// dx[b, ch, p] = sum over the KD direction rows of dub[b, kk, p, ch], in order: vector sums over
// channels into a (64, 64) tile, then the tile written transposed. Items: (b, tile of 64 positions).
template <typename T>
void reduce_dx(const T* dub, int64_t KD, const CpuGeometry& cg, T* dx, int64_t begin, int64_t end, T* tile) {
  constexpr int W = kW;
  const int64_t D = cg.g.D, L = cg.g.L, Dst = cg.Dst;
  constexpr int64_t PT = 64, DT = 64;  // DT a multiple of every W
  const int64_t npt = (L + PT - 1) / PT;
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t b = idx / npt, p0 = idx % npt * PT, p1 = std::min(L, p0 + PT);
    for (int64_t d0 = 0; d0 < D; d0 += DT) {
      const int64_t d1 = std::min(D, d0 + DT);
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t d = d0; d < d1; d += W) {  // may read into the row's padding
          Vec<T, W> acc = vload<T, W>(dub + (b * KD * L + p) * Dst + d);
          for (int64_t kk = 1; kk < KD; ++kk) acc += vload<T, W>(dub + ((b * KD + kk) * L + p) * Dst + d);
          vstore<T, W>(tile + (p - p0) * DT + (d - d0), acc);
        }
      for (int64_t d = d0; d < d1; ++d)
        for (int64_t p = p0; p < p1; ++p) dx[(b * D + d) * L + p] = tile[(p - p0) * DT + (d - d0)];
    }
  }
}

// out[b, p, d] = x[b, d, p] for the (batch, tile of kLaneTile positions) items [begin, end): W
// channels x W positions at a time, W row loads transposed in registers into W row stores; the
// edges (D or the tile not a multiple of W) one value at a time.
template <typename T>
void to_lanes(const T* x, int64_t sb, int64_t sd, const CpuGeometry& cg, T* out, int64_t begin, int64_t end) {
  constexpr int W = kW;
  constexpr int64_t PT = kLaneTile;
  const int64_t D = cg.g.D, L = cg.g.L, Dst = cg.Dst, npt = (L + PT - 1) / PT;
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t b = idx / npt, p0 = idx % npt * PT, p1 = std::min(L, p0 + PT);
    const int64_t pw = p0 + (p1 - p0) / W * W;  // whole blocks of positions end at pw
    const T* xb = x + b * sb;
    T* ob = out + b * L * Dst;
    int64_t d0 = 0;
    for (; d0 + W <= D; d0 += W) {
      for (int64_t p = p0; p < pw; p += W) {
        Vec<T, W> r[W];
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i) r[i] = vload<T, W>(xb + (d0 + i) * sd + p);
        transpose_square<T, W>(r);
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i) vstore<T, W>(ob + (p + i) * Dst + d0, r[i]);
      }
      for (int64_t p = pw; p < p1; ++p)
        for (int64_t d = d0; d < d0 + W; ++d) ob[p * Dst + d] = xb[d * sd + p];
    }
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t d = d0; d < D; ++d) ob[p * Dst + d] = xb[d * sd + p];
  }
}

// out[b, k, inv[k][p]] = the column p of x_dbl[b, k], rows reordered to [B | C | dt], for the (b, k)
// items [begin, end): W positions x W output columns at a time, W row loads transposed in registers
// into W stores to the positions' steps; the columns of a block of W that would straddle the
// B | C and dt runs, and the last L mod W positions, one value at a time.
template <typename T>
void gather_dbl(const T* x_dbl, int64_t sb, int64_t sk, int64_t sc, const int32_t* inv, const CpuGeometry& cg,
                T* out, int64_t begin, int64_t end) {
  constexpr int W = kW;
  const int64_t K = cg.g.K, L = cg.g.L, C = cg.C, R = cg.g.R, BC = 2 * cg.g.N;
  const int64_t pw = L / W * W;  // whole blocks of positions end at pw
  auto src_row = [&](int64_t col) { return col < BC ? R + col : col - BC; };  // x_dbl's row of column col
  for (int64_t bk = begin; bk < end; ++bk) {
    const int32_t* step = inv + bk % K * L;
    const T* src = x_dbl + bk / K * sb + bk % K * sk;
    T* ob = out + bk * L * C;
    for (int64_t p0 = 0; p0 < pw; p0 += W) {
      T* dst[W];
      for (int q = 0; q < W; ++q) dst[q] = ob + static_cast<int64_t>(step[p0 + q]) * C;
      int64_t col = 0;
      while (col < C) {
        const int64_t run_end = col < BC ? BC : C;
        if (col + W <= run_end) {
          const T* rows = src + src_row(col) * sc + p0;
          Vec<T, W> r[W];
#pragma GCC unroll 16
          for (int i = 0; i < W; ++i) r[i] = vload<T, W>(rows + i * sc);
          transpose_square<T, W>(r);
#pragma GCC unroll 16
          for (int q = 0; q < W; ++q) vstore<T, W>(dst[q] + col, r[q]);
          col += W;
        } else {
          for (; col < run_end; ++col)
            for (int q = 0; q < W; ++q) dst[q][col] = src[src_row(col) * sc + p0 + q];
        }
      }
    }
    for (int64_t p = pw; p < L; ++p)
      for (int64_t col = 0; col < C; ++col) ob[static_cast<int64_t>(step[p]) * C + col] = src[src_row(col) * sc + p];
  }
}

// The parameter gradients of the (k, channel vector) items [begin, end): the N + R + 2 partial
// vectors of each (dA, d_dt_w, d_dt_b, d_Ds; W lanes = W channels) summed over the batch in order,
// dA times A (the gradient of A_logs, A = -exp(A_logs)), then W of them at a time transposed in
// registers so that each channel's values go to its parameter row by whole vectors.
template <typename T>
void param_grads(const T* pgrad, const T* pack, const CpuGeometry& cg, ParamGradOut<T> out, int64_t begin,
                 int64_t end) {
  constexpr int W = kW;
  using V = Vec<T, W>;
  const ScanGeometry& g = cg.g;
  const int64_t N = g.N, R = g.R, PG = N + R + 2, KV = g.K * cg.nvk;
  for (int64_t kv = begin; kv < end; ++kv) {
    const int64_t v = kv % cg.nvk, row0 = kv / cg.nvk * g.Dk + v * W;  // parameter row of lane 0
    const int nvalid = cg.nvalid(v);
    const T* a = pack + (kv * cg.PS + N) * W;  // A, W lanes per state
    for (int64_t e0 = 0; e0 < PG; e0 += W) {  // partials e0 .. e0 + ne
      const int64_t ne = std::min<int64_t>(W, PG - e0);
      V r[W];
#pragma GCC unroll 16
      for (int m = 0; m < W; ++m) {
        const int64_t e = e0 + m;
        if (e >= PG) {
          r[m] = V{};
          continue;
        }
        V acc = vload<T, W>(pgrad + (kv * PG + e) * W);
        for (int64_t b = 1; b < g.B; ++b) acc += vload<T, W>(pgrad + ((b * KV + kv) * PG + e) * W);
        r[m] = e < N ? acc * vload<T, W>(a + e * W) : acc;
      }
      transpose_square<T, W>(r);  // r[i][m]: partial e0 + m of channel row0 + i
      for (int i = 0; i < nvalid; ++i) {
        const int64_t row = row0 + i;
        if (ne == W && e0 + W <= N) {
          vstore<T, W>(out.A_logs + row * N + e0, r[i]);
        } else if (ne == W && e0 >= N && e0 + W <= N + R) {
          vstore<T, W>(out.dt_w + row * R + (e0 - N), r[i]);
        } else {
          for (int64_t m = 0; m < ne; ++m) {
            const int64_t e = e0 + m;
            const T val = r[i][m];
            if (e < N)
              out.A_logs[row * N + e] = val;
            else if (e < N + R)
              out.dt_w[row * R + (e - N)] = val;
            else if (e == N + R)
              out.dt_b[row] = val;
            else
              out.Ds[row] = val;
          }
        }
      }
    }
  }
}

// Constant-initialised (no code of this variant runs when the library loads).
extern const ScanLoops<float> loops_f32;
extern const ScanLoops<double> loops_f64;
constinit const ScanLoops<float> loops_f32 = {&fwd_tasks<float>, &bwd_scratch_bytes<float>, &bwd_tasks<float>,
                                              &reduce_dx<float>, &to_lanes<float>, &gather_dbl<float>,
                                              &param_grads<float>};
constinit const ScanLoops<double> loops_f64 = {&fwd_tasks<double>, &bwd_scratch_bytes<double>,
                                               &bwd_tasks<double>, &reduce_dx<double>, &to_lanes<double>,
                                               &gather_dbl<double>, &param_grads<double>};

}  // namespace mambaad::cpu::MAMBAAD_ISA
