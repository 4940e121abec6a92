// Host side of the emulated AscendC kernels: launch over emulated AI cores on a workspace built
// by csrc/ascendc/lars_host_plan.h (the same tables the NPU launcher copies to the device). Used
// by the `emu` backend through _C.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../ascendc/lars_host_plan.h"

namespace lars_emu {

using lars_ascendc::host::Layout;

// Runs the square-sums kernel (run_sq) and then the λ and update kernels (run_update) on
// `block_dim` emulated AI cores with `ub_bytes` of Unified Buffer each. `ws` is the workspace in
// host memory (its address tables hold host addresses); the kernels write their results into it.
// core_order: 0 forward, -1 reverse, k > 0 a shuffle seeded with k (AscendC::emu::LaunchOptions).
// counters, when given, receive the per-core counters of each launch that ran (6 per core, in
// the order of kCounterFields), block_dim rows per launch.
void launch(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
            int64_t block_dim, int64_t ub_bytes, int64_t core_order = 0,
            std::vector<uint64_t>* counters = nullptr);

constexpr const char* kCounterFields[6] = {"gm_to_ub_bytes", "ub_to_gm_bytes",
                                           "scalar_gm_reads", "vector_instrs",
                                           "queue_waits", "flag_waits"};

// The same launch through the staging runner of csrc/npu/lars_staging.h (every tensor copied
// into one separate "device" buffer, address tables rewritten, results copied back): the path
// CANN's RUN_MODE cpu / sim builds take, exercised here on the emulation.
void launch_staged(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
                   int64_t block_dim, int64_t ub_bytes, int64_t core_order = 0);

// Runs a deliberately broken mini-kernel (or "ok") on the emulation; see emu_selftest.cpp.
void selftest(const std::string& which);

// A deliberately wrong kernel that depends on another core's progress (core b reads what core
// b - 1 wrote in the same launch), run in `core_order`: its result depends on the order.
std::vector<float> cross_core_probe(int64_t block_dim, int64_t core_order);

}  // namespace lars_emu
