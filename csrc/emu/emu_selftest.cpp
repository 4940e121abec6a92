// Deliberately broken mini-kernels, run on the emulation to prove that it refuses what the
// hardware refuses (tests/test_emu_kernels.py). Each case throws AscendC::emu::Violation.
#include <stdexcept>
#include <string>

#include "kernel_operator.h"

namespace lars_emu {

void selftest(const std::string& which) {
  float gm_data[64] = {};
  AscendC::emu::Launch(1, 192 * 1024, [&] {
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> que;
    pipe.InitBuffer(que, 2, 32 * sizeof(float));
    AscendC::GlobalTensor<float> gm;
    gm.SetGlobalBuffer(gm_data, 64);
    if (which == "empty_deque") {
      (void)que.DeQue<float>();
    } else if (which == "use_after_free") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      que.FreeTensor(t);
      AscendC::Duplicate(t, 1.0f, 8);
    } else if (which == "alloc_exhausted") {
      (void)que.AllocTensor<float>();
      (void)que.AllocTensor<float>();
      (void)que.AllocTensor<float>();
    } else if (which == "misaligned_ub") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t[3], gm, 8);  // 12 bytes into the buffer: not 32-byte aligned
    } else if (which == "gm_overrun") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t, gm[40], 32);  // 32 elements from element 40 of 64
    } else if (which == "ok") {
      AscendC::LocalTensor<float> t = que.AllocTensor<float>();
      AscendC::DataCopy(t, gm, 32);
      que.EnQue(t);
      t = que.DeQue<float>();
      que.FreeTensor(t);
    } else {
      throw std::invalid_argument("unknown selftest case " + which);
    }
  });
}

}  // namespace lars_emu
