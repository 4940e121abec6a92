// pybind11 module lars_npu._C: the AscendC host plan and its launchers (emulation; NPU and CANN
// when built), build information and test hooks. The optimizer step itself is not here: it is
// the torch operators of csrc/ops (torch.ops.lars_npu.*), which this module's library registers
// when it is imported.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/fused.h"  // last_level_cache_bytes
#include "cpu/overlap.h"
#include "emu/emu_launch.h"
#include "npu/lars_emu_device.h"  // the resident workspace, staged on the emulation
#if defined(LARS_NPU_NPU_LAUNCHER) || defined(LARS_NPU_CANN_HOST_RUNNER)
#include "npu/lars_npu_launch.h"
#endif
#include "cpu/lars_cpu.h"

namespace py = pybind11;

namespace {

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

void check_len(const py::array& a, py::ssize_t n, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != n) {
    throw std::invalid_argument(std::string(name) + ": expected a 1-D array of length " +
                                std::to_string(n));
  }
}

double trust_ratio(double w_s, double g_s, double weight_decay, double lr, double epsilon,
                   double coefficient, bool use_clip, bool guard_zero_norm) {
  return lars::trust_ratio(w_s, g_s, weight_decay, lr,
                           lars::Hyper{epsilon, coefficient, use_clip, guard_zero_norm});
}

// ---- AscendC kernels: host tiling, and the launchers (emulation; NPU and CANN when built) ----
namespace host = lars_ascendc::host;

// The host plan's input, host::StepArgs, as a Python object with one named field per member
// (per-tensor fields as 1-D numpy arrays): _C.AscendStep. No positional argument lists.
template <typename T, typename Py>
void vec_field(py::class_<host::StepArgs>& cls, const char* name,
               std::vector<T> host::StepArgs::*field, const char* doc) {
  cls.def_property(
      name,
      [field](const host::StepArgs& a) {
        const std::vector<T>& v = a.*field;
        py::array_t<Py> out(static_cast<py::ssize_t>(v.size()));
        for (size_t i = 0; i < v.size(); ++i) out.mutable_data()[i] = static_cast<Py>(v[i]);
        return out;
      },
      [field, name](host::StepArgs& a,
                    const py::array_t<Py, py::array::c_style | py::array::forcecast>& v) {
        if (v.ndim() != 1) throw std::invalid_argument(std::string(name) + ": a 1-D array");
        std::vector<T>& dst = a.*field;
        dst.resize(static_cast<size_t>(v.shape(0)));
        for (py::ssize_t i = 0; i < v.shape(0); ++i) {
          dst[static_cast<size_t>(i)] = static_cast<T>(v.data()[i]);
        }
      },
      doc);
}

void bind_step_args(py::module_& m) {
  py::class_<host::StepArgs> cls(
      m, "AscendStep",
      "Everything one AscendC kernel step needs (csrc/ascendc/lars_host_plan.h StepArgs), by "
      "name: per-tensor fields are 1-D arrays of one length (checked by ascend_plan).");
  cls.def(py::init<>());
  vec_field<uint64_t, int64_t>(cls, "w", &host::StepArgs::w, "weight data addresses");
  vec_field<uint64_t, int64_t>(cls, "g", &host::StepArgs::g, "gradient data addresses");
  vec_field<uint64_t, int64_t>(cls, "m", &host::StepArgs::m,
                               "momentum buffer addresses (0: none)");
  vec_field<int64_t, int64_t>(cls, "numel", &host::StepArgs::numel, "elements per tensor");
  vec_field<uint8_t, uint8_t>(cls, "adapt", &host::StepArgs::adapt, "LARS adapts the tensor");
  vec_field<uint8_t, uint8_t>(cls, "has_m", &host::StepArgs::has_m, "the tensor has momentum");
  vec_field<uint8_t, uint8_t>(cls, "first", &host::StepArgs::first, "first momentum step");
  vec_field<uint8_t, uint8_t>(cls, "nesterov", &host::StepArgs::nesterov, "nesterov momentum");
  vec_field<float, double>(cls, "wd", &host::StepArgs::wd, "weight decay (fp32 in the kernel)");
  vec_field<float, double>(cls, "lr", &host::StepArgs::lr, "learning rate (fp32)");
  vec_field<float, double>(cls, "mu", &host::StepArgs::mu, "momentum (fp32)");
  vec_field<float, double>(cls, "given_ws", &host::StepArgs::given_ws,
                           "given Σw² per tensor (MindSpore LARSUpdate), or empty");
  vec_field<float, double>(cls, "given_gs", &host::StepArgs::given_gs, "given Σg², or empty");
  cls.def_readwrite("epsilon", &host::StepArgs::epsilon)
      .def_readwrite("coefficient", &host::StepArgs::coefficient)
      .def_readwrite("use_clip", &host::StepArgs::use_clip)
      .def_readwrite("guard_zero_norm", &host::StepArgs::guard_zero_norm)
      .def_readwrite("dtype", &host::StepArgs::dtype, "0 fp32, 1 fp16")
      .def_readwrite("mode", &host::StepArgs::mode, "0 LARSUpdate rewrite, 1 fused step")
      .def_readwrite("tile_sq", &host::StepArgs::tile_sq)
      .def_readwrite("tile_up", &host::StepArgs::tile_up)
      .def_readwrite("chunk_elems", &host::StepArgs::chunk_elems);
}

py::tuple outcome(const host::Outcome& r) {
  const auto n = static_cast<py::ssize_t>(r.lam.size());
  F64 lam(n), w_s(n), g_s(n);
  std::copy(r.lam.begin(), r.lam.end(), lam.mutable_data());
  std::copy(r.w_s.begin(), r.w_s.end(), w_s.mutable_data());
  std::copy(r.g_s.begin(), r.g_s.end(), g_s.mutable_data());
  return py::make_tuple(r.found_inf, lam, w_s, g_s);
}

py::dict layout_dict(const host::Layout& L) {
  py::dict d;
  d["n"] = L.n;
  d["num_chunks"] = L.num_chunks;
  d["partials"] = L.partials;
  d["bytes"] = L.bytes;
  return d;
}

// A byte array whose data starts 64-byte aligned: the workspace is the kernels' global memory on
// the emulation, where every DMA address must be 32-byte aligned.
py::array_t<uint8_t> aligned_bytes(uint64_t bytes) {
  const uint64_t size = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, size == 0 ? 64 : size);
  if (p == nullptr) throw std::bad_alloc();
  py::capsule owner(p, [](void* q) { std::free(q); });
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(bytes)}, {1}, static_cast<uint8_t*>(p),
                              owner);
}

// The workspace of one kernel step as a byte array (see csrc/ascendc/lars_host_plan.h), and its
// layout. The addresses in it are those the kernels will dereference.
py::tuple ascend_plan(const host::StepArgs& a) {
  host::validate(a);
  const host::Layout L = host::plan(a);
  py::array_t<uint8_t> blob = aligned_bytes(L.bytes);
  host::fill(blob.mutable_data(), L, a);
  return py::make_tuple(blob, layout_dict(L));
}

py::dict ascend_layout(uint64_t n, uint64_t nc) { return layout_dict(host::make_layout(n, nc)); }

using Blob = py::array_t<uint8_t, py::array::c_style>;

host::Layout blob_layout(const Blob& blob, uint64_t n, uint64_t nc) {
  const host::Layout L = host::make_layout(n, nc);
  if (blob.ndim() != 1 || static_cast<uint64_t>(blob.shape(0)) != L.bytes) {
    throw std::invalid_argument("workspace: expected " + std::to_string(L.bytes) + " bytes");
  }
  return L;
}

py::tuple ascend_read_back(const Blob& blob, uint64_t n, uint64_t nc) {
  return outcome(host::read_back(blob.data(), blob_layout(blob, n, nc)));
}

// Returns None, or with count=True the emulation's counters: uint64 (launches, block_dim,
// kNumCounterFields), fields lars_emu::kCounterFields (not with staged, whose copies are not the
// kernels').
py::object emu_launch(Blob& blob, uint64_t n, uint64_t nc, int dtype, bool run_sq,
                      bool run_update, int64_t block_dim, int64_t ub_bytes, bool staged,
                      int64_t core_order, bool count, bool saturation, bool auto_sync) {
  const host::Layout L = blob_layout(blob, n, nc);
  if (count && staged) throw std::invalid_argument("count: not with staged=True");
  uint8_t* ws = blob.mutable_data();
  std::vector<uint64_t> counters;
  {
    py::gil_scoped_release release;
    if (staged) {
      lars_emu::launch_staged(ws, L, dtype, run_sq, run_update, block_dim, ub_bytes, core_order,
                              saturation, auto_sync);
    } else {
      lars_emu::launch(ws, L, dtype, run_sq, run_update, block_dim, ub_bytes, core_order,
                       count ? &counters : nullptr, saturation, auto_sync);
    }
  }
  if (!count) return py::none();
  constexpr py::ssize_t fields = lars_emu::kNumCounterFields;
  const auto rows = static_cast<py::ssize_t>(counters.size()) / fields;
  py::array_t<uint64_t> out({rows / static_cast<py::ssize_t>(block_dim),
                             static_cast<py::ssize_t>(block_dim), fields});
  std::copy(counters.begin(), counters.end(), out.mutable_data());
  py::object result = std::move(out);  // (C++17 and C++20 agree on this one)
  return result;
}

// ---- the resident workspace (csrc/npu/lars_resident.h) ----------------------------------------
namespace resident = lars_npu_host::resident;

py::dict counts_dict(const resident::Counts& c) {
  py::dict d, regions;
  d["bytes"] = c.sent;
  d["zeroed"] = c.zeroed;
  d["copies"] = c.copies;
  d["compared"] = c.compared;
  d["full"] = c.full;
  d["zero_by_copy"] = c.zero_by_copy;
  for (int r = 0; r < resident::kNumRegions; ++r) {
    if (c.sent_by_region[r] != 0) regions[resident::region_name(r)] = c.sent_by_region[r];
  }
  d["regions"] = regions;
  return d;
}

// What the resident policy sends of `current` to a buffer that holds `previous` (None: a new
// buffer), for one workspace of layout (n, nc).
py::dict workspace_upload(uint64_t n, uint64_t nc, const py::object& previous,
                          const Blob& current, bool run_sq, bool run_update) {
  blob_layout(current, n, nc);
  Blob prev;
  if (!previous.is_none()) {
    prev = previous.cast<Blob>();
    blob_layout(prev, n, nc);
  }
  const resident::Plan p = resident::workspace_plan(
      n, nc, previous.is_none() ? nullptr : prev.data(), current.data(), run_sq, run_update);
  py::dict d = counts_dict(p.counts);
  py::list ranges;
  for (const resident::Range& r : p.ranges) {
    ranges.append(py::make_tuple(r.offset, r.bytes, r.zero));
  }
  d["ranges"] = ranges;
  return d;
}

py::dict staged_runner_launch(lars_npu_host::EmuStagedRunner& r, Blob& blob, uint64_t n,
                              uint64_t nc, int dtype, bool run_sq, bool run_update,
                              int64_t core_order, bool saturation, bool auto_sync) {
  const host::Layout L = blob_layout(blob, n, nc);
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
  r.mem.core_order = core_order;
  r.mem.saturation = saturation;
  r.mem.auto_sync = auto_sync;
  {
    py::gil_scoped_release release;
    r.launch(blob.mutable_data(), L, dtype, run_sq, run_update);
  }
  py::dict d = counts_dict(r.buf.last);
  d["tensor_bytes"] = r.buf.last_tensor_bytes;
  d["allocations"] = r.buf.allocations;
  py::dict moved;  // what the emulated device saw, counted by its memory policy
  moved["in"] = r.mem.bytes_in;
  moved["zeroed"] = r.mem.bytes_zeroed;
  moved["out"] = r.mem.bytes_out;
  moved["copies_in"] = r.mem.copies_in;
  d["moved"] = moved;
  return d;
}

#ifdef LARS_NPU_NPU_LAUNCHER
// The NPU launch: both kernels on `stream` (torch_npu's current stream), workspace already in
// device memory at `ws_addr`. Asynchronous, like any launch on a stream.
void npu_launch(uint64_t stream, uint64_t ws_addr, uint64_t n, uint64_t nc, int dtype,
                bool run_sq, bool run_update, uint32_t block_dim) {
  const host::Layout L = host::make_layout(n, nc);
  py::gil_scoped_release release;
  lars_npu_host::launch_on_stream(stream, ws_addr, L, dtype, run_sq, run_update, block_dim);
}
#endif

#ifdef LARS_NPU_CANN_HOST_RUNNER
// CANN's RUN_MODE=cpu (tikicpulib) or sim (simulator through ACL): host tensors, staged.
void cann_host_launch(Blob& blob, uint64_t n, uint64_t nc, int dtype, bool run_sq,
                      bool run_update, uint32_t block_dim) {
  const host::Layout L = blob_layout(blob, n, nc);
  uint8_t* ws = blob.mutable_data();
  py::gil_scoped_release release;
  lars_npu_host::cann_host_launch(ws, L, dtype, run_sq, run_update, block_dim);
}
#endif

constexpr bool npu_launcher_built() {
#ifdef LARS_NPU_NPU_LAUNCHER
  return true;
#else
  return false;
#endif
}

constexpr bool cann_host_runner_built() {
#ifdef LARS_NPU_CANN_HOST_RUNNER
  return true;
#else
  return false;
#endif
}

py::dict build_info() {
  py::dict d;
  d["openmp"] = lars::has_openmp();
  d["default_threads"] = lars::default_threads();
  d["chunk_elements"] = lars::kChunk;
  // Constants the C++ defines once and Python reads from here (lars_npu._backends._native).
  static_assert(lars::kChunk == lars_ascendc::kChunkElements, "one chunk size for every kernel");
  py::dict codes;
  codes["float32"] = static_cast<int>(lars::kFloat32);
  codes["float16"] = static_cast<int>(lars::kFloat16);
  codes["bfloat16"] = static_cast<int>(lars::kBFloat16);
  codes["float64"] = static_cast<int>(lars::kFloat64);
  d["dtype_codes"] = codes;
  d["ascend_tile_square_sums"] = lars_ascendc::kTileSquareSums;
  d["ascend_tile_update"] = lars_ascendc::kTileUpdate;
  d["ascend_flag_slots"] = lars_ascendc::kMaxCoreFlags;
  d["ascend_gm_align"] = lars_ascendc::host::kGmAlign;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = std::string("unknown");
#endif
#ifdef LARS_NPU_BUILD_TYPE
  d["build_type"] = std::string(LARS_NPU_BUILD_TYPE);
#endif
#ifdef LARS_NPU_TORCH_VERSION
  d["torch"] = std::string(LARS_NPU_TORCH_VERSION);  // the torch whose libtorch it links
#endif
#ifdef LARS_NPU_CANN_VERSION
  d["cann"] = std::string(LARS_NPU_CANN_VERSION);
  d["soc_version"] = std::string(LARS_NPU_SOC_VERSION);
  d["run_mode"] = std::string(LARS_NPU_RUN_MODE);
#else
  d["cann"] = false;
#endif
  d["npu_launcher"] = npu_launcher_built();
  d["cann_host_runner"] = cann_host_runner_built();
#ifdef LARS_NPU_NPU_OPS
  d["npu_ops"] = true;  // torch.ops.lars_npu.* have PrivateUse1 kernels (csrc/npu/lars_npu_ops.cpp)
#else
  d["npu_ops"] = false;
#endif
  d["ascendc_emulation"] = true;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lars_npu native kernels (CPU; AscendC when built with CANN)";
  m.def("trust_ratio", &trust_ratio, py::arg("w_s"), py::arg("g_s"), py::arg("weight_decay"),
        py::arg("lr"), py::arg("epsilon"), py::arg("coefficient"), py::arg("use_clip"),
        py::arg("guard_zero_norm"));
  m.def("build_info", &build_info);
  m.def("last_level_cache_bytes", &lars::last_level_cache_bytes);
  bind_step_args(m);
  m.def("ascend_plan", &ascend_plan, py::arg("step"),
        "Host tiling of one AscendC kernel step: (workspace bytes, layout dict). The addresses "
        "are those the kernels will read (device addresses on an NPU).");
  m.def("ascend_layout", &ascend_layout, py::arg("n"), py::arg("num_chunks"),
        "Layout of the workspace for n tensors and num_chunks chunks: {n, num_chunks, "
        "partials, bytes} (byte offsets).");
  m.def("ascend_read_back", &ascend_read_back, py::arg("workspace"), py::arg("n"),
        py::arg("num_chunks"),
        "(found_inf, lam, w_s, g_s) from a workspace after the kernels ran (host copy).");
  m.def("emu_launch", &emu_launch, py::arg("workspace"), py::arg("n"), py::arg("num_chunks"),
        py::arg("dtype"), py::arg("run_square_sums"), py::arg("run_update"),
        py::arg("block_dim"), py::arg("ub_bytes"), py::arg("staged") = false,
        py::arg("core_order") = 0, py::arg("count") = false, py::arg("saturation") = true,
        py::arg("auto_sync") = true,
        "Run the AscendC kernels on lars_npu's host emulation (not CANN's simulator), in place "
        "on a host workspace; staged=True goes through the staging runner CANN's cpu/sim "
        "builds use. core_order: 0 forward, -1 reverse, k > 0 a shuffle seeded with k. "
        "count=True returns the per-core counters, uint64 (launches, block_dim, fields), "
        "fields in emu_counter_fields. saturation: the floating-point mode each launch starts "
        "in (the stream's on hardware): True saturation (CTRL[48] = 0), False INF_NAN. "
        "auto_sync=False: refuse a vector instruction that depends on an earlier one with no "
        "PipeBarrier<PIPE_V> between them (the kernels as built without --cce-auto-sync).");
  {
    py::list fields;
    for (const char* f : lars_emu::kCounterFields) fields.append(f);
    m.attr("emu_counter_fields") = py::tuple(fields);
  }
  m.def(
      "emu_cross_core_probe",
      [](int64_t block_dim, int64_t order) {
        py::list out;
        for (float v : lars_emu::cross_core_probe(block_dim, order)) out.append(v);
        return out;
      },
      py::arg("block_dim"),
        py::arg("core_order"),
        "A deliberately wrong kernel (core b reads what core b-1 wrote in the same launch) on the "
        "emulation in the given core order: its result depends on the order.");
  m.def("workspace_upload", &workspace_upload, py::arg("n"), py::arg("num_chunks"),
        py::arg("previous"), py::arg("current"), py::arg("run_square_sums") = true,
        py::arg("run_update") = true,
        "What the resident workspace (csrc/npu/lars_resident.h) sends of `current` (a workspace "
        "of layout n, num_chunks) to a device buffer that holds `previous` from the last "
        "step (None: a new buffer): {bytes, zeroed, copies, compared, full, zero_by_copy, "
        "regions: {name: bytes sent}, ranges: [(offset, bytes, zero)]}.");
  py::class_<lars_npu_host::EmuStagedRunner>(
      m, "StagedRunner",
      "The staging runner of CANN's cpu / sim builds (csrc/npu/lars_staging.h) on lars_npu's "
      "emulation, its device buffer kept between calls: the resident workspace sends only what "
      "changed. One caller at a time.")
      .def(py::init([](int64_t block_dim, int64_t ub_bytes) {
             if (block_dim < 1 || block_dim > int64_t{lars_ascendc::kMaxCoreFlags}) {
               throw std::invalid_argument("block_dim: 1 to " +
                                           std::to_string(lars_ascendc::kMaxCoreFlags));
             }
             auto r = std::make_unique<lars_npu_host::EmuStagedRunner>();
             r->mem.block_dim = block_dim;
             r->mem.ub_bytes = ub_bytes;
             return r;
           }),
           py::arg("block_dim") = 8, py::arg("ub_bytes") = 192 * 1024)
      .def("launch", &staged_runner_launch, py::arg("workspace"), py::arg("n"),
           py::arg("num_chunks"), py::arg("dtype"), py::arg("run_square_sums"),
           py::arg("run_update"), py::arg("core_order") = 0, py::arg("saturation") = true,
           py::arg("auto_sync") = true,
           "Run the kernels through the staging runner on this runner's buffer, in place on the "
           "host workspace; returns the workspace upload's counts (workspace_upload's keys), "
           "tensor_bytes, allocations and what the device moved.")
      .def("release", &lars_npu_host::EmuStagedRunner::release,
           "Free the buffer; the next launch starts on a new one.")
      .def_property(
          "block_dim", [](const lars_npu_host::EmuStagedRunner& r) { return r.mem.block_dim; },
          [](lars_npu_host::EmuStagedRunner& r, int64_t v) {
            if (v < 1 || v > int64_t{lars_ascendc::kMaxCoreFlags}) {
              throw std::invalid_argument("block_dim: 1 to " +
                                          std::to_string(lars_ascendc::kMaxCoreFlags));
            }
            r.mem.block_dim = v;
          })
      .def_property_readonly(
          "known", [](const lars_npu_host::EmuStagedRunner& r) { return r.buf.ws.known(); },
          "Whether anything of the buffer is known (false: the next launch sends everything).")
      .def_property(
          "fail_after_copies",
          [](const lars_npu_host::EmuStagedRunner& r) { return r.mem.fail_after_copies; },
          [](lars_npu_host::EmuStagedRunner& r, int64_t v) { r.mem.fail_after_copies = v; },
          "Test hook: >= 0 makes the host-to-device copy after this many (in the next launch) "
          "throw once.");
#ifdef LARS_NPU_NPU_LAUNCHER
  m.def("npu_launch", &npu_launch, py::arg("stream"), py::arg("workspace_addr"), py::arg("n"),
        py::arg("num_chunks"), py::arg("dtype"), py::arg("run_square_sums"),
        py::arg("run_update"), py::arg("block_dim") = 0,
        "Launch the AscendC kernels on an ACL stream (torch_npu's current stream) with the "
        "workspace in device memory; asynchronous. block_dim 0: every vector core.");
#endif
#ifdef LARS_NPU_CANN_HOST_RUNNER
  m.def("cann_host_launch", &cann_host_launch, py::arg("workspace"), py::arg("n"),
        py::arg("num_chunks"), py::arg("dtype"), py::arg("run_square_sums"),
        py::arg("run_update"), py::arg("block_dim"),
        "Run the kernels as built by CANN with RUN_MODE=" LARS_NPU_RUN_MODE
        " on host tensors (staged), in place on a host workspace.");
#endif
  // Hooks for lars_npu's own tests, kept out of the module's public surface.
  py::module_ testing = m.def_submodule("_testing", "lars_npu's test hooks; not an API.");
  testing.def(
      "find_conflict",
      [](const I64& begin, const I64& end, const U8& written) {
        const py::ssize_t n = begin.shape(0);
        check_len(end, n, "end");
        check_len(written, n, "written");
        std::vector<lars::ByteRange> r(static_cast<size_t>(n));
        for (py::ssize_t i = 0; i < n; ++i) {
          r[static_cast<size_t>(i)] = {static_cast<uint64_t>(begin.data()[i]),
                                       static_cast<uint64_t>(end.data()[i]),
                                       written.data()[i] != 0, static_cast<int64_t>(i)};
        }
        const auto hit = lars::find_conflict(r);
        return py::make_tuple(hit.first, hit.second);
      },
      py::arg("begin"), py::arg("end"), py::arg("written"),
      "csrc/cpu/overlap.h's find_conflict on byte ranges: (i, j) or (-1, -1).");
  testing.def(
      "rewrite",
      [](int64_t w_ptr, int64_t g_ptr, int64_t out_ptr, int64_t numel, int dtype, double lam,
         double wd) {
        if (dtype < lars::kFloat32 || dtype > lars::kFloat64) {
          throw std::invalid_argument("dtype: unsupported dtype code " + std::to_string(dtype));
        }
        if (numel < 0 || (numel > 0 && (w_ptr == 0 || g_ptr == 0 || out_ptr == 0))) {
          throw std::invalid_argument("null data pointer");
        }
        const auto at = [](int64_t p) { return reinterpret_cast<void*>(static_cast<uintptr_t>(p)); };
        const lars::TensorRef w{at(w_ptr), numel, dtype}, g{at(g_ptr), numel, dtype},
            out{at(out_ptr), numel, dtype};
        lars::lars_rewrite(&w, &g, &out, &lam, &wd, nullptr, 1, 1);
      },
      py::arg("w_ptr"), py::arg("g_ptr"), py::arg("out_ptr"), py::arg("numel"), py::arg("dtype"),
      py::arg("lam"), py::arg("wd"),
      "out = lam * (g + wd * w) on one contiguous tensor of `numel` elements, through the CPU "
      "kernel (for the exact-conversion tests; pointers of tensors the caller holds).");
  testing.def("emu_selftest", &lars_emu::selftest, py::arg("case"), py::arg("saturation") = true,
              "Run a deliberately broken mini-kernel on the AscendC emulation (raises "
              "RuntimeError), its core starting in saturation (True) or INF_NAN mode.");
  testing.def(
      "emu_fp16_probe",
      [](bool saturation) {
        py::dict d;
        for (const auto& [name, values] : lars_emu::fp16_probe(saturation)) {
          py::list l;
          for (float v : values) l.append(v);
          d[py::str(name)] = l;
        }
        return d;
      },
      py::arg("saturation"),
      "What the emulated vector unit makes of fp16 inf / NaN / overflow in one floating-point "
      "mode: Cast half->float of [inf, -inf, nan, 1], Cast float->half of [1e6, -1e6, nan, inf, "
      "1], fp16 Add of [60000 + 60000, 1 + 1].");
  testing.def(
      "ascend_ub_bytes",
      [](const std::string& kernel, uint32_t tile, int dtype) -> uint64_t {
        if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
        const auto eb = static_cast<uint32_t>(host::dtype_bytes(dtype));
        if (kernel == "square_sums") return lars_ascendc::SquareSumsUbBytes(tile, eb);
        if (kernel == "update") return lars_ascendc::UpdateUbBytes(tile, eb);
        if (kernel == "lambda") return lars_ascendc::LambdaUbBytes();
        throw std::invalid_argument("kernel: square_sums, update or lambda");
      },
      py::arg("kernel"), py::arg("tile"), py::arg("dtype"),
      "Unified Buffer bytes per core of a kernel at a tile size (lars_tiling.h's formula).");
  testing.def(
      "ascend_max_tile",
      [](const std::string& kernel, int dtype) -> uint32_t {
        if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: fp32 (0) or fp16 (1)");
        if (kernel == "square_sums") return host::max_tile_sq(dtype);
        if (kernel == "update") return host::max_tile_up(dtype);
        throw std::invalid_argument("kernel: square_sums or update");
      },
      py::arg("kernel"), py::arg("dtype"),
      "The largest tile_sq / tile_up the host plan takes for a dtype.");
  testing.attr("ascend_ub_budget") = lars_ascendc::kUbBudgetBytes;
}
