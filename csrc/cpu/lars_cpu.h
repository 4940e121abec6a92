// Portable C++17 CPU kernels of lars_npu: multi-tensor square sums (pass 1) and the LARSUpdate
// gradient rewrite (pass 2). No Python, no libtorch: tensors arrive as raw pointers + sizes + dtype.
#pragma once

#include <cstdint>

#include "../common/lars_math.h"
#include "dtypes.h"

namespace lars {

struct TensorRef {
  void* data;     // contiguous storage, may be nullptr when numel == 0 (or "absent", see below)
  int64_t numel;
  int dtype;      // lars::DType
};

// Elements per work chunk. Partial sums are formed per chunk and combined per tensor in chunk
// order, so the result is the same bits for every thread count.
constexpr int64_t kChunk = 1 << 14;

// Threads used when `num_threads` <= 0 (OpenMP's default), and 1 without OpenMP.
int default_threads();
bool has_openmp();

// Pass 1. w_s[i] = sum(w[i]^2) (0 when w[i].data is nullptr), g_s[i] = sum(g[i]^2), accumulated in
// fp64. Deterministic: independent of num_threads.
void square_sums(const TensorRef* w, const TensorRef* g, int64_t n, double* w_s, double* g_s,
                 int num_threads);

// Pass 2. out[i] = lam[i] * (g[i] + wd[i] * w[i]), fp32 math (fp64 for fp64 tensors), rounded to
// out[i]'s dtype. out may alias g (in-place rewrite). Tensors with skip[i] != 0 are not touched
// (skip may be nullptr).
void lars_rewrite(const TensorRef* w, const TensorRef* g, const TensorRef* out, const double* lam,
                  const double* wd, const uint8_t* skip, int64_t n, int num_threads);

// Both passes for a step of the unfused optimizer: pass 1 over every tensor (w only where
// adapt[i]), then, only if every g_s is finite, lam[i] = trust_ratio(...) and the in-place rewrite
// g[i] <- lam[i] * (g[i] + wd[i] * w[i]) for adapted tensors. Non-adapted gradients are only
// checked. Returns true (and writes no tensor) when some gradient holds inf/nan.
// lam, w_s, g_s are outputs of length n (lam[i] = 1 for non-adapted tensors, nan when skipped).
bool multi_lars(const TensorRef* w, const TensorRef* g, const uint8_t* adapt, const double* wd,
                const double* lr, int64_t n, const Hyper& hyper, double* lam, double* w_s,
                double* g_s, int num_threads);

}  // namespace lars
