// The choice of the CPU scan loops' variant at run time, as ATen chooses its CPU kernels
// (ATEN_CPU_CAPABILITY): every variant compiled in (isa_*.cpp), the best this CPU and its OS
// support taken unless the environment asks for a lower one. This file is compiled for the default
// target: the detection runs on any CPU.
#include "cpu/dispatch.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <cctype>
#include <sstream>

namespace mambaad::cpu {
namespace {

bool always() { return true; }

#if defined(MAMBAAD_X86_VARIANTS)
// __builtin_cpu_supports reports AVX / AVX-512 only when the OS saves their registers (XGETBV).
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

#if defined(__aarch64__) || defined(_M_ARM64)
constexpr const char* kBaselineName = "neon";
#elif defined(__x86_64__) || defined(_M_X64)
constexpr const char* kBaselineName = "baseline";
#else
constexpr const char* kBaselineName = "generic";
#endif

const IsaVariant kBaseline{kBaselineName, 4, true, &always, &baseline::loops_f32, &baseline::loops_f64};
#if defined(MAMBAAD_X86_VARIANTS)
const IsaVariant kAvx512{"avx512", 16, true, &has_avx512, &avx512::loops_f32, &avx512::loops_f64};
const IsaVariant kAvx2{"avx2", 8, true, &has_avx2, &avx2::loops_f32, &avx2::loops_f64};
const IsaVariant kAvx2x16{"avx2_16", 16, false, &has_avx2, &avx2_16::loops_f32, &avx2_16::loops_f64};
#endif

std::string names() {
  std::ostringstream s;
  for (const IsaVariant* v : isa_variants()) s << (s.tellp() > 0 ? ", " : "") << v->name;
  return s.str();
}

const IsaVariant* find(const std::string& name) {
  if (name == "baseline" || name == "default") return &kBaseline;  // ATen's name for it
  for (const IsaVariant* v : isa_variants())
    if (name == v->name) return v;
  return nullptr;
}

const IsaVariant& best() {
  for (const IsaVariant* v : isa_variants())
    if (v->automatic && v->supported()) return *v;
  return kBaseline;
}

// The environment's choice (see dispatch.h).
const IsaVariant& from_environment() {
  if (const char* req = std::getenv("MAMBAAD_CPU_ISA"); req != nullptr && *req != '\0') {
    const IsaVariant* v = find(req);
    TORCH_CHECK_VALUE(v != nullptr, "MAMBAAD_CPU_ISA=", req, " names no CPU kernel variant of this build (",
                      names(), ")");
    TORCH_CHECK_VALUE(v->supported(), "MAMBAAD_CPU_ISA=", req, ": this CPU cannot run the ", v->name,
                      " kernels (the best it runs is ", best().name, ")");
    return *v;
  }
  if (const char* req = std::getenv("ATEN_CPU_CAPABILITY"); req != nullptr && *req != '\0') {
    // As ATen reads it: a cap, lowered further to what the CPU supports.
    std::string cap(req);
    for (char& ch : cap) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const IsaVariant* v = find(cap);
    TORCH_CHECK_VALUE(v != nullptr && v->automatic, "ATEN_CPU_CAPABILITY=", req,
                      " names no CPU kernel variant of this build (default, ", names(), ")");
    const auto& all = isa_variants();
    bool at_or_below = false;
    for (const IsaVariant* w : all) {
      at_or_below = at_or_below || w == v;
      if (at_or_below && w->automatic && w->supported()) return *w;
    }
    return kBaseline;
  }
  return best();
}

std::atomic<const IsaVariant*> g_active{nullptr};
std::mutex g_mutex;

}  // namespace

const std::vector<const IsaVariant*>& isa_variants() {
  static const std::vector<const IsaVariant*> all = {
#if defined(MAMBAAD_X86_VARIANTS)
      &kAvx512, &kAvx2,
#endif
      &kBaseline,
#if defined(MAMBAAD_X86_VARIANTS)
      &kAvx2x16,
#endif
  };
  return all;
}

const IsaVariant& active_isa() {
  if (const IsaVariant* v = g_active.load(std::memory_order_acquire)) return *v;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (const IsaVariant* v = g_active.load(std::memory_order_relaxed)) return *v;
  const IsaVariant& v = from_environment();  // throws for a bad request: decided again next call
  g_active.store(&v, std::memory_order_release);
  return v;
}

std::string set_isa(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const IsaVariant* before = g_active.load(std::memory_order_relaxed);
  const IsaVariant* v = nullptr;
  if (!name.empty()) {
    v = find(name);
    TORCH_CHECK_VALUE(v != nullptr, "no CPU kernel variant '", name, "' in this build (", names(), ")");
    TORCH_CHECK_VALUE(v->supported(), "this CPU cannot run the ", v->name, " kernels (the best it runs is ",
                      best().name, ")");
  }
  g_active.store(v, std::memory_order_release);  // nullptr: the environment decides at the next call
  return before ? before->name : "";
}

}  // namespace mambaad::cpu
