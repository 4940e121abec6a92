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
// lars_npu._C.build_info()). UB per core: ≈ 64 KiB (square sums) and ≈ 88 KiB (update) of the
// 184 KiB an Atlas A2 kernel may use. Chunks of the flat work list have kChunkElements elements,
// the CPU kernels' chunk too (bindings.cpp asserts it).
constexpr uint32_t kTileSquareSums = 4096;
constexpr uint32_t kTileUpdate = 2048;
constexpr int64_t kChunkElements = 16384;

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
