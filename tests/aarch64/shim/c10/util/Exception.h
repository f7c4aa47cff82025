// Shim of c10/util/Exception.h for the aarch64 harness (tests/aarch64/README.md): the checks and
// error types the CPU kernels' drivers use, with torch's names and meanings (c10::ValueError and
// c10::TypeError are c10::Error, the message is the arguments streamed in order).
#pragma once

#include <exception>
#include <sstream>
#include <string>
#include <utility>

namespace c10 {

class Error : public std::exception {
 public:
  explicit Error(std::string msg) : msg_(std::move(msg)) {}
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  std::string msg_;
};

class ValueError : public Error {
  using Error::Error;
};

class TypeError : public Error {
  using Error::Error;
};

namespace detail {

template <typename... Args>
std::string message(const char* cond, const Args&... args) {
  std::ostringstream s;
  if constexpr (sizeof...(Args) == 0)
    s << "Expected " << cond << " to be true";
  else
    (s << ... << args);
  return s.str();
}

}  // namespace detail
}  // namespace c10

#define MAMBAAD_SHIM_CHECK(kind, cond, ...)                                           \
  do {                                                                                \
    if (!(cond)) throw kind(::c10::detail::message(#cond __VA_OPT__(, ) __VA_ARGS__)); \
  } while (false)

#define TORCH_CHECK(cond, ...) MAMBAAD_SHIM_CHECK(::c10::Error, cond __VA_OPT__(, ) __VA_ARGS__)
#define TORCH_CHECK_VALUE(cond, ...) MAMBAAD_SHIM_CHECK(::c10::ValueError, cond __VA_OPT__(, ) __VA_ARGS__)
#define TORCH_CHECK_TYPE(cond, ...) MAMBAAD_SHIM_CHECK(::c10::TypeError, cond __VA_OPT__(, ) __VA_ARGS__)
#define TORCH_INTERNAL_ASSERT(cond, ...) MAMBAAD_SHIM_CHECK(::c10::Error, cond __VA_OPT__(, ) __VA_ARGS__)
