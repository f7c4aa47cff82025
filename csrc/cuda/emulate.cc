// The CUDA scan kernels of this directory, compiled for the CPU emulator (emu.h) as a small Python
// module, so that tests/test_cuda.py checks the kernel source against the float64 reference on a
// machine without a GPU. Built on demand by the test with torch.utils.cpp_extension.load and
// -DMAMBAAD_EMU; never part of the installed extension (setup.py compiles *.cpp and *.cu only).
#if !defined(MAMBAAD_EMU)
#error "emulate.cc is built with -DMAMBAAD_EMU (see tests/test_cuda.py)"
#endif

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include "scan_host.h"

namespace {

using mambaad::scan::LaunchOptions;

// order: 0 threads in index order between barriers, 1 reversed, 2 shuffled with `seed`.
std::tuple<at::Tensor, at::Tensor> emu_fwd(const at::Tensor& x, const at::Tensor& x_dbl,
                                           const at::Tensor& dt_w, const at::Tensor& dt_b,
                                           const at::Tensor& A_logs, const at::Tensor& Ds,
                                           const at::Tensor& paths, bool grouped, bool deterministic,
                                           int64_t config, int64_t order, int64_t seed) {
  mambaad::emu::set_order(static_cast<int>(order), static_cast<unsigned>(seed));
  LaunchOptions opt;
  opt.config = static_cast<int>(config);
  return mambaad::scan::scan_fwd_impl(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic,
                                      at::kCPU, opt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> emu_bwd(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& states,
    const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds,
    const at::Tensor& paths, bool grouped, bool deterministic, int64_t config, int64_t order,
    int64_t seed) {
  mambaad::emu::set_order(static_cast<int>(order), static_cast<unsigned>(seed));
  LaunchOptions opt;
  opt.config = static_cast<int>(config);
  return mambaad::scan::scan_bwd_impl(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, grouped,
                                      deterministic, at::kCPU, opt);
}

// Shared-memory bytes per block of a configuration (the formulas the host checks against the
// device limit): fwd_smem(config, ...) for the forward configurations <16, 4, 16>, <16, 8, 16>,
// <16, 32, 8>, <4, 8, 8>, <16, 16, 16> (config 0 .. 4), bwd_smem(config, ...) for <16, 8, 16>,
// <4, 8, 16>, <16, 8, 8> (config 0 .. 2), lanes_smem(R) for the lane-sequential forward.
int64_t fwd_smem(int64_t config, int64_t R, int64_t N, int64_t L, bool acc_in_smem) {
  using namespace mambaad::scan;
  const int r = static_cast<int>(R), n = static_cast<int>(N), l = static_cast<int>(L);
  switch (config) {
    case 0: return fwd_smem_bytes<float, 16, 4, 16>(r, n, l, acc_in_smem);
    case 1: return fwd_smem_bytes<float, 16, 8, 16>(r, n, l, acc_in_smem);
    case 2: return fwd_smem_bytes<float, 16, 32, 8>(r, n, l, acc_in_smem);
    case 3: return fwd_smem_bytes<float, 4, 8, 8>(r, n, l, acc_in_smem);
    case 4: return fwd_smem_bytes<float, 16, 16, 16>(r, n, l, acc_in_smem);
    default: throw std::invalid_argument("fwd_smem: config 0 .. 4");
  }
}

int64_t bwd_smem(int64_t config, int64_t R, int64_t N) {
  using namespace mambaad::scan;
  const int r = static_cast<int>(R), n = static_cast<int>(N);
  switch (config) {
    case 0: return bwd_smem_bytes<float, 16, 8, 16>(r, n);
    case 1: return bwd_smem_bytes<float, 4, 8, 16>(r, n);
    case 2: return bwd_smem_bytes<float, 16, 8, 8>(r, n);
    default: throw std::invalid_argument("bwd_smem: config 0 .. 2");
  }
}

int64_t lanes_smem(int64_t R) {
  using namespace mambaad::scan;
  return lanes_smem_bytes<kLanesG, kLanesCH>(static_cast<int>(R));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU emulation of the mambaad CUDA scan kernels (tests only)";
  m.def("scan_fwd", &emu_fwd, "forward kernels under emulation");
  m.def("scan_bwd", &emu_bwd, "backward kernels under emulation");
  m.def("fwd_smem", &fwd_smem, "shared-memory bytes of a forward configuration");
  m.def("bwd_smem", &bwd_smem, "shared-memory bytes of a backward configuration");
  m.def("lanes_smem", &lanes_smem, "shared-memory bytes of the lane-sequential forward");
  m.attr("STATE_CHUNK") = mambaad::scan::kStateChunk;
}
