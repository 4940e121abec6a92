// Scaffolding of the real runner's sum test kernels (tests/test_asc_real.py): one core moves n
// floats of x into UB, reduces them with ReduceSum and writes the sum to out[0]. Each kernel
// source (sum_*.cpp) supplies how it loads x and how many lanes it reduces; the deliberately
// wrong ones get one of those wrong, as a kernel author might.
#pragma once

#include "kernel_operator.h"

namespace lars_asc_test {

constexpr uint32_t kMaxElems = 4096;

template <typename Mistake>
class SumKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR out, GM_ADDR args) {
    AscendC::GlobalTensor<uint32_t> a;
    a.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(args), 8);
    AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                      AscendC::DcciDst::CACHELINE_OUT>(a);
    n_ = a.GetValue(0);
    x_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(x), n_);
    out_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), 8);
    pipe_.InitBuffer(in_, 1, kMaxElems * sizeof(float));
    pipe_.InitBuffer(out_q_, 1, 32);
  }
  __aicore__ inline void Process() {
    AscendC::LocalTensor<float> in = in_.AllocTensor<float>();
    Mistake::Load(in, x_, n_);
    in_.EnQue(in);
    in = in_.DeQue<float>();
    AscendC::LocalTensor<float> sum = out_q_.AllocTensor<float>();
    AscendC::ReduceSum(sum, in, in, Mistake::Count(n_));
    out_q_.EnQue(sum);
    in_.FreeTensor(in);
    sum = out_q_.DeQue<float>();
    AscendC::DataCopy(out_, sum, 8);
    out_q_.FreeTensor(sum);
  }

 private:
  uint32_t n_ = 0;
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, 1> in_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> out_q_;
  AscendC::GlobalTensor<float> x_, out_;
};

// n elements from GM, exactly: DataCopyPad (the burst's pad lanes up to 32 bytes hold nothing).
__aicore__ inline void LoadExactly(const AscendC::LocalTensor<float>& in,
                                   const AscendC::GlobalTensor<float>& x, uint32_t n) {
  AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(float)), 0, 0, 0};
  AscendC::DataCopyPadExtParams<float> pad{};
  AscendC::DataCopyPad(in, x, copy, pad);
}

}  // namespace lars_asc_test

// The kernel entry of one sum test kernel.
#define LARS_ASC_SUM_KERNEL(NAME, MISTAKE)                                                        \
  extern "C" __global__ __aicore__ void NAME(GM_ADDR x, GM_ADDR, GM_ADDR, GM_ADDR out,          \
                                             GM_ADDR args) {                                     \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                             \
    lars_asc_test::SumKernel<MISTAKE> op;                                                       \
    op.Init(x, out, args);                                                                      \
    op.Process();                                                                               \
  }
