// Shim of <ATen/ATen.h> for the aarch64 harness (tests/aarch64/README.md): the part of the tensor
// API the CPU kernels' drivers (csrc/common.h, csrc/cpu/prep.h, scan_fwd.cpp, scan_bwd.cpp) call,
// with torch's names and meanings, on the CPU only: strided tensors of float32, float64, float16,
// bfloat16 and int32 over a 64-byte aligned buffer; empty / zeros / full, to, contiguous, exp,
// neg_, copy_. Conversions to float16 and bfloat16 round to nearest even, as torch does.
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <ostream>
#include <type_traits>
#include <vector>

namespace c10 {

enum class ScalarType : int8_t { Float, Double, Half, BFloat16, Int };

inline const char* name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "Float";
    case ScalarType::Double: return "Double";
    case ScalarType::Half: return "Half";
    case ScalarType::BFloat16: return "BFloat16";
    case ScalarType::Int: return "Int";
  }
  return "?";
}

inline std::ostream& operator<<(std::ostream& s, ScalarType t) { return s << name(t); }

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

// IEEE binary16, converted to and from float with round to nearest even.
struct Half {
  uint16_t x = 0;
  Half() = default;
  Half(float f) : x(from_float(f)) {}  // NOLINT: implicit, as c10::Half
  operator float() const { return to_float(x); }

  static uint16_t from_float(float f) {
    const uint32_t b = float_to_bits(f), sign = (b >> 16) & 0x8000u, a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (a < 0x38800000u)  // below 2^-14: a subnormal half (value * 2^24 rounded to an integer)
      return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(bits_to_float(a) * 16777216.f)));
    uint32_t h = ((((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));
    const uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    return static_cast<uint16_t>(sign | h);
  }

  static float to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
      const float v = static_cast<float>(m) / 16777216.f;  // m * 2^-24, exact
      return sign ? -v : v;
    }
    if (e == 31) return bits_to_float(sign | 0x7f800000u | (m << 13));
    return bits_to_float(sign | ((e + 112u) << 23) | (m << 13));
  }
};

// bfloat16: the high half of a float, rounded to nearest even.
struct BFloat16 {
  uint16_t x = 0;
  BFloat16() = default;
  BFloat16(float f) : x(from_float(f)) {}  // NOLINT: implicit, as c10::BFloat16
  operator float() const { return bits_to_float(static_cast<uint32_t>(x) << 16); }

  static uint16_t from_float(float f) {
    const uint32_t b = float_to_bits(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b >> 16) | 0x40u);  // quiet NaN
    return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
  }
};

template <typename T>
struct CppTypeToScalarType;
template <>
struct CppTypeToScalarType<float> : std::integral_constant<ScalarType, ScalarType::Float> {};
template <>
struct CppTypeToScalarType<double> : std::integral_constant<ScalarType, ScalarType::Double> {};
template <>
struct CppTypeToScalarType<Half> : std::integral_constant<ScalarType, ScalarType::Half> {};
template <>
struct CppTypeToScalarType<BFloat16> : std::integral_constant<ScalarType, ScalarType::BFloat16> {};
template <>
struct CppTypeToScalarType<int32_t> : std::integral_constant<ScalarType, ScalarType::Int> {};

inline size_t element_size(ScalarType t) {
  switch (t) {
    case ScalarType::Double: return 8;
    case ScalarType::Half:
    case ScalarType::BFloat16: return 2;
    default: return 4;
  }
}

struct Device {
  bool is_cpu() const { return true; }
  bool operator==(const Device&) const { return true; }
};

inline std::ostream& operator<<(std::ostream& s, const Device&) { return s << "cpu"; }

// Sizes or strides: owns its values (c10's is a view; every use here is by value).
class IntArrayRef {
 public:
  IntArrayRef() = default;
  IntArrayRef(std::initializer_list<int64_t> v) : v_(v) {}
  IntArrayRef(const std::vector<int64_t>& v) : v_(v) {}  // NOLINT: implicit, as c10
  size_t size() const { return v_.size(); }
  int64_t operator[](size_t i) const { return v_[i]; }
  const int64_t* begin() const { return v_.data(); }
  const int64_t* end() const { return v_.data() + v_.size(); }
  const std::vector<int64_t>& vec() const { return v_; }
  bool operator==(const IntArrayRef& o) const { return v_ == o.v_; }

 private:
  std::vector<int64_t> v_;
};

inline std::ostream& operator<<(std::ostream& s, const IntArrayRef& a) {
  s << "[";
  for (size_t i = 0; i < a.size(); ++i) s << (i ? ", " : "") << a[i];
  return s << "]";
}

}  // namespace c10

namespace caffe2 {
// What TensorOptions::dtype() returns.
struct TypeMeta {
  c10::ScalarType t;
  c10::ScalarType toScalarType() const { return t; }
  bool operator==(c10::ScalarType o) const { return t == o; }
};
}  // namespace caffe2

namespace at {

using c10::BFloat16;
using c10::Device;
using c10::Half;
using c10::IntArrayRef;
using c10::ScalarType;
constexpr ScalarType kFloat = ScalarType::Float;
constexpr ScalarType kDouble = ScalarType::Double;
constexpr ScalarType kHalf = ScalarType::Half;
constexpr ScalarType kBFloat16 = ScalarType::BFloat16;
constexpr ScalarType kInt = ScalarType::Int;

inline bool isFloatingType(ScalarType t) { return t != kInt; }

class TensorOptions {
 public:
  TensorOptions() = default;
  TensorOptions dtype(ScalarType t) const {
    TensorOptions o = *this;
    o.dtype_ = t;
    return o;
  }
  caffe2::TypeMeta dtype() const { return {dtype_}; }
  TensorOptions device(const Device&) const { return *this; }

 private:
  ScalarType dtype_ = kFloat;
};

namespace detail {

inline double load(const void* p, ScalarType t) {
  switch (t) {
    case kFloat: return *static_cast<const float*>(p);
    case kDouble: return *static_cast<const double*>(p);
    case kHalf: return static_cast<float>(*static_cast<const Half*>(p));
    case kBFloat16: return static_cast<float>(*static_cast<const BFloat16*>(p));
    case kInt: return *static_cast<const int32_t*>(p);
  }
  return 0;
}

// Half and bfloat16 from a double through float: the sources here are float or exact.
inline void store(void* p, ScalarType t, double v) {
  switch (t) {
    case kFloat: *static_cast<float*>(p) = static_cast<float>(v); break;
    case kDouble: *static_cast<double*>(p) = v; break;
    case kHalf: *static_cast<Half*>(p) = Half(static_cast<float>(v)); break;
    case kBFloat16: *static_cast<BFloat16*>(p) = BFloat16(static_cast<float>(v)); break;
    case kInt: *static_cast<int32_t*>(p) = static_cast<int32_t>(v); break;
  }
}

struct AlignedFree {
  void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t{64}); }
};

}  // namespace detail

class Tensor {
 public:
  Tensor() = default;

  // A contiguous tensor of the given shape over a fresh, uninitialised buffer.
  Tensor(IntArrayRef sizes, ScalarType t) : sizes_(sizes.vec()), strides_(sizes_.size()), dtype_(t) {
    int64_t n = 1;
    for (size_t i = sizes_.size(); i-- > 0;) {
      strides_[i] = n;
      n *= sizes_[i];
    }
    const size_t bytes = static_cast<size_t>(n) * c10::element_size(t) + 64;
    buf_.reset(static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t{64})), detail::AlignedFree{});
    storage_numel_ = n;
  }

  // A view with the given sizes and strides (in elements) of a buffer of storage_numel elements.
  static Tensor strided(IntArrayRef sizes, IntArrayRef strides, ScalarType t, int64_t storage_numel) {
    Tensor out({storage_numel}, t);
    out.sizes_ = sizes.vec();
    out.strides_ = strides.vec();
    return out;
  }

  int64_t dim() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t size(int64_t i) const { return sizes_.at(static_cast<size_t>(i < 0 ? i + dim() : i)); }
  int64_t stride(int64_t i) const { return strides_.at(static_cast<size_t>(i < 0 ? i + dim() : i)); }
  IntArrayRef sizes() const { return sizes_; }
  IntArrayRef strides() const { return strides_; }
  ScalarType scalar_type() const { return dtype_; }
  Device device() const { return {}; }
  TensorOptions options() const { return TensorOptions().dtype(dtype_); }
  bool defined() const { return buf_ != nullptr; }
  int64_t storage_numel() const { return storage_numel_; }
  bool is_same(const Tensor& o) const {
    return buf_ == o.buf_ && sizes_ == o.sizes_ && strides_ == o.strides_ && dtype_ == o.dtype_;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : sizes_) n *= s;
    return n;
  }

  bool is_contiguous() const {
    int64_t want = 1;
    for (size_t i = sizes_.size(); i-- > 0;) {
      if (sizes_[i] != 1 && strides_[i] != want) return false;
      want *= sizes_[i];
    }
    return true;
  }

  void* raw() const { return buf_.get(); }

  template <typename T>
  T* data_ptr() const {
    TORCH_CHECK(c10::CppTypeToScalarType<T>::value == dtype_, "data_ptr: the tensor is ", dtype_, ", asked for ",
                c10::CppTypeToScalarType<T>::value);
    return reinterpret_cast<T*>(buf_.get());
  }

  // f(element offset in this tensor's buffer, running contiguous index) over all elements in
  // row-major order.
  template <typename F>
  void each(F&& f) const {
    const int64_t n = numel(), d = dim();
    std::vector<int64_t> idx(static_cast<size_t>(d), 0);
    int64_t off = 0;
    for (int64_t e = 0; e < n; ++e) {
      f(off, e);
      for (int64_t i = d - 1; i >= 0; --i) {
        const size_t u = static_cast<size_t>(i);
        if (++idx[u] < sizes_[u]) {
          off += strides_[u];
          break;
        }
        off -= strides_[u] * (sizes_[u] - 1);
        idx[u] = 0;
      }
    }
  }

  Tensor& copy_(const Tensor& src) {
    TORCH_CHECK(src.sizes() == sizes(), "copy_: shape ", src.sizes(), " into ", sizes());
    std::vector<double> vals(static_cast<size_t>(numel()));
    const size_t ss = c10::element_size(src.dtype_), ds = c10::element_size(dtype_);
    src.each([&](int64_t off, int64_t e) { vals[static_cast<size_t>(e)] = detail::load(src.at(off, ss), src.dtype_); });
    each([&](int64_t off, int64_t e) { detail::store(at(off, ds), dtype_, vals[static_cast<size_t>(e)]); });
    return *this;
  }

  Tensor to(ScalarType t) const {
    if (t == dtype_) return *this;
    Tensor out(sizes(), t);
    out.copy_(*this);
    return out;
  }

  Tensor contiguous() const {
    if (is_contiguous()) return *this;
    Tensor out(sizes(), dtype_);
    out.copy_(*this);
    return out;
  }

  Tensor exp() const {
    Tensor out(sizes(), dtype_);
    out.copy_(*this);
    out.apply([](double v) { return std::exp(v); });
    return out;
  }

  Tensor& neg_() {
    apply([](double v) { return -v; });
    return *this;
  }

  // v <- f(v) in place (through double; the result rounded to the tensor's type).
  template <typename F>
  void apply(F&& f) {
    const size_t es = c10::element_size(dtype_);
    each([&](int64_t off, int64_t) {
      void* p = at(off, es);
      detail::store(p, dtype_, f(detail::load(p, dtype_)));
    });
  }

 private:
  void* at(int64_t off, size_t es) const { return buf_.get() + off * static_cast<int64_t>(es); }

  std::shared_ptr<unsigned char> buf_;
  std::vector<int64_t> sizes_, strides_;
  ScalarType dtype_ = kFloat;
  int64_t storage_numel_ = 0;
};

inline Tensor empty(IntArrayRef sizes, const TensorOptions& o) { return Tensor(sizes, o.dtype().toScalarType()); }

inline Tensor full(IntArrayRef sizes, double value, const TensorOptions& o) {
  Tensor t = empty(sizes, o);
  t.apply([value](double) { return value; });
  return t;
}

inline Tensor zeros(IntArrayRef sizes, const TensorOptions& o) { return full(sizes, 0.0, o); }

}  // namespace at
