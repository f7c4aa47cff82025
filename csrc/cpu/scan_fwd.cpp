// Fused CPU forward of the HSS / GSS scan (mambaad::scan_fwd).
//
// One task = (batch b, vector of kLanes channels[, direction k when grouped]). The task scans its
// channels along each direction in turn, the N states of every channel in registers (vectorised
// over the channels: no horizontal sum per step), and adds each direction's y into a task-local
// (L, kLanes) accumulator at the grid position the step reads: the merge over k happens in a fixed
// order inside one task, so the result is deterministic and needs no atomics or (B, K, D, L)
// buffer. Per step: delta = softplus(dt_w . dt + dt_b) on the fly, N decays exp(delta A) by a
// polynomial 2^y, the state update, y = C . h + D u. The dt/B/C rows of a direction are gathered
// once per call in scan order (prep.h), so a step reads one contiguous row shared by all channels.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/prep.h"
#include "cpu/scan_cpu.h"
#include "cpu/state.h"
#include "cpu/steps.h"

namespace mambaad::cpu {
namespace {

template <typename T>
struct FwdCtx {
  CpuGeometry cg;
  const T* xT;           // (B, L, Dst) x in lane layout
  const T* xdT;          // (B, K, L, C) x_dbl gathered in scan order
  const T* pack;         // packed parameters (prep.h)
  const int32_t* paths;  // (K, L)
  T* states;             // (B, K, Dk, J, N)
};

template <typename T, int NT>
struct Fwd {
  using V = Vec<T>;

  // Direction k, channel vector v of batch b: scan all L steps, add y into acc (L, kLanes) at
  // grid positions, write the checkpoints.
  static void scan(const FwdCtx<T>& c, int64_t b, int64_t k, int64_t v, T* acc) {
    const ScanGeometry& g = c.cg.g;
    const int64_t N = NT > 0 ? NT : g.N, C = c.cg.C, L = g.L, J = c.cg.J, chunk = c.cg.chunk;
    const ParamVec<T> pv(c.pack, c.cg, k, v);
    const int nvalid = c.cg.nvalid(v);
    const VecI<T> mask = lane_mask<T>(nvalid);
    const T* ub = c.xT + b * L * c.cg.Dst + g.channel(k, v * kLanes);  // u at grid position p: ub + p * Dst
    const T* xd = c.xdT + (b * g.K + k) * L * C;
    const int32_t* path = c.paths + k * L;
    T* st = c.states + ((b * g.K + k) * g.Dk + v * kLanes) * J * N;
    V delta[kCpuStateChunk], u[kCpuStateChunk];
    State<T, NT> h(N);
    for (int64_t j = 0; j < J; ++j) {
      h.checkpoint(st + j * N, J * N, nvalid);
      const int64_t t0 = j * chunk, nt = std::min(L, t0 + chunk) - t0;
      prepare_chunk<T>(pv, xd + t0 * C, C, N, g.R, path + t0, nt, ub, c.cg.Dst, mask, delta, u, nullptr);
      forward_chunk<T, NT>(h, pv, xd + t0 * C, C, path + t0, nt, delta, u, acc);
    }
  }

  static void run(const FwdCtx<T>& c, T* out) {
    const ScanGeometry& g = c.cg.g;
    const int64_t KG = g.grouped ? g.K : 1, nvk = c.cg.nvk, L = g.L;
    at::parallel_for(0, g.B * KG * nvk, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(static_cast<size_t>(L * kLanes));
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t b = idx / (KG * nvk), kg = idx / nvk % KG, v = idx % nvk;
        std::fill(acc.begin(), acc.end(), T(0));
        const int64_t k0 = g.grouped ? kg : 0, k1 = g.grouped ? kg + 1 : g.K;
        for (int64_t k = k0; k < k1; ++k) scan(c, b, k, v, acc.data());  // fixed order over k
        const int64_t ch0 = g.channel(k0, v * kLanes);
        for (int i = 0; i < c.cg.nvalid(v); ++i) {
          T* o = out + (b * g.D + ch0 + i) * L;
          for (int64_t p = 0; p < L; ++p) o[p] = acc[p * kLanes + i];
        }
      }
    });
  }
};

template <typename T>
void run_fwd(const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& dt_w,
             const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds,
             const at::Tensor& paths, const CpuGeometry& cg, at::Tensor& out_ct, at::Tensor& states) {
  const at::Tensor xT = to_lanes<T>(x, cg);
  const at::Tensor xdT = gather_dbl<T>(x_dbl, paths, cg);
  const at::Tensor pack = pack_params<T>(dt_w, dt_b, A_logs, Ds, cg);
  const at::Tensor pc = paths.contiguous();
  const FwdCtx<T> c{cg, xT.data_ptr<T>(), xdT.data_ptr<T>(), pack.data_ptr<T>(), pc.data_ptr<int32_t>(),
                    states.data_ptr<T>()};
  if (std::is_same_v<T, float> && cg.g.N == 16)
    Fwd<T, 16>::run(c, out_ct.data_ptr<T>());
  else
    Fwd<T, 0>::run(c, out_ct.data_ptr<T>());
}

}  // namespace

int lanes() { return kLanes; }

std::tuple<at::Tensor, at::Tensor> scan_fwd(const at::Tensor& x, const at::Tensor& x_dbl,
                                            const at::Tensor& dt_w, const at::Tensor& dt_b,
                                            const at::Tensor& A_logs, const at::Tensor& Ds,
                                            const at::Tensor& paths, bool grouped, bool deterministic) {
  (void)deterministic;  // every reduction here has a fixed order
  constexpr const char* op = "mambaad::scan_fwd (CPU)";
  const ScanGeometry geo = check_scan_args(op, x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": got tensors on ", x.device());
  check_paths_permutation(op, paths);
  const CpuGeometry cg(geo, kCpuStateChunk);
  const auto ct = compute_dtype(x.scalar_type());
  at::Tensor out = alloc_output({geo.B, geo.D, geo.L}, x.options());
  at::Tensor states = alloc_output(states_shape(geo, cg.chunk), x.options().dtype(ct));
  at::Tensor out_ct = ct == x.scalar_type() ? out : at::empty({geo.B, geo.D, geo.L}, x.options().dtype(ct));
  if (ct == at::kDouble)
    run_fwd<double>(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, cg, out_ct, states);
  else
    run_fwd<float>(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, cg, out_ct, states);
  if (!out_ct.is_same(out)) out.copy_(out_ct);
  return {out, states};
}

}  // namespace mambaad::cpu
