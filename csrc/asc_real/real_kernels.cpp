// The kernels of csrc/ascendc/lars_kernels.cpp, unchanged, for the real runner (asc_runner.cpp):
// compiled here against the REAL AscendC headers (CPU-debug mode, Atlas A2) and lars_npu's
// intrinsic model, under names of their own (the library exports none of them).
#define lars_square_sums_fp32 lars_real_square_sums_fp32
#define lars_square_sums_fp16 lars_real_square_sums_fp16
#define lars_lambda lars_real_lambda
#define lars_update_fp32 lars_real_update_fp32
#define lars_update_fp16 lars_real_update_fp16
#include "lars_kernels.cpp"
