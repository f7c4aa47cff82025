// The forward scan kernels for c10::BFloat16 inputs (one translation unit per direction and dtype, so
// that nvcc compiles them in parallel). The kernels: scan_fwd.cuh; the design: scan.cu.
#include "launch_impl.cuh"

namespace mambaad {
namespace scan {

MAMBAAD_FWD_CONFIGS_F32(MAMBAAD_INSTANTIATE_FWD, c10::BFloat16)
MAMBAAD_INSTANTIATE_LANES(c10::BFloat16)

}  // namespace scan
}  // namespace mambaad
