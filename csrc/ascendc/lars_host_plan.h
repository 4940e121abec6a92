// Host side of the LARS AscendC kernels, shared by every launcher: the NPU launcher on torch_npu's
// stream (csrc/npu/), the staged runners (CANN's RUN_MODE cpu / sim, csrc/npu/) and lars_npu's
// host emulation (csrc/emu/). Plain C++17, no AscendC or ACL headers.
//
// One step of the kernels reads everything from ONE workspace buffer in global memory, so the host
// builds it as one byte blob. It has three parts, in this order, so that a launcher can keep the
// buffer resident on the device and send only what changed (csrc/npu/lars_resident.h):
//
//   tables: the same step after step for an unchanged model (same tensors at the same addresses)
//   w_addrs[n] wsq_addrs[n] g_addrs[n] m_addrs[n]   uint64 device addresses (0 = absent)
//   chunks[nc]                                      Chunk {tensor, offset, length}: the flat work list
//   tensor_chunks[n + 1]                            uint64: chunks of tensor t are [tc[t], tc[t+1])
//   sq_tiling[8], up_tiling[8]                      uint32: SquareSumTiling, UpdateTiling
//   per step: what a scheduler or the first momentum step changes
//   params[n * kTensorParams]                       fp32 {wd, lr, mu, flags} per tensor
//   hyper[8]                                        fp32 {epsilon, coefficient, use_clip, guard}
//   results[(2 nc + kMaxCoreFlags + n) * kBlock]    fp32 blocks: Σw² and Σg² per chunk, a
//                                                   non-finite flag per core, λ per tensor
//                                                   (lars_tiling.h); written by the kernels
//                                                   (the host writes them only for given sums)
//
// Neither kernel writes the tables or the per-step part. Every region starts on a 32-byte
// boundary. The layout is a pure function of (n, nc), so a launcher needs only the buffer's
// address, n and nc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../common/lars_trust.h"
#include "lars_tiling.h"

namespace lars_ascendc {
namespace host {

struct Layout {
  uint64_t n = 0, num_chunks = 0;
  // tables: [0, params)
  uint64_t w_addrs = 0, wsq_addrs = 0, g_addrs = 0, m_addrs = 0;
  uint64_t chunks = 0, tensor_chunks = 0, sq_tiling = 0, up_tiling = 0;
  // per step: [params, partials)
  uint64_t params = 0, hyper = 0;
  // results: [partials, bytes) = chunk sums [partials, flags), the cores' flags [flags, lambda),
  // λ per tensor [lambda, bytes)
  uint64_t partials = 0, flags = 0, lambda = 0;
  uint64_t bytes = 0;  // total size of the workspace
};

inline uint64_t align32(uint64_t x) { return (x + 31) / 32 * 32; }

inline Layout make_layout(uint64_t n, uint64_t nc) {
  Layout L;
  L.n = n;
  L.num_chunks = nc;
  uint64_t at = 0;
  auto take = [&at](uint64_t bytes) {
    const uint64_t here = at;
    at = align32(at + bytes);
    return here;
  };
  L.w_addrs = take(8 * n);
  L.wsq_addrs = take(8 * n);
  L.g_addrs = take(8 * n);
  L.m_addrs = take(8 * n);
  L.chunks = take(sizeof(Chunk) * nc);
  L.tensor_chunks = take(8 * (n + 1));
  L.sq_tiling = take(sizeof(uint32_t) * 8);
  L.up_tiling = take(sizeof(uint32_t) * 8);
  L.params = take(sizeof(float) * kTensorParams * n);
  L.hyper = take(sizeof(float) * 8);
  L.partials = take(sizeof(float) * kBlock * 2 * nc);
  L.flags = take(sizeof(float) * kBlock * kMaxCoreFlags);
  L.lambda = take(sizeof(float) * kBlock * n);
  L.bytes = at;
  return L;
}

// Everything one kernel step needs, on the host. Addresses are of the memory the kernels will
// read: device addresses on an NPU, host addresses on the emulation.
struct StepArgs {
  std::vector<uint64_t> w, g, m;  // data addresses (m: 0 without momentum)
  std::vector<int64_t> numel;
  std::vector<uint8_t> adapt, has_m, first, nesterov;
  std::vector<float> wd, lr, mu;
  float epsilon = 1e-5f, coefficient = 1e-3f;
  bool use_clip = false, guard_zero_norm = false;
  int dtype = 0;  // 0 fp32, 1 fp16
  int mode = 0;   // 0 LARSUpdate rewrite of g, 1 fused momentum-SGD step
  uint32_t tile_sq = kTileSquareSums, tile_up = kTileUpdate;
  int64_t chunk_elems = kChunkElements;
  // MindSpore LARSUpdate takes the sums of squares as inputs: when given (one per tensor), they
  // are written to the partials instead of running the square-sums kernel.
  std::vector<float> given_ws, given_gs;
};

inline size_t dtype_bytes(int dtype) { return dtype == 0 ? 4 : 2; }

// The UB bounds of lars_tiling.h, checked once here (host code): each maximum tile fits the
// budget and the next multiple of 16 does not, the default tiles fit for both dtypes, and so does
// the λ kernel's fixed UB.
static_assert(SquareSumsUbBytes(MaxTileSquareSums(4), 4) <= kUbBudgetBytes &&
                  SquareSumsUbBytes(MaxTileSquareSums(4) + 16, 4) > kUbBudgetBytes &&
                  SquareSumsUbBytes(MaxTileSquareSums(2), 2) <= kUbBudgetBytes &&
                  SquareSumsUbBytes(MaxTileSquareSums(2) + 16, 2) > kUbBudgetBytes,
              "MaxTileSquareSums is the exact bound");
static_assert(UpdateUbBytes(MaxTileUpdate(4), 4) <= kUbBudgetBytes &&
                  UpdateUbBytes(MaxTileUpdate(4) + 16, 4) > kUbBudgetBytes &&
                  UpdateUbBytes(MaxTileUpdate(2), 2) <= kUbBudgetBytes &&
                  UpdateUbBytes(MaxTileUpdate(2) + 16, 2) > kUbBudgetBytes,
              "MaxTileUpdate is the exact bound");
static_assert(MaxTileSquareSums(4) % 16 == 0 && MaxTileUpdate(4) % 16 == 0 &&
                  MaxTileSquareSums(2) % 16 == 0 && MaxTileUpdate(2) % 16 == 0,
              "maximum tiles are whole 32-byte blocks of fp16");
static_assert(kTileSquareSums <= MaxTileSquareSums(4) && kTileUpdate <= MaxTileUpdate(4),
              "the default tiles fit the UB of an Atlas A2 kernel");
static_assert(LambdaUbBytes() <= kUbBudgetBytes, "the λ kernel fits the UB of an Atlas A2 kernel");

// The largest tile_sq / tile_up the kernels take for a dtype (0 fp32, 1 fp16): their UB at that
// tile fits Atlas A2's 184 KiB (lars_tiling.h), at the next multiple of 16 it does not.
inline uint32_t max_tile_sq(int dtype) {
  return MaxTileSquareSums(static_cast<uint32_t>(dtype_bytes(dtype)));
}
inline uint32_t max_tile_up(int dtype) {
  return MaxTileUpdate(static_cast<uint32_t>(dtype_bytes(dtype)));
}

// Alignment of every tensor's base address in global memory (and of the workspace).
constexpr uint64_t kGmAlign = 32;

// Refuses what the kernels cannot take, with the reason; call before anything runs.
inline void validate(const StepArgs& a) {
  const size_t n = a.numel.size();
  const std::pair<const char*, size_t> fields[] = {
      {"w", a.w.size()},         {"g", a.g.size()},         {"m", a.m.size()},
      {"adapt", a.adapt.size()}, {"has_m", a.has_m.size()}, {"first", a.first.size()},
      {"nesterov", a.nesterov.size()}, {"wd", a.wd.size()}, {"lr", a.lr.size()},
      {"mu", a.mu.size()}};
  for (const auto& [name, len] : fields) {
    if (len != n) {
      throw std::invalid_argument(std::string("per-tensor field ") + name + ": " +
                                  std::to_string(len) + " values for " + std::to_string(n) +
                                  " tensors (numel)");
    }
  }
  if (a.dtype != 0 && a.dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
  if (a.mode != 0 && a.mode != 1) throw std::invalid_argument("mode: rewrite (0) or fused (1)");
  if (a.chunk_elems <= 0 || a.chunk_elems % 16 != 0) {
    throw std::invalid_argument("chunk_elems must be a positive multiple of 16");
  }
  // Tiles are whole 32-byte blocks of fp16 (and fp32): DataCopy on hardware silently rounds a
  // length down to whole blocks.
  if (a.tile_sq == 0 || a.tile_up == 0 || a.tile_sq % 16 != 0 || a.tile_up % 16 != 0) {
    throw std::invalid_argument("tile sizes must be positive multiples of 16 elements");
  }
  // ... and small enough that the kernel's buffers fit the Unified Buffer (on hardware a larger
  // TPipe allocation is not refused: buffers would overlap the API scratch or wrap).
  const char* type = a.dtype == 0 ? "fp32" : "fp16";
  const auto eb = static_cast<uint32_t>(dtype_bytes(a.dtype));
  if (a.tile_sq > max_tile_sq(a.dtype)) {
    throw std::invalid_argument(
        "tile_sq = " + std::to_string(a.tile_sq) + ": the square-sums kernel would need " +
        std::to_string(SquareSumsUbBytes(a.tile_sq, eb)) + " bytes of Unified Buffer, above the " +
        std::to_string(kUbBudgetBytes) + " an Atlas A2 kernel may use; at most " +
        std::to_string(max_tile_sq(a.dtype)) + " elements for " + type);
  }
  if (a.tile_up > max_tile_up(a.dtype)) {
    throw std::invalid_argument(
        "tile_up = " + std::to_string(a.tile_up) + ": the update kernel would need " +
        std::to_string(UpdateUbBytes(a.tile_up, eb)) + " bytes of Unified Buffer, above the " +
        std::to_string(kUbBudgetBytes) + " an Atlas A2 kernel may use; at most " +
        std::to_string(max_tile_up(a.dtype)) + " elements for " + type);
  }
  if (!a.given_ws.empty() && (a.given_ws.size() != n || a.given_gs.size() != n)) {
    throw std::invalid_argument("given sums: one per tensor");
  }
  for (size_t i = 0; i < n; ++i) {
    if (a.numel[i] < 0) throw std::invalid_argument("numel: negative element count");
    if (a.numel[i] == 0) continue;
    if (a.w[i] == 0 || a.g[i] == 0 || (a.mode == 1 && a.has_m[i] && a.m[i] == 0)) {
      throw std::invalid_argument("null data pointer for tensor " + std::to_string(i));
    }
    // Every DMA of the kernels starts 32-byte aligned in global memory: chunk and tile offsets
    // are multiples of 16 elements, so the tensor's base address must be (a torch view can start
    // at any element: the backends stage such a tensor into an aligned copy).
    const char* role = a.w[i] % kGmAlign ? "weight"
                       : a.g[i] % kGmAlign ? "gradient"
                       : (a.mode == 1 && a.has_m[i] && a.m[i] % kGmAlign) ? "momentum buffer"
                                                                           : nullptr;
    if (role != nullptr) {
      throw std::invalid_argument(std::string("tensor ") + std::to_string(i) + ": the " + role +
                                  "'s data address is not 32-byte aligned (the AscendC "
                                  "kernels' DMA needs it; pass an aligned copy)");
    }
  }
}

inline uint64_t count_chunks(const StepArgs& a) {
  uint64_t nc = 0;
  for (int64_t ne : a.numel) nc += static_cast<uint64_t>((ne + a.chunk_elems - 1) / a.chunk_elems);
  if (nc > UINT32_MAX) throw std::invalid_argument("too many chunks for one launch");
  return nc;
}

inline Layout plan(const StepArgs& a) { return make_layout(a.numel.size(), count_chunks(a)); }

template <typename T>
T* at(uint8_t* ws, uint64_t offset) {
  return reinterpret_cast<T*>(ws + offset);
}
template <typename T>
const T* at(const uint8_t* ws, uint64_t offset) {
  return reinterpret_cast<const T*>(ws + offset);
}

// Writes the workspace for `a` into `ws` (L.bytes bytes, host memory): the tables, zeroed
// partials, and the given sums where MindSpore's LARSUpdate supplies them.
inline void fill(uint8_t* ws, const Layout& L, const StepArgs& a) {
  const size_t n = a.numel.size();
  std::memset(ws, 0, L.bytes);
  uint64_t* w = at<uint64_t>(ws, L.w_addrs);
  uint64_t* wsq = at<uint64_t>(ws, L.wsq_addrs);
  uint64_t* g = at<uint64_t>(ws, L.g_addrs);
  uint64_t* m = at<uint64_t>(ws, L.m_addrs);
  uint64_t* chunks = at<uint64_t>(ws, L.chunks);
  uint64_t* tc = at<uint64_t>(ws, L.tensor_chunks);
  float* params = at<float>(ws, L.params);
  uint64_t c = 0;
  for (size_t t = 0; t < n; ++t) {
    w[t] = a.w[t];
    wsq[t] = a.adapt[t] ? a.w[t] : 0;  // Σw² only where LARS adapts
    g[t] = a.g[t];
    m[t] = a.m[t];
    tc[t] = c;
    for (int64_t b = 0; b < a.numel[t]; b += a.chunk_elems, ++c) {
      const int64_t len = b + a.chunk_elems < a.numel[t] ? a.chunk_elems : a.numel[t] - b;
      chunks[3 * c] = t;
      chunks[3 * c + 1] = static_cast<uint64_t>(b);
      chunks[3 * c + 2] = static_cast<uint64_t>(len);
    }
    float* p = params + t * kTensorParams;
    p[0] = a.wd[t];
    p[1] = a.lr[t];
    p[2] = a.mu[t];
    p[3] = static_cast<float>((a.adapt[t] ? 1 : 0) | (a.has_m[t] ? 2 : 0) |
                              (a.first[t] ? 4 : 0) | (a.nesterov[t] ? 8 : 0));
  }
  tc[n] = c;
  if (c != L.num_chunks) throw std::logic_error("workspace layout does not match the arguments");
  float* hyper = at<float>(ws, L.hyper);
  hyper[0] = a.epsilon;
  hyper[1] = a.coefficient;
  hyper[2] = a.use_clip ? 1.0f : 0.0f;
  hyper[3] = a.guard_zero_norm ? 1.0f : 0.0f;
  uint32_t* sq = at<uint32_t>(ws, L.sq_tiling);
  sq[0] = static_cast<uint32_t>(n);
  sq[1] = static_cast<uint32_t>(L.num_chunks);
  sq[2] = a.tile_sq;
  sq[3] = static_cast<uint32_t>(a.dtype);
  uint32_t* up = at<uint32_t>(ws, L.up_tiling);
  up[0] = static_cast<uint32_t>(n);
  up[1] = static_cast<uint32_t>(L.num_chunks);
  up[2] = a.tile_up;
  up[3] = static_cast<uint32_t>(a.mode);
  float* part = at<float>(ws, L.partials);
  float* flags = part + 2 * L.num_chunks * kBlock;
  float* lam = flags + kMaxCoreFlags * kBlock;
  for (size_t t = 0; t < n; ++t) {
    // λ of a tensor without chunks (no element), which no kernel writes: that of zero sums
    lam[t * kBlock] =
        !a.adapt[t] ? 1.0f
                    : lars::trust_ratio_from_norms<float>(0.0f, 0.0f, a.wd[t], a.lr[t], a.epsilon,
                                                          a.coefficient, a.use_clip,
                                                          a.guard_zero_norm);
  }
  if (!a.given_ws.empty()) {  // a tensor's sums go to its first chunk; an empty one has none
    bool bad = false;
    for (size_t t = 0; t < n; ++t) {
      const float gs = a.given_gs[t];
      if (gs - gs != 0.0f) bad = true;  // inf or nan
      if (tc[t] == tc[t + 1]) continue;
      part[tc[t] * kBlock] = a.given_ws[t];
      part[(L.num_chunks + tc[t]) * kBlock] = gs;
    }
    // what the square-sums kernel would have flagged (it does not run with given sums)
    if (bad) flags[0] = std::nanf("");
  }
}

struct Outcome {
  bool found_inf = false;
  std::vector<double> lam;       // λ per tensor as the update kernel applied it (1: not adapted)
  std::vector<double> w_s, g_s;  // per-tensor sums of the chunk partials, in chunk order
};

// What the kernels decided, from the workspace after the launch (host copy): found_inf from the
// cores' flags, λ from the table the update kernel wrote (NaN when the step was skipped), and the
// per-tensor sums (in double, chunk order) for callers that combine them across processes.
inline Outcome read_back(const uint8_t* ws, const Layout& L) {
  const uint64_t n = L.n, nc = L.num_chunks;
  const float* part = at<float>(ws, L.partials);
  const float* flags = part + 2 * nc * kBlock;
  const float* lam = flags + kMaxCoreFlags * kBlock;
  const uint64_t* tc = at<uint64_t>(ws, L.tensor_chunks);
  Outcome r;
  r.lam.assign(n, 1.0);
  r.w_s.assign(n, 0.0);
  r.g_s.assign(n, 0.0);
  for (uint64_t b = 0; b < kMaxCoreFlags; ++b) {
    const float f = flags[b * kBlock];
    if (f - f != 0.0f) r.found_inf = true;
  }
  for (uint64_t t = 0; t < n; ++t) {
    for (uint64_t c = tc[t]; c < tc[t + 1]; ++c) {
      r.w_s[t] += part[c * kBlock];
      r.g_s[t] += part[(nc + c) * kBlock];
    }
    r.lam[t] = r.found_inf ? std::nan("") : static_cast<double>(lam[t * kBlock]);
  }
  return r;
}

// Element count of tensor t, from the work list (the staged runners need sizes, not StepArgs).
inline uint64_t tensor_numel(const uint8_t* ws, const Layout& L, uint64_t t) {
  const uint64_t* tc = at<uint64_t>(ws, L.tensor_chunks);
  const uint64_t* chunks = at<uint64_t>(ws, L.chunks);
  uint64_t ne = 0;
  for (uint64_t c = tc[t]; c < tc[t + 1]; ++c) ne += chunks[3 * c + 2];
  return ne;
}

}  // namespace host
}  // namespace lars_ascendc
