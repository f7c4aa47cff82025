// The scan loops for x86-64 with AVX2 and FMA (Haswell / Zen and later), 8 float lanes.
#include "cpu/isa_prelude.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif

#define MAMBAAD_ISA avx2
#define MAMBAAD_ISA_LANES 8
#define MAMBAAD_ISA_AVX2 1
#include "cpu/isa_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
