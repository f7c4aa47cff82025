// The backward scan kernels for double inputs (one translation unit per direction and dtype, so
// that nvcc compiles them in parallel). The kernels: scan_bwd.cuh; the design: scan.cu.
#include "launch_impl.cuh"

namespace mambaad {
namespace scan {

MAMBAAD_BWD_CONFIGS_F64(MAMBAAD_INSTANTIATE_BWD, double)
template void launch_sum<double>(const SumArgs<double>&, int64_t, unsigned);

}  // namespace scan
}  // namespace mambaad
