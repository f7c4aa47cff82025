// The backward scan kernels for float inputs (one translation unit per direction and dtype, so
// that nvcc compiles them in parallel). The kernels: scan_bwd.cuh; the design: scan.cu.
#include "launch_impl.cuh"

namespace mambaad {
namespace scan {

MAMBAAD_BWD_CONFIGS_F32(MAMBAAD_INSTANTIATE_BWD, float)
template void launch_sum<float>(const SumArgs<float>&, int64_t, unsigned);

}  // namespace scan
}  // namespace mambaad
