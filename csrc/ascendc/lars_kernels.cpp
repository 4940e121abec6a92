// Kernel entry points of lars_npu's AscendC operators. Built by CANN's ascendc rules (RUN_MODE
// npu | sim | cpu) against CANN's kernel_operator.h, and by lars_npu's emulation target against
// csrc/emu/kernel_operator.h: the same file in both builds. Vector-only kernels (AIV on Atlas
// A2 / A3): blockDim counts vector cores, and GetBlockNum() is that blockDim. The fp16 kernels run
// in INF_NAN mode whatever the stream's floating-point mode (lars_float_mode.h): an inf / NaN fp16
// gradient must reach Σg² as one.
#include "kernel_operator.h"
#include "lars_float_mode.h"
#include "lars_lambda.h"
#include "lars_square_sums.h"
#include "lars_update.h"

extern "C" __global__ __aicore__ void lars_square_sums_fp32(GM_ADDR w_addrs, GM_ADDR g_addrs,
                                                           GM_ADDR chunks, GM_ADDR partials,
                                                           GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  lars_ascendc::KernelSquareSums<float> op;
  op.Init(w_addrs, g_addrs, chunks, partials, tiling);
  op.Process();
}

extern "C" __global__ __aicore__ void lars_square_sums_fp16(GM_ADDR w_addrs, GM_ADDR g_addrs,
                                                           GM_ADDR chunks, GM_ADDR partials,
                                                           GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  lars_ascendc::InfNanMode inf_nan;  // restored after op (and its TPipe) is gone
  lars_ascendc::KernelSquareSums<half> op;
  op.Init(w_addrs, g_addrs, chunks, partials, tiling);
  op.Process();
}

// λ of every tensor (fp32 partials whatever the tensors' dtype): between the two passes.
extern "C" __global__ __aicore__ void lars_lambda(GM_ADDR tensor_chunks, GM_ADDR partials,
                                                 GM_ADDR params, GM_ADDR hyper, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  lars_ascendc::KernelLambda op;
  op.Init(tensor_chunks, partials, params, hyper, tiling);
  op.Process();
}

extern "C" __global__ __aicore__ void lars_update_fp32(GM_ADDR w_addrs, GM_ADDR g_addrs,
                                                      GM_ADDR m_addrs, GM_ADDR chunks,
                                                      GM_ADDR partials, GM_ADDR params,
                                                      GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  lars_ascendc::KernelUpdate<float> op;
  op.Init(w_addrs, g_addrs, m_addrs, chunks, partials, params, tiling);
  op.Process();
}

extern "C" __global__ __aicore__ void lars_update_fp16(GM_ADDR w_addrs, GM_ADDR g_addrs,
                                                      GM_ADDR m_addrs, GM_ADDR chunks,
                                                      GM_ADDR partials, GM_ADDR params,
                                                      GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  lars_ascendc::InfNanMode inf_nan;  // restored after op (and its TPipe) is gone
  lars_ascendc::KernelUpdate<half> op;
  op.Init(w_addrs, g_addrs, m_addrs, chunks, partials, params, tiling);
  op.Process();
}
