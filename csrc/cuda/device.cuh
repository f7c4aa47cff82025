// The few device primitives the scan kernels use, for nvcc and for the CPU emulator (emu.h).
//
// Kernel code calls only what is defined here (plus c10::Half / c10::BFloat16 conversions, which
// work in both worlds), so the same source runs on the GPU and, under -DMAMBAAD_EMU, on the CPU
// in tests/test_cuda.py.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(MAMBAAD_EMU)
#include "emu.h"
#define MAMBAAD_DEV inline
#define MAMBAAD_KERNEL inline
#define MAMBAAD_BOUNDS(threads)
#define MAMBAAD_DYN_SMEM(name) unsigned char* name = ::mambaad::emu::shared_mem()
#define MAMBAAD_SMEM(ptr, count) (::mambaad::emu::checked_smem((ptr), (count)))
#define MAMBAAD_RESTRICT
#else
#include <cuda_runtime.h>
#define MAMBAAD_DEV __device__ __forceinline__
#define MAMBAAD_KERNEL __global__
#define MAMBAAD_BOUNDS(threads) __launch_bounds__(threads)
#define MAMBAAD_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define MAMBAAD_SMEM(ptr, count) (ptr)
#define MAMBAAD_RESTRICT __restrict__
#endif

namespace mambaad {
namespace dev {

constexpr unsigned kFullMask = 0xffffffffu;

#if defined(MAMBAAD_EMU)
MAMBAAD_DEV int tid() { return static_cast<int>(emu::thread_x()); }
MAMBAAD_DEV int bid_x() { return static_cast<int>(emu::block_idx().x); }
MAMBAAD_DEV int bid_y() { return static_cast<int>(emu::block_idx().y); }
MAMBAAD_DEV int bid_z() { return static_cast<int>(emu::block_idx().z); }
MAMBAAD_DEV int grid_x() { return static_cast<int>(emu::grid_dim().x); }
MAMBAAD_DEV void sync_block() { emu::syncthreads(); }
MAMBAAD_DEV void sync_warp() { emu::syncwarp(); }
template <typename V>
MAMBAAD_DEV V shfl_idx(V v, int src, int width) { return emu::shfl_idx(v, src, width); }
template <typename V>
MAMBAAD_DEV V shfl_up(V v, int delta, int width) { return emu::shfl_up(v, delta, width); }
template <typename V>
MAMBAAD_DEV V shfl_down(V v, int delta, int width) { return emu::shfl_down(v, delta, width); }
template <typename V>
MAMBAAD_DEV V shfl_xor(V v, int mask, int width) { return emu::shfl_xor(v, mask, width); }
MAMBAAD_DEV float ex2(float x) { return std::exp2(x); }
MAMBAAD_DEV void cp_async4(void* dst, const void* src) { emu::cp_async(dst, src, 4); }
MAMBAAD_DEV void cp_async8(void* dst, const void* src) { emu::cp_async(dst, src, 8); }
MAMBAAD_DEV void cp_async_commit() { emu::cp_async_commit(); }
template <int KEEP>
MAMBAAD_DEV void cp_async_wait() { emu::cp_async_wait(KEEP); }
template <typename V>
MAMBAAD_DEV V ldg(const V* p) { return *p; }
template <typename V>
MAMBAAD_DEV void atomic_add(V* p, V v) { *p += v; }
#else
MAMBAAD_DEV int tid() { return static_cast<int>(threadIdx.x); }
MAMBAAD_DEV int bid_x() { return static_cast<int>(blockIdx.x); }
MAMBAAD_DEV int bid_y() { return static_cast<int>(blockIdx.y); }
MAMBAAD_DEV int bid_z() { return static_cast<int>(blockIdx.z); }
MAMBAAD_DEV int grid_x() { return static_cast<int>(gridDim.x); }
MAMBAAD_DEV void sync_block() { __syncthreads(); }
MAMBAAD_DEV void sync_warp() { __syncwarp(kFullMask); }
template <typename V>
MAMBAAD_DEV V shfl_idx(V v, int src, int width) { return __shfl_sync(kFullMask, v, src, width); }
template <typename V>
MAMBAAD_DEV V shfl_up(V v, int delta, int width) { return __shfl_up_sync(kFullMask, v, delta, width); }
template <typename V>
MAMBAAD_DEV V shfl_down(V v, int delta, int width) {
  return __shfl_down_sync(kFullMask, v, delta, width);
}
template <typename V>
MAMBAAD_DEV V shfl_xor(V v, int mask, int width) { return __shfl_xor_sync(kFullMask, v, mask, width); }
// 2^x on the multi-function unit (one MUFU.EX2; flushes denormal results to zero).
MAMBAAD_DEV float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
MAMBAAD_DEV void cp_async4(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
}
MAMBAAD_DEV void cp_async8(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(src));
}
MAMBAAD_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int KEEP>
MAMBAAD_DEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(KEEP)); }
template <typename V>
MAMBAAD_DEV V ldg(const V* p) { return __ldg(p); }
template <typename V>
MAMBAAD_DEV void atomic_add(V* p, V v) { atomicAdd(p, v); }
#endif

MAMBAAD_DEV double ex2(double x) { return exp2(x); }

}  // namespace dev
}  // namespace mambaad
