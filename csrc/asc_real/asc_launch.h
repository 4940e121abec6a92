// Running a kernel launch on the real runner's model, shared by the runner (asc_runner.cpp) and
// the test kernels' driver (testkernels/driver.cpp): one AI core after another, in the order the
// caller asks for, each on the real library's Unified Buffer refilled with poison.
#pragma once

#include <algorithm>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "asc_model.h"
#include "kernel_operator.h"

namespace lars_asc_real {

// The order in which a launch's cores run: 0 forward, -1 reverse, k > 0 a Fisher-Yates shuffle
// seeded with k (the emulation's orders, csrc/emu/kernel_operator.h core_order).
inline std::vector<int64_t> CoreOrder(int64_t block_dim, int64_t order) {
  std::vector<int64_t> idx(static_cast<size_t>(block_dim));
  for (int64_t b = 0; b < block_dim; ++b) idx[static_cast<size_t>(b)] = b;
  if (order == -1) {
    std::reverse(idx.begin(), idx.end());
  } else if (order > 0) {
    std::mt19937_64 gen(static_cast<uint64_t>(order));
    for (size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[gen() % i]);
  } else if (order != 0) {
    throw ModelError("core order: 0 (forward), -1 (reverse) or a positive shuffle seed");
  }
  return idx;
}

// Runs `kernel` once per core of a launch of `block_dim` vector cores.
template <typename Kernel>
inline void Launch(int64_t block_dim, int64_t order, bool saturation,
                   const std::vector<GmRegion>& gm, Kernel kernel) {
  auto& hw = AscendC::ConstDefiner::Instance();  // the real library's buffers
  uint8_t* ub = hw.cpuUB;
  const size_t ub_bytes = hw.bufferInitLen.at(AscendC::Hardware::UB);  // 192 KiB on 2201
  for (int64_t b : CoreOrder(block_dim, order)) {
    // the core's identity as the headers read it: GetBlockIdx() = block_idx * g_taskRation +
    // sub_block_idx on a vector core, GetBlockNum() = get_block_num()
    block_idx = b;
    block_num = block_dim;
    g_coreType = AscendC::AIV_TYPE;
    g_taskRation = 1;
    sub_block_idx = 0;
    BeginCore(ub, ub_bytes, b, block_dim, saturation, &gm);
    try {
      kernel();
    } catch (...) {
      EndCore();
      throw;
    }
    EndCore();
  }
}

// The C entries' error convention: 0, or 1 with the exception's message in err.
template <typename Body>
inline int Guarded(char* err, size_t err_len, Body body) {
  try {
    const CaptureLog log;
    body();
    return 0;
  } catch (const std::exception& e) {
    if (err != nullptr && err_len > 0) {
      std::strncpy(err, e.what(), err_len - 1);
      err[err_len - 1] = '\0';
    }
    return 1;
  }
}

}  // namespace lars_asc_real
