// Staging runner: runs the LARS kernels on tensors that live in HOST memory, on a target whose
// global memory is elsewhere: CANN's RUN_MODE=sim (simulated device memory through ACL), CANN's
// RUN_MODE=cpu (tikicpulib's GmAlloc buffers), an NPU without torch_npu, and, in every CI run,
// lars_npu's emulation (csrc/emu/emu_launch.cpp, and lars_npu._C.StagedRunner), which is how
// this code is tested here.
//
// One device buffer holds the workspace followed by every distinct tensor's data (32-byte
// aligned); the address tables are rewritten to device addresses, the workspace goes in through
// lars_resident.h (a StagedBuffer kept between calls sends only what changed since the last
// call: the same tensors at the same host addresses get the same device addresses, so the tables
// compare equal), the tensors are copied in, both kernels run, and the tensors and the results
// are copied back. On torch_npu tensors the NPU launcher (lars_npu_launch.cpp) needs none of
// this: the tensors are already in device memory.
//
// Memory policy `Mem`:
//   uint64_t alloc(uint64_t bytes);                 device address, 32-byte aligned
//   void release(uint64_t addr);
//   void to_device(uint64_t dst, const void* src, uint64_t bytes);
//   void to_host(void* dst, uint64_t src, uint64_t bytes);
//   void zero(uint64_t dst, uint64_t bytes);        optional (lars_resident.h)
//   void run(uint64_t ws, const Layout& L, int dtype, bool run_sq, bool run_update,
//            uint32_t block_dim);                   launch(es) and wait for them
// A StagedBuffer kept between calls needs allocations that outlive the policy object.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "../ascendc/lars_host_plan.h"
#include "lars_resident.h"

namespace lars_npu_host {

// The staging runner's device buffer and what is known of its workspace part; kept between calls
// of one caller (one thread at a time), or made for one call.
struct StagedBuffer {
  uint64_t addr = 0, capacity = 0;
  resident::Resident ws;
  resident::Counts last;      // the workspace upload of the last call
  uint64_t last_tensor_bytes = 0;  // the tensors' bytes copied in by the last call
  uint64_t allocations = 0;   // buffers allocated so far

  template <typename Mem>
  void release(Mem& mem) {
    ws.invalidate();
    if (addr != 0) mem.release(addr);
    addr = 0;
    capacity = 0;
  }
};

template <typename Mem>
void run_staged(Mem& mem, StagedBuffer& buf, uint8_t* ws, const lars_ascendc::host::Layout& L,
                int dtype, bool run_sq, bool run_update, uint32_t block_dim) {
  namespace host = lars_ascendc::host;
  const uint64_t n = L.n;
  const uint64_t elem = host::dtype_bytes(dtype);
  // Distinct host regions (a tensor passed twice, e.g. square_sum_all(w, w), is staged once).
  std::map<uint64_t, uint64_t> bytes_of;  // host address -> bytes
  const uint64_t tables[4] = {L.w_addrs, L.wsq_addrs, L.g_addrs, L.m_addrs};
  for (uint64_t t = 0; t < n; ++t) {
    const uint64_t bytes = host::tensor_numel(ws, L, t) * elem;
    if (bytes == 0) continue;
    for (uint64_t table : tables) {
      const uint64_t addr = host::at<uint64_t>(ws, table)[t];
      if (addr == 0) continue;
      uint64_t& b = bytes_of[addr];
      if (bytes > b) b = bytes;
    }
  }
  std::map<uint64_t, uint64_t> offset_of;  // host address -> offset in the device buffer
  uint64_t total = host::align32(L.bytes);
  for (const auto& [addr, bytes] : bytes_of) {
    offset_of[addr] = total;
    total = host::align32(total + bytes);
  }
  // A buffer too small, or far too large, is replaced: nothing is known of the new one.
  if (buf.addr == 0 || total > buf.capacity || total < buf.capacity / 4) {
    buf.release(mem);
    buf.addr = mem.alloc(total);
    buf.capacity = total;
    ++buf.allocations;
  }
  std::vector<uint8_t> dev_ws(ws, ws + L.bytes);
  for (uint64_t table : tables) {
    uint64_t* entries = host::at<uint64_t>(dev_ws.data(), table);
    for (uint64_t t = 0; t < n; ++t) {
      if (entries[t] != 0 && offset_of.count(entries[t])) {
        entries[t] = buf.addr + offset_of[entries[t]];
      } else {
        entries[t] = 0;  // absent, or an empty tensor: never dereferenced
      }
    }
  }
  std::vector<resident::Segment> segs;
  resident::workspace_segments(segs, 0, L, run_sq, run_update);
  buf.last = buf.ws.sync(mem, buf.addr, buf.capacity, dev_ws.data(), L.bytes, std::move(segs));
  buf.last_tensor_bytes = 0;
  for (const auto& [addr, bytes] : bytes_of) {
    mem.to_device(buf.addr + offset_of[addr], reinterpret_cast<const void*>(addr), bytes);
    buf.last_tensor_bytes += bytes;
  }
  mem.run(buf.addr, L, dtype, run_sq, run_update, block_dim);
  mem.to_host(ws + L.partials, buf.addr + L.partials, L.bytes - L.partials);
  if (run_update) {  // the update kernel writes g (mode 0) or w and m (mode 1)
    for (const auto& [addr, bytes] : bytes_of) {
      mem.to_host(reinterpret_cast<void*>(addr), buf.addr + offset_of[addr], bytes);
    }
  }
  buf.ws.commit();  // the step completed: what was sent is known from now on
}

// One call with a buffer of its own (allocated, every byte the step needs sent, released): for
// memory policies whose allocations die with them.
template <typename Mem>
void run_staged(Mem& mem, uint8_t* ws, const lars_ascendc::host::Layout& L, int dtype,
                bool run_sq, bool run_update, uint32_t block_dim) {
  StagedBuffer buf;
  struct Release {  // released on every path, exceptions included
    Mem& mem;
    StagedBuffer& buf;
    ~Release() { buf.release(mem); }
  } release{mem, buf};
  run_staged(mem, buf, ws, L, dtype, run_sq, run_update, block_dim);
}

}  // namespace lars_npu_host
