// Shim of <ATen/Dispatch.h> for the aarch64 harness (tests/aarch64/README.md): the one dispatch
// macro the drivers use, for float, double and the two extra types they name (float16, bfloat16).
#pragma once

#include <ATen/ATen.h>

#define MAMBAAD_SHIM_CASE(type, cpp, ...) \
  case type: {                            \
    using scalar_t = cpp;                 \
    return __VA_ARGS__();                 \
  }

#define AT_DISPATCH_FLOATING_TYPES_AND2(T1, T2, TYPE, NAME, ...)                                  \
  [&] {                                                                                           \
    static_assert((T1) == ::at::kHalf && (T2) == ::at::kBFloat16, "the shim dispatches these two"); \
    switch (TYPE) {                                                                               \
      MAMBAAD_SHIM_CASE(::at::kFloat, float, __VA_ARGS__)                                         \
      MAMBAAD_SHIM_CASE(::at::kDouble, double, __VA_ARGS__)                                       \
      MAMBAAD_SHIM_CASE(::at::kHalf, ::c10::Half, __VA_ARGS__)                                    \
      MAMBAAD_SHIM_CASE(::at::kBFloat16, ::c10::BFloat16, __VA_ARGS__)                            \
      default:                                                                                    \
        throw ::c10::TypeError(std::string(NAME) + ": no kernel for " + ::c10::name(TYPE));       \
    }                                                                                             \
  }()
