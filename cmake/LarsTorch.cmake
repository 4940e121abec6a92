# libtorch for the operators of csrc/ops: the torch this module is installed with.
#
# Input (setup.py passes all three; run directly, CMake asks ${Python_EXECUTABLE}):
#   LARS_TORCH_CMAKE_PREFIX  torch.utils.cmake_prefix_path (<torch>/share/cmake)
#   LARS_TORCH_CXX11_ABI     torch.compiled_with_cxx11_abi() as 0 or 1
#   LARS_TORCH_VERSION       torch.__version__
# Output: the INTERFACE target lars_torch (headers as SYSTEM, libtorch_cpu and libc10), and the
# torch's C++ ABI for every target of this directory.
#
# Not find_package(Torch): torch's config refuses a CUDA build of torch (PyPI's x86 wheels)
# unless a CUDA toolkit is installed, and the operators need none of it. The package layout the
# config itself reads (<torch>/include, <torch>/lib) is taken from the same prefix instead.
if(NOT LARS_TORCH_CMAKE_PREFIX)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
            "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(int(torch.compiled_with_cxx11_abi())); print(torch.__version__)"
    OUTPUT_VARIABLE _lars_torch_out RESULT_VARIABLE _lars_torch_rc ERROR_VARIABLE _lars_torch_err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _lars_torch_rc EQUAL 0)
    message(FATAL_ERROR "lars_npu: torch is not importable by ${Python_EXECUTABLE} "
                        "(${_lars_torch_err}); install torch first")
  endif()
  string(REPLACE "\n" ";" _lars_torch_out "${_lars_torch_out}")
  list(GET _lars_torch_out 0 LARS_TORCH_CMAKE_PREFIX)
  list(GET _lars_torch_out 1 LARS_TORCH_CXX11_ABI)
  list(GET _lars_torch_out 2 LARS_TORCH_VERSION)
endif()
get_filename_component(_lars_torch_root "${LARS_TORCH_CMAKE_PREFIX}/../.." ABSOLUTE)
find_path(LARS_TORCH_INCLUDE_DIR torch/library.h HINTS "${_lars_torch_root}/include"
          NO_DEFAULT_PATH)
find_library(LARS_TORCH_CPU_LIBRARY torch_cpu HINTS "${_lars_torch_root}/lib" NO_DEFAULT_PATH)
find_library(LARS_C10_LIBRARY c10 HINTS "${_lars_torch_root}/lib" NO_DEFAULT_PATH)
if(NOT LARS_TORCH_INCLUDE_DIR OR NOT LARS_TORCH_CPU_LIBRARY OR NOT LARS_C10_LIBRARY)
  message(FATAL_ERROR "lars_npu: no libtorch headers and libraries under ${_lars_torch_root} "
                      "(from torch.utils.cmake_prefix_path ${LARS_TORCH_CMAKE_PREFIX})")
endif()
message(STATUS "lars_npu: torch ${LARS_TORCH_VERSION} at ${_lars_torch_root} "
               "(_GLIBCXX_USE_CXX11_ABI=${LARS_TORCH_CXX11_ABI})")
add_library(lars_torch INTERFACE)
target_include_directories(lars_torch SYSTEM INTERFACE
  "${LARS_TORCH_INCLUDE_DIR}" "${LARS_TORCH_INCLUDE_DIR}/torch/csrc/api/include")
target_link_libraries(lars_torch INTERFACE "${LARS_TORCH_CPU_LIBRARY}" "${LARS_C10_LIBRARY}")
# The C++ standard torch's headers need, as they say themselves: ATen.h stops with "C++20 or
# later compatible compiler is required" below 202002L from torch 2.14 on. (TorchConfig.cmake is
# no guide: 2.13's already names C++20 and its headers take C++17.) The kernels under the ops stay
# C++17.
set(LARS_TORCH_CXX_STANDARD 17)
file(READ "${LARS_TORCH_INCLUDE_DIR}/ATen/ATen.h" _lars_aten_h)
if(_lars_aten_h MATCHES "__cplusplus < 202002L")
  set(LARS_TORCH_CXX_STANDARD 20)
endif()
target_compile_features(lars_torch INTERFACE cxx_std_${LARS_TORCH_CXX_STANDARD})
message(STATUS "lars_npu: the operators compile as C++${LARS_TORCH_CXX_STANDARD} (torch's headers)")
# every target of the module on torch's C++ ABI, so that no two parts of it disagree
add_compile_definitions(_GLIBCXX_USE_CXX11_ABI=${LARS_TORCH_CXX11_ABI})
