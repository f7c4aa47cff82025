// The forward scan kernels for float inputs (one translation unit per direction and dtype, so
// that nvcc compiles them in parallel). The kernels: scan_fwd.cuh; the design: scan.cu.
#include "launch_impl.cuh"

namespace mambaad {
namespace scan {

MAMBAAD_FWD_CONFIGS_F32(MAMBAAD_INSTANTIATE_FWD, float)
MAMBAAD_INSTANTIATE_LANES(float)

}  // namespace scan
}  // namespace mambaad
