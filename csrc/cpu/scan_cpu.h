// The CPU implementations of mambaad::scan_fwd and mambaad::scan_bwd (registered in bindings.cpp).
// Semantics: the kernel contract of mambaad_kernels/fused.py and tests/kernel_contract.py.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace mambaad::cpu {

// x (B, D, L) any strides; x_dbl (B, K, R + 2N, L) float32 (float64 for float64 x) whatever
// x's dtype; dt_w (K, Dk, R); dt_b (K, Dk);
// A_logs (K * Dk, N); Ds (K * Dk,); paths (K, L) int32. Returns out (B, D, L) contiguous in x's
// dtype and states (B, K, Dk, ceil(L / kCpuStateChunk), N) float32 (float64 for float64 x).
// Always deterministic (every sum has a fixed order); `deterministic` is accepted for the schema.
std::tuple<at::Tensor, at::Tensor> scan_fwd(const at::Tensor& x, const at::Tensor& x_dbl,
                                            const at::Tensor& dt_w, const at::Tensor& dt_b,
                                            const at::Tensor& A_logs, const at::Tensor& Ds,
                                            const at::Tensor& paths, bool grouped, bool deterministic);

// Returns (dx (B, D, L), dx_dbl (B, K, R + 2N, L), d_dt_w, d_dt_b, d_A_logs, d_Ds), all float32
// (float64 for float64 x), the parameter gradients in the parameters' shapes.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& states,
    const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds,
    const at::Tensor& paths, bool grouped, bool deterministic);

}  // namespace mambaad::cpu
