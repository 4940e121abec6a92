// Scalar conversions between the storage dtypes lars_npu accepts and the fp32/fp64 it computes in.
// Portable C++17 bit manipulation (no F16C / AVX-512 assumption), written so that GCC and Clang
// vectorise the loops that call them. Rounding is IEEE round-to-nearest-even, like torch's casts.
#pragma once

#include <cstdint>
#include <cstring>

namespace lars {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Bytes per element of a DType code (0 for an unknown code).
constexpr int dtype_size(int dtype) {
  return dtype == kFloat32 ? 4 : dtype == kFloat64 ? 8 : (dtype == kFloat16 || dtype == kBFloat16) ? 2 : 0;
}

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// fp16 -> fp32, exact. Shifting the 15 exponent/mantissa bits into fp32 position and scaling by
// 2^112 re-biases the exponent (127 - 15) and turns fp16 subnormals into fp32 normals exactly.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  float f = bits_float(em << 13) * 0x1p112f;
  uint32_t u = float_bits(f);
  if (em >= 0x7c00u) u |= 0x7f800000u;  // inf / nan keep an all-ones exponent
  return bits_float(u | sign);
}

// fp32 -> fp16 with round-to-nearest-even, overflow to inf, subnormals, nan preserved as quiet nan.
inline uint16_t float_to_half(float f) {
  uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (x < 0x38800000u) {
    // |f| < 2^-14: the result is an fp16 subnormal (or zero). Adding 0.5 puts the value where the
    // fp32 ulp is 2^-24, the fp16 subnormal step, so the FPU does the round-to-nearest-even.
    const float r = bits_float(x) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(r) - 0x3f000000u));
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // exponent re-bias (-112 << 23) plus the rounding increment
  return static_cast<uint16_t>(sign | (x >> 13));
}

inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet nan
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Load/store in the compute type: fp32 for the 16/32-bit dtypes, fp64 for fp64 tensors.
template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const Half* p, int64_t i) { return half_to_float(p[i].bits); }
inline float load(const BFloat16* p, int64_t i) { return bf16_to_float(p[i].bits); }

inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }
inline void store(Half* p, int64_t i, float v) { p[i].bits = float_to_half(v); }
inline void store(BFloat16* p, int64_t i, float v) { p[i].bits = float_to_bf16(v); }

// Calls f(static_cast<T*>(nullptr)) with T the C++ type of `dtype`; returns false if unknown.
template <typename F>
bool dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: f(static_cast<float*>(nullptr)); return true;
    case kFloat16: f(static_cast<Half*>(nullptr)); return true;
    case kBFloat16: f(static_cast<BFloat16*>(nullptr)); return true;
    case kFloat64: f(static_cast<double*>(nullptr)); return true;
    default: return false;
  }
}

}  // namespace lars
