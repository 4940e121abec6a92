// A correct kernel using MulAddDst, Axpy and PipeBarrier<PIPE_V> (the vmla / vaxpy intrinsics and
// a V barrier): out = x * y + z, then out += 0.5 * x, over n floats (n * 4 whole 32-byte blocks).
#include "kernel_operator.h"

namespace {

class MulAddAxpy {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR y, GM_ADDR z, GM_ADDR out, GM_ADDR args) {
    AscendC::GlobalTensor<uint32_t> a;
    a.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(args), 8);
    AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                      AscendC::DcciDst::CACHELINE_OUT>(a);
    n_ = a.GetValue(0);
    x_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(x), n_);
    y_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(y), n_);
    z_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(z), n_);
    out_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), n_);
    pipe_.InitBuffer(in_, 3, n_ * sizeof(float));
    pipe_.InitBuffer(out_q_, 1, n_ * sizeof(float));
  }
  __aicore__ inline void Process() {
    AscendC::LocalTensor<float> x = in_.AllocTensor<float>();
    AscendC::LocalTensor<float> y = in_.AllocTensor<float>();
    AscendC::LocalTensor<float> z = in_.AllocTensor<float>();
    AscendC::DataCopy(x, x_, n_);
    AscendC::DataCopy(y, y_, n_);
    AscendC::DataCopy(z, z_, n_);
    in_.EnQue(x);
    in_.EnQue(y);
    in_.EnQue(z);
    x = in_.DeQue<float>();
    y = in_.DeQue<float>();
    z = in_.DeQue<float>();
    AscendC::LocalTensor<float> out = out_q_.AllocTensor<float>();
    AscendC::Muls(out, z, 1.0f, n_);
    AscendC::MulAddDst(out, x, y, n_);  // out = x * y + out
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Axpy(out, x, 0.5f, n_);  // out = 0.5 * x + out
    out_q_.EnQue(out);
    in_.FreeTensor(x);
    in_.FreeTensor(y);
    in_.FreeTensor(z);
    out = out_q_.DeQue<float>();
    AscendC::DataCopy(out_, out, n_);
    out_q_.FreeTensor(out);
  }

 private:
  uint32_t n_ = 0;
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::TPosition::VECIN, 3> in_;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> out_q_;
  AscendC::GlobalTensor<float> x_, y_, z_, out_;
};

}  // namespace

extern "C" __global__ __aicore__ void lars_test_muladd_axpy(GM_ADDR x, GM_ADDR y, GM_ADDR z,
                                                           GM_ADDR out, GM_ADDR args) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  MulAddAxpy op;
  op.Init(x, y, z, out, args);
  op.Process();
}

// The mixed-precision forms: out (float) = z + x * y, then out += 0.5 * x, with x and y half
// (MulAddDst<float, half>, Axpy<float, half>: a repeat of 64 lanes reads 4 blocks of each half).
extern "C" __global__ __aicore__ void lars_test_muladd_axpy_f16(GM_ADDR x, GM_ADDR y, GM_ADDR z,
                                                               GM_ADDR out, GM_ADDR args) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  AscendC::GlobalTensor<uint32_t> a;
  a.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t*>(args), 8);
  AscendC::DataCacheCleanAndInvalid<uint32_t, AscendC::CacheLine::ENTIRE_DATA_CACHE,
                                    AscendC::DcciDst::CACHELINE_OUT>(a);
  const uint32_t n = a.GetValue(0);  // a multiple of 16
  AscendC::GlobalTensor<half> xg, yg;
  AscendC::GlobalTensor<float> zg, og;
  xg.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(x), n);
  yg.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(y), n);
  zg.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(z), n);
  og.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), n);
  AscendC::TPipe pipe;
  AscendC::TQue<AscendC::TPosition::VECIN, 2> halves;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> acc;
  pipe.InitBuffer(halves, 2, n * sizeof(half));
  pipe.InitBuffer(acc, 1, n * sizeof(float));
  AscendC::LocalTensor<half> xl = halves.AllocTensor<half>();
  AscendC::LocalTensor<half> yl = halves.AllocTensor<half>();
  AscendC::LocalTensor<float> o = acc.AllocTensor<float>();
  AscendC::DataCopy(xl, xg, n);
  AscendC::DataCopy(yl, yg, n);
  AscendC::DataCopy(o, zg, n);  // (a VECOUT buffer filled by DMA, then computed on)
  halves.EnQue(xl);
  halves.EnQue(yl);
  xl = halves.DeQue<half>();
  yl = halves.DeQue<half>();
  AscendC::SetFlag<AscendC::HardEvent::MTE2_V>(EVENT_ID0);
  AscendC::WaitFlag<AscendC::HardEvent::MTE2_V>(EVENT_ID0);
  AscendC::MulAddDst(o, xl, yl, n);
  AscendC::PipeBarrier<PIPE_V>();
  AscendC::Axpy(o, xl, static_cast<half>(0.5f), n);
  acc.EnQue(o);
  halves.FreeTensor(xl);
  halves.FreeTensor(yl);
  o = acc.DeQue<float>();
  AscendC::DataCopy(og, o, n);
  acc.FreeTensor(o);
}
