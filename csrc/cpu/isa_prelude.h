// Included first by every isa_*.cpp, before it switches the compiler's target: the standard headers,
// the intrinsics and the shared headers the scan loops use, so that their inline functions are
// compiled for the default target in every translation unit (a copy the linker keeps then runs on
// any CPU), and only the variant's own namespace (MAMBAAD_ISA) gets the wider instruction set.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "cpu/kernels.h"
#include "hss_math.h"
