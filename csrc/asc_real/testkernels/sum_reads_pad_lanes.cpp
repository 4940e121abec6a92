// WRONG: DataCopyPad of n elements, then ReduceSum over n rounded up to whole 32-byte blocks: the
// extra lanes are DataCopyPad's pad, whose content nobody set (no padding value asked for).
#include "sum_kernel.h"

struct ReadsPadLanes {
  __aicore__ static inline void Load(const AscendC::LocalTensor<float>& in,
                                     const AscendC::GlobalTensor<float>& x, uint32_t n) {
    lars_asc_test::LoadExactly(in, x, n);
  }
  __aicore__ static inline int32_t Count(uint32_t n) {
    return static_cast<int32_t>((n + 7) / 8 * 8);  // should be n
  }
};

LARS_ASC_SUM_KERNEL(lars_test_sum_reads_pad_lanes, ReadsPadLanes)
