// lars_npu's own HOST EMULATION of the subset of the AscendC API (kernel_operator.h) that the
// kernels in csrc/ascendc/ use. It is not CANN's CPU-debug mode or simulator, and passing it is
// no claim that a kernel ran on Ascend hardware. It follows the documented semantics and refuses
// what the hardware refuses, each with a clear message (thrown as AscendC::emu::Violation):
//   - DataCopy of a length that is not a whole number of 32-byte blocks, or to/from a Unified
//     Buffer (UB) address that is not 32-byte aligned, or outside the GlobalTensor's buffer;
//   - UB use beyond the emulated SoC's size (TPipe::InitBuffer);
//   - DeQue of an empty queue, AllocTensor with every buffer of a queue in use, EnQue of more
//     tensors than the queue's depth;
//   - use of a LocalTensor after FreeTensor, or access outside its length.
// AI cores run one after another over the block index (emu::Launch), each with its own UB, so
// per-core partials handed over through global memory are real.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cpu/dtypes.h"

#define __aicore__
#define __global__
#define __gm__

using GM_ADDR = uint8_t*;

// fp16 storage type of the kernels (the compiler's `half` on Ascend), converted with
// round-to-nearest-even.
struct half {
  uint16_t bits = 0;
  half() = default;
  explicit half(float f) : bits(lars::float_to_half(f)) {}
  explicit operator float() const { return lars::half_to_float(bits); }
};

namespace AscendC {

enum class TPosition { GM, VECIN, VECOUT, VECCALC };
using QuePosition = TPosition;
constexpr int32_t ONE_BLK_SIZE = 32;

namespace emu {

class Violation : public std::runtime_error {
 public:
  explicit Violation(const std::string& what) : std::runtime_error("AscendC emulation: " + what) {}
};

// The core being emulated: its block index, the launch's block count and its Unified Buffer.
struct Core {
  int64_t block_idx = 0;
  int64_t block_num = 1;
  std::vector<uint8_t> ub;  // UB bytes of the SoC (e.g. 192 KiB on Atlas A2 / 910B)
  size_t ub_used = 0;
};

inline Core*& current() {
  thread_local Core* core = nullptr;
  return core;
}

inline Core& core() {
  Core* c = current();
  if (c == nullptr) throw Violation("kernel API used outside emu::Launch");
  return *c;
}

// Runs `kernel` once per block index 0..block_dim-1, each on a fresh core with `ub_bytes` of UB.
inline void Launch(int64_t block_dim, size_t ub_bytes, const std::function<void()>& kernel) {
  if (block_dim <= 0) throw Violation("blockDim must be positive");
  for (int64_t b = 0; b < block_dim; ++b) {
    Core c;
    c.block_idx = b;
    c.block_num = block_dim;
    c.ub.assign(ub_bytes, 0);
    current() = &c;
    try {
      kernel();
    } catch (...) {
      current() = nullptr;
      throw;
    }
    current() = nullptr;
  }
}

// Liveness of one queue/buffer slot, shared by the LocalTensors handed out for it.
struct Slot {
  uint8_t* data = nullptr;
  uint32_t bytes = 0;
  uint32_t ub_offset = 0;
  bool allocated = false;  // between AllocTensor and FreeTensor
  uint64_t generation = 0;
};

}  // namespace emu

inline int64_t GetBlockIdx() { return emu::core().block_idx; }
inline int64_t GetBlockNum() { return emu::core().block_num; }

template <typename T>
class GlobalTensor {
 public:
  void SetGlobalBuffer(__gm__ T* buffer, uint64_t size) {
    base_ = buffer;
    size_ = size;
  }
  GlobalTensor operator[](uint64_t offset) const {
    if (offset > size_) throw emu::Violation("GlobalTensor offset beyond its buffer");
    GlobalTensor t;
    t.base_ = base_ + offset;
    t.size_ = size_ - offset;
    return t;
  }
  T GetValue(uint64_t i) const {
    if (i >= size_) throw emu::Violation("GlobalTensor::GetValue out of range");
    return base_[i];
  }
  void SetValue(uint64_t i, T v) {
    if (i >= size_) throw emu::Violation("GlobalTensor::SetValue out of range");
    base_[i] = v;
  }
  T* address() const { return base_; }
  uint64_t size() const { return size_; }

 private:
  T* base_ = nullptr;
  uint64_t size_ = 0;
};

template <typename T>
class LocalTensor {
 public:
  LocalTensor() = default;
  LocalTensor(std::shared_ptr<emu::Slot> slot, uint32_t offset, uint32_t len)
      : slot_(std::move(slot)), gen_(slot_->generation), offset_(offset), len_(len) {}
  LocalTensor(std::shared_ptr<emu::Slot> slot, uint32_t offset, uint32_t len, uint64_t gen)
      : slot_(std::move(slot)), gen_(gen), offset_(offset), len_(len) {}

  LocalTensor operator[](uint32_t offset) const {
    check(offset, 0);
    return LocalTensor(slot_, offset_ + offset, len_ - offset, gen_);
  }
  T GetValue(uint32_t i) const {
    check(i, 1);
    return ptr()[i];
  }
  void SetValue(uint32_t i, T v) const {
    check(i, 1);
    ptr()[i] = v;
  }
  uint32_t GetSize() const { return len_; }

  // emulation internals
  T* ptr() const {
    alive();
    return reinterpret_cast<T*>(slot_->data) + offset_;
  }
  uint64_t ub_address() const { return slot_->ub_offset + uint64_t{offset_} * sizeof(T); }
  void check_count(uint32_t count, const char* op) const {
    alive();
    if (count > len_) {
      throw emu::Violation(std::string(op) + ": " + std::to_string(count) +
                           " elements exceed the LocalTensor's " + std::to_string(len_));
    }
  }
  const std::shared_ptr<emu::Slot>& slot() const { return slot_; }

 private:
  void alive() const {
    if (!slot_ || !slot_->allocated || slot_->generation != gen_) {
      throw emu::Violation("use of a LocalTensor after FreeTensor (or never allocated)");
    }
  }
  void check(uint32_t i, uint32_t extra) const {
    alive();
    if (i + extra > len_) throw emu::Violation("LocalTensor index out of range");
  }
  std::shared_ptr<emu::Slot> slot_;
  uint64_t gen_ = 0;
  uint32_t offset_ = 0;
  uint32_t len_ = 0;
};

class TPipe;

template <TPosition pos, int32_t depth>
class TQue {
 public:
  template <typename T>
  LocalTensor<T> AllocTensor() {
    for (auto& s : slots_) {
      if (!s->allocated) {
        s->allocated = true;
        ++s->generation;
        return LocalTensor<T>(s, 0, s->bytes / sizeof(T));
      }
    }
    throw emu::Violation("AllocTensor: every buffer of the queue is in use (missing FreeTensor)");
  }
  template <typename T>
  void EnQue(const LocalTensor<T>& t) {
    t.check_count(0, "EnQue");
    if (static_cast<int32_t>(queued_.size()) >= depth) {
      throw emu::Violation("EnQue: queue depth exceeded");
    }
    queued_.push_back(t.slot());
  }
  template <typename T>
  LocalTensor<T> DeQue() {
    if (queued_.empty()) throw emu::Violation("DeQue of an empty queue");
    auto s = queued_.front();
    queued_.erase(queued_.begin());
    return LocalTensor<T>(s, 0, s->bytes / sizeof(T), s->generation);
  }
  template <typename T>
  void FreeTensor(const LocalTensor<T>& t) {
    t.check_count(0, "FreeTensor");
    t.slot()->allocated = false;
    ++t.slot()->generation;
  }

 private:
  friend class TPipe;
  std::vector<std::shared_ptr<emu::Slot>> slots_;
  std::vector<std::shared_ptr<emu::Slot>> queued_;
};

template <TPosition pos>
class TBuf {
 public:
  template <typename T>
  LocalTensor<T> Get() {
    if (!slot_) throw emu::Violation("TBuf::Get before TPipe::InitBuffer");
    return LocalTensor<T>(slot_, 0, slot_->bytes / sizeof(T), slot_->generation);
  }

 private:
  friend class TPipe;
  std::shared_ptr<emu::Slot> slot_;
};

class TPipe {
 public:
  template <TPosition pos, int32_t depth>
  void InitBuffer(TQue<pos, depth>& que, int32_t num, uint32_t bytes) {
    if (num <= 0 || num > depth + 1) throw emu::Violation("InitBuffer: bad buffer count");
    for (int32_t i = 0; i < num; ++i) que.slots_.push_back(take(bytes));
  }
  template <TPosition pos>
  void InitBuffer(TBuf<pos>& buf, uint32_t bytes) {
    buf.slot_ = take(bytes);
    buf.slot_->allocated = true;  // a TBuf is usable as soon as it exists
  }

 private:
  std::shared_ptr<emu::Slot> take(uint32_t bytes) {
    emu::Core& c = emu::core();
    const uint32_t aligned = (bytes + ONE_BLK_SIZE - 1) / ONE_BLK_SIZE * ONE_BLK_SIZE;
    if (c.ub_used + aligned > c.ub.size()) {
      throw emu::Violation("Unified Buffer overflow: " + std::to_string(c.ub_used + aligned) +
                           " bytes requested, the SoC has " + std::to_string(c.ub.size()));
    }
    auto s = std::make_shared<emu::Slot>();
    s->data = c.ub.data() + c.ub_used;
    s->bytes = bytes;
    s->ub_offset = static_cast<uint32_t>(c.ub_used);
    c.ub_used += aligned;
    return s;
  }
};

// ---- data movement --------------------------------------------------------------------------
namespace emu {
template <typename T>
void check_copy(const LocalTensor<T>& local, uint64_t gm_size, uint32_t count, const char* op) {
  local.check_count(count, op);
  if ((uint64_t{count} * sizeof(T)) % ONE_BLK_SIZE != 0) {
    throw Violation(std::string(op) + ": length " + std::to_string(count * sizeof(T)) +
                    " bytes is not a whole number of 32-byte blocks (handle the tail)");
  }
  if (local.ub_address() % ONE_BLK_SIZE != 0) {
    throw Violation(std::string(op) + ": Unified Buffer address not 32-byte aligned");
  }
  if (count > gm_size) throw Violation(std::string(op) + ": beyond the GlobalTensor's buffer");
}
}  // namespace emu

template <typename T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  emu::check_copy(dst, src.size(), count, "DataCopy GM->UB");
  std::memcpy(dst.ptr(), src.address(), count * sizeof(T));
}

template <typename T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  emu::check_copy(src, dst.size(), count, "DataCopy UB->GM");
  std::memcpy(dst.address(), src.ptr(), count * sizeof(T));
}

// ---- vector computation (elementwise over `count` elements) --------------------------------------
template <typename T>
void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b,
         uint32_t count) {
  dst.check_count(count, "Mul");
  a.check_count(count, "Mul");
  b.check_count(count, "Mul");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = a.ptr()[i] * b.ptr()[i];
}

template <typename T>
void Add(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b,
         uint32_t count) {
  dst.check_count(count, "Add");
  a.check_count(count, "Add");
  b.check_count(count, "Add");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = a.ptr()[i] + b.ptr()[i];
}

template <typename T>
void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, uint32_t count) {
  dst.check_count(count, "Muls");
  src.check_count(count, "Muls");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = src.ptr()[i] * scalar;
}

template <typename T>
void Sqrt(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  dst.check_count(count, "Sqrt");
  src.check_count(count, "Sqrt");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = std::sqrt(src.ptr()[i]);
}

template <typename T>
void Duplicate(const LocalTensor<T>& dst, T scalar, uint32_t count) {
  dst.check_count(count, "Duplicate");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = scalar;
}

// dst[0] = sum(src[0:count]); `work` is the scratch the real instruction needs (checked for size).
// Summation order: pairwise over 64-element repeats, fixed, so results are reproducible.
inline void ReduceSum(const LocalTensor<float>& dst, const LocalTensor<float>& src,
                      const LocalTensor<float>& work, uint32_t count) {
  dst.check_count(1, "ReduceSum");
  src.check_count(count, "ReduceSum");
  work.check_count((count + 63) / 64, "ReduceSum work");
  float total = 0.0f;
  for (uint32_t r = 0; r < count; r += 64) {
    float part = 0.0f;
    for (uint32_t i = r; i < count && i < r + 64; ++i) part += src.ptr()[i];
    work.ptr()[r / 64] = part;
    total += part;
  }
  dst.ptr()[0] = total;
}

enum class RoundMode { CAST_NONE, CAST_RINT };

inline void Cast(const LocalTensor<float>& dst, const LocalTensor<half>& src, RoundMode,
                 uint32_t count) {
  dst.check_count(count, "Cast");
  src.check_count(count, "Cast");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = static_cast<float>(src.ptr()[i]);
}

inline void Cast(const LocalTensor<half>& dst, const LocalTensor<float>& src, RoundMode,
                 uint32_t count) {
  dst.check_count(count, "Cast");
  src.check_count(count, "Cast");
  for (uint32_t i = 0; i < count; ++i) dst.ptr()[i] = half(src.ptr()[i]);
}

}  // namespace AscendC
