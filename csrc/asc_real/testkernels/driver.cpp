// The C entry of the real runner's test library (lars_npu/_asc_real_test.so): runs one of the test
// kernels of this directory on one core of the real runner (tests/test_asc_real.py).
#include <cstring>
#include <mutex>
#include <vector>

#include "../asc_launch.h"

#define LARS_ASC_TEST_KERNEL(NAME) \
  extern "C" void NAME(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);
LARS_ASC_TEST_KERNEL(lars_test_sum_right)
LARS_ASC_TEST_KERNEL(lars_test_sum_datacopy_unaligned)
LARS_ASC_TEST_KERNEL(lars_test_sum_reads_pad_lanes)
LARS_ASC_TEST_KERNEL(lars_test_sum_uninitialized_lanes)
LARS_ASC_TEST_KERNEL(lars_test_muladd_axpy)
LARS_ASC_TEST_KERNEL(lars_test_muladd_axpy_f16)
LARS_ASC_TEST_KERNEL(lars_test_cast_f16_to_f32)
LARS_ASC_TEST_KERNEL(lars_test_cast_f32_to_f16)
LARS_ASC_TEST_KERNEL(lars_test_store_past_output)
LARS_ASC_TEST_KERNEL(lars_test_dup_past_ub)
#undef LARS_ASC_TEST_KERNEL

namespace {

using Kernel = void (*)(GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR, GM_ADDR);

struct Entry {
  const char* name;
  Kernel kernel;
};

constexpr Entry kKernels[] = {
    {"sum_right", &lars_test_sum_right},
    {"sum_datacopy_unaligned", &lars_test_sum_datacopy_unaligned},
    {"sum_reads_pad_lanes", &lars_test_sum_reads_pad_lanes},
    {"sum_uninitialized_lanes", &lars_test_sum_uninitialized_lanes},
    {"muladd_axpy", &lars_test_muladd_axpy},
    {"muladd_axpy_f16", &lars_test_muladd_axpy_f16},
    {"cast_f16_to_f32", &lars_test_cast_f16_to_f32},
    {"cast_f32_to_f16", &lars_test_cast_f32_to_f16},
    {"store_past_output", &lars_test_store_past_output},
    {"dup_past_ub", &lars_test_dup_past_ub},
};

}  // namespace

// Runs test kernel `name` on one core: inputs x, y, z (`in_bytes` each; y, z may be null), output
// `out` (`out_bytes`), n in the kernel's argument block; the core starts in saturation or
// INF_NAN mode. Returns 0, or 1 with the error in err.
extern "C" __attribute__((visibility("default"))) int lars_asc_real_testkernel(
    const char* name, uint8_t* x, uint8_t* y, uint8_t* z, uint64_t in_bytes, uint8_t* out,
    uint64_t out_bytes, uint32_t n, int saturation, char* err, size_t err_len) {
  static std::mutex one_launch_at_a_time;
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  return lars_asc_real::Guarded(err, err_len, [&] {
    Kernel kernel = nullptr;
    for (const Entry& e : kKernels) {
      if (std::strcmp(e.name, name) == 0) kernel = e.kernel;
    }
    if (kernel == nullptr) throw lars_asc_real::ModelError(std::string("no test kernel ") + name);
    alignas(32) uint32_t args[8] = {n, 0, 0, 0, 0, 0, 0, 0};
    std::vector<lars_asc_real::GmRegion> gm;
    auto region = [&gm](uint8_t* p, uint64_t bytes) {
      const auto a = reinterpret_cast<uintptr_t>(p);
      if (a != 0) gm.push_back({a, a + bytes});
    };
    region(x, in_bytes);
    region(y, in_bytes);
    region(z, in_bytes);
    region(out, out_bytes);
    auto* a = reinterpret_cast<uint8_t*>(args);
    region(a, sizeof(args));
    lars_asc_real::Launch(1, 0, saturation != 0, gm, [&] { kernel(x, y, z, out, a); });
  });
}
