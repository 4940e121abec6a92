// Inline building blocks shared by the CPU kernels (lars_cpu.cpp, fused.cpp).
#pragma once

#include <cstdint>
#include <type_traits>

#include "dtypes.h"
#include "lars_cpu.h"

namespace lars {
namespace detail {

// Sum of squares of p[begin, end) in fp64 with 8 independent lanes (a fixed association, so the
// compiler may vectorise it without -ffast-math and the bits never depend on the caller).
template <typename T>
double chunk_sumsq(const T* p, int64_t begin, int64_t end) {
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double v = static_cast<double>(load(p, i + j));
      acc[j] += v * v;
    }
  }
  for (int j = 0; i < end; ++i, ++j) {
    const double v = static_cast<double>(load(p, i));
    acc[j] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

inline double sumsq(const TensorRef& t, int64_t begin, int64_t end) {
  double r = 0.0;
  dispatch_dtype(t.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    r = chunk_sumsq(static_cast<const T*>(t.data), begin, end);
  });
  return r;
}

}  // namespace detail
}  // namespace lars
