// The kernel configurations and the launch entry points of the scan kernels. The host code
// (scan_host.h) sees only these declarations; each kernel_<dir>_<dtype>.cu file instantiates the
// definitions of launch_impl.cuh for one direction and dtype, so nvcc compiles the kernels in
// parallel translation units (MAX_JOBS). The emulator build (emulate.cc) includes the definitions.
#pragma once

#include <cstdint>

#include "scan_bwd.cuh"
#include "scan_fwd.cuh"
#include "scan_lanes.cuh"

namespace mambaad {
namespace scan {

struct Grid {
  unsigned x, y, z;
};

// Configurations <NW warps, LPC lanes per channel, TI steps per lane>; scan_host.h chooses one.
// X(T, A, NW, LPC, TI) for every forward / backward configuration of an input type T.
#define MAMBAAD_FWD_CONFIGS_F32(X, T) \
  X(T, float, 16, 4, 16) X(T, float, 16, 8, 16) X(T, float, 16, 16, 16) X(T, float, 16, 32, 8) \
  X(T, float, 4, 8, 8)
#define MAMBAAD_FWD_CONFIGS_F64(X, T) X(T, double, 4, 8, 8)
#define MAMBAAD_BWD_CONFIGS_F32(X, T) \
  X(T, float, 16, 8, 16) X(T, float, 16, 8, 8) X(T, float, 4, 8, 16)
#define MAMBAAD_BWD_CONFIGS_F64(X, T) X(T, double, 4, 16, 8)

template <typename T, typename A, int NW, int LPC, int TI>
void launch_fwd(const FwdArgs<T, A>& args, Grid grid, int64_t smem);

template <typename T, typename A, int NW, int LPC, int TI>
void launch_bwd(const BwdArgs<T, A>& args, Grid grid, int64_t smem);

template <typename A>
void launch_sum(const SumArgs<A>& args, int64_t total, unsigned blocks);

// The lane-sequential forward (scan_lanes.cuh): one configuration, 128 lanes, 32-step chunks.
constexpr int kLanesG = 128, kLanesCH = 32;
#define MAMBAAD_INSTANTIATE_LANES(T) \
  template void launch_fwd_lanes<T, kLanesG, kLanesCH>(const LanesArgs<T>&, Grid, int64_t);

template <typename T, int G, int CH>
void launch_fwd_lanes(const LanesArgs<T>& args, Grid grid, int64_t smem);

}  // namespace scan
}  // namespace mambaad
