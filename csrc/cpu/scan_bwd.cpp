// Fused CPU backward of the HSS / GSS scan (mambaad::scan_bwd): the argument checks, the lane
// layouts, the tasks split over threads and the reductions after the scan (dx over the directions,
// the channel groups' dx_dbl partials, the parameter gradients over the batch); the reverse scan
// itself is the chosen variant's (isa_kernels.h, dispatch.cpp). Every sum has a fixed order: the
// result is deterministic and independent of the number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/prep.h"
#include "cpu/scan_cpu.h"

namespace mambaad::cpu {
namespace {

// Tasks per call the channel grouping aims at (shape-only, so results do not depend on threads).
constexpr int64_t kTargetTasks = 16;
// Bytes of du (one row of channels per direction and position) a wave of batches may hold: it is
// written at scattered positions and summed over the directions after the wave, so it should stay
// in the last-level cache (8 MiB: a share of a server's L3; a fixed figure, not the machine's, so
// that results do not depend on the machine).
constexpr int64_t kDubBudget = int64_t{8} << 20;

template <typename T>
void run_bwd(const IsaVariant& isa, const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl,
             const at::Tensor& states, const at::Tensor& dt_w, const at::Tensor& dt_b,
             const at::Tensor& A_logs, const at::Tensor& Ds, const at::Tensor& paths,
             const at::Tensor& inv, const CpuGeometry& cg, at::Tensor& dx, at::Tensor& dx_dbl,
             at::Tensor& d_dt_w, at::Tensor& d_dt_b, at::Tensor& d_A_logs, at::Tensor& d_Ds) {
  const ScanGeometry& g = cg.g;
  const auto opts = x.options().dtype(c10::CppTypeToScalarType<T>::value);
  const ScanLoops<T>& run = loops<T>(isa);
  const at::Tensor xT = to_lanes<T>(x, cg, run), gT = to_lanes<T>(dout, cg, run);
  const at::Tensor xdT = gather_dbl<T>(x_dbl, inv, cg, run);
  const at::Tensor pack = pack_params<T>(dt_w, dt_b, A_logs, Ds, cg);
  const at::Tensor pc = paths.contiguous();
  const int64_t KD = g.grouped ? 1 : g.K;
  // Batches per wave: as many as keep the wave's du within kDubBudget (at least one). It depends on
  // the shape and the variant's lane count only, so the channel grouping, and with it the order of
  // every sum, is the same for every thread count and on every machine running the variant.
  const int64_t dub_per_batch = KD * g.L * cg.Dst * static_cast<int64_t>(sizeof(T));
  const int64_t Bw = std::max<int64_t>(1, std::min<int64_t>(kDubBudget / dub_per_batch, g.B));
  const int64_t G = std::max<int64_t>(
      1, std::min<int64_t>(cg.nvk, (kTargetTasks + Bw * g.K - 1) / std::max<int64_t>(1, Bw * g.K)));
  at::Tensor dub = at::empty({Bw, KD, g.L, cg.Dst}, opts);
  at::Tensor parts = G == 1 ? at::Tensor() : at::empty({G, Bw, g.K, cg.C, g.L}, opts);
  at::Tensor pgrad = at::zeros({g.B, g.K, cg.nvk, g.N + g.R + 2, cg.W}, opts);
  const size_t scratch_bytes = run.bwd_scratch_bytes(cg, (cg.nvk + G - 1) / G);
  const int64_t npt = (g.L + 63) / 64;  // dx: the sum over the directions, by tiles of 64 positions
  const int64_t wave_dbl = g.K * cg.C * g.L;  // dx_dbl values per batch
  for (int64_t b0 = 0; b0 < g.B; b0 += Bw) {
    const int64_t nb = std::min(Bw, g.B - b0);
    T* dbl_out = dx_dbl.data_ptr<T>() + b0 * wave_dbl;
    const BwdCtx<T> c{cg, xT.data_ptr<T>(), gT.data_ptr<T>(), xdT.data_ptr<T>(), pack.data_ptr<T>(),
                      pc.data_ptr<int32_t>(), inv.data_ptr<int32_t>(), states.data_ptr<T>(),
                      pgrad.data_ptr<T>(), G, b0, Bw, dub.data_ptr<T>(),
                      G == 1 ? dbl_out : parts.data_ptr<T>()};
    at::parallel_for(0, nb * g.K * G, 1, [&](int64_t begin, int64_t end) {
      // The thread's scratch, 64-byte aligned for the vector types of any variant.
      std::unique_ptr<unsigned char[]> block(new unsigned char[scratch_bytes + 64]);
      void* p = block.get();
      size_t space = scratch_bytes + 64;
      run.bwd(c, begin, end, std::align(64, scratch_bytes, p, space));
    });
    at::parallel_for(0, nb * npt, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> tile(64 * 64);
      run.reduce_dx(dub.data_ptr<T>(), KD, cg, dx.data_ptr<T>() + b0 * g.D * g.L, begin, end, tile.data());
    });
    if (G > 1) {  // sum the channel groups' partials, in order
      const T* src = parts.data_ptr<T>();
      const int64_t n = nb * wave_dbl, stride = Bw * wave_dbl;
      at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          T acc = src[e];
          for (int64_t gi = 1; gi < G; ++gi) acc += src[gi * stride + e];
          dbl_out[e] = acc;
        }
      });
    }
  }

  // Parameter gradients: the per-batch partials summed in order, back to the parameters' layouts.
  const ParamGradOut<T> pout{d_dt_w.data_ptr<T>(), d_dt_b.data_ptr<T>(), d_A_logs.data_ptr<T>(), d_Ds.data_ptr<T>()};
  at::parallel_for(0, g.K * cg.nvk, 4, [&](int64_t begin, int64_t end) {
    run.param_grads(pgrad.data_ptr<T>(), pack.data_ptr<T>(), cg, pout, begin, end);
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
  const at::Tensor inv = paths_inverse(op, paths);  // the x_dbl gradient is written by grid position
  const IsaVariant& isa = active_isa();
  const CpuGeometry cg(geo, kCpuStateChunk, isa.lanes);
  const auto opts = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor dx = alloc_output({geo.B, geo.D, geo.L}, opts);
  at::Tensor dx_dbl = alloc_output({geo.B, geo.K, cg.C, geo.L}, opts);
  at::Tensor d_dt_w = alloc_output(dt_w.sizes(), opts), d_dt_b = alloc_output(dt_b.sizes(), opts);
  at::Tensor d_A_logs = alloc_output(A_logs.sizes(), opts), d_Ds = alloc_output(Ds.sizes(), opts);
  if (opts.dtype() == at::kDouble)
    run_bwd<double>(isa, dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, inv, cg, dx, dx_dbl, d_dt_w,
                    d_dt_b, d_A_logs, d_Ds);
  else
    run_bwd<float>(isa, dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, inv, cg, dx, dx_dbl, d_dt_w,
                   d_dt_b, d_A_logs, d_Ds);
  return {dx, dx_dbl, d_dt_w, d_dt_b, d_A_logs, d_Ds};
}

}  // namespace mambaad::cpu
