#include "emu_launch.h"

#include <cmath>
#include <stdexcept>

#include "../ascendc/lars_tiling.h"
#include "../common/lars_trust.h"
#include "kernel_operator.h"

extern "C" void lars_square_sums_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_square_sums_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_update_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                 GM_ADDR, GM_ADDR);
extern "C" void lars_update_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                 GM_ADDR, GM_ADDR);

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

namespace {
template <typename T>
GM_ADDR gm(std::vector<T>& v) {
  return reinterpret_cast<GM_ADDR>(v.data());
}
}  // namespace

StepResult step(const StepArgs& a, int64_t block_dim, int64_t ub_bytes, uint32_t tile_sq,
                uint32_t tile_up, int64_t chunk_elems) {
  const size_t n = a.numel.size();
  if (chunk_elems <= 0 || chunk_elems % 16 != 0) {
    throw std::invalid_argument("chunk_elems must be a positive multiple of 16");
  }
  // host-side tiling: the same flat work list for both kernels, and each tensor's chunk range
  std::vector<uint64_t> chunks, tensor_chunks(n + 1, 0);
  for (size_t t = 0; t < n; ++t) {
    tensor_chunks[t] = chunks.size() / 3;
    for (int64_t b = 0; b < a.numel[t]; b += chunk_elems) {
      const int64_t len = b + chunk_elems < a.numel[t] ? chunk_elems : a.numel[t] - b;
      chunks.insert(chunks.end(), {uint64_t(t), uint64_t(b), uint64_t(len)});
    }
  }
  tensor_chunks[n] = chunks.size() / 3;
  const uint32_t nc = static_cast<uint32_t>(chunks.size() / 3);
  std::vector<float> partials(size_t{nc} * lars_ascendc::kPartialStride + 8, 0.0f);
  std::vector<uint64_t> w_sq(a.w), g(a.g), w(a.w), m(a.m);
  for (size_t t = 0; t < n; ++t) {
    if (!a.adapt[t]) w_sq[t] = 0;  // Σw² only where LARS adapts
  }
  std::vector<float> params(n * lars_ascendc::kTensorParams + 4, 0.0f);
  for (size_t t = 0; t < n; ++t) {
    float* p = &params[t * lars_ascendc::kTensorParams];
    p[0] = a.wd[t];
    p[1] = a.lr[t];
    p[2] = a.mu[t];
    p[3] = static_cast<float>((a.adapt[t] ? 1 : 0) | (a.has_m[t] ? 2 : 0) |
                              (a.first[t] ? 4 : 0) | (a.nesterov[t] ? 8 : 0));
  }
  std::vector<float> hyper = {a.epsilon, a.coefficient, a.use_clip ? 1.0f : 0.0f,
                              a.guard_zero_norm ? 1.0f : 0.0f};
  uint32_t sq_tiling[4] = {static_cast<uint32_t>(n), nc, tile_sq, static_cast<uint32_t>(a.dtype)};
  uint32_t up_tiling[4] = {static_cast<uint32_t>(n), nc, tile_up, static_cast<uint32_t>(a.mode)};
  for (auto* v : {&chunks, &w_sq, &g, &w, &m}) v->push_back(0);  // never empty
  auto* sq = a.dtype == 0 ? &lars_square_sums_fp32 : &lars_square_sums_fp16;
  auto* up = a.dtype == 0 ? &lars_update_fp32 : &lars_update_fp16;
  if (a.given_ws.empty()) {
    AscendC::emu::Launch(block_dim, static_cast<size_t>(ub_bytes), [&] {
      sq(gm(w_sq), gm(g), gm(chunks), gm(partials), reinterpret_cast<GM_ADDR>(sq_tiling));
    });
  } else {
    if (a.given_ws.size() != n || a.given_gs.size() != n) {
      throw std::invalid_argument("given sums: one per tensor");
    }
    for (size_t t = 0; t < n; ++t) {
      if (tensor_chunks[t] == tensor_chunks[t + 1]) continue;  // empty tensor: no chunk
      partials[tensor_chunks[t] * lars_ascendc::kPartialStride] = a.given_ws[t];
      partials[tensor_chunks[t] * lars_ascendc::kPartialStride + 1] = a.given_gs[t];
    }
  }
  // (on the NPU: the second launch on the same stream; no host synchronisation in between)
  AscendC::emu::Launch(block_dim, static_cast<size_t>(ub_bytes), [&] {
    up(gm(w), gm(g), gm(m), gm(chunks), gm(tensor_chunks), gm(partials), gm(params), gm(hyper),
       reinterpret_cast<GM_ADDR>(up_tiling));
  });
  // What the kernels decided, read back for the caller: found_inf and λ (same formula, same
  // fp32 inputs, same order as the kernel's Lambda()).
  StepResult r;
  r.lam.assign(n, 1.0);
  for (uint32_t c = 0; c < nc; ++c) {
    const float gs = partials[size_t{c} * lars_ascendc::kPartialStride + 1];
    if (gs - gs != 0.0f) r.found_inf = true;
  }
  for (size_t t = 0; t < n; ++t) {
    if (r.found_inf) {
      r.lam[t] = std::nan("");
      continue;
    }
    if (!a.adapt[t]) continue;
    float ws = 0.0f, gs = 0.0f;
    for (uint64_t c = tensor_chunks[t]; c < tensor_chunks[t + 1]; ++c) {
      ws += partials[c * lars_ascendc::kPartialStride];
      gs += partials[c * lars_ascendc::kPartialStride + 1];
    }
    r.lam[t] = lars::trust_ratio_from_norms<float>(std::sqrt(ws), std::sqrt(gs), a.wd[t], a.lr[t],
                                                   a.epsilon, a.coefficient, a.use_clip,
                                                   a.guard_zero_norm);
  }
  return r;
}

}  // namespace lars_emu
