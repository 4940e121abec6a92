// Host side of the emulated AscendC kernels: launch over emulated AI cores on a workspace built
// by csrc/ascendc/lars_host_plan.h (the same tables the NPU launcher copies to the device). Used
// by the `emu` backend through _C.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../ascendc/lars_host_plan.h"

namespace lars_emu {

using lars_ascendc::host::Layout;

// Runs the square-sums kernel (run_sq) and then the λ and update kernels (run_update) on
// `block_dim` emulated AI cores with `ub_bytes` of Unified Buffer each. `ws` is the workspace in
// host memory (its address tables hold host addresses); the kernels write their results into it.
// core_order: 0 forward, -1 reverse, k > 0 a shuffle seeded with k (AscendC::emu::LaunchOptions).
// counters, when given, receive the per-core counters of each launch that ran
// (kNumCounterFields per core, in the order of kCounterFields), block_dim rows per launch.
// saturation: the floating-point mode every launch starts in, as the stream's mode on hardware
// (true saturation, false INF_NAN; AscendC::emu::LaunchOptions).
// auto_sync: false refuses a vector instruction that depends on an earlier one with no
// PipeBarrier<PIPE_V> between them (the kernels as built without --cce-auto-sync;
// AscendC::emu::LaunchOptions).
void launch(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
            int64_t block_dim, int64_t ub_bytes, int64_t core_order = 0,
            std::vector<uint64_t>* counters = nullptr, bool saturation = true,
            bool auto_sync = true);

// AscendC::emu::Counters, field by field.
constexpr int kNumCounterFields = 13;
constexpr const char* kCounterFields[kNumCounterFields] = {
    "gm_to_ub_bytes", "ub_to_gm_bytes", "scalar_gm_reads", "vector_instrs", "queue_waits",
    "flag_waits",     "ub_bytes",       "dma_ops",         "vector_elems",  "v_barriers",
    "vs_round_trips", "pipe_fills",     "exposed_gm_reads"};

// The same launch through the staging runner of csrc/npu/lars_staging.h (every tensor copied
// into one separate "device" buffer, address tables rewritten, results copied back): the path
// CANN's RUN_MODE cpu / sim builds take, exercised here on the emulation.
void launch_staged(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
                   int64_t block_dim, int64_t ub_bytes, int64_t core_order = 0,
                   bool saturation = true, bool auto_sync = true);

// Runs a deliberately broken mini-kernel (or "ok") on the emulation, its core starting in
// saturation or INF_NAN mode; see emu_selftest.cpp.
void selftest(const std::string& which, bool saturation = true);

// What the emulated vector unit makes of fp16 specials in one floating-point mode (a direct probe
// of the emulation, for the tests): {name: [results]} for Cast half->float of {+inf, -inf, NaN,
// 1}, Cast float->half of {1e6, -1e6, NaN, +inf, 1}, and fp16 Add of 60000 + 60000 and 1 + 1.
std::vector<std::pair<std::string, std::vector<float>>> fp16_probe(bool saturation);

// A deliberately wrong kernel that depends on another core's progress (core b reads what core
// b - 1 wrote in the same launch), run in `core_order`: its result depends on the order.
std::vector<float> cross_core_probe(int64_t block_dim, int64_t core_order);

}  // namespace lars_emu
