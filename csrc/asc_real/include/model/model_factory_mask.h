// The vector mask register as asc-tools' CPU-debug API checks read it (cpudebug/src/api_check);
// in CANN these come from its closed CPU model. lars_npu's model answers (asc_hooks.cpp).
#pragma once

#include <cstdint>

uint64_t ModelFactoryGetMaskHigh();
uint64_t ModelFactoryGetMaskLow();
uint64_t ModelFactoryGetMaskMode();  // 0 normal, 1 counter
