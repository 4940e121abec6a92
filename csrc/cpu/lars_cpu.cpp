#include "lars_cpu.h"

#include "kernels_inl.h"

#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lars {
namespace {
using detail::sumsq;

// Below this many elements a call stays on one thread: forking costs more than it saves.
constexpr int64_t kParallelMin = 1 << 16;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// The flat work list: every tensor cut into kChunk-element pieces, in tensor order.
std::vector<Chunk> make_chunks(const TensorRef* t, int64_t n, const uint8_t* skip, int64_t* total) {
  std::vector<Chunk> chunks;
  int64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (skip != nullptr && skip[i]) continue;
    for (int64_t b = 0; b < t[i].numel; b += kChunk) {
      const int64_t e = b + kChunk < t[i].numel ? b + kChunk : t[i].numel;
      chunks.push_back({i, b, e});
    }
    sum += t[i].numel;
  }
  *total = sum;
  return chunks;
}

int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : default_threads(); }

template <typename T>
void chunk_rewrite(const T* w, const T* g, T* out, int64_t begin, int64_t end, double lam_d,
                   double wd_d) {
  using C = typename Compute<T>::type;
  const C lam = static_cast<C>(lam_d);
  const C wd = static_cast<C>(wd_d);
  for (int64_t i = begin; i < end; ++i) {
    store(out, i, lam * (load(g, i) + wd * load(w, i)));
  }
}

void rewrite(const TensorRef& w, const TensorRef& g, const TensorRef& out, int64_t begin,
             int64_t end, double lam, double wd) {
  dispatch_dtype(g.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    chunk_rewrite(static_cast<const T*>(w.data), static_cast<const T*>(g.data),
                  static_cast<T*>(out.data), begin, end, lam, wd);
  });
}

}  // namespace

// Pass 1 over the work list of g; w[i] joins where present.
void square_sums(const TensorRef* w, const TensorRef* g, int64_t n, double* w_s, double* g_s,
                      int num_threads) {
  int64_t total = 0;
  const std::vector<Chunk> chunks = make_chunks(g, n, nullptr, &total);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  std::vector<double> part(2 * static_cast<size_t>(nc));  // O(elements / kChunk), reused per call
  const int threads = resolve_threads(num_threads);
  (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (total >= kParallelMin)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& k = chunks[c];
    const TensorRef& wt = w[k.tensor];
    part[2 * c] = wt.data != nullptr ? sumsq(wt, k.begin, k.end) : 0.0;
    part[2 * c + 1] = sumsq(g[k.tensor], k.begin, k.end);
  }
  for (int64_t i = 0; i < n; ++i) w_s[i] = g_s[i] = 0.0;
  for (int64_t c = 0; c < nc; ++c) {  // fixed combine order: chunk order within each tensor
    w_s[chunks[c].tensor] += part[2 * c];
    g_s[chunks[c].tensor] += part[2 * c + 1];
  }
}

int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

void lars_rewrite(const TensorRef* w, const TensorRef* g, const TensorRef* out, const double* lam,
                  const double* wd, const uint8_t* skip, int64_t n, int num_threads) {
  int64_t total = 0;
  const std::vector<Chunk> chunks = make_chunks(g, n, skip, &total);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  const int threads = resolve_threads(num_threads);
  (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (total >= kParallelMin)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& k = chunks[c];
    rewrite(w[k.tensor], g[k.tensor], out[k.tensor], k.begin, k.end, lam[k.tensor], wd[k.tensor]);
  }
}

bool multi_lars(const TensorRef* w, const TensorRef* g, const uint8_t* adapt, const double* wd,
                const double* lr, int64_t n, const Hyper& hyper, double* lam, double* w_s,
                double* g_s, int num_threads) {
  // Weights join pass 1 only where the tensor is adapted.
  std::vector<TensorRef> wp(w, w + n);
  std::vector<uint8_t> skip(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (!adapt[i]) wp[i].data = nullptr;
    skip[static_cast<size_t>(i)] = adapt[i] ? 0 : 1;
  }
  square_sums(wp.data(), g, n, w_s, g_s, num_threads);
  bool found_inf = false;
  for (int64_t i = 0; i < n; ++i) found_inf = found_inf || !std::isfinite(g_s[i]);
  if (found_inf) {
    for (int64_t i = 0; i < n; ++i) lam[i] = std::nan("");
    return true;
  }
  for (int64_t i = 0; i < n; ++i) {
    lam[i] = adapt[i] ? trust_ratio(w_s[i], g_s[i], wd[i], lr[i], hyper) : 1.0;
  }
  lars_rewrite(w, g, g, lam, wd, skip.data(), n, num_threads);
  return false;
}

}  // namespace lars
