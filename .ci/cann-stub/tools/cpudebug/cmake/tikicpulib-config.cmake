# Stand-in for the CPU-debug package config of newer CANN toolkits (asc-tools installs it as
# tools/cpudebug/cmake/tikicpulib-config.cmake), for .ci/cann-build-check's configure check of
# RUN_MODE=cpu only: an empty interface target per SoC, nothing to build or link.
foreach(soc Ascend910B1 Ascend910B2 Ascend910B3 Ascend910B4)
  if(NOT TARGET tikicpulib::${soc})
    add_library(tikicpulib_stub_${soc} INTERFACE)
    add_library(tikicpulib::${soc} ALIAS tikicpulib_stub_${soc})
  endif()
endforeach()
set(tikicpulib_FOUND TRUE)
