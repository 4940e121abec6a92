# CANN discovery and the AscendC build of lars_npu's kernels (csrc/ascendc/lars_kernels.cpp).
#
# Options and cache variables (all documented in README "Building"):
#   LARS_NPU_CANN             AUTO (default) | ON | OFF. AUTO builds the CANN targets when a CANN
#                             toolkit is found, ON makes a missing CANN an error, OFF never looks.
#   ASCEND_CANN_PACKAGE_PATH  CANN toolkit root (…/ascend-toolkit/latest). Default: the environment
#                             variable of the same name, else ASCEND_HOME_PATH, else
#                             ASCEND_TOOLKIT_HOME, else /usr/local/Ascend/ascend-toolkit/latest.
#   SOC_VERSION               the SoC to compile for, as CANN names it; required with CANN
#                             (`npu-smi info`). Atlas A2 / A3 only (Ascend910B1..B4,
#                             Ascend910_93xx): the kernels use DataCopyPad and
#                             DataCacheCleanAndInvalid, which 910A and 310P lack.
#   RUN_MODE                  npu (default): the NPU build, kernels launched on torch_npu's stream;
#                             sim: CANN's simulator; cpu: CANN's CPU debug library (tikicpulib).
#   TORCH_NPU_ROOT            RUN_MODE npu: the torch_npu package directory (…/site-packages/
#                             torch_npu, holding include/ and lib/), for the PrivateUse1 kernels of
#                             the lars_npu operators (csrc/npu/lars_npu_ops.cpp). Default: where
#                             ${Python_EXECUTABLE} finds the package (importlib's find_spec, which
#                             does not import it); without one those kernels are not built.
#
# Without CANN this file only reports that, and lars_npu builds its host targets (CPU kernels and
# the emulation of csrc/emu/): the configure step never fails for lack of CANN unless asked to.
#
# Results for the caller: LARS_NPU_HAVE_CANN (bool) and, when true, the target lars_ascendc
# (the kernels as CANN built them), the sources LARS_NPU_CANN_SOURCES and the definitions
# LARS_NPU_CANN_DEFINITIONS to add to the Python module; LARS_NPU_TORCH_NPU_ROOT when the
# PrivateUse1 kernels of the operators are built (definition LARS_NPU_NPU_OPS).

set(LARS_NPU_CANN "AUTO" CACHE STRING "Build the AscendC kernels with CANN: AUTO, ON or OFF")
set_property(CACHE LARS_NPU_CANN PROPERTY STRINGS AUTO ON OFF)
set(RUN_MODE "npu" CACHE STRING "CANN run mode of the AscendC build: npu, sim or cpu")
set_property(CACHE RUN_MODE PROPERTY STRINGS npu sim cpu)
set(SOC_VERSION "" CACHE STRING "Ascend SoC to build the kernels for, e.g. Ascend910B1")
set(TORCH_NPU_ROOT "" CACHE PATH
    "torch_npu package directory (site-packages/torch_npu); default: asked from Python")

set(LARS_NPU_HAVE_CANN OFF)
set(LARS_NPU_CANN_SOURCES "")
set(LARS_NPU_CANN_DEFINITIONS "")
set(LARS_NPU_TORCH_NPU_ROOT "")

# The directory of CANN's AscendC CMake rules (ascendc.cmake, which defines ascendc_library):
# compiler/tikcpp/… (CANN 8.0 and older), tools/tikcpp/…, or <arch>-linux/tikcpp/… (toolkits
# whose AscendC part is the asc-devkit package). Empty when none exists under `root`.
function(_lars_ascendc_cmake_dir root out)
  string(TOLOWER "${CMAKE_SYSTEM_PROCESSOR}" arch)
  foreach(sub compiler/tikcpp tools/tikcpp ${arch}-linux/tikcpp)
    if(root AND EXISTS "${root}/${sub}/ascendc_kernel_cmake/ascendc.cmake")
      set(${out} "${root}/${sub}/ascendc_kernel_cmake" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

function(_lars_cann_root out)
  set(candidates "${ASCEND_CANN_PACKAGE_PATH}" "$ENV{ASCEND_CANN_PACKAGE_PATH}"
                 "$ENV{ASCEND_HOME_PATH}" "$ENV{ASCEND_TOOLKIT_HOME}"
                 "/usr/local/Ascend/ascend-toolkit/latest")
  foreach(dir IN LISTS candidates)
    _lars_ascendc_cmake_dir("${dir}" rules)
    if(rules)
      set(${out} "${dir}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

# Whether CANN's ascendc_library() builds RUN_MODE=cpu itself: newer AscendC CMake rules
# (asc-devkit cmake/asc/legacy_modules/function.cmake) find tikicpulib and generate the CPU-debug
# launch stubs (aclrtlaunch_<kernel> calling ICPU_RUN_KF) when RUN_MODE is cpu; older ones only
# build for the device. Told apart by whether the rules name tikicpulib at all.
function(_lars_ascendc_handles_cpu rules out)
  set(result OFF)
  foreach(f ascendc.cmake function.cmake legacy_modules/function.cmake)
    if(EXISTS "${rules}/${f}")
      file(READ "${rules}/${f}" text)
      if(text MATCHES "tikicpulib")
        set(result ON)
      endif()
    endif()
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()

# torch_npu's package directory, for its C++ headers (include/torch_npu/csrc/...) and
# libtorch_npu.so (lib/): TORCH_NPU_ROOT when set (an error if it holds no headers), else where
# ${Python_EXECUTABLE} finds the package. importlib's find_spec locates it without importing it:
# torch_npu's import needs CANN's environment and an NPU driver, a build host may have neither.
# Empty when there is none (a failure of the question is "none").
set(_lars_npu_stream_header "include/torch_npu/csrc/core/npu/NPUStream.h")
function(_lars_torch_npu_root out)
  if(TORCH_NPU_ROOT)
    if(NOT EXISTS "${TORCH_NPU_ROOT}/${_lars_npu_stream_header}")
      message(FATAL_ERROR "lars_npu: TORCH_NPU_ROOT=${TORCH_NPU_ROOT} holds no "
                          "${_lars_npu_stream_header}; it must be the torch_npu package "
                          "directory (python -c 'import torch_npu, os; "
                          "print(os.path.dirname(torch_npu.__file__))')")
    endif()
    set(${out} "${TORCH_NPU_ROOT}" PARENT_SCOPE)
    return()
  endif()
  set(dir "")
  if(Python_EXECUTABLE)
    # without pip's PYTHONPATH, as setup.py asks for torch: pip's isolated build environment
    # hides the target's site-packages
    execute_process(
      COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE
              "${Python_EXECUTABLE}" -c
              "import importlib.util as u; s = u.find_spec('torch_npu'); print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')"
      RESULT_VARIABLE rc OUTPUT_VARIABLE dir ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE
      TIMEOUT 120)
    if(NOT rc EQUAL 0)
      set(dir "")
    endif()
  endif()
  if(dir AND EXISTS "${dir}/${_lars_npu_stream_header}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()

# CANN's version, from the toolkit's install info ("version=8.0.RC2") or version.cfg.
function(_lars_cann_version root out)
  set(version "unknown")
  file(GLOB infos "${root}/*/ascend_toolkit_install.info" "${root}/ascend_toolkit_install.info")
  foreach(info IN LISTS infos)
    file(STRINGS "${info}" lines REGEX "^version=")
    if(lines)
      list(GET lines 0 line)
      string(REGEX REPLACE "^version=" "" version "${line}")
      break()
    endif()
  endforeach()
  if(version STREQUAL "unknown" AND EXISTS "${root}/version.cfg")
    file(STRINGS "${root}/version.cfg" lines REGEX "\\[.*\\]")
    if(lines)
      list(GET lines 0 line)
      string(REGEX REPLACE ".*\\[([^]:]*).*" "\\1" version "${line}")
    endif()
  endif()
  set(${out} "${version}" PARENT_SCOPE)
endfunction()

if(NOT LARS_NPU_CANN STREQUAL "OFF")
  _lars_cann_root(_cann_root)
  if(NOT _cann_root)
    if(LARS_NPU_CANN STREQUAL "ON")
      message(FATAL_ERROR "lars_npu: LARS_NPU_CANN=ON but no CANN toolkit was found; set "
                          "ASCEND_CANN_PACKAGE_PATH (or source CANN's set_env.sh)")
    endif()
    message(STATUS "lars_npu: no CANN toolkit found; building the host targets only "
                   "(CPU kernels, AscendC emulation)")
  else()
    if(NOT RUN_MODE MATCHES "^(npu|sim|cpu)$")
      message(FATAL_ERROR "lars_npu: RUN_MODE must be npu, sim or cpu (got '${RUN_MODE}')")
    endif()
    if(NOT SOC_VERSION)
      message(FATAL_ERROR "lars_npu: CANN found at ${_cann_root}: set SOC_VERSION to the SoC "
                          "to build for (e.g. -DSOC_VERSION=Ascend910B1; `npu-smi info` tells)")
    endif()
    # CANN builds plain "Ascend910B" as the old 910 (no DataCopyPad): only B1..B4 and 910_93xx
    string(TOLOWER "${SOC_VERSION}" _soc)
    if(NOT _soc MATCHES "^ascend910b[1-4]" AND NOT _soc MATCHES "^ascend910_93[0-9][0-9]$")
      message(FATAL_ERROR "lars_npu: SOC_VERSION=${SOC_VERSION} is not supported: the kernels "
                          "need Atlas A2 / A3 (Ascend910B*, Ascend910_93*), whose DataCopyPad "
                          "and DataCacheCleanAndInvalid they use")
    endif()
    set(ASCEND_CANN_PACKAGE_PATH "${_cann_root}" CACHE PATH "CANN toolkit root" FORCE)
    _lars_cann_version("${_cann_root}" _cann_version)
    message(STATUS "lars_npu: CANN ${_cann_version} at ${_cann_root}, SOC_VERSION=${SOC_VERSION}, "
                   "RUN_MODE=${RUN_MODE}")
    set(_kernels ${CMAKE_CURRENT_SOURCE_DIR}/csrc/ascendc/lars_kernels.cpp)
    _lars_ascendc_cmake_dir("${_cann_root}" _ascendc_cmake_dir)

    if(RUN_MODE STREQUAL "cpu")
      # CANN's CPU debug library (tikicpulib) runs the kernels as host code. Its package config
      # is tools/cpudebug/cmake/tikicpulib-config.cmake in newer toolkits (the asc-tools
      # package), tools/tikicpulib/lib/cmake in older ones.
      find_package(tikicpulib REQUIRED
                   HINTS "${_cann_root}/tools/cpudebug/cmake"
                         "${_cann_root}/tools/cpudebug/lib64/cmake"
                         "${_cann_root}/tools/tikicpulib/lib/cmake")
      message(STATUS "lars_npu: tikicpulib (CANN's CPU debug library) from ${tikicpulib_DIR}")
      _lars_ascendc_handles_cpu("${_ascendc_cmake_dir}" _rules_do_cpu)
      if(_rules_do_cpu)
        # newer rules build the cpu mode themselves (and find tikicpulib through the
        # tikicpulib_DIR found above)
        message(STATUS "lars_npu: RUN_MODE=cpu through CANN's ascendc_library")
        include(${_ascendc_cmake_dir}/ascendc.cmake)
        ascendc_library(lars_ascendc SHARED ${_kernels})
      else()
        message(STATUS "lars_npu: RUN_MODE=cpu as a host library linked to tikicpulib")
        add_library(lars_ascendc SHARED ${_kernels})
        target_link_libraries(lars_ascendc PUBLIC tikicpulib::${SOC_VERSION})
        target_compile_options(lars_ascendc PRIVATE -g -O0)
      endif()
      set(LARS_NPU_CANN_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/npu/lars_cann_cpu_runner.cpp)
      set(LARS_NPU_CANN_DEFINITIONS LARS_NPU_CANN_HOST_RUNNER LARS_NPU_RUN_MODE_CPU)
    else()
      # npu and sim: CANN's AscendC rules compile the kernels for the AI cores and generate
      # aclrtlaunch_<kernel>.h launch functions for the host.
      # --cce-auto-sync: CANN's rules compile dav-c220-vec with it (asc-devkit cmake/asc/
      # legacy_modules/bisheng_intf.cmake), and we leave it so. The kernels do not need it: they
      # put PipeBarrier<PIPE_V> between dependent vector instructions themselves, and their
      # cross-pipe syncs are the queues' and explicit SetFlag/WaitFlag; the emulation checks all
      # of it with auto-sync off (LARS_NPU_EMU_AUTO_SYNC=off, tests/test_emu_kernels.py). On, the
      # compiler can only add syncs: a safety net for orderings the emulation does not model
      # (none known), never a change to the kernels' own.
      include(${_ascendc_cmake_dir}/ascendc.cmake)
      ascendc_library(lars_ascendc STATIC ${_kernels})
      set(LARS_NPU_CANN_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/npu/lars_npu_launch.cpp)
      set(LARS_NPU_CANN_DEFINITIONS LARS_NPU_NPU_LAUNCHER LARS_NPU_CANN_HOST_RUNNER)
      if(RUN_MODE STREQUAL "npu")
        # The operators' PrivateUse1 kernels launch on torch_npu's current stream: its headers
        # (and, to load, libtorch_npu.so) are needed.
        _lars_torch_npu_root(_torch_npu_root)
        if(_torch_npu_root)
          list(APPEND LARS_NPU_CANN_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/npu/lars_npu_ops.cpp)
          list(APPEND LARS_NPU_CANN_DEFINITIONS LARS_NPU_NPU_OPS)
          set(LARS_NPU_TORCH_NPU_ROOT "${_torch_npu_root}")
          set(LARS_NPU_NEEDS_TORCH_NPU ON)
          if(EXISTS "${_torch_npu_root}/lib/libtorch_npu.so")
            message(STATUS "lars_npu: PrivateUse1 kernels of the operators, with torch_npu at "
                           "${_torch_npu_root}")
          else()
            message(STATUS "lars_npu: PrivateUse1 kernels of the operators, with torch_npu's "
                           "headers at ${_torch_npu_root}; no lib/libtorch_npu.so there, so the "
                           "module is not linked to it and will not load (a compile check)")
          endif()
        else()
          message(STATUS "lars_npu: torch_npu not found (set TORCH_NPU_ROOT to its package "
                         "directory): the operators get no PrivateUse1 kernels; the npu backend "
                         "launches the kernels through npu_launch")
        endif()
      endif()
    endif()
    list(APPEND LARS_NPU_CANN_DEFINITIONS
         LARS_NPU_CANN_VERSION="${_cann_version}" LARS_NPU_SOC_VERSION="${SOC_VERSION}"
         LARS_NPU_RUN_MODE="${RUN_MODE}")
    set(LARS_NPU_HAVE_CANN ON)
  endif()
endif()

# Links the Python module against the CANN build of the kernels and the ACL runtime.
function(lars_link_cann target)
  if(NOT LARS_NPU_HAVE_CANN)
    return()
  endif()
  target_sources(${target} PRIVATE ${LARS_NPU_CANN_SOURCES})
  target_compile_definitions(${target} PRIVATE ${LARS_NPU_CANN_DEFINITIONS})
  target_include_directories(${target} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc/npu
                                               ${ASCEND_CANN_PACKAGE_PATH}/include
                                               ${ASCEND_CANN_PACKAGE_PATH}/runtime/include)
  target_link_directories(${target} PRIVATE ${ASCEND_CANN_PACKAGE_PATH}/lib64
                                            ${ASCEND_CANN_PACKAGE_PATH}/runtime/lib64)
  if(RUN_MODE STREQUAL "cpu")
    target_link_libraries(${target} PRIVATE lars_ascendc tikicpulib::${SOC_VERSION} ascendcl
                                            c_sec)
    # tikicpulib compiles its users with the old libstdc++ ABI: every static library linked into
    # the module must agree, or std::string symbols differ between its parts.
    foreach(lib lars_cpu lars_emu)
      target_compile_definitions(${lib} PUBLIC _GLIBCXX_USE_CXX11_ABI=0)
    endforeach()
    # the kernels' shared library lies next to the module (setup.py's output directory)
    set_target_properties(${target} PROPERTIES BUILD_RPATH "$ORIGIN" INSTALL_RPATH "$ORIGIN")
    install(TARGETS lars_ascendc LIBRARY DESTINATION lars_npu)
  else()
    # ascendc_library() carries the launch headers, the CANN include directories and the ACL
    # runtime libraries (runtime for npu, runtime_camodel for sim). CANN's host_intf_pub is not
    # linked directly: its compile options would impose the old libstdc++ ABI and -std=c++11 on
    # this module alone. (Its link options, e.g. -s in Release, still arrive through
    # ascendc_library's LINK_ONLY dependency.)
    # CANN's host_config.cmake sets CMAKE_SKIP_RPATH: the libraries are found through the
    # LD_LIBRARY_PATH of CANN's set_env.sh.
    target_link_libraries(${target} PRIVATE lars_ascendc ascendcl)
    if(LARS_NPU_TORCH_NPU_ROOT)
      # torch_npu's headers as SYSTEM: their warnings are not this module's. libtorch_npu.so is
      # a dependency of the module (no RPATH: it is found as the library torch_npu's import has
      # already loaded).
      target_include_directories(${target} SYSTEM PRIVATE "${LARS_NPU_TORCH_NPU_ROOT}/include")
      if(EXISTS "${LARS_NPU_TORCH_NPU_ROOT}/lib/libtorch_npu.so")
        target_link_libraries(${target} PRIVATE "${LARS_NPU_TORCH_NPU_ROOT}/lib/libtorch_npu.so")
      endif()
    endif()
  endif()
endfunction()
