// Force-included (-include) before every translation unit the real runner compiles against the
// real AscendC headers (and asc-tools' CPU-debug sources). Their failed checks end in
// raise(SIGABRT): CANN's CPU-debug framework runs every AI core as a forked process, which the
// signal ends. lars_npu's runner runs the cores in the Python process, so the call becomes a C++
// exception (lars_asc_real::RaiseFromLibrary, asc_model.cpp) that the runner turns into a Python
// RuntimeError. <csignal> is included first so that its own declaration of raise is untouched.
#pragma once

#include <csignal>

namespace lars_asc_real {
int RaiseFromLibrary(int sig);
}  // namespace lars_asc_real

#define raise(sig) ::lars_asc_real::RaiseFromLibrary(sig)
