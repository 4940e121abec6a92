# Warning and optimisation flags shared by every lars_npu C++ target.

function(lars_apply_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra)
    if(LARS_NPU_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()

# Kernels: -O3 for vectorisation, no -ffast-math (the reductions rely on a fixed association),
# OpenMP when asked for and found, -march=native only on request.
function(lars_apply_kernel_flags target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -O3 -fno-math-errno)
    if(LARS_NPU_NATIVE_ARCH)
      target_compile_options(${target} PRIVATE -march=native)
    endif()
  endif()
  if(LARS_NPU_OPENMP)
    find_package(OpenMP COMPONENTS CXX)
    if(OpenMP_CXX_FOUND)
      target_link_libraries(${target} PUBLIC OpenMP::OpenMP_CXX)
    else()
      message(WARNING "lars_npu: OpenMP not found; the CPU kernels run on one thread")
    endif()
  endif()
endfunction()
