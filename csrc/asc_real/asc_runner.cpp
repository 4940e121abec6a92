// lars_npu's `real` runner: the AscendC kernels of csrc/ascendc/lars_kernels.cpp, compiled against
// the REAL AscendC headers (asc-devkit, CPU-debug mode, Atlas A2) and run on lars_npu's own model
// of the intrinsics beneath them (asc_model.cpp). Built only with -DLARS_NPU_ASC_DEVKIT and
// -DLARS_NPU_ASC_TOOLS (cmake/LarsAscReal.cmake), into its own shared library (lars_npu/
// _asc_real.so, hidden visibility, this one C entry), loaded by lars_npu/_backends/emu.py with
// ctypes: the same kernel classes built against the emulation live in lars_npu._C, and one binary
// may not hold two definitions of them.
//
// A launch mirrors lars_emu::launch (csrc/emu/emu_launch.cpp): the square-sums kernel, then the λ
// and update kernels, on one workspace built by csrc/ascendc/lars_host_plan.h, in place (its
// address tables hold host addresses). The cores of each launch run one after another in the
// order asked for, each on the real library's Unified Buffer, refilled with poison first.
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "asc_launch.h"
#include "lars_host_plan.h"

// The kernels (csrc/ascendc/lars_kernels.cpp, renamed for this library by real_kernels.cpp).
extern "C" void lars_real_square_sums_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_real_square_sums_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_real_lambda(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
extern "C" void lars_real_update_fp32(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                      GM_ADDR);
extern "C" void lars_real_update_fp16(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR,
                                      GM_ADDR);

namespace lars_asc_real {

namespace {

// The global memory of a step: the workspace and every tensor it names.
std::vector<GmRegion> StepRegions(uint8_t* ws, const lars_ascendc::host::Layout& L, int dtype) {
  namespace host = lars_ascendc::host;
  const auto base = reinterpret_cast<uintptr_t>(ws);
  std::vector<GmRegion> gm{{base, base + L.bytes}};
  const uint64_t eb = host::dtype_bytes(dtype);
  for (uint64_t t = 0; t < L.n; ++t) {
    const uint64_t bytes = host::tensor_numel(ws, L, t) * eb;
    for (uint64_t table : {L.w_addrs, L.g_addrs, L.m_addrs}) {
      const uint64_t addr = host::at<uint64_t>(ws, table)[t];
      if (addr != 0) gm.push_back({addr, addr + bytes});
    }
  }
  return gm;
}

void Run(uint8_t* ws, uint64_t n, uint64_t nc, int dtype, bool run_sq, bool run_update,
         int64_t block_dim, int64_t order, bool saturation) {
  if (dtype != 0 && dtype != 1) throw ModelError("dtype: fp32 (0) or fp16 (1)");
  if (block_dim <= 0 || block_dim > int64_t{lars_ascendc::kMaxCoreFlags}) {
    throw ModelError("block_dim: 1 to " + std::to_string(lars_ascendc::kMaxCoreFlags));
  }
  const lars_ascendc::host::Layout L = lars_ascendc::host::make_layout(n, nc);
  const std::vector<GmRegion> gm = StepRegions(ws, L, dtype);
  auto at = [ws](uint64_t offset) { return reinterpret_cast<GM_ADDR>(ws + offset); };
  auto* sq = dtype == 0 ? &lars_real_square_sums_fp32 : &lars_real_square_sums_fp16;
  auto* up = dtype == 0 ? &lars_real_update_fp32 : &lars_real_update_fp16;
  if (run_sq) {
    Launch(block_dim, order, saturation, gm, [&] {
      sq(at(L.wsq_addrs), at(L.g_addrs), at(L.chunks), at(L.partials), at(L.sq_tiling));
    });
  }
  if (run_update) {
    Launch(block_dim, order, saturation, gm, [&] {
      lars_real_lambda(at(L.tensor_chunks), at(L.partials), at(L.params), at(L.hyper),
                       at(L.up_tiling));
    });
    Launch(block_dim, order, saturation, gm, [&] {
      up(at(L.w_addrs), at(L.g_addrs), at(L.m_addrs), at(L.chunks), at(L.partials),
         at(L.params), at(L.up_tiling));
    });
  }
}

}  // namespace

}  // namespace lars_asc_real

// Runs one step of the kernels on the workspace `ws` (layout of n tensors and nc chunks):
// square sums when run_sq, then λ and update when run_update, on block_dim vector cores in
// core_order (0 forward, -1 reverse, k > 0 shuffled), each launch starting in saturation
// (CTRL[48] = 0) or INF_NAN mode. Returns 0, or 1 with the error in err (NUL-terminated).
extern "C" __attribute__((visibility("default"))) int lars_asc_real_launch(
    uint8_t* ws, uint64_t n, uint64_t nc, int dtype, int run_sq, int run_update,
    int64_t block_dim, int64_t core_order, int saturation, char* err, size_t err_len) {
  static std::mutex one_launch_at_a_time;  // the model and the library's buffers are global
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  return lars_asc_real::Guarded(err, err_len, [&] {
    lars_asc_real::Run(ws, n, nc, dtype, run_sq != 0, run_update != 0, block_dim, core_order,
                       saturation != 0);
  });
}
