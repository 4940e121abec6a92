// Stand-ins for .ci/npu-ops-host-check (see its header): what torch_npu and the NPU launcher give
// csrc/npu/lars_npu_ops.cpp, so that its PrivateUse1 kernels run on CPU tensors in one process
// with the AscendC kernels on lars_npu's emulation. Not torch_npu, not CANN, no NPU.
//
// - c10_npu::getCurrentNPUStream / NPUStream::stream: a null stream (the launches below ignore it);
// - lars_npu_host::launch_on_stream: the launcher's contract (square sums, then λ and update, on
//   the workspace at `ws`) on the emulation, whose "global memory" is host memory: the tensors
//   are CPU tensors, the workspace a CPU tensor (the operators' resident buffer); it refuses a
//   launch when run.py asks (a call that fails after its upload);
// - a PrivateUse1 device guard (no-op) and hooks whose pinned-memory allocator is the CPU one,
//   so that the operator's pinned host buffer and its DeviceGuard work on CPU tensors.
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>
#include <stdexcept>

#include "emu/emu_launch.h"
#include "npu/lars_npu_launch.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace c10_npu {
aclrtStream NPUStream::stream() const { return nullptr; }
NPUStream getCurrentNPUStream(c10::DeviceIndex) {
  return NPUStream(NPUStream::UNCHECKED,
                   c10::Stream(c10::Stream::DEFAULT, c10::Device(c10::kCPU)));
}
}  // namespace c10_npu

// Read and set by run.py through ctypes: launches made, the emulated cores' order, and launches
// to refuse (each refused one counts down: a call that throws after its workspace upload).
extern "C" {
int lars_host_check_launches = 0;
int lars_host_check_core_order = 0;
int lars_host_check_refuse_launches = 0;
}

namespace lars_npu_host {
void launch_on_stream(uint64_t /*stream*/, uint64_t ws, const lars_ascendc::host::Layout& L,
                      int dtype, bool run_sq, bool run_update, uint32_t block_dim) {
  if (L.num_chunks == 0) return;  // as the real launcher
  if (lars_host_check_refuse_launches > 0) {
    --lars_host_check_refuse_launches;
    throw std::runtime_error("lars_npu: launch of lars_square_sums failed (refused by run.py)");
  }
  ++lars_host_check_launches;
  lars_emu::launch(reinterpret_cast<uint8_t*>(ws), L, dtype, run_sq, run_update,
                   block_dim != 0 ? block_dim : 7, lars_ascendc::kUbBudgetBytes,
                   lars_host_check_core_order);
}
}  // namespace lars_npu_host

C10_REGISTER_GUARD_IMPL(PrivateUse1, c10::impl::NoOpDeviceGuardImpl<c10::DeviceType::PrivateUse1>);

namespace {
struct Hooks : at::PrivateUse1HooksInterface {
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  at::Allocator* getPinnedMemoryAllocator() const override { return c10::GetCPUAllocator(); }
  bool isPinnedPtr(const void*) const override { return true; }
};
[[maybe_unused]] const bool registered = [] {
  at::RegisterPrivateUse1HooksInterface(new Hooks);
  return true;
}();
}  // namespace
