// Read-only view of a DLPack capsule, enough to check a tensor's layout and take its data pointer.
// The structs follow the public DLPack ABI (dlpack.h): v0.x "dltensor" capsules
// (DLManagedTensor) and v1.x "dltensor_versioned" ones (DLManagedTensorVersioned), which
// torch._C._to_dlpack / _to_dlpack_versioned produce. We never consume a capsule (its destructor
// still owns the tensor, and the capsule keeps the tensor's storage alive while the caller holds
// it); we only read it. One capsule per tensor replaces separate Python reads of pointer, shape,
// strides, dtype and device, and it describes the tensor as it is NOW, at this step.
#pragma once

#include <Python.h>

#include <cstdint>
#include <string>
#include <vector>

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
struct ManagedTensor {  // v0.x
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};
struct Version {
  uint32_t major;
  uint32_t minor;
};
struct ManagedTensorVersioned {  // v1.x
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  uint64_t flags;
  Tensor dl_tensor;
};

constexpr int32_t kCPU = 1;
constexpr uint8_t kFloatCode = 2;
constexpr uint8_t kBfloatCode = 4;
constexpr uint64_t kFlagReadOnly = 1;

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

inline bool is_capsule(PyObject* obj) { return PyCapsule_CheckExact(obj) != 0; }

// The DLTensor a capsule describes, or nullptr (not a DLPack capsule, already consumed, or a
// major version we do not know). *read_only is set from the v1 flags.
inline const Tensor* tensor_of(PyObject* capsule, bool* read_only) {
  *read_only = false;
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    const auto* m = static_cast<const ManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    return m == nullptr ? nullptr : &m->dl_tensor;
  }
  if (PyCapsule_IsValid(capsule, "dltensor_versioned")) {
    const auto* m = static_cast<const ManagedTensorVersioned*>(
        PyCapsule_GetPointer(capsule, "dltensor_versioned"));
    if (m == nullptr || m->version.major != 1) return nullptr;
    *read_only = (m->flags & kFlagReadOnly) != 0;
    return &m->dl_tensor;
  }
  PyErr_Clear();
  return nullptr;
}

// Checks a capsule against an exact layout: a CPU tensor of `shape` and dtype code `dtype`,
// C-contiguous (strides of size-1 dimensions are free), writable when `write`. Returns the data
// pointer (1 for an empty tensor: never dereferenced), or 0 with *why set.
inline int64_t checked_pointer(PyObject* capsule, const std::vector<int64_t>& shape, int dtype,
                               bool write, std::string* why) {
  bool read_only = false;
  const Tensor* t = tensor_of(capsule, &read_only);
  if (t == nullptr) {
    *why = "not a DLPack tensor capsule";
    return 0;
  }
  if (t->device.device_type != kCPU) {
    *why = "not a CPU tensor";
    return 0;
  }
  if (dtype_code(t->dtype) != dtype) {
    *why = "dtype differs from the plan";
    return 0;
  }
  if (write && read_only) {
    *why = "read-only";
    return 0;
  }
  if (t->ndim < 0 || static_cast<size_t>(t->ndim) != shape.size()) {
    *why = "shape differs from the plan";
    return 0;
  }
  int64_t numel = 1;
  for (int32_t d = 0; d < t->ndim; ++d) {
    if (t->shape[d] != shape[static_cast<size_t>(d)]) {
      *why = "shape differs from the plan";
      return 0;
    }
    numel *= t->shape[d];
  }
  if (t->strides != nullptr) {
    int64_t expect = 1;
    for (int32_t d = t->ndim - 1; d >= 0; --d) {
      if (t->shape[d] != 1 && t->strides[d] != expect) {
        *why = "not contiguous";
        return 0;
      }
      expect *= t->shape[d];
    }
  }
  if (numel == 0) return 1;
  const auto p = reinterpret_cast<uintptr_t>(t->data) + static_cast<uintptr_t>(t->byte_offset);
  if (p == 0) {
    *why = "null data pointer";
    return 0;
  }
  return static_cast<int64_t>(p);
}

}  // namespace dl
}  // namespace lars
