// AscendC kernel: the LARS update (pass 2), the NPU twin of the CPU rewrite / fused step.
// Same source for CANN and for lars_npu's host emulation (csrc/emu/). Needs DataCopyPad and
// DataCacheCleanAndInvalid: Atlas A2 / A3.
//
// Reads what KernelSquareSums wrote (an earlier launch, other cores) by DMA only: first the
// cores' non-finite flags (O(cores) bytes, one DataCopy, added by ReduceSum): if one is NaN, the
// core returns without writing (the step is skipped on the device, with no host
// synchronisation; the host reads the same flags when it asks). Then, for its chunks (blockIdx,
// blockIdx + blockNum, ...), it takes λ of the chunk's tensor — the tensor's Σw² and Σg² chunk
// blocks moved into UB tile by tile and added by vector instructions, the same instructions on
// every core (so every core gets the same λ, whatever the block count), the norms by the vector
// Sqrt, lars::trust_ratio_from_norms (csrc/common/lars_trust.h, the one C++ transcription of the
// reference); computed once per tensor per core — writes λ to the tensor's block of the results
// region when the chunk is the tensor's first (for the host to read back, lazily), and streams
// the chunk through UB:
//   mode 0 (LARSUpdate):  g  <- λ(g + wd·w)
//   mode 1 (fused step):  g' = λ(g + wd·w) (g' = g where not adapted); m <- g' (first step) or
//                         μ·m + g'; d = g' + μ·m (nesterov) or m (μ = 0: no buffer, d = g');
//                         w <- w - lr·d
// A tensor's last tile may be ragged: DataCopyPad moves exactly its elements in and out and the
// vector instructions run on exactly those (no scalar access to tensor data, whose cache lines
// could be shared with data DMA writes).
// Scalar reads of global memory per core: the tiling, and per chunk its descriptor, the tensor's
// parameters and addresses; per tensor touched its chunk range and the hyper-parameters: O(chunks
// it updates + tensors it touches), never O(all chunks).
// UB budget per core, tile_elems = 2048 fp32: 3 input queues x 2 x 8 KiB + 2 output queues x 8 KiB
// + 3 fp32 work tiles x 8 KiB + partials queue 8 KiB + 2 partial accumulators x 8 KiB + 128 B
// ≈ 112 KiB (184 KiB usable on 910B; 256 KiB on 910A, which has no DataCopyPad).
#pragma once

#define LARS_DEVICE __aicore__
#include "../common/lars_trust.h"
#include "lars_tiling.h"

namespace lars_ascendc {

template <typename T>
class KernelUpdate {
 public:
  __aicore__ inline KernelUpdate() {}

  __aicore__ inline void Init(GM_ADDR w_addrs, GM_ADDR g_addrs, GM_ADDR m_addrs, GM_ADDR chunks,
                              GM_ADDR tensor_chunks, GM_ADDR partials, GM_ADDR params,
                              GM_ADDR hyper, GM_ADDR tiling_gm) {
    AscendC::GlobalTensor<uint32_t> t;
    t.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(tiling_gm), 4);
    // Everything below is read by scalar loads through the data cache: the host's tables and the
    // square-sums launch's partials (other cores, DMA). Drop stale lines first.
    AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                      AscendC::DcciDst::CACHELINE_OUT>(t);
    tiling_ = UpdateTiling{t.GetValue(0), t.GetValue(1), t.GetValue(2), t.GetValue(3)};
    const uint64_t n = tiling_.num_tensors;
    wAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(w_addrs), n);
    gAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(g_addrs), n);
    mAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(m_addrs), n);
    chunks_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(chunks),
                            uint64_t{tiling_.num_chunks} * 3);
    tensorChunks_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(tensor_chunks), n + 1);
    partials_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(partials),
                              (uint64_t{2} * tiling_.num_chunks + kMaxCoreFlags + n) * kBlock);
    params_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(params), n * kTensorParams);
    hyper_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(hyper), 4);
    const uint32_t tile = tiling_.tile_elems;
    pipe_.InitBuffer(inW_, BUFFER_NUM, tile * sizeof(T));
    pipe_.InitBuffer(inG_, BUFFER_NUM, tile * sizeof(T));
    pipe_.InitBuffer(inM_, BUFFER_NUM, tile * sizeof(T));
    pipe_.InitBuffer(outA_, 1, tile * sizeof(T));
    pipe_.InitBuffer(outB_, 1, tile * sizeof(T));
    pipe_.InitBuffer(bufW_, tile * sizeof(float));
    pipe_.InitBuffer(bufG_, tile * sizeof(float));
    pipe_.InitBuffer(bufM_, tile * sizeof(float));
    pipe_.InitBuffer(bufNorm_, 8 * sizeof(float));
    pipe_.InitBuffer(inP_, 1, kPartialTile * sizeof(float));
    pipe_.InitBuffer(accW_, kPartialTile * sizeof(float));
    pipe_.InitBuffer(accG_, kPartialTile * sizeof(float));
    pipe_.InitBuffer(bufSums_, 2 * kBlock * sizeof(float));
    pipe_.InitBuffer(outLam_, 1, kBlock * sizeof(float));
  }

  __aicore__ inline void Process() {
    if (AnyNonFinite()) return;  // every core decides the same way: write nothing
    const int64_t step = AscendC::GetBlockNum();
    for (int64_t c = AscendC::GetBlockIdx(); c < static_cast<int64_t>(tiling_.num_chunks);
         c += step) {
      const uint64_t tensor = chunks_.GetValue(3 * c);
      const uint64_t offset = chunks_.GetValue(3 * c + 1);
      const uint64_t length = chunks_.GetValue(3 * c + 2);
      UpdateChunk(tensor, offset, length);
    }
  }

 private:
  // Orders everything pipe X issued so far before what pipe Y issues next.
  template <AscendC::HardEvent event>
  __aicore__ inline void Sync() {
    const auto id = static_cast<event_t>(pipe_.FetchEventID(event));
    AscendC::SetFlag<event>(id);
    AscendC::WaitFlag<event>(id);
  }

  // The square-sums launch's flags, one block per core (NaN: a non-finite Σg²), by DMA and a
  // vector sum: NaN when any is. The flags of cores beyond this launch's block count are 0 (the
  // host zeroes the region; both launches of a step have the same block count).
  __aicore__ inline bool AnyNonFinite() {
    int64_t cores = AscendC::GetBlockNum();
    if (cores > static_cast<int64_t>(kMaxCoreFlags)) cores = kMaxCoreFlags;
    const uint32_t count = static_cast<uint32_t>(cores) * kBlock;
    AscendC::LocalTensor<float> in = inP_.template AllocTensor<float>();
    AscendC::DataCopy(in, partials_[uint64_t{2} * tiling_.num_chunks * kBlock], count);
    inP_.EnQue(in);
    in = inP_.template DeQue<float>();
    AscendC::LocalTensor<float> sums = bufSums_.Get<float>();
    AscendC::ReduceSum(sums, in, in, static_cast<int32_t>(count));  // stored by the scalar unit
    inP_.FreeTensor(in);
    const float total = sums.GetValue(0);  // UB: the scalar unit's own store
    return total - total != 0.0f;
  }

  // Σ over chunks [c0, c1) of the results blocks starting at block `base`, added into acc
  // (kPartialTile lanes, zeroed first) tile by tile by DMA and vector Add.
  __aicore__ inline void AddBlocks(const AscendC::LocalTensor<float>& acc, uint64_t base,
                                   uint64_t c0, uint64_t c1) {
    AscendC::Duplicate(acc, 0.0f, kPartialTile);
    for (uint64_t c = c0; c < c1; c += kPartialTile / kBlock) {
      const uint64_t k = c1 - c < kPartialTile / kBlock ? c1 - c : kPartialTile / kBlock;
      const uint32_t count = static_cast<uint32_t>(k) * kBlock;
      AscendC::LocalTensor<float> in = inP_.template AllocTensor<float>();
      AscendC::DataCopy(in, partials_[(base + c) * kBlock], count);
      inP_.EnQue(in);
      in = inP_.template DeQue<float>();
      AscendC::Add(acc, acc, in, count);
      inP_.FreeTensor(in);
    }
  }

  __aicore__ inline float Lambda(uint64_t tensor, float wd, float lr, bool adapt) {
    if (!adapt) return 1.0f;
    if (tensor == lamTensor_) return lam_;  // a core meets a tensor's chunks one after another
    // The same DMA and vector instructions on every core: the same λ on every core.
    const uint64_t c0 = tensorChunks_.GetValue(tensor), c1 = tensorChunks_.GetValue(tensor + 1);
    AscendC::LocalTensor<float> aw = accW_.Get<float>(), ag = accG_.Get<float>();
    AddBlocks(aw, 0, c0, c1);
    AddBlocks(ag, tiling_.num_chunks, c0, c1);
    AscendC::LocalTensor<float> sums = bufSums_.Get<float>();
    AscendC::ReduceSum(sums, aw, aw, static_cast<int32_t>(kPartialTile));
    AscendC::ReduceSum(sums[kBlock], ag, ag, static_cast<int32_t>(kPartialTile));
    const float ws = sums.GetValue(0), gs = sums.GetValue(kBlock);
    // The norms by the vector Sqrt, whose result for a non-positive input is undefined: a zero
    // sum (zero weights, an unused parameter) never reaches it, its norm is 0 exactly.
    AscendC::LocalTensor<float> nrm = bufNorm_.Get<float>();
    Sync<AscendC::HardEvent::S_V>();  // the previous tensor's scalar reads of nrm come first
    AscendC::Duplicate(nrm, 1.0f, 8);
    Sync<AscendC::HardEvent::V_S>();
    nrm.SetValue(0, ws == 0.0f ? 1.0f : ws);
    nrm.SetValue(1, gs == 0.0f ? 1.0f : gs);
    Sync<AscendC::HardEvent::S_V>();
    AscendC::Sqrt(nrm, nrm, 8);
    Sync<AscendC::HardEvent::V_S>();
    const float wn = ws == 0.0f ? 0.0f : nrm.GetValue(0);
    const float gn = gs == 0.0f ? 0.0f : nrm.GetValue(1);
    lamTensor_ = tensor;
    lam_ = lars::trust_ratio_from_norms<float>(wn, gn, wd, lr, hyper_.GetValue(0),
                                               hyper_.GetValue(1), hyper_.GetValue(2) != 0.0f,
                                               hyper_.GetValue(3) != 0.0f);
    return lam_;
  }

  __aicore__ inline void UpdateChunk(uint64_t tensor, uint64_t offset, uint64_t length) {
    const uint64_t p = tensor * kTensorParams;
    const float wd = params_.GetValue(p), lr = params_.GetValue(p + 1), mu = params_.GetValue(p + 2);
    const uint32_t flags = static_cast<uint32_t>(params_.GetValue(p + 3));
    const bool adapt = flags & 1u, has_m = flags & 2u, first = flags & 4u, nesterov = flags & 8u;
    const float lam = Lambda(tensor, wd, lr, adapt);
    if (offset == 0) WriteLambda(tensor, lam);  // the tensor's first chunk: one writer
    const float wde = adapt ? wd : 0.0f;
    AscendC::GlobalTensor<T> w, g, m;
    w.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(wAddr_.GetValue(tensor)) + offset, length);
    g.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(gAddr_.GetValue(tensor)) + offset, length);
    const bool fused = tiling_.mode == 1;
    const bool use_m = fused && has_m;
    if (use_m) {
      m.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(mAddr_.GetValue(tensor)) + offset, length);
    }
    for (uint64_t done = 0; done < length; done += tiling_.tile_elems) {
      const uint32_t n = static_cast<uint32_t>(
          length - done < tiling_.tile_elems ? length - done : tiling_.tile_elems);
      CopyIn(w, g, m, done, n, use_m && !first);
      Compute(n, lam, wde, lr, mu, fused, use_m, first, nesterov);
      CopyOut(w, g, m, done, n, fused, use_m);
    }
  }

  // λ of `tensor` to its block of the results region: what the host reads back as the λ applied.
  __aicore__ inline void WriteLambda(uint64_t tensor, float lam) {
    AscendC::LocalTensor<float> out = outLam_.template AllocTensor<float>();
    AscendC::Duplicate(out, lam, kBlock);
    outLam_.EnQue(out);
    out = outLam_.template DeQue<float>();
    const uint64_t at = (uint64_t{2} * tiling_.num_chunks + kMaxCoreFlags + tensor) * kBlock;
    AscendC::DataCopy(partials_[at], out, kBlock);
    outLam_.FreeTensor(out);
  }

  // GM -> UB of n elements: DataCopy for whole 32-byte blocks, DataCopyPad for a ragged tail.
  __aicore__ inline static void Load(const AscendC::LocalTensor<T>& dst,
                                     const AscendC::GlobalTensor<T>& src, uint32_t n) {
    if ((n * sizeof(T)) % 32 == 0) {
      AscendC::DataCopy(dst, src, n);
    } else {
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<T> pad{};  // no padding: the pad lanes are never read
      AscendC::DataCopyPad(dst, src, copy, pad);
    }
  }

  // UB -> GM of exactly n elements.
  __aicore__ inline static void Store(const AscendC::GlobalTensor<T>& dst,
                                      const AscendC::LocalTensor<T>& src, uint32_t n) {
    if ((n * sizeof(T)) % 32 == 0) {
      AscendC::DataCopy(dst, src, n);
    } else {
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
      AscendC::DataCopyPad(dst, src, copy);
    }
  }

  __aicore__ inline void CopyIn(const AscendC::GlobalTensor<T>& w,
                                const AscendC::GlobalTensor<T>& g,
                                const AscendC::GlobalTensor<T>& m, uint64_t start, uint32_t n,
                                bool read_m) {
    AscendC::LocalTensor<T> lw = inW_.template AllocTensor<T>();
    AscendC::LocalTensor<T> lg = inG_.template AllocTensor<T>();
    Load(lw, w[start], n);
    Load(lg, g[start], n);
    inW_.EnQue(lw);
    inG_.EnQue(lg);
    if (read_m) {
      AscendC::LocalTensor<T> lm = inM_.template AllocTensor<T>();
      Load(lm, m[start], n);
      inM_.EnQue(lm);
    }
  }

  __aicore__ inline void Compute(uint32_t n, float lam, float wd, float lr, float mu, bool fused,
                                 bool use_m, bool first, bool nesterov) {
    AscendC::LocalTensor<T> lw = inW_.template DeQue<T>();
    AscendC::LocalTensor<T> lg = inG_.template DeQue<T>();
    AscendC::LocalTensor<float> fw = bufW_.Get<float>();
    AscendC::LocalTensor<float> fg = bufG_.Get<float>();
    AscendC::LocalTensor<float> fm = bufM_.Get<float>();
    Widen(fw, lw, n);
    Widen(fg, lg, n);
    inW_.FreeTensor(lw);
    inG_.FreeTensor(lg);
    AscendC::Muls(fm, fw, wd, n);    // wd·w
    AscendC::Add(fg, fg, fm, n);     // g + wd·w
    AscendC::Muls(fg, fg, lam, n);   // g' = λ(g + wd·w)
    AscendC::LocalTensor<T> outA = outA_.template AllocTensor<T>();
    if (!fused) {
      Narrow(outA, fg, n);
      outA_.EnQue(outA);
      return;
    }
    AscendC::LocalTensor<T> outB = outB_.template AllocTensor<T>();
    if (use_m) {
      if (first) {
        Narrow(outB, fg, n);                 // m = g'
      } else {
        AscendC::LocalTensor<T> lm = inM_.template DeQue<T>();
        Widen(fm, lm, n);
        inM_.FreeTensor(lm);
        AscendC::Muls(fm, fm, mu, n);        // μ·m
        AscendC::Add(fm, fm, fg, n);         // μ·m + g'
        Narrow(outB, fm, n);
      }
      Widen(fm, outB, n);                    // the stored (rounded) buffer, as torch reads it
      if (nesterov) {
        AscendC::Muls(fm, fm, mu, n);
        AscendC::Add(fg, fg, fm, n);         // d = g' + μ·m
      } else {
        AscendC::Muls(fg, fm, 1.0f, n);      // d = m
      }
    }
    AscendC::Muls(fg, fg, -lr, n);           // -lr·d
    AscendC::Add(fw, fw, fg, n);             // w - lr·d
    Narrow(outA, fw, n);
    outA_.EnQue(outA);
    outB_.EnQue(outB);
  }

  __aicore__ inline void CopyOut(const AscendC::GlobalTensor<T>& w,
                                 const AscendC::GlobalTensor<T>& g,
                                 const AscendC::GlobalTensor<T>& m, uint64_t start, uint32_t n,
                                 bool fused, bool use_m) {
    AscendC::LocalTensor<T> outA = outA_.template DeQue<T>();
    Store(fused ? w[start] : g[start], outA, n);
    outA_.FreeTensor(outA);
    if (fused) {
      AscendC::LocalTensor<T> outB = outB_.template DeQue<T>();
      if (use_m) Store(m[start], outB, n);
      outB_.FreeTensor(outB);
    }
  }

  __aicore__ inline void Widen(const AscendC::LocalTensor<float>& dst,
                               const AscendC::LocalTensor<float>& src, uint32_t n) {
    AscendC::Muls(dst, src, 1.0f, n);
  }
  __aicore__ inline void Widen(const AscendC::LocalTensor<float>& dst,
                               const AscendC::LocalTensor<half>& src, uint32_t n) {
    AscendC::Cast(dst, src, AscendC::RoundMode::CAST_NONE, n);
  }
  __aicore__ inline void Narrow(const AscendC::LocalTensor<float>& dst,
                                const AscendC::LocalTensor<float>& src, uint32_t n) {
    AscendC::Muls(dst, src, 1.0f, n);
  }
  __aicore__ inline void Narrow(const AscendC::LocalTensor<half>& dst,
                                const AscendC::LocalTensor<float>& src, uint32_t n) {
    AscendC::Cast(dst, src, AscendC::RoundMode::CAST_RINT, n);
  }

  UpdateTiling tiling_{};
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, BUFFER_NUM> inW_, inG_, inM_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outA_, outB_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> bufW_, bufG_, bufM_, bufNorm_;
  AscendC::TQue<AscendC::TPosition::VECIN, 1> inP_;      // partial or flag blocks from GM
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outLam_;  // λ block to GM
  AscendC::TBuf<AscendC::TPosition::VECCALC> accW_, accG_, bufSums_;
  AscendC::GlobalTensor<uint64_t> wAddr_, gAddr_, mAddr_, chunks_, tensorChunks_;
  AscendC::GlobalTensor<float> partials_, params_, hyper_;
  uint64_t lamTensor_ = ~uint64_t{0};  // the tensor whose λ is in lam_
  float lam_ = 1.0f;
};

}  // namespace lars_ascendc
