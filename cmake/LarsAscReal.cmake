# The `real` runner (docs/emulation.md): lars_npu's AscendC kernels compiled against the REAL
# AscendC headers in their CPU-debug mode for Atlas A2, on lars_npu's own model of the intrinsics
# beneath them (csrc/asc_real), into separate shared libraries loaded by
# lars_npu/_backends/emu.py with ctypes (LARS_NPU_EMU_RUNNER=real).
#
# Off by default (CI has neither repository). Turned on by both of:
#   LARS_NPU_ASC_DEVKIT   github.com/mirror-cann/asc-devkit: a git directory (bare clone) or a
#                         checkout. kernel_operator.h and the basic / advanced API.
#   LARS_NPU_ASC_TOOLS    github.com/hicann/asc-tools: a git directory or a checkout. cpudebug/:
#                         the CPU-debug types (half, ...) and API checks, compiled from here.
# Their licence limits them to Ascend software: nothing of them is copied into lars_npu's
# sources. A git directory's HEAD is extracted into the build directory; a checkout is read in
# place and never written. kernel_tiling.h is generated into the build directory by asc-devkit's
# own script, as its build does.
#
# With the option, a failure (a path that is not the repository, a compile error) fails the
# build: the runner is never silently absent when asked for. Results:
#   LARS_NPU_HAVE_ASC_REAL   ON when the targets below exist
#   _asc_real                MODULE lars_npu/_asc_real.so: the kernels and the runner
#                            (asc_runner.cpp; C entry lars_asc_real_launch)
#   _asc_real_test           MODULE lars_npu/_asc_real_test.so: deliberately wrong mini-kernels
#                            for tests/test_asc_real.py (C entry lars_asc_real_testkernel)

set(LARS_NPU_ASC_DEVKIT "" CACHE PATH
    "asc-devkit (git dir or checkout): build the real AscendC runner (docs/emulation.md)")
set(LARS_NPU_ASC_TOOLS "" CACHE PATH
    "asc-tools (git dir or checkout): build the real AscendC runner (docs/emulation.md)")
set(LARS_NPU_HAVE_ASC_REAL OFF)
set(_lars_real_libs _asc_real.so _asc_real_test.so)

if(NOT LARS_NPU_ASC_DEVKIT AND NOT LARS_NPU_ASC_TOOLS)
  message(STATUS "lars_npu: real AscendC runner not built (needs -DLARS_NPU_ASC_DEVKIT and "
                 "-DLARS_NPU_ASC_TOOLS; docs/emulation.md)")
  if(CMAKE_LIBRARY_OUTPUT_DIRECTORY)  # an earlier build's libraries must not be picked up
    foreach(lib IN LISTS _lars_real_libs)
      file(REMOVE "${CMAKE_LIBRARY_OUTPUT_DIRECTORY}/${lib}")
    endforeach()
  endif()
  return()
endif()
if(NOT LARS_NPU_ASC_DEVKIT OR NOT LARS_NPU_ASC_TOOLS)
  message(FATAL_ERROR "lars_npu: the real AscendC runner needs both -DLARS_NPU_ASC_DEVKIT "
                      "(asc-devkit) and -DLARS_NPU_ASC_TOOLS (asc-tools); docs/emulation.md")
endif()
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU" OR NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
  message(FATAL_ERROR "lars_npu: the real AscendC runner is built with GCC on Linux only "
                      "(the CPU-debug headers are)")
endif()

# A usable tree of repository `src` (a checkout holding `probe`, or a git directory whose HEAD is
# extracted — only `subdir` when given — into the build directory), in `out`.
function(_lars_asc_tree what src subdir probe out)
  get_filename_component(src "${src}" ABSOLUTE)
  if(EXISTS "${src}/${probe}")
    set(${out} "${src}" PARENT_SCOPE)
    return()
  endif()
  if(NOT (EXISTS "${src}/HEAD" AND IS_DIRECTORY "${src}/objects"))
    message(FATAL_ERROR "lars_npu: ${src} is neither a checkout of ${what} (no ${probe}) nor a "
                        "git directory")
  endif()
  find_package(Git REQUIRED)
  execute_process(COMMAND "${GIT_EXECUTABLE}" --git-dir=${src} rev-parse HEAD
                  OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "lars_npu: git cannot read HEAD of ${src}")
  endif()
  set(dest "${CMAKE_BINARY_DIR}/asc_real/${what}")
  set(stamp "${dest}.commit")
  set(have "")
  if(EXISTS "${stamp}")
    file(READ "${stamp}" have)
  endif()
  if(NOT have STREQUAL commit OR NOT EXISTS "${dest}/${probe}")
    file(REMOVE_RECURSE "${dest}")
    file(MAKE_DIRECTORY "${dest}")
    execute_process(COMMAND "${GIT_EXECUTABLE}" --git-dir=${src} archive HEAD ${subdir}
                    COMMAND tar -x -C "${dest}" RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0 OR NOT EXISTS "${dest}/${probe}")
      message(FATAL_ERROR "lars_npu: extracting ${src} (HEAD ${commit}) gave no ${probe}: is it "
                          "${what}?")
    endif()
    file(WRITE "${stamp}" "${commit}")
  endif()
  message(STATUS "lars_npu: ${what} ${commit} from ${src}")
  set(${out} "${dest}" PARENT_SCOPE)
endfunction()

_lars_asc_tree(asc-devkit "${LARS_NPU_ASC_DEVKIT}" "" include/kernel_operator.h _devkit)
_lars_asc_tree(asc-tools "${LARS_NPU_ASC_TOOLS}" cpudebug cpudebug/include/stub_def.h _tools)
set(_cpudebug "${_tools}/cpudebug")

# kernel_tiling.h, generated as asc-devkit's build generates it (the advanced API includes it).
set(_gen "${CMAKE_BINARY_DIR}/asc_real/gen")
set(_gen_script "${_devkit}/impl/adv_api/cmake/scripts/gen_kernel_tiling_data_def.py")
execute_process(
  COMMAND "${Python_EXECUTABLE}" "${_gen_script}" "${_devkit}/include/adv_api"
          "${_gen}/kernel_tiling/kernel_tiling.h"
  RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0 OR NOT EXISTS "${_gen}/kernel_tiling/kernel_tiling.h")
  message(FATAL_ERROR "lars_npu: asc-devkit's gen_kernel_tiling_data_def.py failed (${rc})")
endif()

set(_real_src "${CMAKE_CURRENT_SOURCE_DIR}/csrc/asc_real")
# The real headers' include paths, as system directories (their own warnings are not ours).
set(_real_system_includes
    "${_devkit}" "${_devkit}/include" "${_devkit}/include/basic_api" "${_devkit}/include/utils"
    "${_devkit}/include/utils/debug" "${_devkit}/include/adv_api" "${_devkit}/impl"
    "${_devkit}/impl/basic_api" "${_devkit}/impl/utils" "${_devkit}/impl/adv_api" "${_gen}"
    "${_cpudebug}/include" "${_cpudebug}/utils" "${_cpudebug}/utils/include"
    "${_cpudebug}/utils/include/utils")
# CPU-debug mode for Atlas A2 vector cores (what CANN's cpu build defines for Ascend910B).
set(_real_definitions ASCENDC_CPU_DEBUG=1 __CCE_KT_TEST__=1 __NPU_ARCH__=2201
                      __CCE_AICORE__=220 __DAV_C220__ __DAV_C220_VEC__)

function(_lars_asc_real_flags target)
  # our stand-ins (stub_fun.h, prelude.h, ...) come first and are not system headers
  target_include_directories(${target} BEFORE PRIVATE "${_real_src}/include" "${_real_src}"
                             "${CMAKE_CURRENT_SOURCE_DIR}/csrc/ascendc")
  target_include_directories(${target} SYSTEM PRIVATE ${_real_system_includes})
  target_compile_definitions(${target} PRIVATE ${_real_definitions})
  target_compile_options(${target} PRIVATE -include "${_real_src}/include/prelude.h")
  set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET hidden
                        VISIBILITY_INLINES_HIDDEN ON POSITION_INDEPENDENT_CODE ON)
endfunction()

# asc-tools' CPU-debug sources the headers call into: the half type's arithmetic and the API
# checks (cpudebug/src/api_check), compiled as asc-tools' own CMake compiles them (ASCENDC_DEBUG;
# and the internal-header macro, as these sources include impl/ headers like the library
# itself); not our code, so not our warnings.
file(GLOB _api_check "${_cpudebug}/src/api_check/*.cpp")
add_library(lars_asc_real_tools STATIC "${_cpudebug}/src/acl_stub/kernel_fp16.cpp" ${_api_check})
_lars_asc_real_flags(lars_asc_real_tools)
target_include_directories(lars_asc_real_tools SYSTEM PRIVATE "${_cpudebug}/src/api_check"
                           "${_cpudebug}/src/api_check/inc")
target_compile_definitions(lars_asc_real_tools PRIVATE ASCENDC_DEBUG=1
                           __ASCENDC_INCLUDE_INTERNAL_HEADERS__)
target_compile_options(lars_asc_real_tools PRIVATE -w)

# lars_npu's intrinsic model and hooks.
add_library(lars_asc_real_model STATIC "${_real_src}/asc_model.cpp" "${_real_src}/asc_hooks.cpp")
_lars_asc_real_flags(lars_asc_real_model)
lars_apply_warnings(lars_asc_real_model)

# GCC reports a maybe-uninitialized false positive inside asc-tools' half constructor
# (kernel_fp16.h: half(const int32_t&) calls a member on the object it builds) where
# DataCopyPadExtParams<half>() is inlined into the kernels: silenced for that file only.
set_source_files_properties("${_real_src}/real_kernels.cpp" PROPERTIES
                            COMPILE_OPTIONS -Wno-maybe-uninitialized)

foreach(lib _asc_real _asc_real_test)
  if(lib STREQUAL "_asc_real")
    add_library(${lib} MODULE "${_real_src}/asc_runner.cpp" "${_real_src}/real_kernels.cpp")
  else()
    file(GLOB _test_kernels "${_real_src}/testkernels/*.cpp")
    add_library(${lib} MODULE ${_test_kernels})
  endif()
  _lars_asc_real_flags(${lib})
  lars_apply_warnings(${lib})
  target_link_libraries(${lib} PRIVATE lars_asc_real_model lars_asc_real_tools)
  target_link_options(${lib} PRIVATE -Wl,--no-undefined
                      "-Wl,--version-script=${_real_src}/exports.map")
  set_target_properties(${lib} PROPERTIES PREFIX "" SUFFIX ".so"
                        LINK_DEPENDS "${_real_src}/exports.map")
endforeach()
install(TARGETS _asc_real _asc_real_test LIBRARY DESTINATION lars_npu)

set(LARS_NPU_HAVE_ASC_REAL ON)
message(STATUS "lars_npu: real AscendC runner ON (lars_npu/_asc_real.so)")
