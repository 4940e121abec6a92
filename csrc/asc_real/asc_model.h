// The runner's side of lars_npu's intrinsic model (asc_model.cpp): what a launch sets up before
// each AI core runs, and the model's error. The intrinsics themselves are declared in
// include/stub_fun.h, where the real AscendC headers look for them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lars_asc_real {

// A violation the model (or the real library's own CPU-debug checks, through raise) detected.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The Unified Buffer of each core starts filled with this 32-bit pattern: a NaN as fp32 and, in
// each half, a NaN as fp16 (0x7FFF). DataCopyPad's unrequested pad bytes get it too.
constexpr uint32_t kPoison = 0x7FFF7FFFu;

// Global memory a launch may touch: DMA outside every region is refused (an empty list: only
// null addresses are refused).
struct GmRegion {
  uintptr_t begin, end;
};

// Sets up the model for one AI core: its Unified Buffer (`ub`, `ub_bytes`: the real library's
// buffer, filled with kPoison here), block index and count, and the start state of its registers
// (normal mask mode, all-ones mask, CTRL[48] = 0 saturation or 1 INF_NAN, no pad value).
void BeginCore(uint8_t* ub, size_t ub_bytes, int64_t block_idx, int64_t block_num,
               bool saturation, const std::vector<GmRegion>* gm);

// Fills [addr, addr + bytes) of the current core's Unified Buffer with kPoison. The real TPipe's
// constructor fills every buffer with pseudo-random values (CPU-debug mode, kernel_tpipe_impl.h)
// and then reports the UB to the CPU-debug library (AscendCBufAbsAddr): that hook poisons it
// again (asc_hooks.cpp), so that what a kernel reads before writing is a NaN, not a number.
void PoisonUnifiedBuffer(uint64_t addr, uint64_t bytes);

// The model's state for the end of a launch (no core current: intrinsics called now are refused).
void EndCore();

// The real library's asserts call raise(SIGABRT) (the CPU-debug framework runs each core as a
// process): prelude.h turns that into a call of this function, which throws ModelError with the
// library's last logged error line (the runner captures what it prints; see CaptureLog).
int RaiseFromLibrary(int sig);

// While alive, what the C library prints to stdout goes to a buffer (the real library logs its
// failed checks there): RaiseFromLibrary quotes it, and the destructor forwards it to stdout.
class CaptureLog {
 public:
  CaptureLog();
  ~CaptureLog();
  CaptureLog(const CaptureLog&) = delete;
  CaptureLog& operator=(const CaptureLog&) = delete;
};

}  // namespace lars_asc_real
