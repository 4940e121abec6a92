#include "emu_launch.h"

#include <stdexcept>

#include "../ascendc/lars_tiling.h"
#include "kernel_operator.h"

extern "C" void lars_square_sums_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_square_sums_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);

namespace lars_emu {

SquareSumsResult square_sums(const std::vector<uint64_t>& w_addr,
                             const std::vector<uint64_t>& g_addr,
                             const std::vector<int64_t>& numel, int dtype, int64_t block_dim,
                             int64_t ub_bytes, uint32_t tile_elems, int64_t chunk_elems) {
  const size_t n = numel.size();
  if (w_addr.size() != n || g_addr.size() != n) throw std::invalid_argument("length mismatch");
  if (chunk_elems <= 0 || chunk_elems % 16 != 0) {
    throw std::invalid_argument("chunk_elems must be a positive multiple of 16");
  }
  // The flat work list (host-side tiling): fixed-size chunks of every tensor, in tensor order.
  std::vector<uint64_t> chunks;
  std::vector<size_t> owner;
  for (size_t t = 0; t < n; ++t) {
    for (int64_t b = 0; b < numel[t]; b += chunk_elems) {
      const int64_t len = b + chunk_elems < numel[t] ? chunk_elems : numel[t] - b;
      chunks.insert(chunks.end(), {uint64_t(t), uint64_t(b), uint64_t(len)});
      owner.push_back(t);
    }
  }
  const uint32_t nc = static_cast<uint32_t>(owner.size());
  std::vector<float> partials(size_t{nc} * lars_ascendc::kPartialStride + 8, 0.0f);
  uint32_t tiling[4] = {static_cast<uint32_t>(n), nc, tile_elems, static_cast<uint32_t>(dtype)};
  std::vector<uint64_t> w(w_addr), g(g_addr);
  chunks.push_back(0);  // never empty, so data() is valid
  w.push_back(0);
  g.push_back(0);
  auto* kernel = dtype == 0 ? &lars_square_sums_fp32 : &lars_square_sums_fp16;
  AscendC::emu::Launch(block_dim, static_cast<size_t>(ub_bytes), [&] {
    kernel(reinterpret_cast<GM_ADDR>(w.data()), reinterpret_cast<GM_ADDR>(g.data()),
           reinterpret_cast<GM_ADDR>(chunks.data()), reinterpret_cast<GM_ADDR>(partials.data()),
           reinterpret_cast<GM_ADDR>(tiling));
  });
  SquareSumsResult r{std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  for (uint32_t c = 0; c < nc; ++c) {  // chunk order: independent of block_dim
    r.w_s[owner[c]] += partials[size_t{c} * lars_ascendc::kPartialStride];
    r.g_s[owner[c]] += partials[size_t{c} * lars_ascendc::kPartialStride + 1];
  }
  return r;
}

}  // namespace lars_emu
