// The aarch64 test harness (tests/aarch64/README.md): runs the extension's CPU ops
// mambaad::cpu::scan_fwd and scan_bwd, the very drivers and scan loops of csrc/cpu/ built with the
// extension's flags against the ATen shim in tests/aarch64/shim, on cases read from a file, and
// writes their results to another. tests/test_aarch64.py writes the cases, runs this under
// qemu-aarch64 and compares the results with the float64 reference.
//
//   harness CASES OUT    prints "isa NAME LANES" (the variant in use), then one line per case
//
// Files (little-endian): "MAMBAAD1", int64 count, then per case
//   in:  int64 grouped, then the tensors x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, dout
//   out: int64 status; 0: the tensors out, states, dx, dx_dbl, d_dt_w, d_dt_b, d_A_logs, d_Ds;
//        1: int64 length and the error message
// A tensor: int64 dtype (0 float32, 1 float64, 2 float16, 3 bfloat16, 4 int32), int64 ndim, the
// sizes, the strides (elements), int64 elements of its buffer, the buffer.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/scan_cpu.h"

namespace {

constexpr char kMagic[] = "MAMBAAD1";
const at::ScalarType kCodes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kInt};

struct File {
  std::FILE* f;
  File(const char* path, const char* mode) : f(std::fopen(path, mode)) {
    if (f == nullptr) throw std::runtime_error(std::string("cannot open ") + path);
  }
  ~File() { std::fclose(f); }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  void read(void* p, size_t n) {
    if (std::fread(p, 1, n, f) != n) throw std::runtime_error("truncated input");
  }
  void write(const void* p, size_t n) {
    if (std::fwrite(p, 1, n, f) != n) throw std::runtime_error("write failed");
  }
  int64_t read_i64() {
    int64_t v;
    read(&v, sizeof(v));
    return v;
  }
  void write_i64(int64_t v) { write(&v, sizeof(v)); }
};

at::Tensor read_tensor(File& in) {
  const int64_t code = in.read_i64(), ndim = in.read_i64();
  if (code < 0 || code > 4 || ndim < 0 || ndim > 8) throw std::runtime_error("bad tensor header");
  std::vector<int64_t> sizes(static_cast<size_t>(ndim)), strides(static_cast<size_t>(ndim));
  for (auto& s : sizes) s = in.read_i64();
  for (auto& s : strides) s = in.read_i64();
  const int64_t numel = in.read_i64();
  at::Tensor t = at::Tensor::strided(sizes, strides, kCodes[code], numel);
  in.read(t.raw(), static_cast<size_t>(numel) * c10::element_size(t.scalar_type()));
  return t;
}

void write_tensor(File& out, const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  int64_t code = 0;
  while (kCodes[code] != c.scalar_type()) ++code;
  out.write_i64(code);
  out.write_i64(c.dim());
  for (int64_t s : c.sizes()) out.write_i64(s);
  for (int64_t s : c.strides()) out.write_i64(s);
  out.write_i64(c.numel());
  out.write(c.raw(), static_cast<size_t>(c.numel()) * c10::element_size(c.scalar_type()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASES OUT\n", argv[0]);
    return 2;
  }
  try {
    const mambaad::cpu::IsaVariant& isa = mambaad::cpu::active_isa();
    std::printf("isa %s %d\n", isa.name, isa.lanes);
    File in(argv[1], "rb"), out(argv[2], "wb");
    char magic[sizeof(kMagic) - 1];
    in.read(magic, sizeof(magic));
    if (std::memcmp(magic, kMagic, sizeof(magic)) != 0) throw std::runtime_error("not a cases file");
    const int64_t count = in.read_i64();
    out.write(kMagic, sizeof(magic));
    out.write_i64(count);
    for (int64_t i = 0; i < count; ++i) {
      const bool grouped = in.read_i64() != 0;
      std::vector<at::Tensor> a;
      for (int j = 0; j < 8; ++j) a.push_back(read_tensor(in));
      try {
        auto [y, states] = mambaad::cpu::scan_fwd(a[0], a[1], a[2], a[3], a[4], a[5], a[6], grouped, true);
        const auto grads =
            mambaad::cpu::scan_bwd(a[7], a[0], a[1], states, a[2], a[3], a[4], a[5], a[6], grouped, true);
        out.write_i64(0);
        for (const at::Tensor& t : {y, states, std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                                    std::get<3>(grads), std::get<4>(grads), std::get<5>(grads)})
          write_tensor(out, t);
        std::printf("case %lld ok\n", static_cast<long long>(i));
      } catch (const c10::Error& e) {
        const std::string msg = e.what();
        out.write_i64(1);
        out.write_i64(static_cast<int64_t>(msg.size()));
        out.write(msg.data(), msg.size());
        std::printf("case %lld error\n", static_cast<long long>(i));
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "harness: %s\n", e.what());
    return 1;
  }
  return 0;
}
