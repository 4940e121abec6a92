// Host side of the emulated AscendC kernels: launch over emulated AI cores on a workspace built
// by csrc/ascendc/lars_host_plan.h (the same tables the NPU launcher copies to the device). Used
// by the `emu` backend through _C.
#pragma once

#include <cstdint>
#include <string>

#include "../ascendc/lars_host_plan.h"

namespace lars_emu {

using lars_ascendc::host::Layout;

// Runs the square-sums kernel (run_sq) and then the update kernel (run_update) on `block_dim`
// emulated AI cores with `ub_bytes` of Unified Buffer each. `ws` is the workspace in host memory
// (its address tables hold host addresses); the kernels write the partials into it.
void launch(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
            int64_t block_dim, int64_t ub_bytes);

// The same launch through the staging runner of csrc/npu/lars_staging.h (every tensor copied
// into one separate "device" buffer, address tables rewritten, results copied back): the path
// CANN's RUN_MODE cpu / sim builds take, exercised here on the emulation.
void launch_staged(uint8_t* ws, const Layout& L, int dtype, bool run_sq, bool run_update,
                   int64_t block_dim, int64_t ub_bytes);

// Runs a deliberately broken mini-kernel (or "ok") on the emulation; see emu_selftest.cpp.
void selftest(const std::string& which);

}  // namespace lars_emu
