// Launchers of the LARS AscendC kernels built by CANN (see cmake/LarsAscend.cmake). Declarations
// only: no ACL or AscendC header here, so bindings.cpp compiles the same with and without CANN.
#pragma once

#include <cstdint>

#include "../ascendc/lars_host_plan.h"

namespace lars_npu_host {

// Both kernels, asynchronously, on the ACL stream `stream` (torch_npu's current stream, as an
// integer handle) with the workspace of lars_host_plan.h already in device memory at `ws_addr`;
// the tensors the workspace points at are device tensors. block_dim 0: every vector core of the
// current device. Throws std::runtime_error when a launch is refused. (LARS_NPU_NPU_LAUNCHER)
void launch_on_stream(uint64_t stream, uint64_t ws_addr, const lars_ascendc::host::Layout& L,
                      int dtype, bool run_sq, bool run_update, uint32_t block_dim);

// The kernels on HOST tensors through lars_staging.h: with CANN's RUN_MODE=cpu (tikicpulib) or,
// in npu / sim builds, through ACL device memory on the current device. Synchronous; `ws` is the
// host workspace, its partials are filled in. (LARS_NPU_CANN_HOST_RUNNER)
void cann_host_launch(uint8_t* ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
                      bool run_update, uint32_t block_dim);

}  // namespace lars_npu_host
