// The PrivateUse1 (Ascend NPU) kernels of the lars_npu operators (schemas: csrc/ops/ops.cpp):
// the AscendC kernels of csrc/ascendc, launched on torch_npu's current stream with the tensors'
// device pointers. Built only by a CANN build with RUN_MODE=npu that finds torch_npu's headers
// (cmake/LarsAscend.cmake: LARS_NPU_NPU_OPS).
//
// NEVER RUN ON AN NPU. lars_npu's CI machines have no CANN, no NPU and no torch_npu: there this
// file is compiled against stand-in declarations of the ACL and torch_npu calls it makes
// (.ci/cann-stub, .ci/cann-build-check, which also checks that the module registers these kernels
// with the operators' schemas), and its host logic is run by .ci/npu-ops-host-check: CPU tensors,
// stand-ins for torch_npu's stream and the launcher, the AscendC kernels on lars_npu's emulation,
// every result compared with the CPU operator's. Nothing of torch_npu or ACL has been exercised
// (streams, the pinned copy, the caching allocator, tensors in torch_npu's private formats, which
// these kernels would misread). `lars-npu check` on an NPU is the first place it can be proven.
//
// One call of an operator:
//   1. every check of the CPU operator (csrc/ops/checks.h), plus what the kernels need: float32 or
//      float16 tensors, hyper-parameters and given sums that float32 can carry; nothing is
//      written before they all pass;
//   2. tensors the kernels cannot take as they are (non-contiguous, negative bit, base address
//      not 32-byte aligned, a buffer of another dtype) are staged as contiguous device copies;
//   3. the tensors go into launch sets, one dtype each (the kernels take one dtype per launch):
//      each set is one workspace of lars_host_plan.h (host::validate / plan / fill). All the
//      workspaces, with the index tables that map a set's tensors and chunks back to the call's,
//      are built in ONE pinned host buffer, compared byte for byte with what the call's resident
//      device buffer (kept per device and stream) is known to hold, and only what differs is
//      copied, asynchronously on the current stream (csrc/npu/lars_resident.h; "the resident
//      device buffer" below);
//   4. launches (launch_on_stream, csrc/npu/lars_npu_launch.cpp), all on the current stream: the
//      square-sums kernel of every set, then, where a step writes, the λ and update kernels. With
//      several sets the found_inf decision covers all of them: it is made on the device (the
//      cores' flags of every set) and written into each writing set's first flag slot before its
//      update launch, so no set writes when any gradient is not finite. Nothing waits for the
//      device;
//   5. results as device tensors computed from the workspaces: found_inf (0-dim bool), λ, Σw², Σg²
//      (float64 per tensor, λ NaN when the step was skipped), like the CPU operator's but on the
//      parameters' device. Staged copies go back with a device-side select on found_inf (no host
//      wait); version counters of written tensors are bumped (always: whether the step ran is
//      known only on the device).
//
// How the three operators map to the kernels (StepArgs::mode, run_sq, run_update):
//   fused_step_   mode 1 (fused momentum SGD), one set per parameter dtype, every tensor updated;
//                 the square-sums kernel runs unless the sums are given.
//   lars_         mode 0 (LARSUpdate: g <- λ(g + wd·w) in place). Adapted tensors: sets that
//                 run all three kernels. Not adapted: square-sums-only sets, so that found_inf
//                 covers their gradients as on the CPU, while the update kernel (which rewrites
//                 every chunk it is given) never writes a gradient LARS leaves alone.
//   square_sums   square-sums kernel only; a weight and gradient of different dtypes run in
//                 float32 (the other one staged, exactly).
// With given sums (fused_step_, lars_) the square-sums kernel does not run: the sums go into the
// workspace (host::fill) and found_inf is known on the host (a non-finite given Σg²), as on the
// CPU. cache_budget_bytes is a CPU notion and is ignored. LARS_NPU_BLOCK_DIM (as for the Python
// npu backend) sets the blocks per launch; unset or 0: every vector core.
//
// Differences from the CPU operator, by the kernels' nature: λ is computed in float32 from float32
// partial sums (the CPU: float64); Σw², Σg² are per-tensor float64 sums of the kernels' float32
// chunk partials, added on the device by index_add_ (their last bits may depend on its order).
//
// The module links libtorch_npu.so (cmake/LarsAscend.cmake): torch_npu must be imported before
// lars_npu._C is loaded (torch's device-backend autoload does it on `import torch`).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "ascendc/lars_host_plan.h"
#include "common/lars_math.h"
#include "npu/lars_npu_launch.h"
#include "npu/lars_resident.h"
#include "ops/checks.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace lars_ops {
namespace npu {
namespace {

namespace host = lars_ascendc::host;
using Outputs4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// ---- dtypes and values the kernels take ------------------------------------------------------

// The kernels' dtype code (host::StepArgs::dtype: 0 float32, 1 float16), or -1.
int kernel_dtype(c10::ScalarType t) {
  return t == at::kFloat ? 0 : t == at::kHalf ? 1 : -1;
}

c10::ScalarType scalar_type_of(int kernel_code) {
  return kernel_code == 0 ? at::kFloat : at::kHalf;
}

void require_kernel_dtype(const at::Tensor& t, Role r, int64_t index) {
  if (kernel_dtype(t.scalar_type()) < 0) {
    fail(r, index,
         "has dtype " + dtype_name(t.scalar_type()) +
             "; the NPU operators (AscendC kernels) take float32 and float16",
         /*type_error=*/true);
  }
}

// The shortest decimal that reads back as `v` (as Python prints it).
std::string repr(double v) {
  std::string out;
  for (int digits = 6; digits <= 17; ++digits) {
    std::ostringstream o;
    o.precision(digits);
    o << v;
    out = o.str();
    if (std::strtod(out.c_str(), nullptr) == v) break;
  }
  return out;
}

// Whether float32 carries `v` as the kernels need it: a finite value beyond its range, or a
// non-zero one below its smallest normal, would reach them as inf or 0. Non-finite values pass as
// they are (the CPU operator takes them too).
bool fits_fp32(double v) {
  const double a = std::fabs(v);
  return !std::isfinite(v) || (a <= FLT_MAX && (a == 0.0 || a >= FLT_MIN));
}

[[noreturn]] void refuse_fp32(double v, const std::string& what, const std::string& where = "") {
  TORCH_CHECK_VALUE(false, "lars_npu: ", what, "=", repr(v), where,
                    " is outside float32's range, in which the AscendC kernels take it");
  throw std::logic_error("unreachable");  // (the macro throws)
}

float fp32(double v, const char* what) {
  if (!fits_fp32(v)) refuse_fp32(v, what);
  return static_cast<float>(v);
}

// A per-tensor value (`name` of group row `row`, for tensor i) as float32.
float fp32_of(double v, const char* name, int64_t row, int64_t i) {
  if (!fits_fp32(v)) {
    refuse_fp32(v, name,
                " (group " + std::to_string(row) + ", tensor " + std::to_string(i) + ")");
  }
  return static_cast<float>(v);
}

// LARS_NPU_BLOCK_DIM: AI cores per launch (0 or unset: every vector core), as the Python npu
// backend reads it.
uint32_t block_dim() {
  const char* raw = std::getenv("LARS_NPU_BLOCK_DIM");
  if (raw == nullptr) return 0;
  std::string s(raw);
  const auto first = s.find_first_not_of(" \t\n");
  if (first == std::string::npos) return 0;
  s = s.substr(first, s.find_last_not_of(" \t\n") - first + 1);
  bool digits = !s.empty();
  for (char c : s) digits = digits && c >= '0' && c <= '9';
  TORCH_CHECK_VALUE(digits, "LARS_NPU_BLOCK_DIM='", raw, "': expected a non-negative integer");
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  return v > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(v);
}

// ---- per-tensor values from the group table (as the CPU operator reads them) -----------------
struct PerTensor {
  std::vector<float> lr, wd, mu;
  std::vector<double> lr_d, wd_d;  // as given, for λ of empty tensors computed on the host
  std::vector<uint8_t> nesterov;
};

// Values a kernel uses are checked against float32: wd where LARS adapts, lr where λ or the
// SGD step uses it, momentum in the fused step; the others are 0.
PerTensor per_tensor(const at::Tensor& group, const at::Tensor& flags, const at::Tensor& hyper,
                     int64_t n, bool fused) {
  PerTensor v;
  const int64_t* g = group.data_ptr<int64_t>();
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const double* h = hyper.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    const double* row = h + 4 * g[i];
    const bool adapt = (f[i] & kAdapt) != 0;
    v.lr.push_back(fused || adapt ? fp32_of(row[0], "lr", g[i], i) : 0.0f);
    v.wd.push_back(adapt ? fp32_of(row[1], "weight_decay", g[i], i) : 0.0f);
    v.lr_d.push_back(row[0]);
    v.wd_d.push_back(adapt ? row[1] : 0.0);
    v.mu.push_back(fused ? fp32_of(row[2], "momentum", g[i], i) : 0.0f);
    v.nesterov.push_back(fused && row[3] != 0.0 ? 1 : 0);
  }
  return v;
}

// Given sums as the kernels take them (float32), and whether a given Σg² is not finite (the step
// is skipped, as on the CPU).
struct Given {
  std::vector<float> ws, gs;
  std::vector<double> sums;  // [2, n]: Σw² then Σg², as given
  bool found_inf = false;
};

std::optional<Given> given_of(const std::optional<at::Tensor>& given, int64_t n) {
  if (!given.has_value()) return std::nullopt;
  Given out;
  const double* s = given->data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t row = 0; row < 2; ++row) {
      const double x = s[row * n + i];
      if (!fits_fp32(x)) {
        refuse_fp32(x, "given_sums[" + std::to_string(row) + ", " + std::to_string(i) + "]");
      }
    }
    out.ws.push_back(static_cast<float>(s[i]));
    out.gs.push_back(static_cast<float>(s[n + i]));
    if (!std::isfinite(s[n + i])) out.found_inf = true;
  }
  // as given (float64), for the operator's w_s, g_s
  out.sums.assign(s, s + 2 * n);
  return out;
}

// ---- staging ---------------------------------------------------------------------------------
struct Staged {
  at::Tensor orig;
  at::Tensor use;  // orig itself, or a contiguous device copy
  bool staged = false;
};

bool aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % host::kGmAlign == 0;
}

// `t` as the kernels can take it in `dtype`: itself, or a contiguous copy on the same device (a
// fresh allocation of torch_npu's caching allocator, whose blocks are aligned far beyond 32
// bytes; host::validate refuses anything else).
Staged stage(const at::Tensor& t, const Checked& c, c10::ScalarType dtype) {
  Staged s{t, t, false};
  if (t.numel() == 0) return s;
  if (!c.direct || !aligned(t) || t.scalar_type() != dtype) {
    s.use = t.to(dtype, /*non_blocking=*/false, /*copy=*/true, c10::MemoryFormat::Contiguous)
                .resolve_neg()
                .contiguous();
    s.staged = true;
  }
  return s;
}

uint64_t address(const Staged& s) {
  return s.use.numel() > 0 ? reinterpret_cast<uint64_t>(s.use.data_ptr()) : 0;
}

// Staged copies go back into the caller's tensors when the step ran. `found` is the device's
// decision (0-dim bool): the copy selects, on the device, the original values where the step was
// skipped; no host wait.
void write_back(const std::vector<Staged>& xs, const at::Tensor& found) {
  for (const Staged& x : xs) {
    if (x.staged) x.orig.copy_(at::where(found, x.orig, x.use));
  }
}

void write_back(const std::vector<Staged>& xs) {
  for (const Staged& x : xs) {
    if (x.staged) x.orig.copy_(x.use);
  }
}

void bump(const std::vector<Staged>& xs) {
  for (const Staged& x : xs) x.orig.unsafeGetTensorImpl()->bump_version();
}

// ---- launch sets -----------------------------------------------------------------------------
// One dtype, one workspace: the kernels' unit of work.
struct LaunchSet {
  bool update = false;          // λ and update kernels run (else square sums only)
  std::vector<int64_t> index;   // the call's tensor index of each member
  host::StepArgs args;
  host::Layout layout;
  uint64_t ws_off = 0;          // offsets in the call's buffer (host and device alike)
  uint64_t chunk_dst_off = 0;   // int64 [num_chunks]: the call's tensor index of each chunk
  uint64_t tensor_dst_off = 0;  // int64 [n]: the call's tensor index of each member
};

LaunchSet make_set(int dtype, int mode, bool update, float epsilon, float coefficient,
                   bool use_clip, bool guard_zero_norm) {
  LaunchSet s;
  s.update = update;
  s.args.dtype = dtype;
  s.args.mode = mode;
  s.args.epsilon = epsilon;
  s.args.coefficient = coefficient;
  s.args.use_clip = use_clip;
  s.args.guard_zero_norm = guard_zero_norm;
  return s;
}

struct Member {
  int64_t index = 0;
  uint64_t w = 0, g = 0, m = 0;
  int64_t numel = 0;
  bool adapt = false, has_m = false, first = false, nesterov = false;
  float wd = 0.0f, lr = 0.0f, mu = 0.0f;
};

// A tensor joins its set; one without elements joins none (the kernels would do nothing with it:
// its sums are 0 or given, its λ is the host's).
void add(LaunchSet& s, const Member& t) {
  if (t.numel == 0) return;
  host::StepArgs& a = s.args;
  s.index.push_back(t.index);
  a.w.push_back(t.w);
  a.g.push_back(t.g);
  a.m.push_back(t.m);
  a.numel.push_back(t.numel);
  a.adapt.push_back(t.adapt ? 1 : 0);
  a.has_m.push_back(t.has_m ? 1 : 0);
  a.first.push_back(t.first ? 1 : 0);
  a.nesterov.push_back(t.nesterov ? 1 : 0);
  a.wd.push_back(t.wd);
  a.lr.push_back(t.lr);
  a.mu.push_back(t.mu);
}

// The given sums of a set's members.
void give(LaunchSet& s, const Given& given) {
  for (int64_t i : s.index) {
    s.args.given_ws.push_back(given.ws[static_cast<size_t>(i)]);
    s.args.given_gs.push_back(given.gs[static_cast<size_t>(i)]);
  }
}

uint64_t align64(uint64_t x) { return (x + 63) / 64 * 64; }

// The float64 values the results of fused_step_ and lars_ start from, uploaded with the
// workspaces: the given sums ([2, n], at 0), then host_lam ([n], at lam0).
struct Extra {
  std::vector<double> values;
  uint64_t lam0 = 0;
};

Extra extra_of(const std::optional<Given>& given, const std::vector<double>& lam) {
  Extra e;
  if (given.has_value()) e.values = given->sums;
  e.lam0 = e.values.size();
  e.values.insert(e.values.end(), lam.begin(), lam.end());
  return e;
}

// λ of every tensor as far as the host knows it, the starting point of the operator's λ: 1 where
// LARS does not adapt, and for an adapted tensor without elements (which joins no launch set) λ
// of its sums (given, else 0), in float64 as the CPU operator computes it. The λ of the other
// tensors comes from the kernels' table.
std::vector<double> host_lam(const uint8_t* f, int64_t n, at::TensorList ts, const PerTensor& v,
                             const std::optional<at::Tensor>& given, const lars::Hyper& h) {
  std::vector<double> lam(static_cast<size_t>(n), 1.0);
  const double* s = given.has_value() ? given->data_ptr<double>() : nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    if ((f[i] & kAdapt) && ts[k].numel() == 0) {
      lam[k] = lars::trust_ratio(s ? s[i] : 0.0, s ? s[n + i] : 0.0, v.wd_d[k], v.lr_d[k], h);
    }
  }
  return lam;
}

// torch_npu's current stream of `dev`, as the launcher takes it. Asked right before each launch:
// stream() hands torch_npu's queued operators (the copies of upload(), the flag merge below) to
// the ACL stream first, so the kernels run after them.
uint64_t current_stream(const c10::Device& dev) {
  return reinterpret_cast<uint64_t>(c10_npu::getCurrentNPUStream(dev.index()).stream());
}

// ---- the resident device buffer (csrc/npu/lars_resident.h) ------------------------------------
// A call's device buffer stays allocated after the call, one pool per (device, stream), with the
// host copy of what was sent to it; the next call on that stream builds its whole host buffer
// again, compares it byte for byte with what the buffer is known to hold and copies only the
// ranges that differ (for an unchanged model at a constant lr: none of the tables, no parameter).
// What the kernels write (results) is never compared: zeroed on the device, sent, or left to the
// kernels, as lars_resident.h decides per launch. Safety:
//   - a buffer is used only on the stream it was allocated on (torch_npu's caching allocator
//     ties it to that stream), so the copies of a call come after the previous call's kernels
//     and result reads in stream order;
//   - a buffer is leased to one call from its copies until its last launch and result read are
//     queued: another thread's call on the same stream takes another buffer;
//   - a call that throws anywhere leaves its buffer unknown: the next call sends everything.
namespace resident = lars_npu_host::resident;

struct ResidentBuffer {
  c10::Device device{c10::kCPU};
  uint64_t stream = 0;
  at::Tensor buf;  // uint8, on `device`, allocated while `stream` was current
  resident::Resident state;
  bool busy = false;
  uint64_t last_use = 0;
};

// The calls' buffers: at most kPerStream per (device, stream) and kMax in all (the least
// recently used idle one goes). Never destroyed: at process exit torch_npu may be gone.
class ResidentBuffers {
 public:
  static constexpr size_t kPerStream = 4, kMax = 16;

  static ResidentBuffers& get() {
    static auto* pool = new ResidentBuffers();
    return *pool;
  }

  // An idle buffer of (dev, stream), leased to the caller until release(), by a byte comparison
  // of `cur` with what each is known to hold: the known one that needs fewest bytes, if it needs
  // at most half of what it holds (the same model: a new lr, a gradient re-allocated); else one
  // nothing is known of, or a new one while the stream has fewer than kPerStream (another model
  // gets its own); else that known one, or the least recently used. The choice never decides
  // what is sent: Resident::sync does.
  ResidentBuffer* acquire(const c10::Device& dev, uint64_t stream, const uint8_t* cur,
                          uint64_t total, const std::vector<resident::Segment>& segs) {
    const std::lock_guard<std::mutex> guard(lock_);
    ResidentBuffer *near = nullptr, *unknown = nullptr, *oldest = nullptr;
    resident::Resident::Difference near_d;
    size_t mine = 0;
    for (const auto& e : all_) {
      if (e->device != dev || e->stream != stream) continue;
      ++mine;
      if (e->busy) continue;
      if (oldest == nullptr || e->last_use < oldest->last_use) oldest = e.get();
      const resident::Resident::Difference d =
          e->buf.defined()
              ? e->state.differing(reinterpret_cast<uint64_t>(e->buf.data_ptr()),
                                   static_cast<uint64_t>(e->buf.numel()), cur, total, segs)
              : resident::Resident::Difference{};
      if (d.known && (near == nullptr || d.differ < near_d.differ)) {
        near = e.get();
        near_d = d;
      } else if (!d.known && unknown == nullptr && !e->state.known()) {
        unknown = e.get();
      }
    }
    ResidentBuffer* best = near != nullptr && 2 * near_d.differ <= near_d.compared ? near : unknown;
    if (best == nullptr && mine >= kPerStream) best = near != nullptr ? near : oldest;
    if (best == nullptr) {
      all_.push_back(std::make_unique<ResidentBuffer>());
      best = all_.back().get();
      best->device = dev;
      best->stream = stream;
    }
    best->busy = true;
    best->last_use = ++clock_;
    // over the limit: the least recently used idle buffer of any stream goes
    while (all_.size() > kMax) {
      auto victim = all_.end();
      for (auto it = all_.begin(); it != all_.end(); ++it) {
        if (!(*it)->busy && (victim == all_.end() || (*it)->last_use < (*victim)->last_use)) {
          victim = it;
        }
      }
      if (victim == all_.end()) break;  // every one is in use
      all_.erase(victim);
    }
    return best;
  }

  // The call is over: its launches and result reads are queued (ok), or it threw.
  void release(ResidentBuffer* b, bool ok) {
    const std::lock_guard<std::mutex> guard(lock_);
    if (ok) {
      b->state.commit();
    } else {
      b->state.invalidate();
    }
    b->busy = false;
  }

 private:
  std::mutex lock_;
  std::vector<std::unique_ptr<ResidentBuffer>> all_;
  uint64_t clock_ = 0;
};

// A call's lease on its buffer: done() when everything of the call is queued; destroyed without
// it (an exception), the buffer is unknown to the next call.
class Lease {
 public:
  explicit Lease(ResidentBuffer* b) : b_(b) {}
  ~Lease() { ResidentBuffers::get().release(b_, ok_); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  void done() { ok_ = true; }

 private:
  ResidentBuffer* b_;
  bool ok_ = false;
};

// Memory policy of Resident::sync on a torch device buffer: asynchronous copies on the current
// stream, zeroing by a device fill. Each range goes from a pinned host tensor of its own (its
// data pointer the start of its allocation), not from a slice of the call's host buffer: the
// pinned-memory allocator keeps a block from reuse until the copies recorded against it are done,
// and an allocator that finds the block by the copy source's exact pointer (older torch_npu) would
// record nothing for a slice at an offset, and could hand the block out again, and overwrite the
// bytes, before the asynchronous copy read them.
struct TorchDeviceMemory {
  at::Tensor device, host;
  uint64_t device_base = 0;
  const uint8_t* host_base = nullptr;
  void to_device(uint64_t dst, const void* src, uint64_t bytes) {
    at::Tensor piece = at::empty({static_cast<int64_t>(bytes)},
                                 host.options().pinned_memory(host.is_pinned()));
    std::memcpy(piece.data_ptr(), src, bytes);
    device.narrow(0, static_cast<int64_t>(dst - device_base), static_cast<int64_t>(bytes))
        .copy_(piece, /*non_blocking=*/true);
  }
  void zero(uint64_t dst, uint64_t bytes) {
    device.narrow(0, static_cast<int64_t>(dst - device_base), static_cast<int64_t>(bytes))
        .zero_();
  }
};

// What the last call of this thread sent (lars_npu_ops_last_upload).
thread_local resident::Counts last_upload;

// Every set's workspace and index tables, and `extra` (float64 values the results need), built in
// one host buffer (pinned) and brought to the call's resident device buffer by asynchronous
// copies on the current stream of what differs from what that buffer holds. Sets without members
// are dropped. run_sq: the square-sums kernels run; update_runs: the λ and update kernels of the
// sets with `update` run (what the kernels will write is not sent).
struct Upload {
  std::vector<LaunchSet> sets;
  uint64_t extra_off = 0;
  at::Tensor device;  // uint8, on the parameters' device
  std::shared_ptr<Lease> lease;
};

Upload upload(std::vector<LaunchSet> sets, const c10::Device& dev, bool run_sq, bool update_runs,
              const std::vector<double>& extra = {}) {
  Upload u;
  for (LaunchSet& s : sets) {
    if (s.index.empty()) continue;
    host::validate(s.args);  // what the kernels refuse (checked above already: a backstop)
    s.layout = host::plan(s.args);
    u.sets.push_back(std::move(s));
  }
  uint64_t total = 0;
  for (LaunchSet& s : u.sets) {
    s.ws_off = total;
    total = align64(total + s.layout.bytes);
  }
  for (LaunchSet& s : u.sets) {
    s.chunk_dst_off = total;
    total = align64(total + 8 * s.layout.num_chunks);
    s.tensor_dst_off = total;
    total = align64(total + 8 * s.layout.n);
  }
  u.extra_off = total;
  total = align64(total + sizeof(double) * extra.size());
  total = total == 0 ? 64 : total;
  at::Tensor buf = at::empty({static_cast<int64_t>(total)},
                             at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* p = buf.data_ptr<uint8_t>();
  std::memset(p, 0, total);
  std::vector<resident::Segment> segs;
  for (const LaunchSet& s : u.sets) {
    host::fill(p + s.ws_off, s.layout, s.args);
    resident::workspace_segments(segs, s.ws_off, s.layout, run_sq, update_runs && s.update);
    auto* chunk_dst = reinterpret_cast<int64_t*>(p + s.chunk_dst_off);
    auto* tensor_dst = reinterpret_cast<int64_t*>(p + s.tensor_dst_off);
    uint64_t c = 0;
    for (size_t j = 0; j < s.index.size(); ++j) {
      tensor_dst[j] = s.index[j];
      // the chunks of member j, in host::fill's order
      for (int64_t b = 0; b < s.args.numel[j]; b += s.args.chunk_elems) {
        chunk_dst[c++] = s.index[j];
      }
    }
    TORCH_CHECK(c == s.layout.num_chunks, "lars_npu: chunk table does not match the plan");
    resident::host_segment(segs, s.chunk_dst_off, s.chunk_dst_off + 8 * c, resident::kIndex);
    resident::host_segment(segs, s.tensor_dst_off, s.tensor_dst_off + 8 * s.index.size(),
                           resident::kIndex);
  }
  if (!extra.empty()) std::memcpy(p + u.extra_off, extra.data(), sizeof(double) * extra.size());
  resident::host_segment(segs, u.extra_off, u.extra_off + sizeof(double) * extra.size(),
                         resident::kExtra);
  resident::fill_gaps(segs, total);

  const uint64_t stream = current_stream(dev);
  ResidentBuffer* b = ResidentBuffers::get().acquire(dev, stream, p, total, segs);
  u.lease = std::make_shared<Lease>(b);  // from here on, an exception leaves b unknown
  const auto need = static_cast<int64_t>(total);
  if (!b->buf.defined() || b->buf.numel() < need || b->buf.numel() > 4 * need + 65536) {
    b->state.invalidate();
    b->buf = at::Tensor();  // (the old one back to the allocator first)
    b->buf = at::empty({need}, at::TensorOptions().dtype(at::kByte).device(dev));
    // a new buffer holds 0xFF (NaN as fp32) until sent to: a results block the resident rules
    // wrongly left to the kernels shows as NaN, never as a lucky zero
    b->buf.fill_(0xFF);
  }
  TorchDeviceMemory mem{b->buf, buf, reinterpret_cast<uint64_t>(b->buf.data_ptr()), p};
  last_upload = b->state.sync(mem, mem.device_base, static_cast<uint64_t>(b->buf.numel()), p,
                              total, std::move(segs));
  u.device = b->buf.narrow(0, 0, need);
  return u;
}

void launch(const Upload& u, const LaunchSet& s, const c10::Device& dev, bool run_sq,
            bool run_update, uint32_t blocks) {
  const uint64_t ws = reinterpret_cast<uint64_t>(u.device.data_ptr()) + s.ws_off;
  lars_npu_host::launch_on_stream(current_stream(dev), ws, s.layout, s.args.dtype, run_sq,
                                  run_update, blocks);
}

// The results region of a set's workspace on the device, one float per 32-byte block: Σw² of each
// chunk [0, nc), Σg² [nc, 2 nc), the cores' non-finite flags [2 nc, + kMaxCoreFlags), λ per
// member (lars_tiling.h).
at::Tensor blocks(const Upload& u, const LaunchSet& s) {
  const host::Layout& L = s.layout;
  const auto count = static_cast<int64_t>(2 * L.num_chunks + lars_ascendc::kMaxCoreFlags + L.n);
  return u.device
      .narrow(0, static_cast<int64_t>(s.ws_off + L.partials),
              count * lars_ascendc::kBlock * static_cast<int64_t>(sizeof(float)))
      .view(at::kFloat)
      .view({count, static_cast<int64_t>(lars_ascendc::kBlock)})
      .select(1, 0);
}

at::Tensor flags_of(const Upload& u, const LaunchSet& s) {
  return blocks(u, s).narrow(0, static_cast<int64_t>(2 * s.layout.num_chunks),
                             lars_ascendc::kMaxCoreFlags);
}

at::Tensor int64s(const Upload& u, uint64_t offset, uint64_t count) {
  return u.device.narrow(0, static_cast<int64_t>(offset), static_cast<int64_t>(8 * count))
      .view(at::kLong);
}

// found_inf of the whole call, on the device: any core of any set that met a non-finite Σg².
at::Tensor found_on_device(const Upload& u, const c10::Device& dev) {
  at::Tensor found;
  for (const LaunchSet& s : u.sets) {
    const at::Tensor f = at::isnan(flags_of(u, s)).any();
    found = found.defined() ? found.logical_or(f) : f;
  }
  return found.defined() ? found : at::zeros({}, at::TensorOptions().dtype(at::kBool).device(dev));
}

// Square sums of every set (when not given), then, with several sets, the call's found_inf into
// each writing set's first flag slot, then the λ and update kernels of the writing sets.
void run(const Upload& u, const c10::Device& dev, bool given, bool writes) {
  const uint32_t blocks_per_launch = block_dim();
  if (!given) {
    for (const LaunchSet& s : u.sets) launch(u, s, dev, true, false, blocks_per_launch);
  }
  if (!writes) return;
  if (!given && u.sets.size() > 1) {
    const at::Tensor found = found_on_device(u, dev);
    for (const LaunchSet& s : u.sets) {
      if (s.update) {
        flags_of(u, s).narrow(0, 0, 1).masked_fill_(found, std::numeric_limits<float>::quiet_NaN());
      }
    }
  }
  for (const LaunchSet& s : u.sets) {
    if (s.update) launch(u, s, dev, false, true, blocks_per_launch);
  }
}

at::TensorOptions f64_on(const c10::Device& dev) {
  return at::TensorOptions().dtype(at::kDouble).device(dev);
}

// Σw², Σg² per tensor of the call: the chunk partials of every set added up on the device.
std::tuple<at::Tensor, at::Tensor> sums_on_device(const Upload& u, int64_t n,
                                                  const c10::Device& dev) {
  at::Tensor w_s = at::zeros({n}, f64_on(dev)), g_s = at::zeros({n}, f64_on(dev));
  for (const LaunchSet& s : u.sets) {
    const auto nc = static_cast<int64_t>(s.layout.num_chunks);
    if (nc == 0) continue;
    const at::Tensor b = blocks(u, s);
    const at::Tensor dst = int64s(u, s.chunk_dst_off, s.layout.num_chunks);
    w_s.index_add_(0, dst, b.narrow(0, 0, nc).to(at::kDouble));
    g_s.index_add_(0, dst, b.narrow(0, nc, nc).to(at::kDouble));
  }
  return {w_s, g_s};
}

// λ per tensor of the call: the host's (host_lam, uploaded in `extra` at `lam0`) where no update
// kernel ran, else the table the λ kernel wrote; NaN everywhere when the step was skipped.
at::Tensor lam_on_device(const Upload& u, int64_t n, uint64_t lam0, const at::Tensor& found) {
  at::Tensor lam = u.device
                       .narrow(0, static_cast<int64_t>(u.extra_off + sizeof(double) * lam0),
                               n * static_cast<int64_t>(sizeof(double)))
                       .view(at::kDouble)
                       .clone();
  for (const LaunchSet& s : u.sets) {
    if (!s.update) continue;
    const at::Tensor table = blocks(u, s).narrow(
        0, static_cast<int64_t>(2 * s.layout.num_chunks + lars_ascendc::kMaxCoreFlags),
        static_cast<int64_t>(s.layout.n));
    lam.index_copy_(0, int64s(u, s.tensor_dst_off, s.layout.n), table.to(at::kDouble));
  }
  return lam.masked_fill_(found, std::numeric_limits<double>::quiet_NaN());
}

at::Tensor bool_on(bool v, const c10::Device& dev) {
  return at::full({}, v, at::TensorOptions().dtype(at::kBool).device(dev));
}

// The given sums (uploaded as `extra`) as the call's w_s, g_s, on the device.
std::tuple<at::Tensor, at::Tensor> given_on_device(const Upload& u, int64_t n) {
  const at::Tensor d = u.device.narrow(0, static_cast<int64_t>(u.extra_off),
                                       2 * n * static_cast<int64_t>(sizeof(double)))
                           .view(at::kDouble);
  return {d.narrow(0, 0, n).clone(), d.narrow(0, n, n).clone()};
}

Outputs4 empty_outputs(const c10::Device& dev) {
  return {bool_on(false, dev), at::empty({0}, f64_on(dev)), at::empty({0}, f64_on(dev)),
          at::empty({0}, f64_on(dev))};
}

// The launches of a call that writes (fused_step_, lars_), after the upload, and its outputs.
// With given sums (`given` non-null) the skip is known on the host: nothing runs when they hold
// inf/nan. Otherwise the kernels decide it on the device, and staged copies are written back
// only where they did not skip.
Outputs4 launch_writing(const Upload& u, const c10::Device& dev, int64_t n, uint64_t lam0,
                        const Given* given, const std::vector<Staged>& written) {
  if (given != nullptr) {
    auto [w_s, g_s] = given_on_device(u, n);
    if (given->found_inf) {  // nothing runs, nothing is written
      return {bool_on(true, dev), at::full({n}, std::nan(""), f64_on(dev)), w_s, g_s};
    }
    run(u, dev, /*given=*/true, /*writes=*/true);
    write_back(written);
    bump(written);
    const at::Tensor found = bool_on(false, dev);
    return {found, lam_on_device(u, n, lam0, found), w_s, g_s};
  }
  run(u, dev, /*given=*/false, /*writes=*/true);
  const at::Tensor found = found_on_device(u, dev);
  write_back(written, found);
  bump(written);
  auto [w_s, g_s] = sums_on_device(u, n, dev);
  return {found, lam_on_device(u, n, lam0, found), w_s, g_s};
}

// ---- fused LARS + momentum SGD -----------------------------------------------------------------
Outputs4 fused_step_npu(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                        const at::Tensor& group, const at::Tensor& flags, const at::Tensor& hyper,
                        double epsilon, double coefficient, bool use_clip, bool guard_zero_norm,
                        const std::optional<at::Tensor>& given_sums, bool mixed_grad_dtypes,
                        int64_t /*cache_budget_bytes: the CPU kernel's*/) {
  const auto n = static_cast<int64_t>(params.size());
  // every check, before anything is written: the CPU operator's (csrc/ops/checks.cpp), then the
  // kernels' own dtypes
  const FusedStepChecks c = check_fused_step(params, grads, bufs, group, flags, hyper, given_sums,
                                             mixed_grad_dtypes);
  for (int64_t i = 0; i < n; ++i) {
    require_kernel_dtype(params[static_cast<size_t>(i)], Role::kParameter, i);
  }
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const c10::Device dev = c.device;
  const std::vector<Checked>&cw = c.w, &cg = c.g, &cm = c.m;
  const std::vector<int64_t>& buf_of = c.buf_of;
  const PerTensor v = per_tensor(group, flags, hyper, n, /*fused=*/true);
  const float eps = fp32(epsilon, "epsilon"), coef = fp32(coefficient, "coefficient");
  const std::optional<Given> given = given_of(given_sums, n);
  if (n == 0) return empty_outputs(dev);

  const c10::DeviceGuard device_guard(dev);
  std::vector<Staged> w, g, m;
  // one set per parameter dtype (float32, float16), every tensor updated (mode 1)
  std::vector<LaunchSet> sets;
  for (int code : {0, 1}) {
    sets.push_back(make_set(code, 1, true, eps, coef, use_clip, guard_zero_norm));
  }
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const c10::ScalarType wt = params[k].scalar_type();
    w.push_back(stage(params[k], cw[k], wt));
    g.push_back(stage(grads[k], cg[k], wt));  // the kernels read g in the parameter's dtype
    Member t;
    t.index = i;
    t.w = address(w.back());
    t.g = address(g.back());
    if (buf_of[k] >= 0) {
      const auto b = static_cast<size_t>(buf_of[k]);
      m.push_back(stage(bufs[b], cm[b], wt));
      t.m = address(m.back());
    }
    t.numel = params[k].numel();
    t.adapt = (f[i] & kAdapt) != 0;
    t.has_m = (f[i] & kMomentum) != 0;
    t.first = (f[i] & kFirst) != 0;
    t.nesterov = v.nesterov[k] != 0;
    t.wd = v.wd[k];
    t.lr = v.lr[k];
    t.mu = v.mu[k];
    add(sets[static_cast<size_t>(kernel_dtype(wt))], t);
  }
  if (given.has_value()) {
    for (LaunchSet& s : sets) give(s, *given);
  }
  const lars::Hyper h{epsilon, coefficient, use_clip, guard_zero_norm};
  const Extra extra = extra_of(given, host_lam(f, n, params, v, given_sums, h));
  // the square-sums kernels run unless the sums are given; no kernel runs when they are not finite
  const bool skip = given.has_value() && given->found_inf;
  const Upload u = upload(std::move(sets), dev, !given.has_value(), !skip, extra.values);
  std::vector<Staged> written = w;
  written.insert(written.end(), m.begin(), m.end());
  Outputs4 out =
      launch_writing(u, dev, n, extra.lam0, given.has_value() ? &*given : nullptr, written);
  u.lease->done();  // everything of the call is queued
  return out;
}

// ---- the unfused pieces: square sums, and the in-place gradient rewrite ----------------------
std::tuple<at::Tensor, at::Tensor> square_sums_npu(at::TensorList weights, at::TensorList grads,
                                                   const at::Tensor& flags) {
  const auto n = static_cast<int64_t>(grads.size());
  check_lengths(n, static_cast<int64_t>(weights.size()), "weights");
  check_flags(flags, n);
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const c10::Device dev = first_device(grads);
  std::vector<Checked> cw(static_cast<size_t>(n)), cg(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    cg[k] = check_tensor(grads[k], Role::kGradient, i, dev, false);
    require_kernel_dtype(grads[k], Role::kGradient, i);
    if (f[i] & kAdapt) {
      cw[k] = check_tensor(weights[k], Role::kWeight, i, dev, false);
      check_same_shape(weights[k], grads[k], Role::kWeight, i);
      require_kernel_dtype(weights[k], Role::kWeight, i);
    }
  }
  if (n == 0) {
    return {at::empty({0}, f64_on(dev)), at::empty({0}, f64_on(dev))};
  }

  const c10::DeviceGuard device_guard(dev);
  std::vector<Staged> staged;  // kept alive until the kernels are queued
  // one set per dtype (float32, float16), square sums only
  std::vector<LaunchSet> sets;
  for (int code : {0, 1}) sets.push_back(make_set(code, 0, false, 1e-5f, 1e-3f, false, false));
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const bool adapt = (f[i] & kAdapt) != 0;
    // one dtype per launch: float32 when either tensor is (the other widened, exactly)
    const bool wide = grads[k].scalar_type() == at::kFloat ||
                      (adapt && weights[k].scalar_type() == at::kFloat);
    const int code = wide ? 0 : 1;
    staged.push_back(stage(grads[k], cg[k], scalar_type_of(code)));
    Member t;
    t.index = i;
    t.g = address(staged.back());
    if (adapt) {
      staged.push_back(stage(weights[k], cw[k], scalar_type_of(code)));
      t.w = address(staged.back());
    } else {
      t.w = t.g;  // never read (no Σw² where not adapted, no update): an address for the plan
    }
    t.numel = grads[k].numel();
    t.adapt = adapt;
    add(sets[static_cast<size_t>(code)], t);
  }
  const Upload u = upload(std::move(sets), dev, /*run_sq=*/true, /*update_runs=*/false);
  run(u, dev, /*given=*/false, /*writes=*/false);
  auto out = sums_on_device(u, n, dev);
  u.lease->done();  // everything of the call is queued
  return out;
}

Outputs4 lars_npu(at::TensorList weights, at::TensorList grads, const at::Tensor& group,
                  const at::Tensor& flags, const at::Tensor& hyper, double epsilon,
                  double coefficient, bool use_clip, bool guard_zero_norm,
                  const std::optional<at::Tensor>& given_sums) {
  const auto n = static_cast<int64_t>(grads.size());
  check_lengths(n, static_cast<int64_t>(weights.size()), "weights");
  check_step_arrays(group, flags, hyper, n);
  check_given_sums(given_sums, n);
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const c10::Device dev = first_device(weights);
  const bool given = given_sums.has_value();
  std::vector<Checked> cw(static_cast<size_t>(n)), cg(static_cast<size_t>(n));
  std::vector<lars::ByteRange> ranges;
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const bool adapt = (f[i] & kAdapt) != 0;
    cg[k] = check_tensor(grads[k], Role::kGradient, i, dev, /*written=*/adapt);
    // every gradient is read by a kernel (Σg² for found_inf), except, with given sums, those LARS
    // leaves alone
    if (adapt || !given) require_kernel_dtype(grads[k], Role::kGradient, i);
    if (adapt) {
      cw[k] = check_tensor(weights[k], Role::kParameter, i, dev, false);
      check_same_shape(grads[k], weights[k], Role::kGradient, i);
      if (grads[k].scalar_type() != weights[k].scalar_type()) {
        fail(Role::kGradient, i,
             "has dtype " + dtype_name(grads[k].scalar_type()) + ", the parameter " +
                 dtype_name(weights[k].scalar_type()),
             true);
      }
      ranges.push_back({cw[k].begin, cw[k].end, false, i});
      ranges.push_back({cg[k].begin, cg[k].end, true, n + i});
    }
  }
  check_disjoint(ranges, n);
  const PerTensor v = per_tensor(group, flags, hyper, n, /*fused=*/false);
  const float eps = fp32(epsilon, "epsilon"), coef = fp32(coefficient, "coefficient");
  const std::optional<Given> given_values = given_of(given_sums, n);
  if (n == 0) return empty_outputs(dev);

  const c10::DeviceGuard device_guard(dev);
  std::vector<Staged> written, read;
  // sets 0, 1: adapted tensors (float32, float16), all three kernels (mode 0); sets 2, 3: the
  // others, square sums only (none with given sums: nothing of theirs is read then)
  std::vector<LaunchSet> sets;
  for (bool update : {true, false}) {
    for (int code : {0, 1}) {
      sets.push_back(make_set(code, 0, update, eps, coef, use_clip, guard_zero_norm));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const bool adapt = (f[i] & kAdapt) != 0;
    if (!adapt && given) continue;
    const int code = kernel_dtype(grads[k].scalar_type());
    Member t;
    t.index = i;
    t.numel = grads[k].numel();
    t.adapt = adapt;
    if (adapt) {
      written.push_back(stage(grads[k], cg[k], grads[k].scalar_type()));
      t.g = address(written.back());
      read.push_back(stage(weights[k], cw[k], weights[k].scalar_type()));
      t.w = address(read.back());
      t.wd = v.wd[k];
      t.lr = v.lr[k];
      add(sets[static_cast<size_t>(code)], t);
    } else {
      read.push_back(stage(grads[k], cg[k], grads[k].scalar_type()));
      t.g = address(read.back());
      t.w = t.g;  // never read: no Σw² where not adapted, and no update kernel in this set
      add(sets[static_cast<size_t>(2 + code)], t);
    }
  }
  if (given) {
    for (LaunchSet& s : sets) give(s, *given_values);
  }
  const lars::Hyper h{epsilon, coefficient, use_clip, guard_zero_norm};
  const Extra extra = extra_of(given_values, host_lam(f, n, grads, v, given_sums, h));
  const bool skip = given && given_values->found_inf;  // no kernel runs then
  const Upload u = upload(std::move(sets), dev, !given, !skip, extra.values);
  Outputs4 out =
      launch_writing(u, dev, n, extra.lam0, given ? &*given_values : nullptr, written);
  u.lease->done();  // everything of the call is queued
  return out;
}

}  // namespace
}  // namespace npu
}  // namespace lars_ops

// Registered for PrivateUse1, the dispatch key torch_npu's tensors carry. The signatures are
// those of the CPU kernels (csrc/ops/ops.cpp); the dispatcher checks them against the schemas
// when the module is loaded.
TORCH_LIBRARY_IMPL(lars_npu, PrivateUse1, m) {
  m.impl("fused_step_", &lars_ops::npu::fused_step_npu);
  m.impl("square_sums", &lars_ops::npu::square_sums_npu);
  m.impl("lars_", &lars_ops::npu::lars_npu);
}

// What the calling thread's last operator call sent to its resident device buffer (lars_resident.h
// Counts): out[0] bytes copied host -> device, out[1] bytes zeroed on the device, out[2] copies
// and zeroings, out[3] 1 when nothing was known of the buffer. For diagnostics and
// .ci/npu-ops-host-check; a C symbol, so no header is needed to read it.
extern "C" __attribute__((visibility("default"))) void lars_npu_ops_last_upload(uint64_t out[4]) {
  const lars_npu_host::resident::Counts& c = lars_ops::npu::last_upload;
  out[0] = c.sent;
  out[1] = c.zeroed;
  out[2] = c.copies;
  out[3] = c.full ? 1 : 0;
}
