// WRONG: ReduceSum over a whole 64-lane repeat of a tile the kernel wrote only n < 64 lanes of:
// the rest of the Unified Buffer holds whatever was there before.
#include "sum_kernel.h"

struct UninitializedLanes {
  __aicore__ static inline void Load(const AscendC::LocalTensor<float>& in,
                                     const AscendC::GlobalTensor<float>& x, uint32_t n) {
    AscendC::DataCopy(in, x, n);  // n * 4 is whole 32-byte blocks here
  }
  __aicore__ static inline int32_t Count(uint32_t) { return 64; }  // should be n
};

LARS_ASC_SUM_KERNEL(lars_test_sum_uninitialized_lanes, UninitializedLanes)
