// AscendC kernel: λ of every tensor, once, between the square-sums kernel (pass 1) and the update
// kernel (pass 2). Same source for CANN and for lars_npu's host emulation (csrc/emu/). Needs
// DataCacheCleanAndInvalid: Atlas A2 / A3.
//
// Core b takes tensors b, b + blockNum, ...; for each it moves the tensor's Σw² and Σg² chunk
// blocks (written by the square-sums launch, or by the host for given sums) into UB tile by tile
// and adds them with vector instructions, sums the lanes that carry data (8 per chunk block, up to
// 256 blocks: lars_vector.h FoldSums, on the vector unit) — the same instructions whatever the
// block count, so λ does not depend on it —, takes the norms by the vector Sqrt and λ by
// lars::trust_ratio_from_norms (csrc/common/lars_trust.h, the one C++ transcription of the
// reference), and writes λ to the tensor's block of the results region (lars_tiling.h). The
// update kernel reads it there (one scalar read per tensor it touches) and the host reads it back
// as the λ applied. Each chunk block is read once in the whole step: 64 bytes per 16,384
// elements. A tensor that LARS does not adapt gets λ = 1. Two V -> S round trips per tensor (the
// sums, then their roots), and the four hyper-parameters are read once per core.
// UB budget per core (LambdaUbBytes in lars_tiling.h): partials queue 8 KiB + 2 accumulators
// x 8 KiB + 64 B ≈ 24 KiB, whatever the tiling.
#pragma once

#define LARS_DEVICE __aicore__
#include "../common/lars_trust.h"
#include "lars_tiling.h"
#include "lars_vector.h"

namespace lars_ascendc {

class KernelLambda {
 public:
  __aicore__ inline KernelLambda() {}

  __aicore__ inline void Init(GM_ADDR tensor_chunks, GM_ADDR partials, GM_ADDR params,
                              GM_ADDR hyper, GM_ADDR tiling_gm) {
    AscendC::GlobalTensor<uint32_t> t;
    t.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(tiling_gm), 4);
    // the host's tables are read by scalar loads through the data cache: drop stale lines first
    AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                      AscendC::DcciDst::CACHELINE_OUT>(t);
    tiling_ = UpdateTiling{t.GetValue(0), t.GetValue(1), t.GetValue(2), t.GetValue(3)};
    const uint64_t n = tiling_.num_tensors;
    tensorChunks_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(tensor_chunks), n + 1);
    partials_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(partials),
                              (uint64_t{2} * tiling_.num_chunks + kMaxCoreFlags + n) * kBlock);
    params_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(params), n * kTensorParams);
    AscendC::GlobalTensor<float> hyper_gm;
    hyper_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(hyper), 4);
    epsilon_ = hyper_gm.GetValue(0);
    coefficient_ = hyper_gm.GetValue(1);
    useClip_ = hyper_gm.GetValue(2) != 0.0f;
    guardZeroNorm_ = hyper_gm.GetValue(3) != 0.0f;
    const LambdaUb ub = LambdaBuffers();  // lars_tiling.h: LambdaUbBytes in all
    pipe_.InitBuffer(inP_, 1, static_cast<uint32_t>(ub.partials));
    pipe_.InitBuffer(accW_, static_cast<uint32_t>(ub.acc));
    pipe_.InitBuffer(accG_, static_cast<uint32_t>(ub.acc));
    pipe_.InitBuffer(bufNorm_, static_cast<uint32_t>(ub.norm));
    pipe_.InitBuffer(outLam_, 1, static_cast<uint32_t>(ub.out));
  }

  __aicore__ inline void Process() {
    const int64_t step = AscendC::GetBlockNum();
    for (int64_t t = AscendC::GetBlockIdx(); t < static_cast<int64_t>(tiling_.num_tensors);
         t += step) {
      WriteLambda(uint64_t(t), Lambda(uint64_t(t)));
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

  // Σ over chunks [c0, c1) of the results blocks starting at block `base`, added lane-wise into
  // acc[0, lanes) (lanes: the blocks of the largest tile, 8 lanes each; zeroed first) tile by tile
  // by DMA and vector Add.
  __aicore__ inline void AddBlocks(const AscendC::LocalTensor<float>& acc, uint64_t base,
                                   uint64_t c0, uint64_t c1, uint32_t lanes) {
    AscendC::Duplicate(acc, 0.0f, lanes);
    for (uint64_t c = c0; c < c1; c += kPartialTile / kBlock) {
      const uint64_t k = c1 - c < kPartialTile / kBlock ? c1 - c : kPartialTile / kBlock;
      const uint32_t count = static_cast<uint32_t>(k) * kBlock;
      AscendC::LocalTensor<float> in = inP_.template AllocTensor<float>();
      AscendC::DataCopy(in, partials_[(base + c) * kBlock], count);
      inP_.EnQue(in);
      in = inP_.template DeQue<float>();
      AscendC::PipeBarrier<PIPE_V>();  // the Duplicate, or the previous tile's Add, first
      AscendC::Add(acc, acc, in, count);
      inP_.FreeTensor(in);
    }
  }

  __aicore__ inline float Lambda(uint64_t tensor) {
    const uint64_t p = tensor * kTensorParams;
    const float wd = params_.GetValue(p), lr = params_.GetValue(p + 1);
    if ((static_cast<uint32_t>(params_.GetValue(p + 3)) & 1u) == 0) return 1.0f;  // not adapted
    const uint64_t c0 = tensorChunks_.GetValue(tensor), c1 = tensorChunks_.GetValue(tensor + 1);
    float wn = 0.0f, gn = 0.0f;  // a tensor without chunks (no element): zero norms
    if (c1 > c0) {
      const uint64_t blocks = c1 - c0 < kPartialTile / kBlock ? c1 - c0 : kPartialTile / kBlock;
      const uint32_t lanes = static_cast<uint32_t>(blocks) * kBlock;  // the lanes that carry data
      AscendC::LocalTensor<float> aw = accW_.Get<float>(), ag = accG_.Get<float>();
      AscendC::LocalTensor<float> nrm = bufNorm_.Get<float>();
      AddBlocks(aw, 0, c0, c1, lanes);
      AddBlocks(ag, tiling_.num_chunks, c0, c1, lanes);
      Sync<AscendC::HardEvent::S_V>();  // the previous tensor's scalar accesses to nrm come first
      AscendC::PipeBarrier<PIPE_V>();
      FoldSums(nrm, aw, nrm[1], ag, lanes);  // nrm[0] = Σw², nrm[1] = Σg², by the vector unit
      Sync<AscendC::HardEvent::V_S>();
      const float ws = nrm.GetValue(0), gs = nrm.GetValue(1);
      // The norms by the vector Sqrt, whose result for a non-positive input is undefined: a zero
      // sum (zero weights, an unused parameter) never reaches it, its norm is 0 exactly. (The
      // same instructions whatever the values: the cost model counts them on zeros.)
      nrm.SetValue(0, ws == 0.0f ? 1.0f : ws);
      nrm.SetValue(1, gs == 0.0f ? 1.0f : gs);
      Sync<AscendC::HardEvent::S_V>();
      AscendC::Sqrt(nrm, nrm, 2);
      Sync<AscendC::HardEvent::V_S>();
      wn = ws == 0.0f ? 0.0f : nrm.GetValue(0);
      gn = gs == 0.0f ? 0.0f : nrm.GetValue(1);
    }
    return lars::trust_ratio_from_norms<float>(wn, gn, wd, lr, epsilon_, coefficient_, useClip_,
                                               guardZeroNorm_);
  }

  // λ of `tensor` to its block of the results region.
  __aicore__ inline void WriteLambda(uint64_t tensor, float lam) {
    AscendC::LocalTensor<float> out = outLam_.template AllocTensor<float>();
    AscendC::Duplicate(out, lam, kBlock);
    outLam_.EnQue(out);
    out = outLam_.template DeQue<float>();
    const uint64_t at = (uint64_t{2} * tiling_.num_chunks + kMaxCoreFlags + tensor) * kBlock;
    AscendC::DataCopy(partials_[at], out, kBlock);
    outLam_.FreeTensor(out);
  }

  UpdateTiling tiling_{};
  float epsilon_ = 0.0f, coefficient_ = 0.0f;  // the hyper-parameters, read once in Init
  bool useClip_ = false, guardZeroNorm_ = false;
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, 1> inP_;      // partial blocks from GM
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outLam_;  // λ block to GM
  AscendC::TBuf<AscendC::TPosition::VECCALC> accW_, accG_, bufNorm_;
  AscendC::GlobalTensor<uint64_t> tensorChunks_;
  AscendC::GlobalTensor<float> partials_, params_;
};

}  // namespace lars_ascendc
