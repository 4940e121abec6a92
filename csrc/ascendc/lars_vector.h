// Vector-unit building blocks shared by lars_npu's AscendC kernels (csrc/ascendc/): the sum of an
// fp32 accumulator's lanes on the vector unit alone, with no scalar step. Same source for CANN and
// for lars_npu's host emulation (csrc/emu/); include after kernel_operator.h.
//
// Why not ReduceSum: on Atlas A2 (dav_c220) its count form is one vcadd whose accumulator the
// scalar unit stores to dst after a V -> S sync (asc-devkit impl/basic_api/dav_c220/
// kernel_operator_vec_reduce_impl.h, ReduceSumImpl). That wait stalls the scalar unit, which
// issues every instruction: no copy of the next data starts until the vector pipe has drained.
// Here: pairwise Adds of the accumulator's halves down to one 256-byte repeat (64 fp32 lanes),
// then one WholeReduceSum, a vcadd whose result the vector unit writes to UB itself — the
// "二分累加" reduction of the AscendC performance guide (选择低延迟指令，优化归约操作性能), which
// also measures it faster than ReduceSum. The summation order depends on the lane count only.
//
// Vector instructions that depend on each other are separated by PipeBarrier<PIPE_V>: on A2 they
// overlap in the V pipe, and the kernels do not rely on the compiler's --cce-auto-sync for that
// (docs/emulation.md). The caller orders what wrote the accumulator before the call (a barrier)
// and what uses the result after it.
#pragma once

#include "lars_tiling.h"

namespace lars_ascendc {

constexpr uint32_t kRepeatLanes = 64;  // fp32 lanes of one 256-byte vector repeat

// The split point of a fold of `lanes` (a multiple of kBlock): the upper part [half, lanes) is
// added onto [0, lanes - half). half is a whole number of 32-byte blocks (vector operands start
// 32-byte aligned) and at least lanes - half, so the two parts never overlap.
__aicore__ inline uint32_t FoldHalf(uint32_t lanes) {
  return (lanes + 2 * kBlock - 1) / (2 * kBlock) * kBlock;
}

// dst[0] = Σ acc[0, lanes) for a multiple of kBlock lanes (>= kBlock); acc is overwritten.
__aicore__ inline void FoldSum(const AscendC::LocalTensor<float>& dst,
                               const AscendC::LocalTensor<float>& acc, uint32_t lanes) {
  for (; lanes > kRepeatLanes; lanes = FoldHalf(lanes)) {
    AscendC::Add(acc, acc, acc[FoldHalf(lanes)], lanes - FoldHalf(lanes));
    AscendC::PipeBarrier<PIPE_V>();
  }
  AscendC::WholeReduceSum(dst, acc, static_cast<int32_t>(lanes), 1, 1, 1, 8);
}

// The same for two accumulators of the same lane count, their folds interleaved (the two Adds of
// a step are independent: one barrier per step).
__aicore__ inline void FoldSums(const AscendC::LocalTensor<float>& dst0,
                                const AscendC::LocalTensor<float>& acc0,
                                const AscendC::LocalTensor<float>& dst1,
                                const AscendC::LocalTensor<float>& acc1, uint32_t lanes) {
  for (; lanes > kRepeatLanes; lanes = FoldHalf(lanes)) {
    AscendC::Add(acc0, acc0, acc0[FoldHalf(lanes)], lanes - FoldHalf(lanes));
    AscendC::Add(acc1, acc1, acc1[FoldHalf(lanes)], lanes - FoldHalf(lanes));
    AscendC::PipeBarrier<PIPE_V>();
  }
  AscendC::WholeReduceSum(dst0, acc0, static_cast<int32_t>(lanes), 1, 1, 1, 8);
  AscendC::WholeReduceSum(dst1, acc1, static_cast<int32_t>(lanes), 1, 1, 1, 8);
}

}  // namespace lars_ascendc
