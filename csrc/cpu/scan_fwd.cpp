// Fused CPU forward of the HSS / GSS scan (mambaad::scan_fwd): the argument checks, the lane layouts
// and packed parameters (prep.h), the tasks split over threads; the scan loops themselves are those
// of the variant chosen at run time (isa_kernels.h, dispatch.cpp).
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/dispatch.h"
#include "cpu/prep.h"
#include "cpu/scan_cpu.h"

namespace mambaad::cpu {
namespace {

template <typename T>
void run_fwd(const IsaVariant& isa, const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& dt_w,
             const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds, const at::Tensor& paths,
             const at::Tensor& inv, const CpuGeometry& cg, at::Tensor& out_ct, at::Tensor& states) {
  const ScanLoops<T>& run = loops<T>(isa);
  const at::Tensor xT = to_lanes<T>(x, cg, run);
  const at::Tensor xdT = gather_dbl<T>(x_dbl, inv, cg, run);
  const at::Tensor pack = pack_params<T>(dt_w, dt_b, A_logs, Ds, cg);
  const at::Tensor pc = paths.contiguous();
  const FwdCtx<T> c{cg, xT.data_ptr<T>(), xdT.data_ptr<T>(), pack.data_ptr<T>(), pc.data_ptr<int32_t>(),
                    states.data_ptr<T>(), out_ct.data_ptr<T>()};
  const ScanGeometry& g = cg.g;
  const int64_t KG = g.grouped ? g.K : 1;
  at::parallel_for(0, g.B * KG * cg.nvk, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(static_cast<size_t>(g.L * cg.W));  // the task's (L, W) accumulator
    run.fwd(c, begin, end, acc.data());
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> scan_fwd(const at::Tensor& x, const at::Tensor& x_dbl,
                                            const at::Tensor& dt_w, const at::Tensor& dt_b,
                                            const at::Tensor& A_logs, const at::Tensor& Ds,
                                            const at::Tensor& paths, bool grouped, bool deterministic) {
  (void)deterministic;  // every reduction here has a fixed order
  constexpr const char* op = "mambaad::scan_fwd (CPU)";
  const ScanGeometry geo = check_scan_args(op, x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": got tensors on ", x.device());
  const at::Tensor inv = paths_inverse(op, paths);  // the check, and x_dbl gathered by grid position
  const IsaVariant& isa = active_isa();
  const CpuGeometry cg(geo, kCpuStateChunk, isa.lanes);
  const auto ct = compute_dtype(x.scalar_type());
  at::Tensor out = alloc_output({geo.B, geo.D, geo.L}, x.options());
  at::Tensor states = alloc_output(states_shape(geo, cg.chunk), x.options().dtype(ct));
  at::Tensor out_ct = ct == x.scalar_type() ? out : at::empty({geo.B, geo.D, geo.L}, x.options().dtype(ct));
  if (ct == at::kDouble)
    run_fwd<double>(isa, x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, inv, cg, out_ct, states);
  else
    run_fwd<float>(isa, x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, inv, cg, out_ct, states);
  if (!out_ct.is_same(out)) out.copy_(out_ct);
  return {out, states};
}

}  // namespace mambaad::cpu
