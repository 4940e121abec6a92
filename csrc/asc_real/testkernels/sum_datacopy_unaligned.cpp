// WRONG: DataCopy of n elements whose bytes are not whole 32-byte blocks. On hardware DataCopy
// moves whole blocks and silently drops the rest (the sum misses the tail); the real library's
// CPU-debug check refuses the count.
#include "sum_kernel.h"

struct DataCopyUnaligned {
  __aicore__ static inline void Load(const AscendC::LocalTensor<float>& in,
                                     const AscendC::GlobalTensor<float>& x, uint32_t n) {
    AscendC::DataCopy(in, x, n);  // should be DataCopyPad for n * 4 % 32 != 0
  }
  __aicore__ static inline int32_t Count(uint32_t n) { return static_cast<int32_t>(n); }
};

LARS_ASC_SUM_KERNEL(lars_test_sum_datacopy_unaligned, DataCopyUnaligned)
