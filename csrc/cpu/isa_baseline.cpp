// The scan loops for the build's default target, 4 float lanes (one 128-bit vector): SSE2 on any
// x86-64, NEON on aarch64, plain vector-extension code elsewhere. Always compiled; the fallback.
#include "cpu/isa_prelude.h"

#define MAMBAAD_ISA baseline
#define MAMBAAD_ISA_LANES 4
#include "cpu/isa_kernels.h"
