// The scan loops for x86-64 with AVX-512 (F, BW, DQ, VL: Skylake-SP / Ice Lake / Zen 4 and later),
// 16 float lanes, 32 vector registers.
#include "cpu/isa_prelude.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#endif

#define MAMBAAD_ISA avx512
#define MAMBAAD_ISA_LANES 16
#define MAMBAAD_ISA_AVX2 1
#define MAMBAAD_ISA_AVX512 1
#include "cpu/isa_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
