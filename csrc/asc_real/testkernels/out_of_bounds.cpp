// WRONG, twice: accesses beyond what the core has, which the model refuses by name.
//  - store_past_output: its GlobalTensor claims 16 floats of an output that holds 8, and it copies
//    16 out (the real library's size check trusts the GlobalTensor; the model knows the buffer);
//  - dup_past_ub: a vector_dup issued directly on an address 64 bytes before the end of the
//    Unified Buffer, for a whole 256-byte repeat.
#include "kernel_operator.h"

extern "C" __global__ __aicore__ void lars_test_store_past_output(GM_ADDR, GM_ADDR, GM_ADDR,
                                                                 GM_ADDR out, GM_ADDR) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  AscendC::TPipe pipe;
  AscendC::TQue<AscendC::TPosition::VECOUT, 1> q;
  pipe.InitBuffer(q, 1, 64);
  AscendC::GlobalTensor<float> dst;
  dst.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), 16);
  AscendC::LocalTensor<float> t = q.AllocTensor<float>();
  AscendC::Duplicate(t, 1.0f, 16);
  q.EnQue(t);
  t = q.DeQue<float>();
  AscendC::DataCopy(dst, t, 16);
  q.FreeTensor(t);
}

extern "C" __global__ __aicore__ void lars_test_dup_past_ub(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                                           GM_ADDR) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  AscendC::TPipe pipe;
  AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
  pipe.InitBuffer(buf, 32);
  AscendC::LocalTensor<float> t = buf.Get<float>();
  // the UB offset of t is known to TPipe; the last 64 bytes of the 192 KiB are past it
  auto* base = reinterpret_cast<__ubuf__ uint8_t*>(t.GetPhyAddr()) -
               AscendC::TransUBAddr<AscendC::TPosition::VECCALC>(
                   reinterpret_cast<uint64_t>(t.GetPhyAddr()));
  auto* near_end = reinterpret_cast<__ubuf__ float*>(base + 192 * 1024 - 64);
  AscendC::SetMaskNorm();
  AscendC::SetVectorMask<float>(~uint64_t{0}, ~uint64_t{0});
  vector_dup(near_end, 0.0f, 1, 1, 1, 8, 8);
}
