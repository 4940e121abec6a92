// The staging runner (lars_staging.h) with its buffer kept between calls, on lars_npu's
// emulation: a "device" whose memory is separate host allocations that live until released
// (unlike csrc/emu/emu_launch.cpp's per-call policy), so the resident workspace
// (lars_resident.h) is exercised the way CANN's cpu / sim runners use it: the same buffer call
// after call, only what changed sent. Bound as lars_npu._C.StagedRunner, for the tests.
//
// New buffers are filled with 0xFF bytes (NaN as fp32, in every block of the results region):
// a region the resident rules wrongly leave to the kernels shows as a NaN, a flagged core or a
// garbage λ, never as a lucky zero. Every byte moved is counted here, independently of the
// resident plan's own counts, and a copy can be made to fail (a step that throws midway).
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>

#include "../emu/emu_launch.h"
#include "lars_staging.h"

namespace lars_npu_host {

class EmuDeviceMemory {
 public:
  int64_t block_dim = 8, ub_bytes = 192 * 1024, core_order = 0;
  bool saturation = true, auto_sync = true;
  // moved by the last call (reset by the runner), and the failure hook
  uint64_t bytes_in = 0, bytes_zeroed = 0, bytes_out = 0, copies_in = 0;
  int64_t fail_after_copies = -1;  // >= 0: the copy after this many in one call throws

  uint64_t alloc(uint64_t bytes) {
    auto block = std::make_unique<uint8_t[]>(bytes + 32);
    std::memset(block.get(), 0xFF, bytes + 32);
    const auto raw = reinterpret_cast<uint64_t>(block.get());
    const uint64_t aligned = (raw + 31) / 32 * 32;  // as device allocations are
    blocks_[aligned] = std::move(block);
    return aligned;
  }
  void release(uint64_t addr) { blocks_.erase(addr); }
  void to_device(uint64_t dst, const void* src, uint64_t bytes) {
    if (fail_after_copies >= 0 && static_cast<int64_t>(copies_in) >= fail_after_copies) {
      fail_after_copies = -1;  // once
      throw std::runtime_error("lars_npu: injected failure of a host-to-device copy");
    }
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
    bytes_in += bytes;
    ++copies_in;
  }
  void zero(uint64_t dst, uint64_t bytes) {
    std::memset(reinterpret_cast<void*>(dst), 0, bytes);
    bytes_zeroed += bytes;
  }
  void to_host(void* dst, uint64_t src, uint64_t bytes) {
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    bytes_out += bytes;
  }
  void run(uint64_t ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
           bool run_update, uint32_t /*block_dim*/) {
    lars_emu::launch(reinterpret_cast<uint8_t*>(ws), L, dtype, run_sq, run_update, block_dim,
                     ub_bytes, core_order, nullptr, saturation, auto_sync);
  }

 private:
  std::map<uint64_t, std::unique_ptr<uint8_t[]>> blocks_;
};

// One staging buffer on the emulated device, kept between calls (one caller at a time).
class EmuStagedRunner {
 public:
  EmuDeviceMemory mem;
  StagedBuffer buf;

  EmuStagedRunner() = default;
  EmuStagedRunner(const EmuStagedRunner&) = delete;
  EmuStagedRunner& operator=(const EmuStagedRunner&) = delete;
  ~EmuStagedRunner() { buf.release(mem); }

  void launch(uint8_t* ws, const lars_ascendc::host::Layout& L, int dtype, bool run_sq,
              bool run_update) {
    mem.bytes_in = mem.bytes_zeroed = mem.bytes_out = mem.copies_in = 0;
    try {
      run_staged(mem, buf, ws, L, dtype, run_sq, run_update,
                 static_cast<uint32_t>(mem.block_dim));
    } catch (...) {
      buf.ws.invalidate();  // (run_staged never committed: said again, for the reader)
      throw;
    }
  }

  // Frees the buffer: the next call starts on a new one.
  void release() { buf.release(mem); }
};

}  // namespace lars_npu_host
