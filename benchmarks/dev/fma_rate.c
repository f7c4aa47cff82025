/* Does this CPU run 512-bit multiply-adds at full width or double-pumped on 256-bit units?
   Peak multiply-add rate of one core at 256 and 512 bits: ten independent FMA chains per width (more
   than latency x pipes on current x86), so the loop runs at the FMA pipes' throughput. Tells whether a
   CPU runs AVX-512 at full width (Intel Xeons with two 512-bit FMA units: zmm rate = ymm rate) or
   double-pumped on 256-bit units (AMD Zen 4: zmm rate = ymm rate / 2), which bounds what the avx512
   CPU kernels can gain over avx2 (BENCHMARKS.md, issue 23).

   gcc -O2 -mavx512f -mfma -o /tmp/fma_rate benchmarks/dev/fma_rate.c && /tmp/fma_rate */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 10

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  const long reps = 100000000;
  __m512 z[CHAINS];
  __m256 y[CHAINS];
  const __m512 zm = _mm512_set1_ps(0.999f), zc = _mm512_set1_ps(0.001f);
  const __m256 ym = _mm256_set1_ps(0.999f), yc = _mm256_set1_ps(0.001f);
  for (int j = 0; j < CHAINS; ++j) {
    z[j] = _mm512_set1_ps((float)j);
    y[j] = _mm256_set1_ps((float)j);
  }
  const double t0 = seconds();
  for (long i = 0; i < reps; ++i) {
    for (int j = 0; j < CHAINS; ++j) z[j] = _mm512_fmadd_ps(z[j], zm, zc);
    /* keep the chains in registers and the loop from being folded */
    __asm__ volatile("" : "+v"(z[0]), "+v"(z[1]), "+v"(z[2]), "+v"(z[3]), "+v"(z[4]), "+v"(z[5]),
                     "+v"(z[6]), "+v"(z[7]), "+v"(z[8]), "+v"(z[9]));
  }
  const double t1 = seconds();
  for (long i = 0; i < reps; ++i) {
    for (int j = 0; j < CHAINS; ++j) y[j] = _mm256_fmadd_ps(y[j], ym, yc);
    __asm__ volatile("" : "+x"(y[0]), "+x"(y[1]), "+x"(y[2]), "+x"(y[3]), "+x"(y[4]), "+x"(y[5]),
                     "+x"(y[6]), "+x"(y[7]), "+x"(y[8]), "+x"(y[9]));
  }
  const double t2 = seconds();
  float sink = 0;
  for (int j = 0; j < CHAINS; ++j) sink += _mm512_reduce_add_ps(z[j]) + y[j][0];
  const double n = (double)reps * CHAINS;
  printf("zmm FMA %.2f G/s (%.1f GFLOP/s)  ymm FMA %.2f G/s (%.1f GFLOP/s)  zmm/ymm flop rate %.2f  [%g]\n",
         n / (t1 - t0) / 1e9, n * 32 / (t1 - t0) / 1e9, n / (t2 - t1) / 1e9, n * 16 / (t2 - t1) / 1e9,
         (t2 - t1) * 2 / (t1 - t0), sink);
  return 0;
}
