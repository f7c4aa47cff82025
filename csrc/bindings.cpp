// The compiled extension mambaad_kernels._C: defines the torch ops mambaad::scan_fwd and
// mambaad::scan_bwd (the kernel contract of mambaad_kernels/fused.py), registers their CPU kernels
// (csrc/cpu/), and exposes a few build constants to Python. The CUDA kernels (csrc/cuda/, when
// built) register under the same names with TORCH_LIBRARY_IMPL(mambaad, CUDA, m); the fake (meta)
// implementations and the autograd live in Python (mambaad_kernels/cuda.py, fused.py).
#include <torch/extension.h>
#include <torch/library.h>

#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu/dispatch.h"
#include "cpu/scan_cpu.h"

TORCH_LIBRARY(mambaad, m) {
  // The fake implementations live in this Python module; torch names it in the error it raises when
  // a fake is missing (it does not import it itself: PYBIND11_MODULE below does).
  m.set_python_module("mambaad_kernels.cuda");
  m.def("scan_fwd(Tensor x, Tensor x_dbl, Tensor dt_w, Tensor dt_b, Tensor A_logs, Tensor Ds, "
        "Tensor paths, bool grouped, bool deterministic) -> (Tensor, Tensor)");
  m.def("scan_bwd(Tensor dout, Tensor x, Tensor x_dbl, Tensor states, Tensor dt_w, Tensor dt_b, "
        "Tensor A_logs, Tensor Ds, Tensor paths, bool grouped, bool deterministic) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mambaad, CPU, m) {
  m.impl("scan_fwd", &mambaad::cpu::scan_fwd);
  m.impl("scan_bwd", &mambaad::cpu::scan_bwd);
}

namespace {

#define MAMBAAD_STR_(...) #__VA_ARGS__
#define MAMBAAD_STR(...) MAMBAAD_STR_(__VA_ARGS__)

// The CUDA code this binary carries, as setup.py passed it (-DMAMBAAD_CUDA_ARCHS=sm_80,sm_90,
// compute_90): "sm_XY" is machine code for compute capability X.Y, "compute_XY" PTX the driver
// compiles for X.Y and later. Empty without the CUDA kernels.
std::vector<std::string> cuda_archs() {
  std::vector<std::string> archs;
#if defined(MAMBAAD_WITH_CUDA) && defined(MAMBAAD_CUDA_ARCHS)
  std::stringstream list(MAMBAAD_STR(MAMBAAD_CUDA_ARCHS));
  for (std::string arch; std::getline(list, arch, ',');) {
    if (!arch.empty()) archs.push_back(arch);
  }
#endif
  return archs;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mambaad_kernels._C: the fused HSS scan kernels (torch ops mambaad::scan_fwd / scan_bwd)";
  m.attr("CPU_STATE_CHUNK") = mambaad::kCpuStateChunk;
  // The CPU kernels' instruction-set variants (csrc/cpu/dispatch.cpp).
  m.def("cpu_isa", [] { return std::string(mambaad::cpu::active_isa().name); },
        "The CPU kernel variant in use: 'avx512', 'avx2', 'baseline' (x86-64), 'neon' (aarch64), ...; "
        "chosen at the first call from the CPU, MAMBAAD_CPU_ISA or ATEN_CPU_CAPABILITY");
  m.def("cpu_lanes", [] { return mambaad::cpu::active_isa().lanes; },
        "float channels per SIMD vector of the CPU kernel variant in use");
  m.def("cpu_isas", [] {
    std::vector<std::tuple<std::string, int, bool, bool>> out;
    for (const auto* v : mambaad::cpu::isa_variants()) out.emplace_back(v->name, v->lanes, v->supported(), v->automatic);
    return out;
  }, "The CPU kernel variants compiled in, best first: (name, lanes, this CPU runs it, chosen automatically)");
  m.def("set_cpu_isa", &mambaad::cpu::set_isa, pybind11::arg("name"),
        "Use the named CPU kernel variant from now on ('' returns to the automatic / environment choice); "
        "returns the name in use before ('' if none was chosen yet)");
#ifdef MAMBAAD_WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
  m.def("cuda_archs", &cuda_archs,
        "The CUDA architectures compiled in: 'sm_XY' (machine code), 'compute_XY' (PTX); [] without CUDA");
  // Register the ops' fake (meta) kernels now, so that importing the extension alone is enough for
  // FakeTensor / torch.compile tracing. mambaad_kernels.cuda does not import _C at module level:
  // no import cycle.
  pybind11::module_::import("mambaad_kernels.cuda").attr("_register_fakes")();
}
