// Read-only view of a DLPack capsule ("dltensor"), enough to check a tensor's layout and take its
// data pointer. The structs follow the public DLPack ABI (dlpack.h, v0.x "DLManagedTensor"), which
// torch.utils.dlpack / torch._C._to_dlpack produce; we never consume the capsule (its destructor
// still owns the tensor), we only read it. One _to_dlpack call per gradient replaces five
// separate Python attribute reads (pointer, numel, dtype, device, contiguity).
#pragma once

#include <Python.h>

#include <cstdint>

namespace lars {
namespace dl {

struct Device {
  int32_t device_type;  // kCPU = 1
  int32_t device_id;
};
struct DataType {
  uint8_t code;  // kFloat = 2, kBfloat = 4
  uint8_t bits;
  uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // nullptr: compact row-major
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};

constexpr int32_t kCPU = 1;
constexpr uint8_t kFloatCode = 2;
constexpr uint8_t kBfloatCode = 4;

// lars::DType code of a DLPack dtype, or -1.
inline int dtype_code(const DataType& t) {
  if (t.lanes != 1) return -1;
  if (t.code == kFloatCode) {
    if (t.bits == 32) return 0;
    if (t.bits == 16) return 1;
    if (t.bits == 64) return 3;
  }
  if (t.code == kBfloatCode && t.bits == 16) return 2;
  return -1;
}

// The data pointer of a contiguous CPU tensor with `numel` elements of dtype `dtype`, described by
// a "dltensor" capsule; 0 when the capsule describes anything else.
inline int64_t checked_pointer(PyObject* capsule, int64_t numel, int dtype) {
  if (!PyCapsule_IsValid(capsule, "dltensor")) return 0;
  const auto* m = static_cast<const ManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (m == nullptr) return 0;
  const Tensor& t = m->dl_tensor;
  if (t.device.device_type != kCPU || dtype_code(t.dtype) != dtype || t.ndim < 0) return 0;
  int64_t n = 1;
  for (int32_t d = 0; d < t.ndim; ++d) n *= t.shape[d];
  if (n != numel) return 0;
  if (t.strides != nullptr) {
    int64_t expect = 1;
    for (int32_t d = t.ndim - 1; d >= 0; --d) {
      if (t.shape[d] != 1 && t.strides[d] != expect) return 0;
      expect *= t.shape[d];
    }
  }
  if (numel == 0) return 1;  // never dereferenced; non-zero marks "checked"
  return static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.data)) +
         static_cast<int64_t>(t.byte_offset);
}

}  // namespace dl
}  // namespace lars
