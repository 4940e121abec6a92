// AscendC kernel: multi-tensor square sums, the NPU twin of the CPU pre-sweep (pass 1).
// The same source compiles with CANN's kernel_operator.h and with lars_npu's host emulation
// (csrc/emu/kernel_operator.h); no #ifdef forks of the math.
//
// Work: a flat list of chunks over all tensors (lars_tiling.h). Every AI core takes the chunks
// blockIdx, blockIdx + blockNum, ...; per chunk it streams w and g through UB in tiles
// (CopyIn → Compute → CopyOut stages joined by TQues, BUFFER_NUM = 2 for double buffering),
// accumulates x*x in fp32 lanes, reduces them, and writes one 32-byte block of partials
// [sum(w^2), sum(g^2), 0...] to the workspace. The host (or the update kernel) adds a tensor's
// chunk partials in chunk order, so the result does not depend on the block count.
//
// UB budget per core with tile_elems = 4096 (fp32): input queue 2 x 16 KiB + fp32 work tile
// 16 KiB + accumulator 16 KiB + reduce scratch 256 B + out block 32 B ≈ 64.3 KiB, within the
// 192 KiB of Atlas A2 (910B) and the 256 KiB of 910A / 310P; tile_elems = 8192 doubles it
// (≈ 128.3 KiB), still inside 192 KiB.
#pragma once

#include "lars_tiling.h"

namespace lars_ascendc {

template <typename T>
class KernelSquareSums {
 public:
  __aicore__ inline KernelSquareSums() {}

  __aicore__ inline void Init(GM_ADDR w_addrs, GM_ADDR g_addrs, GM_ADDR chunks,
                              GM_ADDR partials, GM_ADDR tiling_gm) {
    // the tiling struct is 4 uint32 in global memory, written by the host
    AscendC::GlobalTensor<uint32_t> t;
    t.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(tiling_gm), 4);
    SquareSumTiling tiling{t.GetValue(0), t.GetValue(1), t.GetValue(2), t.GetValue(3)};
    tiling_ = tiling;
    wAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(w_addrs), tiling.num_tensors);
    gAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(g_addrs), tiling.num_tensors);
    chunks_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(chunks),
                            uint64_t{tiling.num_chunks} * 3);
    partials_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(partials),
                              uint64_t{tiling.num_chunks} * kPartialStride);
    const uint32_t tile = tiling.tile_elems;
    pipe_.InitBuffer(inQueue_, BUFFER_NUM, tile * sizeof(T));
    pipe_.InitBuffer(outQueue_, 1, kPartialStride * sizeof(float));
    pipe_.InitBuffer(workBuf_, tile * sizeof(float));
    pipe_.InitBuffer(accBuf_, tile * sizeof(float));
    pipe_.InitBuffer(reduceBuf_, ((tile + 63) / 64) * sizeof(float) + 32);
  }

  __aicore__ inline void Process() {
    const int64_t step = AscendC::GetBlockNum();
    for (int64_t c = AscendC::GetBlockIdx(); c < static_cast<int64_t>(tiling_.num_chunks);
         c += step) {
      const uint64_t tensor = chunks_.GetValue(3 * c);
      const uint64_t offset = chunks_.GetValue(3 * c + 1);
      const uint64_t length = chunks_.GetValue(3 * c + 2);
      const float ws = SumSquares(wAddr_.GetValue(tensor), offset, length);
      const float gs = SumSquares(gAddr_.GetValue(tensor), offset, length);
      CopyOut(c, ws, gs);
    }
  }

 private:
  // sum(x^2) over x[offset, offset + length) of the tensor at GM address `addr` (0: absent).
  __aicore__ inline float SumSquares(uint64_t addr, uint64_t offset, uint64_t length) {
    if (addr == 0 || length == 0) return 0.0f;
    AscendC::GlobalTensor<T> x;
    x.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(addr) + offset, length);
    AscendC::LocalTensor<float> acc = accBuf_.Get<float>();
    AscendC::Duplicate(acc, 0.0f, tiling_.tile_elems);
    // DataCopy moves whole 32-byte blocks: the aligned body goes through the tiles, the tail
    // (fewer than one block) is read element by element below.
    constexpr uint32_t kPerBlock = 32 / sizeof(T);
    const uint64_t body = length / kPerBlock * kPerBlock;
    for (uint64_t done = 0; done < body; done += tiling_.tile_elems) {
      const uint32_t n = static_cast<uint32_t>(
          body - done < tiling_.tile_elems ? body - done : tiling_.tile_elems);
      CopyIn(x, done, n);
      Compute(acc, n);
    }
    AscendC::LocalTensor<float> work = workBuf_.Get<float>();
    AscendC::LocalTensor<float> red = reduceBuf_.Get<float>();
    AscendC::ReduceSum(work, acc, red, tiling_.tile_elems);
    float total = work.GetValue(0);
    for (uint64_t i = body; i < length; ++i) {
      const float v = ToFloat(x.GetValue(i));
      total += v * v;
    }
    return total;
  }

  __aicore__ inline void CopyIn(const AscendC::GlobalTensor<T>& x, uint64_t start, uint32_t n) {
    AscendC::LocalTensor<T> in = inQueue_.template AllocTensor<T>();
    AscendC::DataCopy(in, x[start], n);
    inQueue_.EnQue(in);
  }

  // acc[0:n] += x*x, in fp32 whatever the storage type.
  __aicore__ inline void Compute(const AscendC::LocalTensor<float>& acc, uint32_t n) {
    AscendC::LocalTensor<T> in = inQueue_.template DeQue<T>();
    AscendC::LocalTensor<float> work = workBuf_.Get<float>();
    Widen(work, in, n);
    AscendC::Mul(work, work, work, n);
    AscendC::Add(acc, acc, work, n);
    inQueue_.FreeTensor(in);
  }

  __aicore__ inline void CopyOut(int64_t chunk, float ws, float gs) {
    AscendC::LocalTensor<float> out = outQueue_.template AllocTensor<float>();
    AscendC::Duplicate(out, 0.0f, kPartialStride);
    out.SetValue(0, ws);
    out.SetValue(1, gs);
    outQueue_.EnQue(out);
    out = outQueue_.template DeQue<float>();
    AscendC::DataCopy(partials_[uint64_t(chunk) * kPartialStride], out, kPartialStride);
    outQueue_.FreeTensor(out);
  }

  __aicore__ inline void Widen(const AscendC::LocalTensor<float>& dst,
                               const AscendC::LocalTensor<float>& src, uint32_t n) {
    AscendC::Muls(dst, src, 1.0f, n);  // a copy through the vector unit
  }
  __aicore__ inline void Widen(const AscendC::LocalTensor<float>& dst,
                               const AscendC::LocalTensor<half>& src, uint32_t n) {
    AscendC::Cast(dst, src, AscendC::RoundMode::CAST_NONE, n);
  }
  __aicore__ inline static float ToFloat(float v) { return v; }
  __aicore__ inline static float ToFloat(half v) { return static_cast<float>(v); }

  SquareSumTiling tiling_{};
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, BUFFER_NUM> inQueue_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outQueue_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> workBuf_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> accBuf_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> reduceBuf_;
  AscendC::GlobalTensor<uint64_t> wAddr_;
  AscendC::GlobalTensor<uint64_t> gAddr_;
  AscendC::GlobalTensor<uint64_t> chunks_;
  AscendC::GlobalTensor<float> partials_;
};

}  // namespace lars_ascendc
