// Host-side helpers shared by the CPU and CUDA kernels of mambaad::scan_fwd / scan_bwd: argument
// checks with clear errors (ValueError for shapes and devices, TypeError for dtypes once in
// Python), the geometry of a call, and output allocation (NaN-poisoned under MAMBAAD_POISON=1).
//
// The argument meanings are the kernel contract of mambaad_kernels/fused.py:
//   x (B, D, L) any strides; x_dbl (B, K, R + 2N, L) float32 (float64 for float64 x), whatever
//   x's dtype; dt_w (K, Dk, R); dt_b (K, Dk); A_logs (K * Dk, N); Ds (K * Dk,); parameters
//   float32 or x's dtype; paths (K, L) int32;
//   Dk = D, or D / K when grouped. states (B, K, Dk, ceil(L / chunk), N) float32 (float64 for
//   float64 inputs): states[b, k, d, j] is the state before step j * chunk.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "hss_math.h"

namespace mambaad {

// The arithmetic type of a call: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType compute_dtype(at::ScalarType x) {
  return x == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool poisoning() {
  const char* v = std::getenv("MAMBAAD_POISON");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// An output buffer: uninitialised, or NaN-filled (integers: -1) under MAMBAAD_POISON=1 so that an
// element a kernel forgets to write fails the parity tests.
inline at::Tensor alloc_output(at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (!poisoning()) return at::empty(shape, opts);
  if (at::isFloatingType(opts.dtype().toScalarType()))
    return at::full(shape, std::numeric_limits<double>::quiet_NaN(), opts);
  return at::full(shape, -1, opts);
}

inline at::Tensor alloc_output(at::IntArrayRef shape, at::ScalarType dtype, const at::Device& device) {
  return alloc_output(shape, at::TensorOptions().dtype(dtype).device(device));
}

namespace detail {

inline void check_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& x,
                        at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(p.device() == x.device(), op, ": ", name, " is on ", p.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat || p.scalar_type() == x.scalar_type(), op, ": ",
                   name, " must be float32 or x's dtype (", x.scalar_type(), "), got ",
                   p.scalar_type());
  TORCH_CHECK_VALUE(p.sizes() == shape, op, ": ", name, " has shape ", p.sizes(), ", expected ",
                    shape);
}

}  // namespace detail

// Checks every argument of scan_fwd (and the shared ones of scan_bwd) and returns the geometry.
inline ScanGeometry check_scan_args(const char* op, const at::Tensor& x, const at::Tensor& x_dbl,
                                    const at::Tensor& dt_w, const at::Tensor& dt_b,
                                    const at::Tensor& A_logs, const at::Tensor& Ds,
                                    const at::Tensor& paths, bool grouped) {
  const auto xt = x.scalar_type();
  TORCH_CHECK_TYPE(xt == at::kFloat || xt == at::kHalf || xt == at::kBFloat16 || xt == at::kDouble,
                   op, ": x must be float32, float16, bfloat16 or float64, got ", xt);
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be (B, D, L), got shape ", x.sizes());
  TORCH_CHECK_VALUE(dt_w.dim() == 3, op, ": dt_w must be (K, Dk, R), got shape ", dt_w.sizes());
  TORCH_CHECK_VALUE(A_logs.dim() == 2, op, ": A_logs must be (K * Dk, N), got shape ",
                    A_logs.sizes());
  ScanGeometry g{};
  g.B = x.size(0);
  g.D = x.size(1);
  g.L = x.size(2);
  g.K = dt_w.size(0);
  g.Dk = dt_w.size(1);
  g.R = dt_w.size(2);
  g.N = A_logs.size(1);
  g.grouped = grouped;
  TORCH_CHECK_VALUE(g.K > 0 && g.R > 0 && g.N > 0, op, ": K, R and N must be positive, got K = ",
                    g.K, ", R = ", g.R, ", N = ", g.N);
  TORCH_CHECK_VALUE(g.D == (grouped ? g.K * g.Dk : g.Dk), op, ": x has D = ", g.D, " channels but dt_w ",
                    dt_w.sizes(), " gives Dk = ", g.Dk, " for K = ", g.K,
                    grouped ? " (grouped: D = K * Dk)" : " (D = Dk)");
  TORCH_CHECK_VALUE(x_dbl.device() == x.device(), op, ": x_dbl is on ", x_dbl.device(),
                    " but x is on ", x.device());
  // The contract: x_dbl in the compute dtype (float32; float64 for float64 x) whatever x's dtype;
  // a half x_dbl is refused, since dt, B and C rounded to half would change the results.
  TORCH_CHECK_TYPE(x_dbl.scalar_type() == compute_dtype(xt), op, ": x_dbl must be ", compute_dtype(xt),
                   " (the compute dtype: float32, float64 for float64 x) for ", xt, " x, got ",
                   x_dbl.scalar_type());
  TORCH_CHECK_VALUE(x_dbl.sizes() == at::IntArrayRef({g.B, g.K, g.dbl_rows(), g.L}), op,
                    ": x_dbl has shape ", x_dbl.sizes(), ", expected (B, K, R + 2N, L) = (", g.B,
                    ", ", g.K, ", ", g.dbl_rows(), ", ", g.L, ")");
  detail::check_param(op, "dt_w", dt_w, x, {g.K, g.Dk, g.R});
  detail::check_param(op, "dt_b", dt_b, x, {g.K, g.Dk});
  detail::check_param(op, "A_logs", A_logs, x, {g.K * g.Dk, g.N});
  detail::check_param(op, "Ds", Ds, x, {g.K * g.Dk});
  TORCH_CHECK_VALUE(paths.device() == x.device(), op, ": paths is on ", paths.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_TYPE(paths.scalar_type() == at::kInt, op, ": paths must be int32, got ",
                   paths.scalar_type());
  TORCH_CHECK_VALUE(paths.sizes() == at::IntArrayRef({g.K, g.L}), op, ": paths has shape ",
                    paths.sizes(), ", expected (K, L) = (", g.K, ", ", g.L, ")");
  return g;
}

// The checkpoint shape for a chunk size: (B, K, Dk, ceil(L / chunk), N).
inline std::vector<int64_t> states_shape(const ScanGeometry& g, int64_t chunk) {
  return {g.B, g.K, g.Dk, ScanGeometry::n_chunks(g.L, chunk), g.N};
}

// Checks the states and dout arguments of scan_bwd.
inline void check_bwd_args(const char* op, const at::Tensor& dout, const at::Tensor& x,
                           const at::Tensor& states, const ScanGeometry& g, int64_t chunk) {
  TORCH_CHECK_VALUE(dout.device() == x.device(), op, ": dout is on ", dout.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_TYPE(dout.scalar_type() == x.scalar_type(), op, ": dout must have x's dtype (",
                   x.scalar_type(), "), got ", dout.scalar_type());
  TORCH_CHECK_VALUE(dout.sizes() == x.sizes(), op, ": dout has shape ", dout.sizes(),
                    ", expected x's shape ", x.sizes());
  TORCH_CHECK_VALUE(states.device() == x.device(), op, ": states is on ", states.device(),
                    " but x is on ", x.device());
  const auto ct = compute_dtype(x.scalar_type());
  TORCH_CHECK_TYPE(states.scalar_type() == ct, op, ": states must be ", ct, " for ", x.scalar_type(),
                   " inputs, got ", states.scalar_type());
  const auto want = states_shape(g, chunk);
  TORCH_CHECK_VALUE(states.sizes() == at::IntArrayRef(want), op, ": states has shape ",
                    states.sizes(), ", expected ", at::IntArrayRef(want), " (checkpoints every ",
                    chunk, " steps; was it made by scan_fwd on this device?)");
  TORCH_CHECK_VALUE(states.is_contiguous(), op, ": states must be contiguous");
}

}  // namespace mambaad
