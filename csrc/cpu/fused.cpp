#include "fused.h"

#include <cmath>
#include <fstream>
#include <string>
#include <type_traits>
#include <utility>

#include "kernels_inl.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lars {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // below this many elements a step stays on one thread

int64_t dtype_bytes(int d) {
  switch (d) {
    case kFloat64: return 8;
    case kFloat32: return 4;
    default: return 2;
  }
}

// ---- the update of one chunk: one sweep over w, g, m -------------------------------------------
// Op order follows torch SGD (buf.mul_(mu).add_(g'); g'.add(buf, alpha=mu); p.add_(d, alpha=-lr)),
// in fp32 (fp64 for fp64 parameters), rounded once per stored value.
template <typename TW, typename TG, bool HasM, bool First, bool Nesterov>
void update_chunk(void* wv, const void* gv, void* mv, int64_t begin, int64_t end, double lam_d,
                  double wd_d, double lr_d, double mu_d) {
  using C = typename Compute<TW>::type;
  TW* __restrict w = static_cast<TW*>(wv);
  const TG* __restrict g = static_cast<const TG*>(gv);
  TW* __restrict m = static_cast<TW*>(mv);
  const C lam = static_cast<C>(lam_d), wd = static_cast<C>(wd_d);
  const C neg_lr = -static_cast<C>(lr_d), mu = static_cast<C>(mu_d);
  for (int64_t i = begin; i < end; ++i) {
    const C wi = static_cast<C>(load(w, i));
    const C gp = lam * (static_cast<C>(load(g, i)) + wd * wi);
    C d = gp;
    if constexpr (HasM) {
      C mi;
      if constexpr (First) {
        mi = gp;
      } else {
        mi = mu * static_cast<C>(load(m, i)) + gp;
      }
      store(m, i, mi);
      if constexpr (Nesterov) {
        d = gp + mu * static_cast<C>(load(m, i));  // the stored (rounded) buffer, as torch reads it
      } else {
        d = static_cast<C>(load(m, i));
      }
    }
    store(w, i, static_cast<C>(wi + neg_lr * d));
  }
}

using UpdateFn = void (*)(void*, const void*, void*, int64_t, int64_t, double, double, double,
                          double);

template <typename TW, typename TG>
UpdateFn pick(bool has_m, bool first, bool nesterov) {
  if (!has_m) return &update_chunk<TW, TG, false, false, false>;
  if (first) {
    return nesterov ? &update_chunk<TW, TG, true, true, true>
                    : &update_chunk<TW, TG, true, true, false>;
  }
  return nesterov ? &update_chunk<TW, TG, true, false, true>
                  : &update_chunk<TW, TG, true, false, false>;
}

UpdateFn update_fn(int w_dtype, int g_dtype, bool has_m, bool first, bool nesterov) {
  if (w_dtype == g_dtype) {
    switch (w_dtype) {
      case kFloat32: return pick<float, float>(has_m, first, nesterov);
      case kFloat16: return pick<Half, Half>(has_m, first, nesterov);
      case kBFloat16: return pick<BFloat16, BFloat16>(has_m, first, nesterov);
      case kFloat64: return pick<double, double>(has_m, first, nesterov);
      default: return nullptr;
    }
  }
  if (w_dtype == kFloat32 && g_dtype == kFloat16) return pick<float, Half>(has_m, first, nesterov);
  if (w_dtype == kFloat32 && g_dtype == kBFloat16) {
    return pick<float, BFloat16>(has_m, first, nesterov);
  }
  return nullptr;
}

}  // namespace

namespace {

// Linux sysfs: the size of the highest-level cache of cpu0 ("8192K"), or 0. Preferred over
// sysconf, which on some VMs reports the host's cache rather than the guest's.
int64_t sysfs_llc_bytes() {
  int best_level = 0;
  int64_t best = 0;
  for (int idx = 0; idx < 10; ++idx) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(idx) + "/";
    std::ifstream lf(dir + "level"), sf(dir + "size");
    int level = 0;
    std::string size;
    if (!(lf >> level) || !(sf >> size) || size.empty()) continue;
    int64_t v = 0;
    size_t k = 0;
    while (k < size.size() && size[k] >= '0' && size[k] <= '9') v = v * 10 + (size[k++] - '0');
    if (k < size.size() && (size[k] == 'K' || size[k] == 'k')) v <<= 10;
    if (k < size.size() && (size[k] == 'M' || size[k] == 'm')) v <<= 20;
    if (level > best_level && v > 0) {
      best_level = level;
      best = v;
    }
  }
  return best;
}

}  // namespace

int64_t last_level_cache_bytes() {
  const int64_t fs = sysfs_llc_bytes();
  if (fs > 0) return fs;
#if defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return static_cast<int64_t>(l3);
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE)
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 > 0) return static_cast<int64_t>(l2);
#endif
  return int64_t{8} << 20;
}

bool FusedPlan::supported_pair(int w_dtype, int g_dtype) {
  return update_fn(w_dtype, g_dtype, false, false, false) != nullptr;
}

FusedPlan::FusedPlan(std::vector<FusedTensorSpec> specs, int64_t cache_budget_bytes)
    : specs_(std::move(specs)) {
  const int64_t n = static_cast<int64_t>(specs_.size());
  first_chunk_.resize(static_cast<size_t>(n) + 1);
  for (int64_t t = 0; t < n; ++t) {
    first_chunk_[static_cast<size_t>(t)] = static_cast<int64_t>(chunks_.size());
    const int64_t numel = specs_[static_cast<size_t>(t)].numel;
    for (int64_t b = 0; b < numel; b += kChunk) {
      chunks_.push_back({t, b, b + kChunk < numel ? b + kChunk : numel});
    }
    total_ += numel;
  }
  first_chunk_[static_cast<size_t>(n)] = static_cast<int64_t>(chunks_.size());
  part_.assign(2 * chunks_.size(), 0.0);

  // Batches: consecutive tensors while their weights fit the budget; an oversized tensor alone.
  const int64_t budget = cache_budget_bytes > 0 ? cache_budget_bytes : 1;
  int64_t t = 0;
  while (t < n) {
    const auto bytes = [&](int64_t k) {
      return specs_[static_cast<size_t>(k)].numel * dtype_bytes(specs_[static_cast<size_t>(k)].w_dtype);
    };
    Batch b{t, t + 1, 0, 0, bytes(t) > budget};
    if (!b.big) {
      int64_t used = bytes(t);
      while (b.end_tensor < n && !(bytes(b.end_tensor) > budget) &&
             used + bytes(b.end_tensor) <= budget) {
        used += bytes(b.end_tensor);
        ++b.end_tensor;
      }
    }
    b.first_chunk = first_chunk_[static_cast<size_t>(b.first_tensor)];
    b.end_chunk = first_chunk_[static_cast<size_t>(b.end_tensor)];
    batches_.push_back(b);
    t = b.end_tensor;
  }
}

bool FusedPlan::step(const FusedStepArgs& a, const Hyper& h, double* lam, double* w_s,
                     double* g_s, int num_threads) {
  const int64_t n = size();
  const int64_t nc = num_chunks();
  const int threads = num_threads > 0 ? num_threads : default_threads();
  (void)threads;
  std::vector<uint8_t> big(static_cast<size_t>(n), 0);  // O(tensors)
  for (const Batch& b : batches_) {
    if (b.big) big[static_cast<size_t>(b.first_tensor)] = 1;
  }
  double* part = part_.data();
  const FusedTensorSpec* spec = specs_.data();
  const Chunk* chunks = chunks_.data();
  const int64_t* fc = first_chunk_.data();
  bool found_inf = false;

  const auto w_ref = [&](int64_t t) {
    return TensorRef{a.w[t], spec[t].numel, spec[t].w_dtype};
  };
  const auto g_ref = [&](int64_t t) {
    return TensorRef{const_cast<void*>(a.g[t]), spec[t].numel, spec[t].g_dtype};
  };

  const bool given = a.given_gs != nullptr && a.given_ws != nullptr;
  if (given) {  // the sums are the caller's: pass 1 is not run, every batch counts as "big"
    for (int64_t t = 0; t < n; ++t) {
      w_s[t] = a.given_ws[t];
      g_s[t] = a.given_gs[t];
      if (!std::isfinite(g_s[t])) found_inf = true;
      big[static_cast<size_t>(t)] = 1;
    }
  }

#pragma omp parallel num_threads(threads) if (total_ >= kParallelMin)
  {
    // Stage A: every sum(g^2); sum(w^2) of adapted tensors too big to batch.
#pragma omp for schedule(static)
    for (int64_t c = 0; c < (given ? 0 : nc); ++c) {
      const Chunk& k = chunks[c];
      part[2 * c + 1] = detail::sumsq(g_ref(k.tensor), k.begin, k.end);
      part[2 * c] = (big[static_cast<size_t>(k.tensor)] && spec[k.tensor].adapt)
                        ? detail::sumsq(w_ref(k.tensor), k.begin, k.end)
                        : 0.0;
    }
#pragma omp single
    if (!given) {
      for (int64_t t = 0; t < n; ++t) {
        double gs = 0.0, ws = 0.0;
        for (int64_t c = fc[t]; c < fc[t + 1]; ++c) {
          ws += part[2 * c];
          gs += part[2 * c + 1];
        }
        g_s[t] = gs;
        w_s[t] = ws;
        if (!std::isfinite(gs)) found_inf = true;
      }
    }
    // (implicit barrier: every thread sees found_inf)
    if (!found_inf) {
      for (const Batch& b : batches_) {
        // A tensor of one chunk is finished in a single visit of the update loop below (sum of
        // w^2, lambda, update while it sits in L1); the others get their sum(w^2) here.
        const bool big_b = b.big || given;
        if (!big_b) {
#pragma omp for schedule(static)
          for (int64_t c = b.first_chunk; c < b.end_chunk; ++c) {
            const Chunk& k = chunks[c];
            const bool one_chunk = fc[k.tensor + 1] - fc[k.tensor] == 1;
            part[2 * c] = (spec[k.tensor].adapt && !one_chunk)
                              ? detail::sumsq(w_ref(k.tensor), k.begin, k.end)
                              : 0.0;
          }
        }
#pragma omp single
        {
          for (int64_t t = b.first_tensor; t < b.end_tensor; ++t) {
            if (fc[t + 1] - fc[t] == 1 && !big_b) continue;  // done in the update loop
            if (!big_b) {
              double ws = 0.0;
              for (int64_t c = fc[t]; c < fc[t + 1]; ++c) ws += part[2 * c];
              w_s[t] = ws;
            }
            lam[t] = spec[t].adapt ? trust_ratio(w_s[t], g_s[t], a.wd[t], a.lr[t], h) : 1.0;
          }
        }
#pragma omp for schedule(static)
        for (int64_t c = b.first_chunk; c < b.end_chunk; ++c) {
          const Chunk& k = chunks[c];
          const int64_t t = k.tensor;
          const bool has_m = spec[t].momentum;
          const UpdateFn fn = update_fn(spec[t].w_dtype, spec[t].g_dtype, has_m,
                                        has_m && a.first[t] != 0, a.nesterov[t] != 0);
          const double wd = spec[t].adapt ? a.wd[t] : 0.0;
          if (fc[t + 1] - fc[t] == 1 && !big_b) {
            w_s[t] = spec[t].adapt ? detail::sumsq(w_ref(t), k.begin, k.end) : 0.0;
            lam[t] = spec[t].adapt ? trust_ratio(w_s[t], g_s[t], a.wd[t], a.lr[t], h) : 1.0;
          }
          fn(a.w[t], a.g[t], has_m ? a.m[t] : nullptr, k.begin, k.end, lam[t], wd, a.lr[t],
             a.mu[t]);
        }
      }
    }
  }
  if (found_inf) {
    for (int64_t t = 0; t < n; ++t) lam[t] = std::nan("");
  }
  return found_inf;
}

}  // namespace lars
