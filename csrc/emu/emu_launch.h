// Host side of the emulated AscendC kernels: tiling, work list, launch over emulated AI cores,
// and the in-order combine of per-chunk partials. Used by the `emu` backend through _C.
#pragma once

#include <cstdint>
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

}  // namespace lars_emu
