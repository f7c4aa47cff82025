// Which compiled variant of the CPU scan loops runs (dispatch.cpp).
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

namespace mambaad::cpu {

// The variants compiled into this binary, best first.
const std::vector<const IsaVariant*>& isa_variants();

// The variant the kernels use: the one named by MAMBAAD_CPU_ISA (an error if this CPU cannot run
// it), else the lower of ATEN_CPU_CAPABILITY's and the best automatic one this CPU supports, else
// that best one. Decided at the first call, or by set_isa.
const IsaVariant& active_isa();

// Use the named variant from now on (tests, benchmarks); "" returns to the environment's choice.
// A ValueError (c10::ValueError) for a name not compiled in or that this CPU cannot run. Returns the
// name in use before.
std::string set_isa(const std::string& name);

// The variant's loops for the element type T.
template <typename T>
const ScanLoops<T>& loops(const IsaVariant& isa) {
  if constexpr (std::is_same_v<T, float>)
    return *isa.f32;
  else
    return *isa.f64;
}

}  // namespace mambaad::cpu
