#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <mutex>
#include <sstream>

#include "cpu/dtypes.h"

namespace lars_ops {

const char* role_name(Role r) {
  switch (r) {
    case Role::kParameter: return "parameter";
    case Role::kGradient: return "gradient";
    case Role::kMomentumBuffer: return "momentum_buffer";
    case Role::kWeight: return "weight";
  }
  return "tensor";
}

void fail(Role r, int64_t index, const std::string& why, bool type_error) {
  std::string msg = std::string("lars_npu[") + role_name(r) + " " + std::to_string(index) + "]: " + why;
  if (type_error) TORCH_CHECK_TYPE(false, msg);
  TORCH_CHECK_VALUE(false, msg);
  // (both macros throw; this line is never reached)
  throw std::logic_error(msg);
}

int dtype_code(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return lars::kFloat32;
    case c10::ScalarType::Half: return lars::kFloat16;
    case c10::ScalarType::BFloat16: return lars::kBFloat16;
    case c10::ScalarType::Double: return lars::kFloat64;
    default: return -1;
  }
}

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return "torch.float32";
    case c10::ScalarType::Double: return "torch.float64";
    case c10::ScalarType::Half: return "torch.float16";
    case c10::ScalarType::BFloat16: return "torch.bfloat16";
    case c10::ScalarType::ComplexHalf: return "torch.complex32";
    case c10::ScalarType::ComplexFloat: return "torch.complex64";
    case c10::ScalarType::ComplexDouble: return "torch.complex128";
    case c10::ScalarType::Long: return "torch.int64";
    case c10::ScalarType::Int: return "torch.int32";
    case c10::ScalarType::Short: return "torch.int16";
    case c10::ScalarType::Char: return "torch.int8";
    case c10::ScalarType::Byte: return "torch.uint8";
    case c10::ScalarType::Bool: return "torch.bool";
    default: {  // e.g. Float8_e4m3fn -> torch.float8_e4m3fn, as Python prints it
      std::string name = c10::toString(t);
      for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      return "torch." + name;
    }
  }
}

namespace {
std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}
}  // namespace

Checked check_tensor(const at::Tensor& t, Role r, int64_t index, const c10::Device& device,
                     bool written) {
  Checked out;
  if (!t.defined()) fail(r, index, "is undefined (None)");
  // (the TensorImpl's inline accessors: this runs for every tensor of every step)
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (impl->layout() != c10::kStrided) {
    fail(r, index, std::string("is not a dense tensor (layout ") + c10::toString(t.layout()) + ")");
  }
  if (impl->device() != device) {
    fail(r, index, "is on " + t.device().str() + ", the first parameter on " + device.str());
  }
  const c10::ScalarType st = c10::typeMetaToScalarType(impl->dtype());
  out.code = dtype_code(st);
  if (out.code < 0) {
    fail(r, index, "has dtype " + dtype_name(st) + "; supported: float32, float16, bfloat16, float64",
         /*type_error=*/true);
  }
  if (written && impl->is_inference()) {
    fail(r, index,
         "is an inference tensor (made under torch.inference_mode()); it cannot be written in "
         "place outside inference mode: clone it outside");
  }
  const int64_t numel = impl->numel();
  if (numel == 0) return out;  // nothing read or written; no memory needed
  if (impl->_is_zerotensor() || !impl->has_storage() || impl->storage().data() == nullptr) {
    fail(r, index, "has no memory (a meta tensor or a ZeroTensor); LARS needs real values");
  }
  // storage bounds: every element it addresses lies inside its storage
  const bool contiguous = impl->is_contiguous();
  int64_t last = numel - 1;  // the furthest element, in elements from the first
  bool stride0 = false;
  if (!contiguous) {
    const c10::IntArrayRef sizes = impl->sizes(), strides = impl->strides();
    last = 0;
    for (size_t d = 0; d < sizes.size(); ++d) {
      TORCH_CHECK(strides[d] >= 0, "negative stride");  // torch has none
      last += (sizes[d] - 1) * strides[d];
      if (strides[d] == 0 && sizes[d] > 1) stride0 = true;
    }
  }
  const auto item = static_cast<int64_t>(impl->itemsize());
  const int64_t offset = impl->storage_offset();
  const int64_t need = (offset + last + 1) * item;
  const auto have = static_cast<int64_t>(impl->storage().nbytes());
  if (offset < 0 || need > have) {
    fail(r, index,
         "its storage holds " + std::to_string(have) + " bytes, fewer than the " +
             std::to_string(need) + " its shape " + shape_str(t.sizes()) +
             " addresses (storage freed or resized?)");
  }
  if (written && !contiguous &&
      (stride0 || at::has_internal_overlap(t) == at::MemOverlap::Yes)) {
    fail(r, index, "has overlapping elements (e.g. from expand()); it cannot be written in place");
  }
  const auto base =
      reinterpret_cast<uint64_t>(static_cast<const char*>(impl->storage().data()) + offset * item);
  out.begin = base;
  out.end = base + static_cast<uint64_t>((last + 1) * item);
  out.direct = contiguous && !impl->is_neg();
  return out;
}

void check_same_shape(const at::Tensor& t, const at::Tensor& ref, Role r, int64_t index) {
  if (!t.sizes().equals(ref.sizes())) {
    fail(r, index,
         "has shape " + shape_str(t.sizes()) + ", the parameter " + shape_str(ref.sizes()));
  }
}

void check_disjoint(std::vector<lars::ByteRange>& ranges, int64_t n) {
  // The ranges of the last step proven disjoint (same begin, end, written flag, in order): the
  // same ranges need no new proof. Guarded: ops may run from several threads.
  static std::mutex mu;
  static std::vector<lars::ByteRange> last;
  const auto same = [](const lars::ByteRange& a, const lars::ByteRange& b) {
    return a.begin == b.begin && a.end == b.end && a.written == b.written && a.id == b.id;
  };
  {
    std::lock_guard<std::mutex> lock(mu);
    if (last.size() == ranges.size() &&
        std::equal(ranges.begin(), ranges.end(), last.begin(), same)) {
      return;
    }
  }
  std::vector<lars::ByteRange> copy = ranges;
  const auto hit = lars::find_conflict(copy);
  if (hit.first >= 0) {
    static const Role roles[] = {Role::kParameter, Role::kGradient, Role::kMomentumBuffer};
    const Role ra = roles[hit.first / n], rb = roles[hit.second / n];
    bool both = true;
    for (const lars::ByteRange& r : ranges) {
      if ((r.id == hit.first || r.id == hit.second) && !r.written) both = false;
    }
    fail(rb, hit.second % n,
         std::string("shares memory with ") + role_name(ra) + " " + std::to_string(hit.first % n) +
             "; the step writes " + (both ? "both" : "one"));
  }
  std::lock_guard<std::mutex> lock(mu);
  last = ranges;
}

void check_flags(const at::Tensor& flags, int64_t n) {
  TORCH_CHECK_VALUE(flags.device().is_cpu() && flags.scalar_type() == c10::kByte &&
                        flags.dim() == 1 && flags.size(0) == n && flags.is_contiguous(),
                    "lars_npu: flags must be a contiguous uint8 CPU tensor of shape (", n, ",)");
}

int64_t check_buffer_count(at::TensorList bufs, const uint8_t* flags, int64_t n) {
  int64_t with_m = 0;
  for (int64_t i = 0; i < n; ++i) with_m += (flags[i] & kMomentum) ? 1 : 0;
  TORCH_CHECK_VALUE(static_cast<int64_t>(bufs.size()) == with_m, "lars_npu: momentum_buffers has ",
                    bufs.size(), " tensors, the flags ask for ", with_m);
  return with_m;
}

void check_step_arrays(const at::Tensor& group, const at::Tensor& flags, const at::Tensor& hyper,
                       int64_t n) {
  check_flags(flags, n);
  TORCH_CHECK_VALUE(group.device().is_cpu() && group.scalar_type() == c10::kLong &&
                        group.dim() == 1 && group.size(0) == n && group.is_contiguous(),
                    "lars_npu: group must be a contiguous int64 CPU tensor of shape (", n, ",)");
  TORCH_CHECK_VALUE(hyper.device().is_cpu() && hyper.scalar_type() == c10::kDouble &&
                        hyper.dim() == 2 && hyper.size(1) == 4 && hyper.is_contiguous(),
                    "lars_npu: hyper must be a contiguous float64 CPU tensor of shape (groups, 4)");
  const int64_t groups = hyper.size(0);
  const int64_t* g = group.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(g[i] >= 0 && g[i] < groups, "lars_npu: group[", i, "] = ", g[i],
                      " is not a row of hyper (", groups, " groups)");
  }
}

void check_given_sums(const std::optional<at::Tensor>& given, int64_t n) {
  if (!given.has_value()) return;
  const at::Tensor& s = *given;
  TORCH_CHECK_VALUE(s.device().is_cpu() && s.scalar_type() == c10::kDouble && s.dim() == 2 &&
                        s.size(0) == 2 && s.size(1) == n && s.is_contiguous(),
                    "lars_npu: given_sums must be a contiguous float64 CPU tensor of shape (2, ",
                    n, ") (sums of squares of the weights, then of the gradients)");
}

void check_lengths(int64_t n, int64_t m, const char* what) {
  TORCH_CHECK_VALUE(n == m, "lars_npu: ", what, " has ", m, " tensors, the parameters ", n);
}

c10::Device first_device(at::TensorList ts) {
  for (const at::Tensor& t : ts) {
    if (t.defined()) return t.device();
  }
  return c10::Device(c10::kCPU);
}

FusedStepChecks check_fused_step(at::TensorList params, at::TensorList grads,
                                 at::TensorList bufs, const at::Tensor& group,
                                 const at::Tensor& flags, const at::Tensor& hyper,
                                 const std::optional<at::Tensor>& given_sums,
                                 bool mixed_grad_dtypes) {
  const auto n = static_cast<int64_t>(params.size());
  check_lengths(n, static_cast<int64_t>(grads.size()), "grads");
  check_step_arrays(group, flags, hyper, n);
  check_given_sums(given_sums, n);
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const int64_t with_m = check_buffer_count(bufs, f, n);
  FusedStepChecks c;
  c.device = first_device(params);
  c.w.resize(static_cast<size_t>(n));
  c.g.resize(static_cast<size_t>(n));
  c.m.resize(static_cast<size_t>(with_m));
  c.buf_of.assign(static_cast<size_t>(n), -1);
  std::vector<lars::ByteRange> ranges;
  ranges.reserve(static_cast<size_t>(2 * n + with_m));
  for (int64_t i = 0, b = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const at::Tensor& p = params[k];
    const at::Tensor& g = grads[k];
    c.w[k] = check_tensor(p, Role::kParameter, i, c.device, /*written=*/true);
    c.g[k] = check_tensor(g, Role::kGradient, i, c.device, /*written=*/false);
    check_same_shape(g, p, Role::kGradient, i);
    if (g.scalar_type() != p.scalar_type()) {
      const bool allowed = mixed_grad_dtypes && p.scalar_type() == at::kFloat &&
                           (g.scalar_type() == at::kHalf || g.scalar_type() == at::kBFloat16);
      if (!allowed) {
        fail(Role::kGradient, i,
             "has dtype " + dtype_name(g.scalar_type()) + ", the parameter " +
                 dtype_name(p.scalar_type()),
             /*type_error=*/true);
      }
    }
    ranges.push_back({c.w[k].begin, c.w[k].end, true, i});
    ranges.push_back({c.g[k].begin, c.g[k].end, false, n + i});
    if (f[i] & kMomentum) {
      const auto bk = static_cast<size_t>(b);
      const at::Tensor& m = bufs[bk];
      // any dtype check_tensor takes: the kernels get it in the parameter's (staged)
      c.m[bk] = check_tensor(m, Role::kMomentumBuffer, i, c.device, /*written=*/true);
      check_same_shape(m, p, Role::kMomentumBuffer, i);
      ranges.push_back({c.m[bk].begin, c.m[bk].end, true, 2 * n + i});
      c.buf_of[k] = b++;
    }
  }
  check_disjoint(ranges, n);
  return c;
}

}  // namespace lars_ops
