// NPU side of lars_npu: launches the LARS AscendC kernels through the launch functions CANN
// generates for each kernel of csrc/ascendc/lars_kernels.cpp (aclrtlaunch_<kernel>.h, called as
// ACLRT_LAUNCH_KERNEL(<kernel>)(blockDim, stream, args...)). Built only with CANN, RUN_MODE npu
// or sim (cmake/LarsAscend.cmake). Written against the public ACL / AscendC documentation and
// never compiled on lars_npu's CI machines, which have no CANN: the host logic it shares
// (lars_host_plan.h, lars_staging.h) is what CI tests, on lars_npu's emulation.
#include "lars_npu_launch.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "acl/acl.h"
#include "aclrtlaunch_lars_lambda.h"
#include "aclrtlaunch_lars_square_sums_fp16.h"
#include "aclrtlaunch_lars_square_sums_fp32.h"
#include "aclrtlaunch_lars_update_fp16.h"
#include "aclrtlaunch_lars_update_fp32.h"
#include "lars_staging.h"

namespace lars_npu_host {

namespace {

void check(aclError rc, const char* what) {
  if (rc != ACL_SUCCESS) {
    throw std::runtime_error(std::string("lars_npu: ") + what + " failed (ACL error " +
                             std::to_string(static_cast<int>(rc)) + ")");
  }
}

// Vector cores (AIV) of the current device: the blockDim that fills the chip with a vector-only
// kernel; asked once per device. ACL_DEVICE_INFO_VECTOR_CORE_NUM where the runtime reports it,
// else two per AI core (Atlas A2 / A3, the SoCs cmake/LarsAscend.cmake accepts). A wrong count
// costs speed, never correctness: the kernels loop over GetBlockNum().
uint32_t vector_cores() {
  int32_t device = 0;
  check(aclrtGetDevice(&device), "aclrtGetDevice");
  thread_local int32_t cached_device = -1;
  thread_local uint32_t cached = 0;
  if (device == cached_device) return cached;
  const auto dev = static_cast<uint32_t>(device);
  int64_t cores = 0;
  if (aclGetDeviceCapability(dev, ACL_DEVICE_INFO_VECTOR_CORE_NUM, &cores) != ACL_SUCCESS ||
      cores <= 0) {
    int64_t ai_cores = 0;
    check(aclGetDeviceCapability(dev, ACL_DEVICE_INFO_AI_CORE_NUM, &ai_cores),
          "aclGetDeviceCapability");
    cores = 2 * ai_cores;
  }
  cached_device = device;
  cached = cores > 0 ? static_cast<uint32_t>(cores) : 8u;
  return cached;
}

void* at(uint64_t base, uint64_t offset) { return reinterpret_cast<void*>(base + offset); }

}  // namespace

void launch_on_stream(uint64_t stream, uint64_t ws, const lars_ascendc::host::Layout& L,
                      int dtype, bool run_sq, bool run_update, uint32_t block_dim) {
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
  if (L.num_chunks == 0) return;  // nothing to do; a launch with no work is still a launch
  auto s = reinterpret_cast<aclrtStream>(stream);
  // at most kMaxCoreFlags blocks: one non-finite flag slot each in the workspace (a block count
  // beyond the vector cores buys nothing: the kernels loop over their chunks)
  uint32_t dim = block_dim != 0 ? block_dim : vector_cores();
  if (dim > lars_ascendc::kMaxCoreFlags) dim = lars_ascendc::kMaxCoreFlags;
  if (run_sq) {
    const uint32_t rc =
        dtype == 0 ? ACLRT_LAUNCH_KERNEL(lars_square_sums_fp32)(
                         dim, s, at(ws, L.wsq_addrs), at(ws, L.g_addrs), at(ws, L.chunks),
                         at(ws, L.partials), at(ws, L.sq_tiling))
                   : ACLRT_LAUNCH_KERNEL(lars_square_sums_fp16)(
                         dim, s, at(ws, L.wsq_addrs), at(ws, L.g_addrs), at(ws, L.chunks),
                         at(ws, L.partials), at(ws, L.sq_tiling));
    if (rc != 0) throw std::runtime_error("lars_npu: launch of lars_square_sums failed");
  }
  // Same stream: λ and then the update kernel start after the square sums are in the workspace,
  // and the update kernel reads found_inf from it on the device; no host synchronisation.
  if (run_update) {
    if (ACLRT_LAUNCH_KERNEL(lars_lambda)(dim, s, at(ws, L.tensor_chunks), at(ws, L.partials),
                                         at(ws, L.params), at(ws, L.hyper),
                                         at(ws, L.up_tiling)) != 0) {
      throw std::runtime_error("lars_npu: launch of lars_lambda failed");
    }
    const uint32_t rc =
        dtype == 0
            ? ACLRT_LAUNCH_KERNEL(lars_update_fp32)(dim, s, at(ws, L.w_addrs), at(ws, L.g_addrs),
                                                    at(ws, L.m_addrs), at(ws, L.chunks),
                                                    at(ws, L.partials), at(ws, L.params),
                                                    at(ws, L.up_tiling))
            : ACLRT_LAUNCH_KERNEL(lars_update_fp16)(dim, s, at(ws, L.w_addrs), at(ws, L.g_addrs),
                                                    at(ws, L.m_addrs), at(ws, L.chunks),
                                                    at(ws, L.partials), at(ws, L.params),
                                                    at(ws, L.up_tiling));
    if (rc != 0) throw std::runtime_error("lars_npu: launch of lars_update failed");
  }
}

#if !defined(LARS_NPU_RUN_MODE_CPU)
namespace {

// Memory policy of the staging runner on ACL device memory (RUN_MODE npu, or sim on CANN's
// simulator): host tensors are copied to the current device and back. Its allocations outlive it
// (aclrtMalloc), so the staging buffer is kept between calls (cann_host_launch). No zero(): the
// resident workspace copies the zeros of the flags region from the host (8 KiB).
class AclMemory {
 public:
  AclMemory() {
    const aclError rc = aclInit(nullptr);
    if (rc != ACL_SUCCESS && rc != ACL_ERROR_REPEAT_INITIALIZE) check(rc, "aclInit");
    int32_t device = 0;
    if (aclrtGetDevice(&device) != ACL_SUCCESS) check(aclrtSetDevice(0), "aclrtSetDevice");
    check(aclrtCreateStream(&stream_), "aclrtCreateStream");
  }
  ~AclMemory() { aclrtDestroyStream(stream_); }
  AclMemory(const AclMemory&) = delete;
  AclMemory& operator=(const AclMemory&) = delete;

  uint64_t alloc(uint64_t bytes) {
    void* p = nullptr;
    check(aclrtMalloc(&p, bytes, ACL_MEM_MALLOC_HUGE_FIRST), "aclrtMalloc");
    return reinterpret_cast<uint64_t>(p);
  }
  void release(uint64_t addr) { aclrtFree(reinterpret_cast<void*>(addr)); }
  void to_device(uint64_t dst, const void* src, uint64_t bytes) {
    check(aclrtMemcpy(reinterpret_cast<void*>(dst), bytes, src, bytes, ACL_MEMCPY_HOST_TO_DEVICE),
          "aclrtMemcpy (to device)");
  }
  void to_host(void* dst, uint64_t src, uint64_t bytes) {
    check(aclrtMemcpy(dst, bytes, reinterpret_cast<const void*>(src), bytes,
                      ACL_MEMCPY_DEVICE_TO_HOST),
          "aclrtMemcpy (to host)");
  }
  void run(uint64_t ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
           bool run_update, uint32_t block_dim) {
    launch_on_stream(reinterpret_cast<uint64_t>(stream_), ws, L, dtype, run_sq, run_update,
                     block_dim);
    check(aclrtSynchronizeStream(stream_), "aclrtSynchronizeStream");
  }

 private:
  aclrtStream stream_ = nullptr;
};

}  // namespace

void cann_host_launch(uint8_t* ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
                      bool run_update, uint32_t block_dim) {
  AclMemory mem;
  int32_t device = 0;
  check(aclrtGetDevice(&device), "aclrtGetDevice");
  // One staging buffer per device, kept between calls (lars_resident.h sends only what changed
  // of the workspace); every call waits for its kernels (AclMemory::run), so a call finds the
  // buffer idle. One call at a time. Never freed: process exit would come after aclFinalize.
  static std::mutex lock;
  static auto* buffers = new std::map<int32_t, StagedBuffer>();
  const std::lock_guard<std::mutex> guard(lock);
  StagedBuffer& buf = (*buffers)[device];
  try {
    run_staged(mem, buf, ws, L, dtype, run_sq, run_update, block_dim);
  } catch (...) {
    buf.ws.invalidate();  // a failed step: nothing is known of the buffer
    throw;
  }
}
#endif

}  // namespace lars_npu_host
