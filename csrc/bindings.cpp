// pybind11 module lars_npu._C: converts arguments, releases the GIL around kernels, nothing more.
// Tensors arrive as arrays of raw data pointers (zero-copy views of contiguous tensors), element
// counts and dtype codes, so the module never links against libtorch and works with any torch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/fused.h"
#include "cpu/overlap.h"
#include "dlpack_view.h"
#include "emu/emu_launch.h"
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

// allow_null: a null pointer means "absent" (weights of gradient-only tensors in pass 1).
std::vector<lars::TensorRef> refs(const I64& ptr, const I64& numel, const I64& dtype,
                                  const char* name, bool allow_null = false) {
  const py::ssize_t n = numel.shape(0);
  check_len(ptr, n, name);
  check_len(dtype, n, "dtype");
  std::vector<lars::TensorRef> out(static_cast<size_t>(n));
  const int64_t* p = ptr.data();
  const int64_t* c = numel.data();
  const int64_t* d = dtype.data();
  for (py::ssize_t i = 0; i < n; ++i) {
    if (d[i] < lars::kFloat32 || d[i] > lars::kFloat64) {
      throw std::invalid_argument("dtype: unsupported dtype code " + std::to_string(d[i]));
    }
    if (c[i] < 0) throw std::invalid_argument("numel: negative element count");
    if (c[i] > 0 && p[i] == 0 && !allow_null) {
      throw std::invalid_argument(std::string(name) + ": null data pointer");
    }
    out[static_cast<size_t>(i)] = {reinterpret_cast<void*>(static_cast<uintptr_t>(p[i])), c[i],
                                   static_cast<int>(d[i])};
  }
  return out;
}

py::tuple square_sums(const I64& w_ptr, const I64& g_ptr, const I64& numel, const I64& dtype,
                      int num_threads) {
  const auto w = refs(w_ptr, numel, dtype, "w_ptr", /*allow_null=*/true);
  const auto g = refs(g_ptr, numel, dtype, "g_ptr");
  const py::ssize_t n = numel.shape(0);
  F64 w_s(n), g_s(n);
  double* ws = w_s.mutable_data();
  double* gs = g_s.mutable_data();
  {
    py::gil_scoped_release release;
    lars::square_sums(w.data(), g.data(), n, ws, gs, num_threads);
  }
  return py::make_tuple(w_s, g_s);
}

void lars_rewrite(const I64& w_ptr, const I64& g_ptr, const I64& out_ptr, const I64& numel,
                  const I64& dtype, const F64& lam, const F64& wd, int num_threads) {
  const auto w = refs(w_ptr, numel, dtype, "w_ptr");
  const auto g = refs(g_ptr, numel, dtype, "g_ptr");
  const auto out = refs(out_ptr, numel, dtype, "out_ptr");
  const py::ssize_t n = numel.shape(0);
  check_len(lam, n, "lam");
  check_len(wd, n, "wd");
  py::gil_scoped_release release;
  lars::lars_rewrite(w.data(), g.data(), out.data(), lam.data(), wd.data(), nullptr, n,
                     num_threads);
}

py::tuple multi_lars(const I64& w_ptr, const I64& g_ptr, const I64& numel, const I64& dtype,
                     const U8& adapt, const F64& wd, const F64& lr, double epsilon,
                     double coefficient, bool use_clip, bool guard_zero_norm, int num_threads) {
  const auto w = refs(w_ptr, numel, dtype, "w_ptr");
  const auto g = refs(g_ptr, numel, dtype, "g_ptr");
  const py::ssize_t n = numel.shape(0);
  check_len(adapt, n, "adapt");
  check_len(wd, n, "wd");
  check_len(lr, n, "lr");
  const lars::Hyper h{epsilon, coefficient, use_clip, guard_zero_norm};
  F64 lam(n), w_s(n), g_s(n);
  double* l = lam.mutable_data();
  double* ws = w_s.mutable_data();
  double* gs = g_s.mutable_data();
  bool found_inf;
  {
    py::gil_scoped_release release;
    found_inf = lars::multi_lars(w.data(), g.data(), adapt.data(), wd.data(), lr.data(), n, h, l,
                                 ws, gs, num_threads);
  }
  return py::make_tuple(found_inf, lam, w_s, g_s);
}

double trust_ratio(double w_s, double g_s, double weight_decay, double lr, double epsilon,
                   double coefficient, bool use_clip, bool guard_zero_norm) {
  return lars::trust_ratio(w_s, g_s, weight_decay, lr,
                           lars::Hyper{epsilon, coefficient, use_clip, guard_zero_norm});
}

// ---- the fused LARS + momentum-SGD step ----------------------------------------------------------

// The plan plus the exact shape of every tensor, so that each step can prove, from DLPack
// capsules made at that step, that every parameter, gradient and momentum buffer is still the
// tensor the plan was built for (LayoutError otherwise, before anything is written).
struct CheckedPlan {
  std::shared_ptr<lars::FusedPlan> plan;
  std::vector<std::vector<int64_t>> shapes;
  // The pointers (parameters, gradients, buffers) of the last step whose tensors were proven not
  // to share memory: the same pointers with the plan's fixed sizes need no new proof.
  std::vector<int64_t> disjoint;
};

// A tensor that does not fit the plan (raised before anything is written); Python type
// lars_npu._C.LayoutError, a ValueError, with .role ("parameter"|"gradient"|"momentum_buffer")
// and .index attributes set by the binding below.
struct LayoutError : std::runtime_error {
  LayoutError(std::string role_, int64_t index_, const std::string& why)
      : std::runtime_error(role_ + " " + std::to_string(index_) + " does not fit the plan: " +
                           why),
        role(std::move(role_)),
        index(index_) {}
  std::string role;
  int64_t index;
};

std::shared_ptr<CheckedPlan> make_plan(const py::list& shapes, const I64& w_dtype,
                                       const I64& g_dtype, const U8& adapt, const U8& momentum,
                                       int64_t cache_budget_bytes) {
  const py::ssize_t n = static_cast<py::ssize_t>(shapes.size());
  check_len(w_dtype, n, "w_dtype");
  check_len(g_dtype, n, "g_dtype");
  check_len(adapt, n, "adapt");
  check_len(momentum, n, "momentum");
  auto out = std::make_shared<CheckedPlan>();
  out->shapes.resize(static_cast<size_t>(n));
  std::vector<lars::FusedTensorSpec> specs(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    const int wd = static_cast<int>(w_dtype.data()[i]);
    const int gd = static_cast<int>(g_dtype.data()[i]);
    if (!lars::FusedPlan::supported_pair(wd, gd)) {
      throw std::invalid_argument("g_dtype: unsupported (parameter, gradient) dtype pair (" +
                                  std::to_string(wd) + ", " + std::to_string(gd) + ")");
    }
    int64_t numel = 1;
    for (const py::handle d : py::cast<py::tuple>(shapes[static_cast<size_t>(i)])) {
      const int64_t v = py::cast<int64_t>(d);
      if (v < 0) throw std::invalid_argument("shapes: negative dimension");
      out->shapes[static_cast<size_t>(i)].push_back(v);
      numel *= v;
    }
    specs[static_cast<size_t>(i)] = {numel, wd, gd, adapt.data()[i] != 0,
                                     momentum.data()[i] != 0};
  }
  if (cache_budget_bytes <= 0) cache_budget_bytes = lars::last_level_cache_bytes() / 2;
  out->plan = std::make_shared<lars::FusedPlan>(std::move(specs), cache_budget_bytes);
  return out;
}

// `method` is an interned name (made once, below): PyObject_CallMethod would build the name
// string on every call, and this runs twice per tensor per step.
int64_t call_int(PyObject* obj, PyObject* method) {
  PyObject* r = PyObject_CallMethodNoArgs(obj, method);
  if (r == nullptr) throw py::error_already_set();
  const long long v = PyLong_AsLongLong(r);
  Py_DECREF(r);
  if (PyErr_Occurred()) throw py::error_already_set();
  return static_cast<int64_t>(v);
}

// Pointers of one role, from a Python list. Entries are either DLPack capsules, checked against
// the plan's exact layout and against the tensor's storage (`stores[i]`, its untyped_storage():
// the bytes the kernel touches must lie inside it), or ints: raw pointers of tensors the caller
// staged itself and holds. None: no tensor (a buffer without momentum).
std::vector<int64_t> pointers(const CheckedPlan& cp, const py::list& obj, const py::object& stores,
                              const char* role, bool write, bool g_role) {
  const lars::FusedPlan& plan = *cp.plan;
  const py::ssize_t n = static_cast<py::ssize_t>(plan.size());
  if (static_cast<py::ssize_t>(obj.size()) != n) {
    throw std::invalid_argument(std::string(role) + ": wrong length");
  }
  const bool have_stores = !stores.is_none();
  if (have_stores && (!PyList_Check(stores.ptr()) || PyList_GET_SIZE(stores.ptr()) != n)) {
    throw std::invalid_argument(std::string(role) + " storages: a list of the same length");
  }
  std::vector<int64_t> out(static_cast<size_t>(n), 0);
  std::string why;
  for (py::ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(obj.ptr(), i);
    const lars::FusedTensorSpec& s = plan.spec(i);
    const size_t k = static_cast<size_t>(i);
    if (item == Py_None) continue;
    if (!lars::dl::is_capsule(item)) {
      out[k] = PyLong_AsLongLong(item);
      if (PyErr_Occurred()) throw py::error_already_set();
      continue;
    }
    if (!have_stores) throw LayoutError(role, i, "a capsule without its storage");
    const int dtype = g_role ? s.g_dtype : s.w_dtype;
    out[k] = lars::dl::checked_pointer(item, cp.shapes[k], dtype, write, &why);
    if (out[k] == 0) throw LayoutError(role, i, why);
    if (s.numel == 0) continue;
    static PyObject* const data_ptr_name = PyUnicode_InternFromString("data_ptr");
    static PyObject* const nbytes_name = PyUnicode_InternFromString("nbytes");
    PyObject* store = PyList_GET_ITEM(stores.ptr(), i);
    const int64_t base = call_int(store, data_ptr_name);
    const int64_t size = call_int(store, nbytes_name);
    const int64_t bytes = s.numel * static_cast<int64_t>(lars::dtype_size(dtype));
    if (out[k] < base || out[k] - base > size - bytes) {
      throw LayoutError(role, i, "its storage does not hold the planned elements");
    }
  }
  return out;
}

// Refuses (LayoutError, before any write) a step where a parameter or momentum buffer, which it
// writes, shares a byte with any other of its tensors (csrc/cpu/overlap.h). Gradients, only read,
// may share memory with each other.
void check_disjoint(CheckedPlan& cp, const std::vector<int64_t>& w, const std::vector<int64_t>& g,
                    const std::vector<int64_t>& m) {
  const lars::FusedPlan& plan = *cp.plan;
  const size_t n = static_cast<size_t>(plan.size());
  if (cp.disjoint.size() == 3 * n && std::equal(w.begin(), w.end(), cp.disjoint.begin()) &&
      std::equal(g.begin(), g.end(), cp.disjoint.begin() + static_cast<std::ptrdiff_t>(n)) &&
      std::equal(m.begin(), m.end(), cp.disjoint.begin() + static_cast<std::ptrdiff_t>(2 * n))) {
    return;  // the tensors of the last proven step, at the same addresses and sizes
  }
  std::vector<lars::ByteRange> ranges;
  ranges.reserve(3 * n);
  for (size_t i = 0; i < n; ++i) {
    const lars::FusedTensorSpec& s = plan.spec(static_cast<int64_t>(i));
    if (s.numel == 0) continue;
    const auto wb = static_cast<uint64_t>(s.numel) * lars::dtype_size(s.w_dtype);
    const auto gb = static_cast<uint64_t>(s.numel) * lars::dtype_size(s.g_dtype);
    const auto id = static_cast<int64_t>(i);
    ranges.push_back({static_cast<uint64_t>(w[i]), static_cast<uint64_t>(w[i]) + wb, true, id});
    ranges.push_back(
        {static_cast<uint64_t>(g[i]), static_cast<uint64_t>(g[i]) + gb, false, id + 1 * plan.size()});
    if (s.momentum && m[i] != 0) {
      ranges.push_back(
          {static_cast<uint64_t>(m[i]), static_cast<uint64_t>(m[i]) + wb, true, id + 2 * plan.size()});
    }
  }
  const auto hit = lars::find_conflict(ranges);
  if (hit.first >= 0) {
    static const char* const roles[] = {"parameter", "gradient", "momentum_buffer"};
    const int64_t size = plan.size();
    throw LayoutError(roles[hit.second / size], hit.second % size,
                      std::string("shares memory with ") + roles[hit.first / size] + " " +
                          std::to_string(hit.first % size) + ", and the step writes one of them");
  }
  cp.disjoint.assign(w.begin(), w.end());
  cp.disjoint.insert(cp.disjoint.end(), g.begin(), g.end());
  cp.disjoint.insert(cp.disjoint.end(), m.begin(), m.end());
}

py::tuple plan_step(CheckedPlan& cp, const py::list& w_obj, const py::list& g_obj,
                    const py::list& m_obj, const U8& first, const F64& wd, const F64& lr,
                    const F64& mu, const U8& nesterov, double epsilon, double coefficient,
                    bool use_clip, bool guard_zero_norm, int num_threads,
                    const py::object& w_store, const py::object& g_store,
                    const py::object& m_store) {
  lars::FusedPlan& plan = *cp.plan;
  const py::ssize_t n = static_cast<py::ssize_t>(plan.size());
  const std::vector<int64_t> w_ptr = pointers(cp, w_obj, w_store, "parameter", true, false);
  const std::vector<int64_t> g_ptr = pointers(cp, g_obj, g_store, "gradient", false, true);
  const std::vector<int64_t> m_ptr = pointers(cp, m_obj, m_store, "momentum_buffer", true, false);
  check_len(first, n, "first");
  check_len(wd, n, "wd");
  check_len(lr, n, "lr");
  check_len(mu, n, "mu");
  check_len(nesterov, n, "nesterov");
  static_assert(sizeof(void*) == sizeof(int64_t), "64-bit pointers expected");
  for (py::ssize_t i = 0; i < n; ++i) {
    const lars::FusedTensorSpec& s = plan.spec(i);
    const size_t k = static_cast<size_t>(i);
    if (s.numel > 0 && (w_ptr[k] == 0 || g_ptr[k] == 0 || (s.momentum && m_ptr[k] == 0))) {
      throw LayoutError(w_ptr[k] == 0 ? "parameter" : g_ptr[k] == 0 ? "gradient" : "momentum_buffer",
                        i, "null data pointer");
    }
  }
  check_disjoint(cp, w_ptr, g_ptr, m_ptr);
  const lars::Hyper h{epsilon, coefficient, use_clip, guard_zero_norm};
  F64 lam(n), w_s(n), g_s(n);
  double* l = lam.mutable_data();
  double* ws = w_s.mutable_data();
  double* gs = g_s.mutable_data();
  const lars::FusedStepArgs args{
      reinterpret_cast<void* const*>(w_ptr.data()), reinterpret_cast<const void* const*>(g_ptr.data()),
      reinterpret_cast<void* const*>(m_ptr.data()), first.data(), wd.data(), lr.data(), mu.data(),
      nesterov.data()};
  bool found_inf;
  {
    py::gil_scoped_release release;
    found_inf = plan.step(args, h, l, ws, gs, num_threads);
  }
  return py::make_tuple(found_inf, lam, w_s, g_s);
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
                      int64_t core_order, bool count, bool saturation) {
  const host::Layout L = blob_layout(blob, n, nc);
  if (count && staged) throw std::invalid_argument("count: not with staged=True");
  uint8_t* ws = blob.mutable_data();
  std::vector<uint64_t> counters;
  {
    py::gil_scoped_release release;
    if (staged) {
      lars_emu::launch_staged(ws, L, dtype, run_sq, run_update, block_dim, ub_bytes, core_order,
                              saturation);
    } else {
      lars_emu::launch(ws, L, dtype, run_sq, run_update, block_dim, ub_bytes, core_order,
                       count ? &counters : nullptr, saturation);
    }
  }
  if (!count) return py::none();
  constexpr py::ssize_t fields = lars_emu::kNumCounterFields;
  const auto rows = static_cast<py::ssize_t>(counters.size()) / fields;
  py::array_t<uint64_t> out({rows / static_cast<py::ssize_t>(block_dim),
                             static_cast<py::ssize_t>(block_dim), fields});
  std::copy(counters.begin(), counters.end(), out.mutable_data());
  return std::move(out);
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
#ifdef LARS_NPU_CANN_VERSION
  d["cann"] = std::string(LARS_NPU_CANN_VERSION);
  d["soc_version"] = std::string(LARS_NPU_SOC_VERSION);
  d["run_mode"] = std::string(LARS_NPU_RUN_MODE);
#else
  d["cann"] = false;
#endif
  d["npu_launcher"] = npu_launcher_built();
  d["cann_host_runner"] = cann_host_runner_built();
  d["ascendc_emulation"] = true;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lars_npu native kernels (CPU; AscendC when built with CANN)";
  m.def("square_sums", &square_sums, py::arg("w_ptr"), py::arg("g_ptr"), py::arg("numel"),
        py::arg("dtype"), py::arg("num_threads") = 0,
        "Pass 1: per-tensor fp64 sums of squares of w (pointer 0 = absent) and g.");
  m.def("lars_rewrite", &lars_rewrite, py::arg("w_ptr"), py::arg("g_ptr"), py::arg("out_ptr"),
        py::arg("numel"), py::arg("dtype"), py::arg("lam"), py::arg("wd"),
        py::arg("num_threads") = 0, "Pass 2: out = lam * (g + wd * w) per tensor.");
  m.def("multi_lars", &multi_lars, py::arg("w_ptr"), py::arg("g_ptr"), py::arg("numel"),
        py::arg("dtype"), py::arg("adapt"), py::arg("wd"), py::arg("lr"), py::arg("epsilon"),
        py::arg("coefficient"), py::arg("use_clip"), py::arg("guard_zero_norm"),
        py::arg("num_threads") = 0,
        "Both passes with the non-finite check between them; returns (found_inf, lam, w_s, g_s).");
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
        "Run the AscendC kernels on lars_npu's host emulation (not CANN's simulator), in place "
        "on a host workspace; staged=True goes through the staging runner CANN's cpu/sim "
        "builds use. core_order: 0 forward, -1 reverse, k > 0 a shuffle seeded with k. "
        "count=True returns the per-core counters, uint64 (launches, block_dim, fields), "
        "fields in emu_counter_fields. saturation: the floating-point mode each launch starts "
        "in (the stream's on hardware): True saturation (CTRL[48] = 0), False INF_NAN.");
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
  // The type lives as long as the process (never destroyed with the module's statics).
  static PyObject* layout_error =
      PyErr_NewException("lars_npu._C.LayoutError", PyExc_ValueError, nullptr);
  m.attr("LayoutError") = py::reinterpret_borrow<py::object>(layout_error);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const LayoutError& e) {
      py::object err = py::reinterpret_borrow<py::object>(layout_error)(e.what());
      err.attr("role") = e.role;
      err.attr("index") = e.index;
      PyErr_SetObject(layout_error, err.ptr());
    }
  });
  py::class_<CheckedPlan, std::shared_ptr<CheckedPlan>>(
      m, "FusedPlan",
      "Work list of a fused LARS + momentum-SGD step over a fixed list of tensors (built once), "
      "with each tensor's exact shape: every step checks what it is given against it.")
      .def(py::init(&make_plan), py::arg("shapes"), py::arg("w_dtype"), py::arg("g_dtype"),
           py::arg("adapt"), py::arg("momentum"), py::arg("cache_budget_bytes") = 0)
      .def("step", &plan_step, py::arg("w"), py::arg("g"), py::arg("m"), py::arg("first"),
           py::arg("wd"), py::arg("lr"), py::arg("mu"), py::arg("nesterov"), py::arg("epsilon"),
           py::arg("coefficient"), py::arg("use_clip"), py::arg("guard_zero_norm"),
           py::arg("num_threads") = 0, py::arg("w_storage") = py::none(),
           py::arg("g_storage") = py::none(), py::arg("m_storage") = py::none(),
           "One step; w, g, m are lists of DLPack capsules made this step, with the tensors' "
           "untyped_storage() in *_storage (each checked against the plan's exact layout and "
           "its storage: LayoutError, a ValueError, before any write), or raw pointers of "
           "staged tensors the caller holds (None: no buffer). Returns (found_inf, lam, w_s, "
           "g_s); nothing is written when found_inf.")
      .def_property_readonly("size", [](const CheckedPlan& c) { return c.plan->size(); })
      .def_property_readonly("num_batches", [](const CheckedPlan& c) { return c.plan->num_batches(); })
      .def_property_readonly("num_chunks", [](const CheckedPlan& c) { return c.plan->num_chunks(); })
      .def_property_readonly("total_elements",
                             [](const CheckedPlan& c) { return c.plan->total_elements(); })
      .def_property_readonly("scratch_bytes",
                             [](const CheckedPlan& c) { return c.plan->scratch_bytes(); });
}
