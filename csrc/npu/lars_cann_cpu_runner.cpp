// CANN's RUN_MODE=cpu: the kernels of csrc/ascendc/lars_kernels.cpp compiled by CANN for its CPU
// debug library (tikicpulib), which runs AI cores as host processes. This runner stages host
// tensors into GmAlloc buffers (lars_staging.h) and launches with ICPU_RUN_KF. Built only with
// CANN (cmake/LarsAscend.cmake, RUN_MODE=cpu); never compiled on lars_npu's CI machines.
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "kernel_operator.h"
#include "lars_npu_launch.h"
#include "lars_staging.h"
#include "tikicpulib.h"

extern "C" __global__ __aicore__ void lars_square_sums_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                                           GM_ADDR);
extern "C" __global__ __aicore__ void lars_square_sums_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                                           GM_ADDR);
extern "C" __global__ __aicore__ void lars_lambda(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" __global__ __aicore__ void lars_update_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                                      GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" __global__ __aicore__ void lars_update_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                                      GM_ADDR, GM_ADDR, GM_ADDR);

namespace lars_npu_host {

namespace {

// GmAlloc buffers live until GmFree: the staging buffer is kept between calls.
class CpuDebugMemory {
 public:
  uint64_t alloc(uint64_t bytes) {
    return reinterpret_cast<uint64_t>(AscendC::GmAlloc(static_cast<size_t>(bytes)));
  }
  void release(uint64_t addr) { AscendC::GmFree(reinterpret_cast<void*>(addr)); }
  void to_device(uint64_t dst, const void* src, uint64_t bytes) {
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
  }
  void to_host(void* dst, uint64_t src, uint64_t bytes) {
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
  }
  void zero(uint64_t dst, uint64_t bytes) { std::memset(reinterpret_cast<void*>(dst), 0, bytes); }
  void run(uint64_t ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
           bool run_update, uint32_t block_dim) {
    auto gm = [ws](uint64_t offset) { return reinterpret_cast<uint8_t*>(ws + offset); };
    AscendC::SetKernelMode(KernelMode::AIV_MODE);  // vector-only kernels
    if (run_sq) {
      if (dtype == 0) {
        ICPU_RUN_KF(lars_square_sums_fp32, block_dim, gm(L.wsq_addrs), gm(L.g_addrs),
                    gm(L.chunks), gm(L.partials), gm(L.sq_tiling));
      } else {
        ICPU_RUN_KF(lars_square_sums_fp16, block_dim, gm(L.wsq_addrs), gm(L.g_addrs),
                    gm(L.chunks), gm(L.partials), gm(L.sq_tiling));
      }
    }
    if (run_update) {
      ICPU_RUN_KF(lars_lambda, block_dim, gm(L.tensor_chunks), gm(L.partials), gm(L.params),
                  gm(L.hyper), gm(L.up_tiling));
      if (dtype == 0) {
        ICPU_RUN_KF(lars_update_fp32, block_dim, gm(L.w_addrs), gm(L.g_addrs), gm(L.m_addrs),
                    gm(L.chunks), gm(L.partials), gm(L.params), gm(L.up_tiling));
      } else {
        ICPU_RUN_KF(lars_update_fp16, block_dim, gm(L.w_addrs), gm(L.g_addrs), gm(L.m_addrs),
                    gm(L.chunks), gm(L.partials), gm(L.params), gm(L.up_tiling));
      }
    }
  }
};

}  // namespace

void cann_host_launch(uint8_t* ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
                      bool run_update, uint32_t block_dim) {
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
  if (L.num_chunks == 0) return;
  CpuDebugMemory mem;
  uint32_t dim = block_dim == 0 ? 8u : block_dim;
  if (dim > lars_ascendc::kMaxCoreFlags) dim = lars_ascendc::kMaxCoreFlags;  // one flag slot each
  // one staging buffer, kept between calls (lars_resident.h); one call at a time
  static std::mutex lock;
  static auto* buf = new StagedBuffer();
  const std::lock_guard<std::mutex> guard(lock);
  try {
    run_staged(mem, *buf, ws, L, dtype, run_sq, run_update, dim);
  } catch (...) {
    buf->ws.invalidate();  // a failed step: nothing is known of the buffer
    throw;
  }
}

}  // namespace lars_npu_host
