# Stand-in for CANN's ascendc.cmake, for .ci/cann-build-check only (see ../../../README.md).
get_filename_component(_stub_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

# The ACL runtime library: nothing to link in a compile check (a Python module may leave symbols
# undefined until it is loaded).
if(NOT TARGET ascendcl)
  add_library(ascendcl INTERFACE)
endif()

# Like newer CANN rules, RUN_MODE=cpu is built here too (linked to tikicpulib, found through
# tools/cpudebug/cmake/tikicpulib-config.cmake in this tree).
function(ascendc_library name type)
  add_library(${name} ${type} ${ARGN})
  target_include_directories(${name} PRIVATE ${lars_npu_SOURCE_DIR}/csrc/emu)
  if(RUN_MODE STREQUAL "cpu")
    find_package(tikicpulib REQUIRED)
    target_link_libraries(${name} PUBLIC tikicpulib::${SOC_VERSION})
  endif()
  set(gen "${CMAKE_CURRENT_BINARY_DIR}/${name}_aclrtlaunch")
  file(MAKE_DIRECTORY "${gen}")
  foreach(src IN LISTS ARGN)
    file(READ "${src}" text)
    string(REGEX MATCHALL "__global__ __aicore__ void [a-z0-9_]+\\([^)]*\\)" kernels "${text}")
    foreach(k IN LISTS kernels)
      string(REGEX REPLACE "^__global__ __aicore__ void ([a-z0-9_]+)\\(.*" "\\1" kname "${k}")
      string(REGEX MATCHALL "GM_ADDR" params "${k}")
      set(args "")
      set(i 0)
      foreach(p IN LISTS params)
        string(APPEND args ", void* arg${i}")
        math(EXPR i "${i} + 1")
      endforeach()
      file(WRITE "${gen}/aclrtlaunch_${kname}.h"
           "#pragma once\n#include <cstdint>\n#include \"acl/acl.h\"\n"
           "#ifndef ACLRT_LAUNCH_KERNEL\n#define ACLRT_LAUNCH_KERNEL(kernel) aclrtlaunch_##kernel\n#endif\n"
           "extern \"C\" uint32_t aclrtlaunch_${kname}(uint32_t blockDim, aclrtStream stream${args});\n")
    endforeach()
  endforeach()
  target_include_directories(${name} INTERFACE "${gen}" "${_stub_root}/include")
endfunction()
