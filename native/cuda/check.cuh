// Error checking for CUDA runtime and cuBLAS calls (device code files only). Every failing call becomes an
// optune::Error naming the call, the file and line, and CUDA's own description, so the N-API layer can turn it into a
// JS Error; nothing here aborts the process.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace optune::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* call, const char* file, int line);

}  // namespace optune::cuda

#define OPTUNE_CUDA_CHECK(call)                                                                \
  do {                                                                                         \
    const cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess) ::optune::cuda::throw_cuda_error(err_, #call, __FILE__, __LINE__); \
  } while (0)

#define OPTUNE_CUBLAS_CHECK(call)                                                                        \
  do {                                                                                                   \
    const cublasStatus_t st_ = (call);                                                                   \
    if (st_ != CUBLAS_STATUS_SUCCESS) ::optune::cuda::throw_cublas_error(st_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad launch configuration shows up here; faults inside the kernel show up at the next
// synchronizing call (copy or synchronize), which is checked too.
#define OPTUNE_CUDA_CHECK_LAUNCH() OPTUNE_CUDA_CHECK(cudaGetLastError())
