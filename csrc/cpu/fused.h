// Fused multi-tensor LARS + momentum-SGD step on the CPU: everything a step of
// LARS(torch.optim.SGD(momentum=mu, dampening=0)) does, in one call over all parameters.
//
// Stage A (pre-sweep): sum(g^2) of every tensor, and sum(w^2) of the adapted tensors too big to
//   batch. If any sum(g^2) is inf/nan the call returns true and writes nothing (docs/semantics.md).
// Stage B (cache batches): tensors are grouped, in order, into batches whose weights fit in the
//   cache budget. Per batch: sum(w^2) of its adapted tensors, lambda per tensor, then the update
//       g' = lambda * (g + wd * w)            (g' = g for tensors the filter excludes)
//       m  = g'  (first step)  or  mu * m + g'
//       d  = g' + mu * m (nesterov)  or  m      (mu = 0: no buffer, d = g')
//       w  = w - lr * d
//   while the batch's weights are still in the last-level cache. A tensor larger than the budget
//   is a batch of its own (its sum(w^2) came from stage A).
// Work inside every phase is a flat list of kChunk-element chunks split across OpenMP threads;
// sums are combined per tensor in chunk order, so the result is the same bits for any thread
// count. Scratch lives in the plan (O(chunks), built once), never per step.
#pragma once

#include <cstdint>
#include <vector>

#include "lars_cpu.h"

namespace lars {

struct FusedTensorSpec {
  int64_t numel;
  int w_dtype;     // parameter (and momentum buffer) dtype
  int g_dtype;     // gradient dtype: w_dtype, or fp16/bf16 with fp32 parameters
  bool adapt;      // the filter's result: LARS (and weight decay) or plain momentum SGD
  bool momentum;   // the tensor's group has momentum != 0 (a buffer exists or is created)
};

// Per-step values, arrays of length n (pointers may change every step).
struct FusedStepArgs {
  void* const* w;           // parameters (contiguous)
  const void* const* g;     // gradients (contiguous)
  void* const* m;           // momentum buffers (contiguous, w dtype); ignored without momentum
  const uint8_t* first;     // 1: the buffer is new this step, m = g' (torch SGD's first step)
  const double* wd;         // weight decay LARS applies (0 for tensors the filter excludes)
  const double* lr;
  const double* mu;         // momentum
  const uint8_t* nesterov;
  // Given sums (the sharded step: all-reduced over every rank's shard), or nullptr: then
  // w_s/g_s are outputs of the step's own pass 1. With them, no sum is taken here, and a
  // non-finite given g_s skips the step (found_inf), as a non-finite local one does.
  const double* given_ws = nullptr;
  const double* given_gs = nullptr;
};

class FusedPlan {
 public:
  FusedPlan(std::vector<FusedTensorSpec> specs, int64_t cache_budget_bytes);

  // One step. Returns true (found_inf) if a gradient holds inf/nan; then nothing is written.
  // lam, w_s, g_s: outputs of length n (lam = 1 for excluded tensors, nan when skipped).
  bool step(const FusedStepArgs& a, const Hyper& h, double* lam, double* w_s, double* g_s,
            int num_threads);

  int64_t size() const { return static_cast<int64_t>(specs_.size()); }
  const FusedTensorSpec& spec(int64_t i) const { return specs_[static_cast<size_t>(i)]; }
  int64_t num_batches() const { return static_cast<int64_t>(batches_.size()); }
  int64_t num_chunks() const { return static_cast<int64_t>(chunks_.size()); }
  int64_t total_elements() const { return total_; }
  int64_t scratch_bytes() const { return static_cast<int64_t>(part_.size() * sizeof(double)); }
  static bool supported_pair(int w_dtype, int g_dtype);

 private:
  struct Chunk {
    int64_t tensor;
    int64_t begin;
    int64_t end;
  };
  struct Batch {
    int64_t first_tensor, end_tensor;   // [first, end) tensor indices
    int64_t first_chunk, end_chunk;     // its chunks in chunks_
    bool big;                           // one tensor over the budget: sum(w^2) from stage A
  };
  std::vector<FusedTensorSpec> specs_;
  std::vector<Chunk> chunks_;       // every tensor's chunks, in tensor order
  std::vector<int64_t> first_chunk_;  // per tensor, index of its first chunk (n + 1 entries)
  std::vector<Batch> batches_;
  std::vector<double> part_;        // 2 per chunk: partial sum(w^2), sum(g^2)
  int64_t total_ = 0;
};

// Bytes of the last-level cache (sysconf where available, else 8 MiB); the default budget is half.
int64_t last_level_cache_bytes();

}  // namespace lars
