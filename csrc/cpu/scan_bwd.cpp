// Fused CPU backward of the HSS / GSS scan (mambaad::scan_bwd): a reverse scan with the states
// recomputed chunk by chunk from the forward's checkpoints (never a (B, K, D, L, N) tensor).
//
// One task = (batch b, direction k, group of channel vectors). For each checkpoint chunk, last
// to first, and each vector of kLanes channels in the task: recompute the chunk's states and
// decays from the checkpoint with the forward's arithmetic (steps.h), adding the dC terms on the
// way, and run the reverse recurrence (hss_math.h: step_backward), 8 states at a time with their
// states or adjoints in registers, dh carried across chunks. The sums over channels (dB, dC and d_dt, the
// gradient of x_dbl) are first summed over the task's vectors as whole vectors, (chunk, 2N + R)
// of them, and reduced over the lanes once per chunk (not per step and vector); the sum over
// directions of dx goes through a per-direction buffer reduced after the scan, and the parameter
// gradients through per-batch partials. Every sum has a fixed order: the result is deterministic
// and independent of the number of threads (the channel grouping depends on the shapes only).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/prep.h"
#include "cpu/scan_cpu.h"
#include "cpu/state.h"
#include "cpu/steps.h"

namespace mambaad::cpu {
namespace {

// Tasks per call the channel grouping aims at (shape-only, so results do not depend on threads).
constexpr int64_t kTargetTasks = 16;

template <typename T>
struct BwdCtx {
  CpuGeometry cg;
  const T* xT;           // (B, L, Dst) x in lane layout
  const T* gT;           // (B, L, Dst) dout in lane layout
  const T* xdT;          // (B, K, L, C) x_dbl gathered in scan order, rows [B | C | dt]
  const T* pack;         // packed parameters (prep.h)
  const int32_t* paths;  // (K, L)
  const T* states;       // (B, K, Dk, J, N)
  T* dub;                // (B, KD, L, Dst) du at grid positions, KD = K (HSS) or 1 (grouped)
  T* dxdbl;              // (G, B, K, C, L): dx_dbl partials per channel group (the output if G = 1)
  T* pgrad;              // (B, K, nvk, N + R + 2, kLanes): dA, d_dt_w, d_dt_b, d_Ds per batch
  int64_t G;             // channel groups per (b, k)
};

template <typename T, int NT>
struct Bwd {
  using V = Vec<T>;
  // States per block of the reverse recurrence: the block's adjoints stay in registers (8 of the
  // 16 vector registers of AVX2; all N at once would spill them at every step).
  static constexpr int64_t kBlock = 8;

  // Per-thread scratch, reused by the thread's tasks. part: (chunk, C) vector partials of
  // [dB | dC | d_dt] per step, summed over the task's channel vectors (lanes reduced once per chunk).
  struct Scratch {
    std::vector<V> hbuf, decay, delta, sig, u, gr, dz, dot, dda, part, dh_carry;
    std::vector<T> sums;  // (chunk, C): part's lanes summed
    Scratch(const CpuGeometry& cg, int64_t max_vectors)
        : hbuf((cg.chunk + 1) * kBlock), decay(cg.chunk * kBlock), delta(cg.chunk), sig(cg.chunk),
          u(cg.chunk), gr(cg.chunk), dz(cg.chunk), dot(cg.chunk), dda(cg.chunk), part(cg.chunk * cg.C),
          dh_carry(max_vectors * cg.g.N), sums(cg.chunk * cg.C) {}
  };

  // The reverse recurrence of states [n0, n0 + nb) over the chunk's nt steps, last to first: dh
  // carried in registers; adds the dB partials into part, dA into gA, and the step's sums over the
  // block's states of dh_t B_t[n] (dot) and A_n q (dda), stored (first block) or added.
  template <int64_t NB>
  static inline void reverse_block(Scratch& s, const ParamVec<T>& pv, const T* xd, int64_t C, int64_t N,
                                   int64_t n0, int64_t nb, int64_t nt, V* dh_carry, T* gA, bool first) {
    const int64_t w = NB > 0 ? NB : nb;
    V dh[kBlock] = {};
#pragma GCC unroll 8
    for (int64_t m = 0; m < w; ++m) dh[m] = dh_carry[n0 + m];
    for (int64_t i = nt - 1; i >= 0; --i) {
      const T* Bt = xd + i * C + n0;
      const T* Ct = Bt + N;
      const V gr = s.gr[i], delta = s.delta[i], du = delta * s.u[i];
      const V* dec = s.decay.data() + i * w;  // the block's rows (recompute_block)
      const V* hprev = s.hbuf.data() + i * w;
      V* part = s.part.data() + i * C + n0;
      V dot{}, dda{};
#pragma GCC unroll 8
      for (int64_t m = 0; m < w; ++m) {
        V q;
        const V dht = step_backward(dh[m], gr, Ct[m], dec[m], hprev[m], q);
        part[m] += dht * du;
        dot += dht * Bt[m];
        dda += q * vload(pv.a + (n0 + m) * kLanes);
        T* g = gA + (n0 + m) * kLanes;
        vstore(g, vload(g) + q * delta);
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

  // One chunk [t0, t0 + nt) of vector v: recompute (adding the dC partials), reverse by blocks of
  // states, then the per-step gradients of delta and the parameters.
  static void chunk(const BwdCtx<T>& c, Scratch& s, int64_t b, int64_t k, int64_t v, int64_t j,
                    V* dh_carry) {
    const ScanGeometry& g = c.cg.g;
    const int64_t N = NT > 0 ? NT : g.N, R = g.R, C = c.cg.C, L = g.L, J = c.cg.J, Dst = c.cg.Dst;
    const int64_t t0 = j * c.cg.chunk, nt = std::min(L, t0 + c.cg.chunk) - t0;
    const ParamVec<T> pv(c.pack, c.cg, k, v);
    const int nvalid = c.cg.nvalid(v);
    const VecI<T> mask = lane_mask<T>(nvalid);
    const int64_t ch0 = g.channel(k, v * kLanes);
    const T* ub = c.xT + b * L * Dst + ch0;
    const T* gb = c.gT + b * L * Dst + ch0;
    T* dub = c.dub + (b * (g.grouped ? 1 : g.K) + (g.grouped ? 0 : k)) * L * Dst + ch0;
    const T* xd = c.xdT + (b * g.K + k) * L * C + t0 * C;  // rows of the chunk
    const int32_t* path = c.paths + k * L + t0;
    const T* st = c.states + ((b * g.K + k) * g.Dk + v * kLanes) * J * N;
    T* pg = c.pgrad + ((b * g.K + k) * c.cg.nvk + v) * (N + R + 2) * kLanes;

    // Per step: delta, u, sig and dL/dy_t.
    for (int64_t i = 0; i < nt; ++i) s.gr[i] = vmask(vload(gb + path[i] * Dst), mask);
    prepare_chunk<T>(pv, xd, C, N, R, path, nt, ub, Dst, mask, s.delta.data(), s.u.data(), s.sig.data());
    State<T, NT> h0(N);
    h0.restore(st + j * N, J * N, nvalid);

    // kBlock states at a time (N / kBlock blocks; with N unknown at compile time the last may be
    // narrower): recompute the block's states h[t0 - 1 .. t0 + nt - 1] (hbuf rows 0 .. nt) and
    // decays, the values the forward computed, bit for bit, adding the dC partials g_t h_t into
    // part meanwhile; then the block's reverse recurrence. dA accumulates in pg's first N slots.
    for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
      const int64_t nb = std::min(kBlock, N - n0);
      for (int64_t m = 0; m < nb; ++m) s.hbuf[m] = h0[n0 + m];
      if (nb == kBlock) {
        recompute_block<T, kBlock>(&h0[n0], pv, xd, C, N, n0, nb, nt, s.delta.data(), s.u.data(),
                                   s.gr.data(), s.hbuf.data(), s.decay.data(), s.part.data() + N + n0, C);
        reverse_block<kBlock>(s, pv, xd, C, N, n0, nb, nt, dh_carry, pg, n0 == 0);
      } else {
        recompute_block<T, 0>(&h0[n0], pv, xd, C, N, n0, nb, nt, s.delta.data(), s.u.data(), s.gr.data(),
                              s.hbuf.data(), s.decay.data(), s.part.data() + N + n0, C);
        reverse_block<0>(s, pv, xd, C, N, n0, nb, nt, dh_carry, pg, n0 == 0);
      }
    }

    // Per step: dz = d loss / d z_t, du (into dub at the step's grid position), d_dt_b and d_Ds.
    const V dsk = vload(pv.d_skip);
    V gdtb{}, gD{};
    for (int64_t i = 0; i < nt; ++i) {
      const V gr = s.gr[i], u = s.u[i];
      const V dz = (s.dda[i] + u * s.dot[i]) * s.sig[i];
      s.dz[i] = dz;
      vstore_n(dub + path[i] * Dst, gr * dsk + s.delta[i] * s.dot[i], nvalid);
      gdtb += dz;
      gD += gr * u;
    }
    vstore(pg + (N + R) * kLanes, vload(pg + (N + R) * kLanes) + gdtb);
    vstore(pg + (N + R + 1) * kLanes, vload(pg + (N + R + 1) * kLanes) + gD);

    // d_dt_w (in registers, 8 dt rows at a time) and the d_dt partials (into part).
    for (int64_t r0 = 0; r0 < R; r0 += 8) {
      const int64_t nr = std::min<int64_t>(8, R - r0);
      V w[8], dtw[8];
      for (int64_t m = 0; m < nr; ++m) {
        w[m] = vload(pg + (N + r0 + m) * kLanes);
        dtw[m] = vload(pv.dt_w + (r0 + m) * kLanes);
      }
      for (int64_t i = 0; i < nt; ++i) {
        const V dz = s.dz[i];
        const T* dt = xd + i * C + 2 * N + r0;
        V* part = s.part.data() + i * C + 2 * N + r0;
        for (int64_t m = 0; m < nr; ++m) {
          w[m] += dz * dt[m];
          part[m] += dz * dtw[m];
        }
      }
      for (int64_t m = 0; m < nr; ++m) vstore(pg + (N + r0 + m) * kLanes, w[m]);
    }
  }

  static void run(const BwdCtx<T>& c) {
    const ScanGeometry& g = c.cg.g;
    const int64_t G = c.G, nvk = c.cg.nvk, C = c.cg.C, L = g.L, N = g.N, R = g.R;
    const int64_t max_vectors = (nvk + G - 1) / G;
    at::parallel_for(0, g.B * g.K * G, 1, [&](int64_t begin, int64_t end) {
      Scratch s(c.cg, max_vectors);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t b = idx / (g.K * G), k = idx / G % g.K, gi = idx % G;
        const int64_t v0 = gi * nvk / G, v1 = (gi + 1) * nvk / G;
        std::fill(s.dh_carry.begin(), s.dh_carry.end(), V{});
        const int32_t* path = c.paths + k * L;
        T* dst = c.dxdbl + ((gi * g.B + b) * g.K + k) * C * L;
        for (int64_t j = c.cg.J - 1; j >= 0; --j) {
          const int64_t t0 = j * c.cg.chunk, nt = std::min(L, t0 + c.cg.chunk) - t0;
          std::fill(s.part.begin(), s.part.begin() + nt * C, V{});
          for (int64_t v = v0; v < v1; ++v) chunk(c, s, b, k, v, j, s.dh_carry.data() + (v - v0) * N);
          // Lanes summed (rows [B | C | dt] per step), then written row by row in x_dbl's row
          // order [dt | B | C] at the steps' grid positions.
          std::fill(s.sums.begin(), s.sums.begin() + nt * C, T(0));
          for (int64_t i = 0; i < nt; ++i) add_lane_sums<T>(s.part.data() + i * C, C, s.sums.data() + i * C);
          for (int64_t cc = 0; cc < C; ++cc) {
            T* row = dst + (cc < 2 * N ? R + cc : cc - 2 * N) * L;
            for (int64_t i = 0; i < nt; ++i) row[path[t0 + i]] = s.sums[i * C + cc];
          }
        }
      }
    });
  }
};

// dx[b, ch, p] = sum over the KD direction rows of dub[b, kk, p, ch], in order: vector sums over
// channels into a (64, 64) tile, then the tile written transposed.
template <typename T>
void reduce_dx(const T* dub, int64_t KD, const CpuGeometry& cg, T* dx) {
  const int64_t B = cg.g.B, D = cg.g.D, L = cg.g.L, Dst = cg.Dst;
  constexpr int64_t PT = 64, DT = 64;
  const int64_t npt = (L + PT - 1) / PT;
  at::parallel_for(0, B * npt, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tile(PT * DT);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / npt, p0 = idx % npt * PT, p1 = std::min(L, p0 + PT);
      for (int64_t d0 = 0; d0 < D; d0 += DT) {
        const int64_t d1 = std::min(D, d0 + DT);
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t d = d0; d < d1; d += kLanes) {  // may read into the row's padding
            Vec<T> acc = vload(dub + (b * KD * L + p) * Dst + d);
            for (int64_t kk = 1; kk < KD; ++kk) acc += vload(dub + ((b * KD + kk) * L + p) * Dst + d);
            vstore(tile.data() + (p - p0) * DT + (d - d0), acc);
          }
        for (int64_t d = d0; d < d1; ++d)
          for (int64_t p = p0; p < p1; ++p) dx[(b * D + d) * L + p] = tile[(p - p0) * DT + (d - d0)];
      }
    }
  });
}

template <typename T>
void run_bwd(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl,
             const at::Tensor& states, const at::Tensor& dt_w, const at::Tensor& dt_b,
             const at::Tensor& A_logs, const at::Tensor& Ds, const at::Tensor& paths,
             const CpuGeometry& cg, at::Tensor& dx, at::Tensor& dx_dbl, at::Tensor& d_dt_w,
             at::Tensor& d_dt_b, at::Tensor& d_A_logs, at::Tensor& d_Ds) {
  const ScanGeometry& g = cg.g;
  const auto opts = x.options().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor xT = to_lanes<T>(x, cg), gT = to_lanes<T>(dout, cg);
  const at::Tensor xdT = gather_dbl<T>(x_dbl, paths, cg);
  const at::Tensor pack = pack_params<T>(dt_w, dt_b, A_logs, Ds, cg);
  const at::Tensor pc = paths.contiguous();
  const int64_t KD = g.grouped ? 1 : g.K;
  const int64_t G = std::max<int64_t>(
      1, std::min<int64_t>(cg.nvk, (kTargetTasks + g.B * g.K - 1) / std::max<int64_t>(1, g.B * g.K)));
  at::Tensor dub = at::empty({g.B, KD, g.L, cg.Dst}, opts);
  at::Tensor parts = G == 1 ? dx_dbl : at::empty({G, g.B, g.K, cg.C, g.L}, opts);
  at::Tensor pgrad = at::zeros({g.B, g.K, cg.nvk, g.N + g.R + 2, kLanes}, opts);
  const BwdCtx<T> c{cg, xT.data_ptr<T>(), gT.data_ptr<T>(), xdT.data_ptr<T>(), pack.data_ptr<T>(),
                    pc.data_ptr<int32_t>(), states.data_ptr<T>(), dub.data_ptr<T>(), parts.data_ptr<T>(),
                    pgrad.data_ptr<T>(), G};
  if (std::is_same_v<T, float> && g.N == 16)
    Bwd<T, 16>::run(c);
  else
    Bwd<T, 0>::run(c);

  reduce_dx<T>(dub.data_ptr<T>(), KD, cg, dx.data_ptr<T>());
  if (G > 1) {  // sum the channel groups' partials, in order
    const T* src = parts.data_ptr<T>();
    T* o = dx_dbl.data_ptr<T>();
    const int64_t n = dx_dbl.numel();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        T acc = src[e];
        for (int64_t gi = 1; gi < G; ++gi) acc += src[gi * n + e];
        o[e] = acc;
      }
    });
  }

  // Parameter gradients: sum the per-batch partials in order, back to the parameters' layouts.
  const int64_t K = g.K, Dk = g.Dk, N = g.N, R = g.R, PG = N + R + 2;
  const T* pg = pgrad.data_ptr<T>();
  const T* pk = pack.data_ptr<T>();
  T *gw = d_dt_w.data_ptr<T>(), *gb = d_dt_b.data_ptr<T>();
  T *ga = d_A_logs.data_ptr<T>(), *gd = d_Ds.data_ptr<T>();
  at::parallel_for(0, K * Dk, 64, [&](int64_t begin, int64_t end) {  // one parameter row each
    for (int64_t row = begin; row < end; ++row) {
      const int64_t k = row / Dk, d = row % Dk, v = d / kLanes, lane = d % kLanes;
      auto total = [&](int64_t slot) {
        T acc = 0;
        for (int64_t b = 0; b < g.B; ++b) acc += pg[(((b * K + k) * cg.nvk + v) * PG + slot) * kLanes + lane];
        return acc;
      };
      const T* a = pk + ((k * cg.nvk + v) * cg.PS + N) * kLanes + lane;  // A = -exp(A_logs)
      for (int64_t n = 0; n < N; ++n) ga[row * N + n] = total(n) * a[n * kLanes];
      for (int64_t r = 0; r < R; ++r) gw[row * R + r] = total(N + r);
      gb[row] = total(N + R);
      gd[row] = total(N + R + 1);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& states,
    const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds,
    const at::Tensor& paths, bool grouped, bool deterministic) {
  (void)deterministic;  // every reduction here has a fixed order
  constexpr const char* op = "mambaad::scan_bwd (CPU)";
  const ScanGeometry geo = check_scan_args(op, x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped);
  check_bwd_args(op, dout, x, states, geo, kCpuStateChunk);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": got tensors on ", x.device());
  check_paths_permutation(op, paths);
  const CpuGeometry cg(geo, kCpuStateChunk);
  const auto opts = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor dx = alloc_output({geo.B, geo.D, geo.L}, opts);
  at::Tensor dx_dbl = alloc_output({geo.B, geo.K, cg.C, geo.L}, opts);
  at::Tensor d_dt_w = alloc_output(dt_w.sizes(), opts), d_dt_b = alloc_output(dt_b.sizes(), opts);
  at::Tensor d_A_logs = alloc_output(A_logs.sizes(), opts), d_Ds = alloc_output(Ds.sizes(), opts);
  if (opts.dtype() == at::kDouble)
    run_bwd<double>(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, cg, dx, dx_dbl, d_dt_w, d_dt_b,
                    d_A_logs, d_Ds);
  else
    run_bwd<float>(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, cg, dx, dx_dbl, d_dt_w, d_dt_b,
                   d_A_logs, d_Ds);
  return {dx, dx_dbl, d_dt_w, d_dt_b, d_A_logs, d_Ds};
}

}  // namespace mambaad::cpu
