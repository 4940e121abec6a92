// The per-step checks of every lars_npu operator, on the at::Tensor lists it is given, before
// anything is written. One function per rule; each failure is a c10::ValueError (TypeError for a
// dtype) whose message starts with "lars_npu[<role> <index>]: ", from which lars_npu/_ops.py
// builds a lars_npu.TensorError carrying the role, the index and the parameter's name.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpu/overlap.h"

namespace lars_ops {

enum class Role { kParameter, kGradient, kMomentumBuffer, kWeight };

const char* role_name(Role r);

// Throws the ValueError (or, with type_error, TypeError) of tensor `index` in role `r`.
[[noreturn]] void fail(Role r, int64_t index, const std::string& why, bool type_error = false);

// torch's name of a dtype ("torch.float32"), as Python prints it.
std::string dtype_name(c10::ScalarType t);

// lars::DType code of a supported dtype (float32, float16, bfloat16, float64), else -1.
int dtype_code(c10::ScalarType t);

// What a kernel may do with a tensor that passed check_tensor.
struct Checked {
  int code = -1;          // lars::DType
  bool direct = false;    // contiguous, no negative bit: the kernel uses its memory as it is
  uint64_t begin = 0;     // the bytes the tensor's elements span, [begin, end) (empty: 0, 0)
  uint64_t end = 0;
};

// One tensor: defined, strided, on `device`, a supported dtype, real memory holding every
// element it addresses (storage bounds: offset + extent <= the storage's bytes), and, when the
// step writes it, not an inference tensor and no element stored twice (internal overlap).
Checked check_tensor(const at::Tensor& t, Role r, int64_t index, const c10::Device& device,
                     bool written);

// `t` has the shape of `ref` (tensor `index`, role r against the parameter).
void check_same_shape(const at::Tensor& t, const at::Tensor& ref, Role r, int64_t index);

// A written range overlapping any other range of the step (sorted by start, O(n log n)):
// fails naming both. The ids are role * n + index. A step whose ranges equal those of the last
// step this process proved disjoint is not sorted again.
void check_disjoint(std::vector<lars::ByteRange>& ranges, int64_t n);

// Per-tensor flags (uint8 [n]) and group indices (int64 [n]) against G groups; hyper: float64
// [G, 4] (lr, weight_decay, momentum, nesterov), all on the CPU, contiguous.
constexpr uint8_t kAdapt = 1;
constexpr uint8_t kMomentum = 2;
constexpr uint8_t kFirst = 4;
void check_flags(const at::Tensor& flags, int64_t n);  // uint8 [n], CPU, contiguous
// One momentum buffer per tensor whose flags have the momentum bit: their number, or a ValueError.
int64_t check_buffer_count(at::TensorList bufs, const uint8_t* flags, int64_t n);
void check_step_arrays(const at::Tensor& group, const at::Tensor& flags, const at::Tensor& hyper,
                       int64_t n);
void check_given_sums(const std::optional<at::Tensor>& given, int64_t n);

// Everything fused_step_ checks before it writes (both its CPU and its NPU kernel): the
// lengths, the per-step arrays, every parameter, gradient (its parameter's shape; its dtype
// unless mixed_grad_dtypes allows fp16/bf16 for an fp32 parameter) and momentum buffer, and
// memory shared between them. buf_of[i]: the index in `bufs` of tensor i's buffer, or -1.
struct FusedStepChecks {
  std::vector<Checked> w, g, m;
  std::vector<int64_t> buf_of;
  c10::Device device = c10::Device(c10::kCPU);
};
FusedStepChecks check_fused_step(at::TensorList params, at::TensorList grads,
                                 at::TensorList bufs, const at::Tensor& group,
                                 const at::Tensor& flags, const at::Tensor& hyper,
                                 const std::optional<at::Tensor>& given_sums,
                                 bool mixed_grad_dtypes);

// "lars_npu: <what> has <m> tensors, the parameters <n>" unless n == m.
void check_lengths(int64_t n, int64_t m, const char* what);

// The device of the first defined tensor of `ts` (CPU when there is none).
c10::Device first_device(at::TensorList ts);

}  // namespace lars_ops
