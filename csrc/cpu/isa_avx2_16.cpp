// A testing variant: AVX2 code with AVX-512's lane count (16 floats, two 256-bit registers a
// vector), so that the 16-lane layouts and masks run, and are tested, on machines without AVX-512.
// Never chosen automatically: MAMBAAD_CPU_ISA=avx2_16 or set_cpu_isa("avx2_16").
#include "cpu/isa_prelude.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif

#define MAMBAAD_ISA avx2_16
#define MAMBAAD_ISA_LANES 16
#define MAMBAAD_ISA_AVX2 1
#include "cpu/isa_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
