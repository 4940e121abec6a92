#include "emu_launch.h"

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "../npu/lars_staging.h"
#include "kernel_operator.h"

// The kernel entry points of csrc/ascendc/lars_kernels.cpp. CMake renames them for this target
// (emu_lars_square_sums_fp32, ...), so they never collide with a CANN build's symbols.
extern "C" void lars_square_sums_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_square_sums_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_lambda(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_update_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_update_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);

namespace lars_emu {

static_assert(sizeof(AscendC::emu::Counters) == kNumCounterFields * sizeof(uint64_t),
              "every field of AscendC::emu::Counters is in kCounterFields, in order");

namespace {
// Sets the emulation's launch options for this thread, and puts the previous ones back.
class ScopedOptions {
 public:
  ScopedOptions(int64_t order, std::vector<AscendC::emu::Counters>* counters, bool saturation,
                bool auto_sync)
      : saved_(AscendC::emu::launch_options()) {
    AscendC::emu::launch_options() = {order, counters, saturation, auto_sync};
  }
  ~ScopedOptions() { AscendC::emu::launch_options() = saved_; }
  ScopedOptions(const ScopedOptions&) = delete;
  ScopedOptions& operator=(const ScopedOptions&) = delete;

 private:
  AscendC::emu::LaunchOptions saved_;
};
}  // namespace

void launch(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
            int64_t block_dim, int64_t ub_bytes, int64_t core_order,
            std::vector<uint64_t>* counters, bool saturation, bool auto_sync) {
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
  if (block_dim > int64_t{lars_ascendc::kMaxCoreFlags}) {
    throw std::invalid_argument("block_dim: at most " +
                                std::to_string(lars_ascendc::kMaxCoreFlags) +
                                " (one non-finite flag slot per core in the workspace)");
  }
  std::vector<AscendC::emu::Counters> per_core;
  ScopedOptions options(core_order, counters != nullptr ? &per_core : nullptr, saturation,
                        auto_sync);
  auto gm = [ws](uint64_t offset) { return reinterpret_cast<GM_ADDR>(ws + offset); };
  auto* sq = dtype == 0 ? &lars_square_sums_fp32 : &lars_square_sums_fp16;
  auto* up = dtype == 0 ? &lars_update_fp32 : &lars_update_fp16;
  const auto ub = static_cast<size_t>(ub_bytes);
  if (run_sq) {
    AscendC::emu::Launch(block_dim, ub, [&] {
      sq(gm(L.wsq_addrs), gm(L.g_addrs), gm(L.chunks), gm(L.partials), gm(L.sq_tiling));
    });
  }
  // (on the NPU: the next launches on the same stream; no host synchronisation in between)
  if (run_update) {
    AscendC::emu::Launch(block_dim, ub, [&] {
      lars_lambda(gm(L.tensor_chunks), gm(L.partials), gm(L.params), gm(L.hyper),
                  gm(L.up_tiling));
    });
    AscendC::emu::Launch(block_dim, ub, [&] {
      up(gm(L.w_addrs), gm(L.g_addrs), gm(L.m_addrs), gm(L.chunks), gm(L.partials),
         gm(L.params), gm(L.up_tiling));
    });
  }
  if (counters != nullptr) {
    for (const auto& c : per_core) {
      counters->insert(counters->end(),
                       {c.gm_to_ub_bytes, c.ub_to_gm_bytes, c.scalar_gm_reads, c.vector_instrs,
                        c.queue_waits, c.flag_waits, c.ub_bytes, c.dma_ops, c.vector_elems,
                        c.v_barriers, c.vs_round_trips, c.pipe_fills, c.exposed_gm_reads});
    }
  }
}

namespace {

// Memory policy of the staging runner for the emulation: "device" buffers are separate host
// allocations, so the address rewriting and the copies in and out are real.
class EmuMemory {
 public:
  EmuMemory(int64_t block_dim, int64_t ub_bytes, int64_t order, bool saturation, bool auto_sync)
      : block_dim_(block_dim),
        ub_bytes_(ub_bytes),
        order_(order),
        saturation_(saturation),
        auto_sync_(auto_sync) {}
  uint64_t alloc(uint64_t bytes) {
    buffers_.push_back(std::make_unique<uint8_t[]>(bytes + 32));
    // 32-byte aligned, as device allocations are
    const auto raw = reinterpret_cast<uint64_t>(buffers_.back().get());
    return (raw + 31) / 32 * 32;
  }
  void release(uint64_t) {}  // freed with the policy
  void to_device(uint64_t dst, const void* src, uint64_t bytes) {
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
  }
  void to_host(void* dst, uint64_t src, uint64_t bytes) {
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
  }
  void run(uint64_t ws, const Layout& L, int dtype, bool run_sq, bool run_update,
           uint32_t /*block_dim*/) {
    launch(reinterpret_cast<uint8_t*>(ws), L, dtype, run_sq, run_update, block_dim_, ub_bytes_,
           order_, nullptr, saturation_, auto_sync_);
  }

 private:
  int64_t block_dim_, ub_bytes_, order_;
  bool saturation_, auto_sync_;
  std::vector<std::unique_ptr<uint8_t[]>> buffers_;
};

}  // namespace

void launch_staged(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
                   int64_t block_dim, int64_t ub_bytes, int64_t core_order, bool saturation,
                   bool auto_sync) {
  EmuMemory mem(block_dim, ub_bytes, core_order, saturation, auto_sync);
  lars_npu_host::run_staged(mem, ws, L, dtype, run_sq, run_update,
                            static_cast<uint32_t>(block_dim));
}

}  // namespace lars_emu
