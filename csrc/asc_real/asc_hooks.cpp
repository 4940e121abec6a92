// What the real AscendC headers and asc-tools' CPU-debug checks expect from CANN's closed CPU-debug
// library besides the intrinsics (include/stub_fun.h): the core's identity variables, a few
// constants, and bookkeeping hooks. lars_npu's own minimal versions for its sequential `real`
// runner (one process, one core at a time); the runner sets the identity variables per core
// (asc_runner.cpp). Only what the runner's translation units link against is here.
#include "asc_model.h"
#include "kernel_operator.h"

// The core being run (stub_def.h declares them): block_idx / block_num of the launch, a vector
// core (AIV, as KERNEL_TYPE_AIV_ONLY kernels run), one vector core per block index.
int64_t block_idx = 0;
int64_t block_num = 1;
int32_t g_coreType = 2;  // AscendC::AIV_TYPE
int32_t g_taskRation = 1;
int32_t sub_block_idx = 0;

namespace AscendC {
const int MIX_TYPE = 0;
const int AIC_TYPE = 1;
const int AIV_TYPE = 2;
bool g_isAtomic = false;  // set_atomic_* never reached: atomics are not modelled

// The CPU-debug framework's inter-process lock (taken around atomic DMA): one process here.
ProcessLock* ProcessLock::processLock = nullptr;
ProcessLock* ProcessLock::CreateLock() { return nullptr; }
int ProcessLock::Write() { return 0; }
int ProcessLock::Unlock() { return 0; }
}  // namespace AscendC

// The TPipe constructor reports each buffer after filling it with pseudo-random values: the
// Unified Buffer is poisoned again here (asc_model.h, PoisonUnifiedBuffer).
void AscendCBufAbsAddr(uint8_t hardware, uint64_t addr, uint32_t len) {
  if (hardware == static_cast<uint8_t>(AscendC::Hardware::UB)) {
    lars_asc_real::PoisonUnifiedBuffer(addr, len);
  }
}

// Buffer bookkeeping of the closed library (its checks of TPipe / TQue use): none here, the real
// headers' own checks and the model's UB bounds stand.
void AscendCBufInit(uint8_t, int32_t, int32_t, uint64_t, uint32_t) {}
void AscendCBufAlloc(uint8_t, uint8_t, uint64_t, uint64_t) {}
void AscendCBufEnque(uint8_t, uint8_t, uint8_t, uint64_t) {}
void AscendCBufDeque(uint8_t, uint8_t, uint8_t, uint64_t) {}
void AscendCBufFree(uint8_t, uint8_t, uint64_t, uint64_t) {}
void AscendCBufGet(uint8_t, uint8_t, uint64_t, uint32_t) {}
void AscendCQueCreate(uint8_t, uint8_t, int32_t) {}
void AscendCTBufPoolInit(uint8_t, uint64_t, uint32_t, uint64_t) {}
void AscendCTBufPoolResetCheck(uint8_t, uint64_t, uint64_t, uint64_t) {}
void AscendCUpdateTbufPoolStatus(uint64_t, bool) {}
