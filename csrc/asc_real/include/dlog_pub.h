// Stand-in for CANN's logging header (closed, absent without CANN), which asc-tools' CPU-debug
// API checks (cpudebug/src/api_check) include. lars_npu's own: their warnings and errors go to
// stdout, where the real runner captures them for its error messages (asc_model.cpp).
#pragma once

#include <cstdio>

#define ASCENDCKERNEL 0
#define dlog_debug(module, ...) ((void)(module))
#define dlog_info(module, ...) ((void)(module))
#define dlog_warn(module, ...) (std::printf("[WARN] " __VA_ARGS__))
#define dlog_error(module, ...) (std::printf("[ERROR] " __VA_ARGS__))
