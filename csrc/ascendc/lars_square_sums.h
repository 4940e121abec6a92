// AscendC kernel: multi-tensor square sums, the NPU twin of the CPU pre-sweep (pass 1).
// The same source compiles with CANN's kernel_operator.h and with lars_npu's host emulation
// (csrc/emu/kernel_operator.h); no #ifdef forks of the math. Needs DataCopyPad: Atlas A2 / A3.
//
// Work: a flat list of chunks over all tensors (lars_tiling.h). Every AI core takes the chunks
// blockIdx, blockIdx + blockNum, ...; per chunk it streams w and g through UB in tiles
// (CopyIn → Compute stages joined by a TQue, BUFFER_NUM = 2 for double buffering), accumulates
// x*x in fp32 lanes and reduces them with ReduceSum straight into a 64-byte UB block
// [sum(w^2), 0 x7 | sum(g^2), 0 x7], whose halves two DataCopy write to the chunk's Σw² and Σg²
// blocks of the workspace's results region (lars_tiling.h). Each core also keeps, in vector
// lanes, 0·Σg² summed over its chunks (0 while every Σg² is finite, NaN once one is inf/nan) and
// writes it as its non-finite flag at the end, so the update kernel decides found_inf from
// O(cores) flags. (λ per tensor: csrc/ascendc/lars_lambda.h, the next launch.) The only scalar access to UB is ReduceSum's own store of its result, which the
// call orders itself; every other cross-pipe hand-off is a queue's. A tensor's last tile may be
// ragged: it is moved with DataCopyPad and computed on exactly its elements (the pad lanes are
// never read). The λ kernel (and the host) add a tensor's chunk partials the same way whatever
// the block count, so the result does not depend on it.
//
// ReduceSum on A2 (dav_c220) is one vcadd whose accumulator the scalar unit stores to dst after
// its own V->S sync, then it syncs S->V and S->MTE3 itself; it never touches its work tensor, so
// none is budgeted (the accumulator tile is passed in that place).
// UB per core: SquareSumsUbBytes in lars_tiling.h (Init takes its buffers from there) =
// 2 x tile in the storage type (input queue) + 2 fp32 tiles (work, accumulator) + 160 B of
// blocks: with tile_elems = 4096, 64.2 KiB (fp32) or 48.2 KiB (fp16), of the 184 KiB that Atlas
// A2 (910B) leaves to a kernel (192 KiB, the top 8 KiB reserved as API scratch). The host plan
// refuses a tile above MaxTileSquareSums: 11,760 elements (fp32), 15,680 (fp16). 910A / 310P have
// 256 KiB, but no DataCopyPad (the ragged tail would need another path there).
#pragma once

#include "lars_tiling.h"

namespace lars_ascendc {

template <typename T>
class KernelSquareSums {
 public:
  __aicore__ inline KernelSquareSums() {}

  __aicore__ inline void Init(GM_ADDR w_addrs, GM_ADDR g_addrs, GM_ADDR chunks,
                              GM_ADDR partials, GM_ADDR tiling_gm) {
    // the tiling struct is 4 uint32 in global memory, written by the host; the host's tables are
    // read by scalar loads through the data cache: drop stale lines first
    AscendC::GlobalTensor<uint32_t> t;
    t.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(tiling_gm), 4);
    AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                      AscendC::DcciDst::CACHELINE_OUT>(t);
    SquareSumTiling tiling{t.GetValue(0), t.GetValue(1), t.GetValue(2), t.GetValue(3)};
    tiling_ = tiling;
    wAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(w_addrs), tiling.num_tensors);
    gAddr_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(g_addrs), tiling.num_tensors);
    chunks_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(chunks),
                            uint64_t{tiling.num_chunks} * 3);
    partials_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(partials),
                              (uint64_t{2} * tiling.num_chunks + kMaxCoreFlags) * kBlock);
    // the sizes of lars_tiling.h's formula, which the host plan bounds the tile by
    const SquareSumsUb ub = SquareSumsBuffers(tiling.tile_elems, sizeof(T));
    pipe_.InitBuffer(inQueue_, BUFFER_NUM, static_cast<uint32_t>(ub.in));
    pipe_.InitBuffer(outQueue_, 1, static_cast<uint32_t>(ub.out));
    pipe_.InitBuffer(flagOut_, 1, static_cast<uint32_t>(ub.flag_out));
    pipe_.InitBuffer(flagBuf_, static_cast<uint32_t>(ub.flag));
    pipe_.InitBuffer(workBuf_, static_cast<uint32_t>(ub.work));
    pipe_.InitBuffer(accBuf_, static_cast<uint32_t>(ub.acc));
  }

  __aicore__ inline void Process() {
    AscendC::LocalTensor<float> flag = flagBuf_.Get<float>();  // [0·Σg² so far | scratch]
    AscendC::Duplicate(flag, 0.0f, 2 * kBlock);
    const int64_t step = AscendC::GetBlockNum();
    for (int64_t c = AscendC::GetBlockIdx(); c < static_cast<int64_t>(tiling_.num_chunks);
         c += step) {
      const uint64_t tensor = chunks_.GetValue(3 * c);
      const uint64_t offset = chunks_.GetValue(3 * c + 1);
      const uint64_t length = chunks_.GetValue(3 * c + 2);
      AscendC::LocalTensor<float> out = outQueue_.template AllocTensor<float>();
      AscendC::Duplicate(out, 0.0f, 2 * kBlock);
      if (tensor != curTensor_) {  // a core meets a tensor's chunks one after another
        curTensor_ = tensor;
        curW_ = wAddr_.GetValue(tensor);
        curG_ = gAddr_.GetValue(tensor);
      }
      SumSquares(curW_, offset, length, out);
      SumSquares(curG_, offset, length, out[kBlock]);
      // 0·Σg²: 0 for a finite sum, NaN for inf/nan; added up, the core's flag
      AscendC::Muls(flag[kBlock], out[kBlock], 0.0f, kBlock);
      AscendC::Add(flag, flag, flag[kBlock], kBlock);
      outQueue_.EnQue(out);
      CopyOut(c);
    }
    // every core writes its flag (one with no chunk: 0), so no stale flag survives
    const int64_t core = AscendC::GetBlockIdx();
    if (core < static_cast<int64_t>(kMaxCoreFlags)) {
      AscendC::LocalTensor<float> f = flagOut_.template AllocTensor<float>();
      AscendC::Muls(f, flag, 1.0f, kBlock);
      flagOut_.EnQue(f);
      f = flagOut_.template DeQue<float>();
      const uint64_t at = (uint64_t{2} * tiling_.num_chunks + uint64_t(core)) * kBlock;
      AscendC::DataCopy(partials_[at], f, kBlock);
      flagOut_.FreeTensor(f);
    }
  }

 private:
  // dst[0] = sum(x^2) over x[offset, offset + length) of the tensor at GM address `addr`
  // (0: absent, dst stays 0).
  __aicore__ inline void SumSquares(uint64_t addr, uint64_t offset, uint64_t length,
                                    const AscendC::LocalTensor<float>& dst) {
    if (addr == 0 || length == 0) return;
    AscendC::GlobalTensor<T> x;
    x.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(addr) + offset, length);
    AscendC::LocalTensor<float> acc = accBuf_.Get<float>();
    AscendC::Duplicate(acc, 0.0f, tiling_.tile_elems);
    for (uint64_t done = 0; done < length; done += tiling_.tile_elems) {
      const uint32_t n = static_cast<uint32_t>(
          length - done < tiling_.tile_elems ? length - done : tiling_.tile_elems);
      CopyIn(x, done, n);
      Compute(acc, n);
    }
    // the work-tensor argument is ignored on A2 (see the header comment): acc stands in for it
    AscendC::ReduceSum(dst, acc, acc, static_cast<int32_t>(tiling_.tile_elems));
  }

  // n elements from x[start]: whole 32-byte blocks with DataCopy, a ragged tail with DataCopyPad.
  __aicore__ inline void CopyIn(const AscendC::GlobalTensor<T>& x, uint64_t start, uint32_t n) {
    AscendC::LocalTensor<T> in = inQueue_.template AllocTensor<T>();
    if ((n * sizeof(T)) % 32 == 0) {
      AscendC::DataCopy(in, x[start], n);
    } else {
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<T> pad{};  // no padding: the pad lanes are never read
      AscendC::DataCopyPad(in, x[start], copy, pad);
    }
    inQueue_.EnQue(in);
  }

  // acc[0:n] += x*x, in fp32 whatever the storage type (lanes n.. of the tile are not touched).
  __aicore__ inline void Compute(const AscendC::LocalTensor<float>& acc, uint32_t n) {
    AscendC::LocalTensor<T> in = inQueue_.template DeQue<T>();
    AscendC::LocalTensor<float> work = workBuf_.Get<float>();
    Widen(work, in, n);
    AscendC::Mul(work, work, work, n);
    AscendC::Add(acc, acc, work, n);
    inQueue_.FreeTensor(in);
  }

  __aicore__ inline void CopyOut(int64_t chunk) {
    AscendC::LocalTensor<float> out = outQueue_.template DeQue<float>();
    AscendC::DataCopy(partials_[uint64_t(chunk) * kBlock], out, kBlock);  // Σw²
    AscendC::DataCopy(partials_[(tiling_.num_chunks + uint64_t(chunk)) * kBlock], out[kBlock],
                      kBlock);  // Σg²
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

  SquareSumTiling tiling_{};
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, BUFFER_NUM> inQueue_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outQueue_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> flagOut_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> flagBuf_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> workBuf_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> accBuf_;
  AscendC::GlobalTensor<uint64_t> wAddr_;
  AscendC::GlobalTensor<uint64_t> gAddr_;
  AscendC::GlobalTensor<uint64_t> chunks_;
  AscendC::GlobalTensor<float> partials_;
  uint64_t curTensor_ = ~uint64_t{0}, curW_ = 0, curG_ = 0;  // addresses of the current tensor
};

}  // namespace lars_ascendc
