// Host side of the emulated AscendC kernels: tiling, work list, launch over emulated AI cores,
// and the in-order combine of per-chunk partials. Used by the `emu` backend through _C.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lars_emu {

struct SquareSumsResult {
  std::vector<double> w_s, g_s;
};

// Square sums of n tensors (w_addr[i] == 0: absent) of `dtype` (0 fp32, 1 fp16), run as the
// AscendC kernel on `block_dim` emulated AI cores with `ub_bytes` of Unified Buffer each.
SquareSumsResult square_sums(const std::vector<uint64_t>& w_addr,
                             const std::vector<uint64_t>& g_addr,
                             const std::vector<int64_t>& numel, int dtype, int64_t block_dim,
                             int64_t ub_bytes, uint32_t tile_elems, int64_t chunk_elems);

struct StepArgs {
  std::vector<uint64_t> w, g, m;  // data addresses (m: 0 without momentum)
  std::vector<int64_t> numel;
  std::vector<uint8_t> adapt, has_m, first, nesterov;
  std::vector<float> wd, lr, mu;
  float epsilon = 1e-5f, coefficient = 1e-3f;
  bool use_clip = false, guard_zero_norm = false;
  int dtype = 0;  // 0 fp32, 1 fp16
  int mode = 0;   // 0 LARSUpdate rewrite of g, 1 fused momentum-SGD step
  // MindSpore LARSUpdate takes the sums of squares as inputs: when given (one per tensor), they
  // are written to the partials workspace instead of running the square-sums kernel.
  std::vector<float> given_ws, given_gs;
};

struct StepResult {
  bool found_inf = false;
  std::vector<double> lam;  // λ per tensor, as the kernels computed it (1 where not adapted)
};

// Square sums kernel, then update kernel, on `block_dim` emulated AI cores: the NPU step.
StepResult step(const StepArgs& a, int64_t block_dim, int64_t ub_bytes, uint32_t tile_sq,
                uint32_t tile_up, int64_t chunk_elems);

// Runs a deliberately broken mini-kernel (or "ok") on the emulation; see emu_selftest.cpp.
void selftest(const std::string& which);

}  // namespace lars_emu
