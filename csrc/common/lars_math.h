// The LARS trust ratio, written once for every C++ kernel (CPU and AscendC host side).
// It is a transcription of lars_npu/reference.py::trust_ratio (docs/semantics.md, "The math"):
//
//   lambda = coefficient * sqrt(w_s) / (sqrt(g_s) + wd * sqrt(w_s) + epsilon)
//   guard_zero_norm and (sqrt(w_s) == 0 or sqrt(g_s) == 0)  ->  lambda = 1   (before clipping)
//   use_clip:  lambda = max(min(lambda / lr, 1), 0), with lambda / 0 taken at its limit
//              (lr == 0: 1 if lambda > 0, else 0)
//
// w_s and g_s are SUMS OF SQUARES (MindSpore's LARSUpdate inputs), not norms.
#pragma once

#include <cmath>

#include "lars_trust.h"

namespace lars {

struct Hyper {
  double epsilon = 1e-5;
  double coefficient = 1e-3;
  bool use_clip = false;
  bool guard_zero_norm = false;
};

inline double trust_ratio(double w_s, double g_s, double weight_decay, double lr, const Hyper& h) {
  return trust_ratio_from_norms<double>(std::sqrt(w_s), std::sqrt(g_s), weight_decay, lr,
                                        h.epsilon, h.coefficient, h.use_clip, h.guard_zero_norm);
}

}  // namespace lars
