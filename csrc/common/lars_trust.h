// The LARS trust ratio from NORMS, in plain arithmetic (no <cmath>), so that the same function
// serves host C++ (lars_math.h) and AscendC kernels (compiled with LARS_DEVICE = __aicore__).
// Transcription of lars_npu/reference.py::trust_ratio with wn = sqrt(w_s), gn = sqrt(g_s).
#pragma once

#ifndef LARS_DEVICE
#define LARS_DEVICE
#endif

namespace lars {

// F: double on the host, float in AscendC kernels.
template <typename F>
LARS_DEVICE inline F trust_ratio_from_norms(F wn, F gn, F weight_decay, F lr, F epsilon,
                                            F coefficient, bool use_clip, bool guard_zero_norm) {
  const F zero = F(0), one = F(1);
  F lam;
  if (guard_zero_norm && (wn == zero || gn == zero)) {
    lam = one;
  } else {
    lam = coefficient * wn / (gn + weight_decay * wn + epsilon);
  }
  const bool is_nan = lam != lam;
  if (use_clip && !is_nan) {  // nan stays nan, as max(min(nan, 1), 0) in NumPy
    if (lr > zero) {
      lam = lam / lr;
      lam = lam < one ? lam : one;
      lam = lam > zero ? lam : zero;
    } else {
      lam = lam > zero ? one : zero;  // the limit of min(lambda / lr, 1) as lr -> 0+
    }
  }
  return lam;
}

}  // namespace lars
