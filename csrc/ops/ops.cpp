// The lars_npu operators in torch's dispatcher: schemas (TORCH_LIBRARY), the CPU kernels (the
// fused C++ kernels of csrc/cpu on at::Tensor lists) and Meta kernels (shapes only, so that
// FakeTensor tracing and torch.compile see the ops). The PrivateUse1 (Ascend NPU) kernels live in
// csrc/npu/lars_npu_ops.cpp, built only with CANN. Public as torch.ops.lars_npu.*
// (docs/operators.md).
//
// Every op checks everything it is given (csrc/ops/checks.h) before it writes anything. Tensors
// the kernels cannot take as they are (non-contiguous, negative bit, a buffer of another dtype)
// are staged: a contiguous copy goes to the kernel and is copied back only when the step ran.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/fused.h"
#include "cpu/lars_cpu.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace lars_ops {
namespace {

// GNU OpenMP's thread pool does not survive fork(): in a forked child the kernels run on one
// thread (lars_npu/_backends/_native.py says so once, in Python).
bool forked_child = false;
[[maybe_unused]] const bool atfork_registered = [] {
#if defined(__unix__) || defined(__APPLE__)
  pthread_atfork(nullptr, nullptr, [] { forked_child = true; });
#endif
  return true;
}();

int threads() { return forked_child ? 1 : at::get_num_threads(); }

// One tensor as the kernel sees it, with the staged copy (if any) to write back.
struct Arg {
  at::Tensor orig;
  at::Tensor use;  // orig itself, or a contiguous copy
  int code = -1;
  bool staged = false;
};

Arg stage(const at::Tensor& t, const Checked& c, c10::ScalarType dtype) {
  Arg a{t, t, c.code, false};
  if (!c.direct || t.scalar_type() != dtype) {
    a.use = t.to(dtype, /*non_blocking=*/false, /*copy=*/true, c10::MemoryFormat::Contiguous)
                .resolve_neg()
                .contiguous();
    a.code = dtype_code(dtype);
    a.staged = true;
  }
  return a;
}

void write_back(const std::vector<Arg>& args) {
  for (const Arg& a : args) {
    if (a.staged) a.orig.copy_(a.use);
  }
}

void bump(const std::vector<Arg>& args) {
  for (const Arg& a : args) a.orig.unsafeGetTensorImpl()->bump_version();
}

void* ptr(const Arg& a) { return a.use.numel() > 0 ? a.use.data_ptr() : nullptr; }

struct GroupValues {
  std::vector<double> lr, wd, mu;
  std::vector<uint8_t> nesterov;
};

// Per-tensor values from the group table; wd is 0 for tensors LARS does not adapt.
GroupValues per_tensor(const at::Tensor& group, const at::Tensor& flags, const at::Tensor& hyper,
                       int64_t n) {
  GroupValues v;
  v.lr.resize(static_cast<size_t>(n));
  v.wd.resize(static_cast<size_t>(n));
  v.mu.resize(static_cast<size_t>(n));
  v.nesterov.resize(static_cast<size_t>(n));
  const int64_t* g = group.data_ptr<int64_t>();
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const double* h = hyper.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    const double* row = h + 4 * g[i];
    const auto k = static_cast<size_t>(i);
    v.lr[k] = row[0];
    v.wd[k] = (f[i] & kAdapt) ? row[1] : 0.0;
    v.mu[k] = row[2];
    v.nesterov[k] = row[3] != 0.0;
  }
  return v;
}

at::TensorOptions f64() { return at::TensorOptions().dtype(at::kDouble); }

lars::Hyper hyper_of(double epsilon, double coefficient, bool use_clip, bool guard_zero_norm) {
  return lars::Hyper{epsilon, coefficient, use_clip, guard_zero_norm};
}

// ---- fused LARS + momentum SGD -----------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_step_cpu(
    at::TensorList params, at::TensorList grads, at::TensorList bufs, const at::Tensor& group,
    const at::Tensor& flags, const at::Tensor& hyper, double epsilon, double coefficient,
    bool use_clip, bool guard_zero_norm, const std::optional<at::Tensor>& given_sums,
    bool mixed_grad_dtypes, int64_t cache_budget_bytes) {
  const auto n = static_cast<int64_t>(params.size());
  // every check, before anything is written
  const FusedStepChecks c = check_fused_step(params, grads, bufs, group, flags, hyper, given_sums,
                                             mixed_grad_dtypes);
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const std::vector<Checked>&cw = c.w, &cg = c.g, &cm = c.m;
  const std::vector<int64_t>& buf_of = c.buf_of;

  const GroupValues v = per_tensor(group, flags, hyper, n);
  // Pointers the kernel uses: the tensors' own memory, or staged copies (rare: views, the
  // negative bit, a buffer of another dtype) written back after the step.
  std::vector<Arg> staged_w, staged_m, staged_g;
  std::vector<lars::FusedTensorSpec> specs(static_cast<size_t>(n));
  std::vector<void*> wp(static_cast<size_t>(n)), mp(static_cast<size_t>(n), nullptr);
  std::vector<const void*> gp(static_cast<size_t>(n));
  std::vector<uint8_t> first(static_cast<size_t>(n));
  const auto use = [](const at::Tensor& t, const Checked& c, c10::ScalarType dtype,
                      std::vector<Arg>& staged, int* code) -> void* {
    if (c.direct && t.scalar_type() == dtype) {
      *code = c.code;
      return t.numel() > 0 ? t.data_ptr() : nullptr;
    }
    staged.push_back(stage(t, c, dtype));
    *code = staged.back().code;
    return ptr(staged.back());
  };
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const c10::ScalarType wt = params[k].scalar_type();
    int wcode = 0, gcode = 0, mcode = 0;
    wp[k] = use(params[k], cw[k], wt, staged_w, &wcode);
    gp[k] = use(grads[k], cg[k], grads[k].scalar_type(), staged_g, &gcode);
    if (buf_of[k] >= 0) {
      const auto b = static_cast<size_t>(buf_of[k]);
      mp[k] = use(bufs[b], cm[b], wt, staged_m, &mcode);
    }
    specs[k] = {params[k].numel(), wcode, gcode, (f[i] & kAdapt) != 0, (f[i] & kMomentum) != 0};
    first[k] = (f[i] & kFirst) ? 1 : 0;
  }
  static const int64_t default_budget = lars::last_level_cache_bytes() / 2;
  lars::FusedPlan plan(std::move(specs),
                       cache_budget_bytes > 0 ? cache_budget_bytes : default_budget);
  at::Tensor lam = at::empty({n}, f64()), ws = at::empty({n}, f64()), gs = at::empty({n}, f64());
  lars::FusedStepArgs a{wp.data(), gp.data(), mp.data(), first.data(), v.wd.data(),
                        v.lr.data(), v.mu.data(), v.nesterov.data()};
  if (given_sums.has_value()) {
    a.given_ws = given_sums->data_ptr<double>();
    a.given_gs = a.given_ws + n;
  }
  const bool found = plan.step(a, hyper_of(epsilon, coefficient, use_clip, guard_zero_norm),
                               lam.data_ptr<double>(), ws.data_ptr<double>(),
                               gs.data_ptr<double>(), threads());
  if (!found) {
    write_back(staged_w);
    write_back(staged_m);
    for (const at::Tensor& p : params) p.unsafeGetTensorImpl()->bump_version();
    for (const at::Tensor& b : bufs) b.unsafeGetTensorImpl()->bump_version();
  }
  return {at::scalar_tensor(found, at::TensorOptions().dtype(at::kBool)), lam, ws, gs};
}

// ---- the unfused pieces: square sums, and the in-place gradient rewrite --------------------------
std::tuple<at::Tensor, at::Tensor> square_sums_cpu(at::TensorList weights, at::TensorList grads,
                                                   const at::Tensor& flags) {
  const auto n = static_cast<int64_t>(grads.size());
  check_lengths(n, static_cast<int64_t>(weights.size()), "weights");
  check_flags(flags, n);
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const c10::Device dev = first_device(grads);
  std::vector<Arg> w, g;
  std::vector<lars::TensorRef> wr(static_cast<size_t>(n)), gr(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const Checked c = check_tensor(grads[k], Role::kGradient, i, dev, false);
    g.push_back(stage(grads[k], c, grads[k].scalar_type()));
    gr[k] = {ptr(g.back()), grads[k].numel(), g.back().code};
    wr[k] = {nullptr, grads[k].numel(), g.back().code};
    if (f[i] & kAdapt) {
      const Checked cw = check_tensor(weights[k], Role::kWeight, i, dev, false);
      check_same_shape(weights[k], grads[k], Role::kWeight, i);
      w.push_back(stage(weights[k], cw, weights[k].scalar_type()));
      wr[k] = {ptr(w.back()), weights[k].numel(), w.back().code};
    }
  }
  at::Tensor ws = at::empty({n}, f64()), gs = at::empty({n}, f64());
  lars::square_sums(wr.data(), gr.data(), n, ws.data_ptr<double>(), gs.data_ptr<double>(),
                    threads());
  return {ws, gs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lars_cpu(
    at::TensorList weights, at::TensorList grads, const at::Tensor& group,
    const at::Tensor& flags, const at::Tensor& hyper, double epsilon, double coefficient,
    bool use_clip, bool guard_zero_norm, const std::optional<at::Tensor>& given_sums) {
  const auto n = static_cast<int64_t>(grads.size());
  check_lengths(n, static_cast<int64_t>(weights.size()), "weights");
  check_step_arrays(group, flags, hyper, n);
  check_given_sums(given_sums, n);
  const uint8_t* f = flags.data_ptr<uint8_t>();
  const c10::Device dev = first_device(weights);
  std::vector<Checked> cw(static_cast<size_t>(n)), cg(static_cast<size_t>(n));
  std::vector<lars::ByteRange> ranges;
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    const bool adapt = (f[i] & kAdapt) != 0;
    cg[k] = check_tensor(grads[k], Role::kGradient, i, dev, /*written=*/adapt);
    if (adapt) {
      cw[k] = check_tensor(weights[k], Role::kParameter, i, dev, false);
      check_same_shape(grads[k], weights[k], Role::kGradient, i);
      if (grads[k].scalar_type() != weights[k].scalar_type()) {
        fail(Role::kGradient, i,
             "has dtype " + dtype_name(grads[k].scalar_type()) +
                 ", the parameter " + dtype_name(weights[k].scalar_type()),
             true);
      }
      ranges.push_back({cw[k].begin, cw[k].end, false, i});
      ranges.push_back({cg[k].begin, cg[k].end, true, n + i});
    }
  }
  check_disjoint(ranges, n);
  const GroupValues v = per_tensor(group, flags, hyper, n);
  const lars::Hyper h = hyper_of(epsilon, coefficient, use_clip, guard_zero_norm);
  std::vector<Arg> w, g;
  std::vector<lars::TensorRef> wr(static_cast<size_t>(n)), gr(static_cast<size_t>(n));
  std::vector<uint8_t> adapt(static_cast<size_t>(n)), skip(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    adapt[k] = (f[i] & kAdapt) ? 1 : 0;
    skip[k] = adapt[k] ? 0 : 1;
    g.push_back(stage(grads[k], cg[k], grads[k].scalar_type()));
    gr[k] = {ptr(g.back()), grads[k].numel(), g.back().code};
    if (adapt[k]) {
      w.push_back(stage(weights[k], cw[k], weights[k].scalar_type()));
      wr[k] = {ptr(w.back()), weights[k].numel(), w.back().code};
    } else {
      wr[k] = {nullptr, grads[k].numel(), g.back().code};
    }
  }
  at::Tensor lam = at::empty({n}, f64()), ws = at::empty({n}, f64()), gs = at::empty({n}, f64());
  double* l = lam.data_ptr<double>();
  bool found = false;
  if (given_sums.has_value()) {
    const double* gw = given_sums->data_ptr<double>();
    std::copy(gw, gw + n, ws.data_ptr<double>());
    std::copy(gw + n, gw + 2 * n, gs.data_ptr<double>());
    for (int64_t i = 0; i < n; ++i) found = found || !std::isfinite(gw[n + i]);
    for (int64_t i = 0; i < n; ++i) {
      const auto k = static_cast<size_t>(i);
      l[i] = found ? std::nan("")
                   : adapt[k] ? lars::trust_ratio(gw[i], gw[n + i], v.wd[k], v.lr[k], h) : 1.0;
    }
    if (!found) {
      lars::lars_rewrite(wr.data(), gr.data(), gr.data(), l, v.wd.data(), skip.data(), n,
                         threads());
    }
  } else {
    found = lars::multi_lars(wr.data(), gr.data(), adapt.data(), v.wd.data(), v.lr.data(), n, h,
                             l, ws.data_ptr<double>(), gs.data_ptr<double>(), threads());
  }
  if (!found) {
    std::vector<Arg> written;
    for (int64_t i = 0; i < n; ++i) {
      if (adapt[static_cast<size_t>(i)]) written.push_back(g[static_cast<size_t>(i)]);
    }
    write_back(written);
    bump(written);
  }
  return {at::scalar_tensor(found, at::TensorOptions().dtype(at::kBool)), lam, ws, gs};
}

// ---- Meta: shapes only -------------------------------------------------------------------------
// A Meta kernel also runs when one meta tensor sits among real ones (Meta wins the dispatch):
// that is a tensor without memory, refused like the CPU kernel refuses one.
// The first meta tensor of `ts` (role r), named, when any tensor of the step is real.
void refuse_meta_among_real(at::TensorList ts, Role r, bool any_real, const uint8_t* f = nullptr) {
  if (!any_real) return;
  for (size_t i = 0, b = 0; i < ts.size(); ++i) {
    int64_t index = static_cast<int64_t>(i);
    if (f != nullptr) {  // momentum buffers: index of the parameter owning the i-th buffer
      while (!(f[b] & kMomentum)) ++b;
      index = static_cast<int64_t>(b++);
    }
    if (ts[i].defined() && ts[i].is_meta()) {
      fail(r, index, "has no memory (a meta tensor or a ZeroTensor); LARS needs real values");
    }
  }
}

bool any_real(std::initializer_list<at::TensorList> lists) {
  for (const at::TensorList& ts : lists) {
    for (const at::Tensor& t : ts) {
      if (t.defined() && !t.is_meta()) return true;
    }
  }
  return false;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> step_outputs(int64_t n,
                                                                       const c10::Device& dev) {
  const auto o = f64().device(dev);
  return {at::empty({}, at::TensorOptions().dtype(at::kBool).device(dev)), at::empty({n}, o),
          at::empty({n}, o), at::empty({n}, o)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_step_meta(
    at::TensorList params, at::TensorList grads, at::TensorList bufs, const at::Tensor&,
    const at::Tensor& flags, const at::Tensor&, double, double, bool, bool,
    const std::optional<at::Tensor>&, bool, int64_t) {
  check_lengths(static_cast<int64_t>(params.size()), static_cast<int64_t>(grads.size()), "grads");
  const bool real = any_real({params, grads, bufs});
  refuse_meta_among_real(params, Role::kParameter, real);
  refuse_meta_among_real(grads, Role::kGradient, real);
  if (real && !flags.is_meta()) {
    const auto n = static_cast<int64_t>(params.size());
    check_flags(flags, n);
    const uint8_t* f = flags.data_ptr<uint8_t>();
    check_buffer_count(bufs, f, n);
    refuse_meta_among_real(bufs, Role::kMomentumBuffer, real, f);
  }
  return step_outputs(static_cast<int64_t>(params.size()), c10::Device(c10::kMeta));
}

std::tuple<at::Tensor, at::Tensor> square_sums_meta(at::TensorList weights, at::TensorList grads,
                                                    const at::Tensor&) {
  check_lengths(static_cast<int64_t>(grads.size()), static_cast<int64_t>(weights.size()),
                "weights");
  const bool real = any_real({weights, grads});
  refuse_meta_among_real(weights, Role::kWeight, real);
  refuse_meta_among_real(grads, Role::kGradient, real);
  const auto o = f64().device(c10::kMeta);
  const auto n = static_cast<int64_t>(grads.size());
  return {at::empty({n}, o), at::empty({n}, o)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lars_meta(
    at::TensorList weights, at::TensorList grads, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double, double, bool, bool, const std::optional<at::Tensor>&) {
  check_lengths(static_cast<int64_t>(grads.size()), static_cast<int64_t>(weights.size()),
                "weights");
  const bool real = any_real({weights, grads});
  refuse_meta_among_real(weights, Role::kParameter, real);
  refuse_meta_among_real(grads, Role::kGradient, real);
  return step_outputs(static_cast<int64_t>(grads.size()), c10::Device(c10::kMeta));
}

}  // namespace
}  // namespace lars_ops

// Schemas: (a!)/(b!) mark what an op writes in place; every other tensor is only read.
TORCH_LIBRARY(lars_npu, m) {
  m.def(
      "fused_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor group, Tensor flags, Tensor hyper, float epsilon, float coefficient, "
      "bool use_clip, bool guard_zero_norm, Tensor? given_sums=None, "
      "bool mixed_grad_dtypes=False, int cache_budget_bytes=0) -> (Tensor found_inf, Tensor lam, Tensor w_s, Tensor g_s)");
  m.def("square_sums(Tensor[] weights, Tensor[] grads, Tensor flags) -> (Tensor w_s, Tensor g_s)");
  m.def(
      "lars_(Tensor[] weights, Tensor(a!)[] grads, Tensor group, Tensor flags, Tensor hyper, "
      "float epsilon, float coefficient, bool use_clip, bool guard_zero_norm, "
      "Tensor? given_sums=None) -> (Tensor found_inf, Tensor lam, Tensor w_s, Tensor g_s)");
}

TORCH_LIBRARY_IMPL(lars_npu, CPU, m) {
  m.impl("fused_step_", &lars_ops::fused_step_cpu);
  m.impl("square_sums", &lars_ops::square_sums_cpu);
  m.impl("lars_", &lars_ops::lars_cpu);
}

// Autograd: the operators write parameters and buffers in place and have no derivative (an
// optimizer step). Their kernels run below autograd, so that a call in grad mode (parameters are
// leaves that require grad) is the same whole step as under no_grad, never a partial one: the
// write-back of staged copies is not an autograd in-place op, and no grad_fn is recorded.
// (Written tensors' version counters are bumped by the kernels.)
namespace lars_ops {
namespace {
void below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                    torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}
}  // namespace
}  // namespace lars_ops

TORCH_LIBRARY_IMPL(lars_npu, Autograd, m) {
  m.impl("fused_step_", torch::CppFunction::makeFromBoxedFunction<&lars_ops::below_autograd>());
  m.impl("square_sums", torch::CppFunction::makeFromBoxedFunction<&lars_ops::below_autograd>());
  m.impl("lars_", torch::CppFunction::makeFromBoxedFunction<&lars_ops::below_autograd>());
}

// The negative bit, the conjugate bit and ZeroTensors reach the kernels as they are (torch's
// fallbacks for these keys cannot handle mutable tensor lists, and would give a ZeroTensor
// memory): the kernels stage negative-bit tensors by value and refuse the rest, by name.
TORCH_LIBRARY_IMPL(lars_npu, Negative, m) {
  m.impl("fused_step_", torch::CppFunction::makeFallthrough());
  m.impl("square_sums", torch::CppFunction::makeFallthrough());
  m.impl("lars_", torch::CppFunction::makeFallthrough());
}
TORCH_LIBRARY_IMPL(lars_npu, Conjugate, m) {
  m.impl("fused_step_", torch::CppFunction::makeFallthrough());
  m.impl("square_sums", torch::CppFunction::makeFallthrough());
  m.impl("lars_", torch::CppFunction::makeFallthrough());
}
TORCH_LIBRARY_IMPL(lars_npu, ZeroTensor, m) {
  m.impl("fused_step_", torch::CppFunction::makeFallthrough());
  m.impl("square_sums", torch::CppFunction::makeFallthrough());
  m.impl("lars_", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(lars_npu, Meta, m) {
  m.impl("fused_step_", &lars_ops::fused_step_meta);
  m.impl("square_sums", &lars_ops::square_sums_meta);
  m.impl("lars_", &lars_ops::lars_meta);
}
