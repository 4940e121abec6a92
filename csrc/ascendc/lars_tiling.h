// Tiling data of the LARS AscendC kernels: computed on the host, passed by value to the kernel,
// shared by host and kernel code (plain structs, no pointers).
#pragma once

#include <cstdint>

namespace lars_ascendc {

// Buffers per input queue: double buffering (copy-in of tile i+1 overlaps compute of tile i).
constexpr int32_t BUFFER_NUM = 2;

// One piece of the flat work list: `length` elements of tensor `tensor` from element `offset`.
// Every AI core takes chunks blockIdx, blockIdx + blockNum, ... so cores share work evenly
// whatever the tensor sizes. offset is a multiple of the chunk size (32-byte aligned in GM).
struct Chunk {
  uint64_t tensor;
  uint64_t offset;
  uint64_t length;
};

// The results region of the workspace (fp32, every entry one 32-byte block [value, 0 x7], so each
// is written by one DataCopy), for nc chunks and n tensors, in blocks of kBlock floats:
//   [0, nc)                       Σw² of chunk c            (square-sums kernel)
//   [nc, 2 nc)                    Σg² of chunk c            (square-sums kernel)
//   [2 nc, 2 nc + kMaxCoreFlags)  core b's non-finite flag: 0, or NaN when one of its chunks'
//                                 Σg² is inf/nan (square-sums kernel; the host for given sums)
//   [2 nc + kMaxCoreFlags, + n)   λ of tensor t as the update kernel applied it
// The Σw² and Σg² blocks of a tensor's chunks are contiguous, so the λ kernel moves them into UB
// with DataCopy and adds them with vector instructions (no scalar scan); the update kernel reads
// the flags the same way (O(cores) bytes, no scalar read of global memory) and each tensor's λ
// by one scalar read.
constexpr uint32_t kBlock = 8;
constexpr uint32_t kMaxCoreFlags = 256;  // blockDim of a launch is at most this (launchers clamp)
constexpr uint32_t kPartialTile = 2048;  // floats of partial blocks per UB tile (256 chunks)

// The host's default tiling (the one source of these numbers: Python reads them from
// lars_npu._C.build_info()). UB per core (the formulas below): 48.1 KiB (square sums, fp32) and
// 72.2 KiB (update, fp32) of the 184 KiB an Atlas A2 kernel may use. Chunks of the flat work list
// have kChunkElements elements, the CPU kernels' chunk too (bindings.cpp asserts it).
constexpr uint32_t kTileSquareSums = 4096;
constexpr uint32_t kTileUpdate = 2048;
constexpr int64_t kChunkElements = 16384;

// ---- Unified Buffer per core, as the kernels' Init asks TPipe for it -------------------------
// One definition for the kernels (each InitBuffer takes its size from these functions) and for
// the host plan (lars_host_plan.h validate bounds tile_sq / tile_up by them), so the bound cannot
// drift from what the kernels allocate. They run in kernels too: __aicore__ where the AscendC
// headers (or lars_npu's emulation) define it.
#ifdef __aicore__
#define LARS_TILING_FN __aicore__ inline constexpr
#else
#define LARS_TILING_FN inline constexpr
#endif

// What an Atlas A2 (910B, __NPU_ARCH__ 2201) kernel's TPipe may take: 192 KiB of UB less the top
// 8 KiB, scratch of some APIs (TMP_UB_OFFSET = TOTAL_VEC_LOCAL_SIZE = 184 KiB in asc-devkit's
// impl/basic_api/utils/kernel_utils_constants.h). The emulation refuses more (csrc/emu).
constexpr uint64_t kUbBudgetBytes = 184 * 1024;

// TPipe::InitBuffer rounds every buffer up to whole 32-byte blocks.
LARS_TILING_FN uint64_t UbBlocks(uint64_t bytes) { return (bytes + 31) / 32 * 32; }

// ReduceSum's work tensor (sharedTmpBuffer) for `count` fp32 elements, in floats, as the AscendC
// docs size it (ReduceSum, 关键特性说明: the two-level sum writes one partial per 64-lane repeat
// there, rounded up to whole 32-byte blocks; the docs' count / 64 taken rounded up). Atlas A2's
// count form never touches it (one vcadd, csrc/emu/kernel_operator.h), other SoCs do: the kernels
// give every ReduceSum one of this size (the emulation refuses less, or one overlapping src).
LARS_TILING_FN uint64_t ReduceSumWorkFloats(uint64_t count) {
  const uint64_t repeats = count <= 64 ? 1 : (count + 63) / 64;
  return (repeats + kBlock - 1) / kBlock * kBlock;
}

// The square-sums kernel's buffers (KernelSquareSums::Init), for `tile` elements of
// `elem_bytes` each (4 fp32, 2 fp16). Bytes in 64 bits, so that no tile a caller writes into the
// tiling overflows them; the kernels take them for InitBuffer's uint32 length once the host plan
// has bounded the tile.
struct SquareSumsUb {
  uint64_t in;        // input queue, BUFFER_NUM buffers: a tile of w or g in its storage type
  uint64_t out;       // output queue, 1 buffer: the chunk's Σw² and Σg² blocks
  uint64_t flag_out;  // output queue, 1 buffer: the core's flag block, held for the whole run,
                      // and a block of scratch
  uint64_t work;      // fp16 only: the tile widened to fp32 (fp32 squares the input tile itself)
  uint64_t acc;       // fp32 lanes of Σx² of the chunk
};
LARS_TILING_FN SquareSumsUb SquareSumsBuffers(uint32_t tile, uint32_t elem_bytes) {
  const uint64_t t = tile;
  return SquareSumsUb{t * elem_bytes, 2 * kBlock * 4, 2 * kBlock * 4,
                      elem_bytes == 4 ? 0 : t * 4, t * 4};
}
LARS_TILING_FN uint64_t SquareSumsUbBytes(uint32_t tile, uint32_t elem_bytes) {
  const SquareSumsUb b = SquareSumsBuffers(tile, elem_bytes);
  return BUFFER_NUM * UbBlocks(b.in) + UbBlocks(b.out) + UbBlocks(b.flag_out) + UbBlocks(b.work) +
         UbBlocks(b.acc);
}

// The update kernel's buffers (KernelUpdate::Init); the same in both modes (rewrite, fused).
struct UpdateUb {
  uint64_t in;     // input queues of w, g, m, BUFFER_NUM buffers each: a tile in its storage type
  uint64_t out;    // output queues A (g' or w) and B (m), 1 buffer each
  uint64_t work;   // fp16 only: fp32 tiles of w, g, m (fp32 computes on the queues' tiles)
  uint64_t flags;  // input queue, 1 buffer: every core's non-finite flag block
  uint64_t sums;   // ReduceSum's result block
  uint64_t reduce_work;  // ReduceSum's work tensor for every core's flag block
};
LARS_TILING_FN UpdateUb UpdateBuffers(uint32_t tile, uint32_t elem_bytes) {
  const uint64_t t = tile;
  return UpdateUb{t * elem_bytes,
                  t * elem_bytes,
                  elem_bytes == 4 ? 0 : t * 4,
                  kMaxCoreFlags * kBlock * 4,
                  kBlock * 4,
                  ReduceSumWorkFloats(kMaxCoreFlags * kBlock) * 4};
}
LARS_TILING_FN uint64_t UpdateUbBytes(uint32_t tile, uint32_t elem_bytes) {
  const UpdateUb b = UpdateBuffers(tile, elem_bytes);
  return 3 * BUFFER_NUM * UbBlocks(b.in) + 2 * UbBlocks(b.out) + 3 * UbBlocks(b.work) +
         UbBlocks(b.flags) + UbBlocks(b.sums) + UbBlocks(b.reduce_work);
}

// The λ kernel's (KernelLambda::Init): no tile, a fixed size.
struct LambdaUb {
  uint64_t partials;  // input queue, 1 buffer: a tile of partial blocks
  uint64_t acc;       // two fp32 accumulators (Σw², Σg²)
  uint64_t norm;      // one block: the two sums, then their square roots
  uint64_t out;       // output queue, 1 buffer: the λ block
};
LARS_TILING_FN LambdaUb LambdaBuffers() {
  return LambdaUb{kPartialTile * 4, kPartialTile * 4, kBlock * 4, kBlock * 4};
}
LARS_TILING_FN uint64_t LambdaUbBytes() {
  const LambdaUb b = LambdaBuffers();
  return UbBlocks(b.partials) + 2 * UbBlocks(b.acc) + UbBlocks(b.norm) + UbBlocks(b.out);
}

// The largest tile (a multiple of 16 elements: 32 bytes of fp16) whose UB fits kUbBudgetBytes.
// Tiles are whole blocks of either type, so each formula grows by the same bytes per 16
// elements: the bound is exact (lars_host_plan.h asserts both sides of it).
LARS_TILING_FN uint32_t MaxTile(uint64_t bytes_at_0, uint64_t bytes_at_16) {
  return bytes_at_0 >= kUbBudgetBytes
             ? 0
             : static_cast<uint32_t>((kUbBudgetBytes - bytes_at_0) / (bytes_at_16 - bytes_at_0) *
                                     16);
}
LARS_TILING_FN uint32_t MaxTileSquareSums(uint32_t elem_bytes) {
  return MaxTile(SquareSumsUbBytes(0, elem_bytes), SquareSumsUbBytes(16, elem_bytes));
}
LARS_TILING_FN uint32_t MaxTileUpdate(uint32_t elem_bytes) {
  return MaxTile(UpdateUbBytes(0, elem_bytes), UpdateUbBytes(16, elem_bytes));
}

struct SquareSumTiling {
  uint32_t num_tensors;
  uint32_t num_chunks;
  uint32_t tile_elems;  // elements per UB tile, a multiple of 16 (32 bytes of fp16)
  uint32_t dtype;       // 0 fp32, 1 fp16
};

// Per-tensor parameters of the λ and update kernels, fp32 in GM: [wd, lr, mu, flags] with flags bit 0
// adapt, bit 1 has momentum, bit 2 first step, bit 3 nesterov.
constexpr uint32_t kTensorParams = 4;

// Tiling of the λ kernel (it uses num_tensors, num_chunks) and the update kernel.
struct UpdateTiling {
  uint32_t num_tensors;
  uint32_t num_chunks;
  uint32_t tile_elems;  // elements per UB tile, a multiple of 16
  uint32_t mode;        // 0 LARSUpdate rewrite of g, 1 fused momentum-SGD step
};

}  // namespace lars_ascendc
