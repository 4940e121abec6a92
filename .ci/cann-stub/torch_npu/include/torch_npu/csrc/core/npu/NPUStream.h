// Stand-in for torch_npu's torch_npu/csrc/core/npu/NPUStream.h, for .ci/cann-build-check only
// (see ../../../../../../README.md): the part of torch_npu's stream API that
// csrc/npu/lars_npu_ops.cpp uses, declared as torch_npu's public header declares it. No
// definitions: in the real build they come from libtorch_npu.so.
//
// The class keeps the shape of torch_npu's (one c10::Stream member, a user-provided destructor),
// so that calls compile to what they would against the real header: NPUStream returned by value
// through memory, stream() an out-of-line const member.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include "acl/acl.h"  // aclrtStream (torch_npu's header includes its copy of CANN's acl.h)

namespace c10_npu {

class NPUStream {
 public:
  enum Unchecked { UNCHECKED };
  explicit NPUStream(Unchecked, c10::Stream stream) : stream_(stream) {}
  ~NPUStream() {}

  // The ACL stream. torch_npu first empties its task queue (operators it has queued but not yet
  // handed to ACL), so that work launched on the returned stream runs after them.
  aclrtStream stream() const;

 private:
  c10::Stream stream_;
};

// The current stream of an NPU (device_index -1: the current device).
NPUStream getCurrentNPUStream(c10::DeviceIndex device_index = -1);

}  // namespace c10_npu
