// AscendC kernel: multi-tensor square sums, the NPU twin of the CPU pre-sweep (pass 1).
// The same source compiles with CANN's kernel_operator.h and with lars_npu's host emulation
// (csrc/emu/kernel_operator.h); no #ifdef forks of the math. Needs DataCopyPad: Atlas A2 / A3.
//
// Work: a flat list of chunks over all tensors (lars_tiling.h). Every AI core takes the chunks
// blockIdx, blockIdx + blockNum, ...; per chunk it streams w and then g through UB in tiles (CopyIn
// → Compute stages joined by a TQue, BUFFER_NUM = 2 for double buffering) and accumulates x*x in
// fp32 lanes (fp32 squares the input tile in place, with no copy; fp16 widens it by Cast into a
// work tile first). At the end of each tensor's part of the chunk the lanes are summed on the
// vector unit alone (lars_vector.h FoldSum: pairwise Adds, then one WholeReduceSum) into a 64-byte
// UB block [sum(w^2), 0 x7 | sum(g^2), 0 x7], whose halves two DataCopy write to the chunk's Σw²
// and Σg² blocks of the workspace's results region (lars_tiling.h). Each core also keeps, in vector
// lanes of its flag block, 0·Σg² summed over its chunks (0 while every Σg² is finite, NaN once one
// is inf/nan) and writes it as its non-finite flag at the end, so the update kernel decides
// found_inf from O(cores) flags. (λ per tensor: csrc/ascendc/lars_lambda.h, the next launch.)
//
// No scalar step touches UB and the scalar unit never waits for the vector unit (no ReduceSum,
// no V -> S sync): while the vector unit works on a chunk's tiles, the scalar unit reads the next
// chunk's descriptor and issues its copies, so the DMA pipe never runs dry between chunks.
// Cross-pipe hand-offs are the queues'; dependent vector instructions are separated by
// PipeBarrier<PIPE_V> (the kernels do not rely on --cce-auto-sync: docs/emulation.md). A tensor's
// last tile may be ragged: it is moved with DataCopyPad and computed on exactly its elements (the
// pad lanes are never read). The sum of a chunk depends on its length and the tile size only, and
// the λ kernel (and the host) add a tensor's chunk partials the same way whatever the block
// count, so the result does not depend on it.
//
// UB per core: SquareSumsUbBytes in lars_tiling.h (Init takes its buffers from there) = 2 x tile in
// the storage type (input queue) + the fp32 accumulator tile (+ an fp32 work tile for fp16) + 128 B
// of blocks: with tile_elems = 4096, 48.1 KiB in both (fp32: 2 x 16 + 16 KiB; fp16: 2 x 8 + 16 +
// 16 KiB), of the 184 KiB that Atlas A2 (910B) leaves to a kernel (192 KiB, the top 8 KiB reserved
// as API scratch). The host plan refuses a tile above MaxTileSquareSums: 15,680 elements (fp32 and
// fp16). 910A / 310P have 256 KiB, but no DataCopyPad (the ragged tail would need another path
// there).
#pragma once

#include "lars_tiling.h"
#include "lars_vector.h"

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
    if (ub.work > 0) pipe_.InitBuffer(workBuf_, static_cast<uint32_t>(ub.work));
    pipe_.InitBuffer(accBuf_, static_cast<uint32_t>(ub.acc));
  }

  __aicore__ inline void Process() {
    // [the core's flag: 0·Σg² so far, copied out at the end | scratch]
    AscendC::LocalTensor<float> flag = flagOut_.template AllocTensor<float>();
    AscendC::Duplicate(flag, 0.0f, kBlock);
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
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Muls(flag[kBlock], out[kBlock], 0.0f, kBlock);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Add(flag, flag, flag[kBlock], kBlock);
      outQueue_.EnQue(out);
      CopyOut(c);
    }
    // every core writes its flag (one with no chunk: 0), so no stale flag survives
    const int64_t core = AscendC::GetBlockIdx();
    flagOut_.EnQue(flag);
    flag = flagOut_.template DeQue<float>();
    if (core < static_cast<int64_t>(kMaxCoreFlags)) {
      const uint64_t at = (uint64_t{2} * tiling_.num_chunks + uint64_t(core)) * kBlock;
      AscendC::DataCopy(partials_[at], flag, kBlock);
    }
    flagOut_.FreeTensor(flag);
  }

 private:
  // dst[0] = sum(x^2) over x[offset, offset + length) of the tensor at GM address `addr`
  // (0: absent, dst stays 0), on the vector unit: fp32 lanes of the accumulator, then FoldSum.
  __aicore__ inline void SumSquares(uint64_t addr, uint64_t offset, uint64_t length,
                                    const AscendC::LocalTensor<float>& dst) {
    if (addr == 0 || length == 0) return;
    AscendC::GlobalTensor<T> x;
    x.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(addr) + offset, length);
    // the lanes the tiles reach, in whole blocks (a multiple of kBlock: the tile is one of 16)
    const uint32_t lanes = static_cast<uint32_t>(
        length < tiling_.tile_elems ? (length + kBlock - 1) / kBlock * kBlock
                                    : tiling_.tile_elems);
    AscendC::LocalTensor<float> acc = accBuf_.Get<float>();
    AscendC::PipeBarrier<PIPE_V>();  // the last fold's reads of acc come first
    AscendC::Duplicate(acc, 0.0f, lanes);
    for (uint64_t done = 0; done < length; done += tiling_.tile_elems) {
      const uint32_t n = static_cast<uint32_t>(
          length - done < tiling_.tile_elems ? length - done : tiling_.tile_elems);
      CopyIn(x, done, n);
      Compute(acc, n);
    }
    AscendC::PipeBarrier<PIPE_V>();
    FoldSum(dst, acc, lanes);
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
    if constexpr (sizeof(T) == sizeof(float)) {
      AscendC::Mul(in, in, in, n);  // in place: the tile is this stage's until FreeTensor
      AscendC::PipeBarrier<PIPE_V>();  // (and the previous tile's Add, or the Duplicate, first)
      AscendC::Add(acc, acc, in, n);
    } else {
      AscendC::LocalTensor<float> work = workBuf_.Get<float>();
      AscendC::PipeBarrier<PIPE_V>();  // the previous tile's Add read work
      AscendC::Cast(work, in, AscendC::RoundMode::CAST_NONE, n);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Mul(work, work, work, n);
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Add(acc, acc, work, n);
    }
    inQueue_.FreeTensor(in);
  }

  __aicore__ inline void CopyOut(int64_t chunk) {
    AscendC::LocalTensor<float> out = outQueue_.template DeQue<float>();
    AscendC::DataCopy(partials_[uint64_t(chunk) * kBlock], out, kBlock);  // Σw²
    AscendC::DataCopy(partials_[(tiling_.num_chunks + uint64_t(chunk)) * kBlock], out[kBlock],
                      kBlock);  // Σg²
    outQueue_.FreeTensor(out);
  }

  SquareSumTiling tiling_{};
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, BUFFER_NUM> inQueue_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> outQueue_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> flagOut_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> workBuf_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> accBuf_;
  AscendC::GlobalTensor<uint64_t> wAddr_;
  AscendC::GlobalTensor<uint64_t> gAddr_;
  AscendC::GlobalTensor<uint64_t> chunks_;
  AscendC::GlobalTensor<float> partials_;
  uint64_t curTensor_ = ~uint64_t{0}, curW_ = 0, curG_ = 0;  // addresses of the current tensor
};

}  // namespace lars_ascendc
