// Definitions of the launch entry points declared in launch.h: a kernel launch on the current
// CUDA stream (shared memory above 48 KB opted in), or a run under the CPU emulator.
#pragma once

#include "launch.h"

#if !defined(MAMBAAD_EMU)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace mambaad {
namespace scan {

template <typename Kern, typename... Args>
inline void launch_kernel(Kern kern, Grid grid, int threads, int64_t smem, const Args&... args) {
#if defined(MAMBAAD_EMU)
  emu::launch(emu::Dim3{grid.x, grid.y, grid.z}, emu::Dim3{static_cast<unsigned>(threads), 1, 1},
              static_cast<size_t>(smem), [&]() { kern(args...); });
#else
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  kern<<<dim3(grid.x, grid.y, grid.z), threads, static_cast<size_t>(smem),
         c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <typename T, typename A, int NW, int LPC, int TI>
void launch_fwd(const FwdArgs<T, A>& args, Grid grid, int64_t smem) {
  launch_kernel(hss_fwd_kernel<T, A, NW, LPC, TI>, grid, NW * 32, smem, args);
}

template <typename T, typename A, int NW, int LPC, int TI>
void launch_bwd(const BwdArgs<T, A>& args, Grid grid, int64_t smem) {
  launch_kernel(hss_bwd_kernel<T, A, NW, LPC, TI>, grid, NW * 32, smem, args);
}

template <typename T, int G, int CH>
void launch_fwd_lanes(const LanesArgs<T>& args, Grid grid, int64_t smem) {
  launch_kernel(hss_fwd_lanes_kernel<T, G, CH>, grid, G, smem, args);
}

template <typename A>
void launch_sum(const SumArgs<A>& args, int64_t total, unsigned blocks) {
  launch_kernel(sum_slices_kernel<A>, Grid{blocks, 1, 1}, 256, 0, args, total);
}

#define MAMBAAD_INSTANTIATE_FWD(T, A, NW, LPC, TI) \
  template void launch_fwd<T, A, NW, LPC, TI>(const FwdArgs<T, A>&, Grid, int64_t);
#define MAMBAAD_INSTANTIATE_BWD(T, A, NW, LPC, TI) \
  template void launch_bwd<T, A, NW, LPC, TI>(const BwdArgs<T, A>&, Grid, int64_t);

}  // namespace scan
}  // namespace mambaad
