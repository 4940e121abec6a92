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

// Each chunk's result occupies two 32-byte blocks of the partials workspace (fp32):
// [sum(w^2), 0 x7 | sum(g^2), 0 x7]. ReduceSum writes each sum to the start of its own
// 32-byte-aligned block in UB, and one DataCopy moves both to GM.
constexpr uint32_t kPartialStride = 16;
constexpr uint32_t kPartialG = 8;  // offset of sum(g^2) in a chunk's partials

struct SquareSumTiling {
  uint32_t num_tensors;
  uint32_t num_chunks;
  uint32_t tile_elems;  // elements per UB tile, a multiple of 16 (32 bytes of fp16)
  uint32_t dtype;       // 0 fp32, 1 fp16
};

// Per-tensor parameters of the update kernel, fp32 in GM: [wd, lr, mu, flags] with flags bit 0
// adapt, bit 1 has momentum, bit 2 first step, bit 3 nesterov.
constexpr uint32_t kTensorParams = 4;

struct UpdateTiling {
  uint32_t num_tensors;
  uint32_t num_chunks;
  uint32_t tile_elems;  // elements per UB tile, a multiple of 16
  uint32_t mode;        // 0 LARSUpdate rewrite of g, 1 fused momentum-SGD step
};

}  // namespace lars_ascendc
