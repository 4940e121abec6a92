// A direct probe of the model's fp16 conversions through the real Cast: 16 half -> float
// (CAST_NONE) and 16 float -> half (CAST_RINT), in whatever floating-point mode the launch
// starts in (saturation: CTRL[48] = 0, or INF_NAN).
#include "kernel_operator.h"

namespace {

template <typename Src, typename Dst>
__aicore__ inline void CastProbe(GM_ADDR x, GM_ADDR out, AscendC::RoundMode round) {
  constexpr uint32_t n = 16;
  AscendC::TPipe pipe;
  AscendC::TQue<AscendC::TPosition::VECIN, 1> in_q;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> out_q;
  pipe.InitBuffer(in_q, 1, 64);
  pipe.InitBuffer(out_q, 1, 64);
  AscendC::GlobalTensor<Src> src;
  AscendC::GlobalTensor<Dst> dst;
  src.SetGlobalBuffer(reinterpret_cast<__gm__ Src*>(x), n);
  dst.SetGlobalBuffer(reinterpret_cast<__gm__ Dst*>(out), n);
  AscendC::LocalTensor<Src> in = in_q.AllocTensor<Src>();
  AscendC::DataCopy(in, src, n);
  in_q.EnQue(in);
  in = in_q.DeQue<Src>();
  AscendC::LocalTensor<Dst> o = out_q.AllocTensor<Dst>();
  AscendC::Cast(o, in, round, n);
  out_q.EnQue(o);
  in_q.FreeTensor(in);
  o = out_q.DeQue<Dst>();
  AscendC::DataCopy(dst, o, n);
  out_q.FreeTensor(o);
}

}  // namespace

extern "C" __global__ __aicore__ void lars_test_cast_f16_to_f32(GM_ADDR x, GM_ADDR, GM_ADDR,
                                                               GM_ADDR out, GM_ADDR) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  CastProbe<half, float>(x, out, AscendC::RoundMode::CAST_NONE);
}

extern "C" __global__ __aicore__ void lars_test_cast_f32_to_f16(GM_ADDR x, GM_ADDR, GM_ADDR,
                                                               GM_ADDR out, GM_ADDR) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  CastProbe<float, half>(x, out, AscendC::RoundMode::CAST_RINT);
}
