// Shim of <ATen/Parallel.h> for the aarch64 harness (tests/aarch64/README.md): at::parallel_for
// with the split ATen's OpenMP backend makes (at most one range per thread, ranges of at least
// grain_size, one thread below that or inside a parallel region), serial without OpenMP.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace at {

inline int get_num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
  if (begin >= end) return;
#if defined(_OPENMP)
  const int64_t n = end - begin;
  int64_t threads = get_num_threads();
  if (grain_size > 0) threads = std::min(threads, (n + grain_size - 1) / grain_size);
  if (threads > 1 && !omp_in_parallel()) {
    std::exception_ptr error;
#pragma omp parallel num_threads(static_cast<int>(threads))
    {
      const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
      const int64_t chunk = (n + nt - 1) / nt, b = begin + tid * chunk;
      if (b < end) {
        try {
          f(b, std::min(end, b + chunk));
        } catch (...) {
#pragma omp critical
          if (!error) error = std::current_exception();
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#else
  (void)grain_size;
#endif
  f(begin, end);
}

}  // namespace at
