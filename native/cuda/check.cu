// CUDA / cuBLAS status codes -> optune::Error. cudaGetLastError() clears a non-sticky error (a bad launch, an
// allocation failure) so the next call does not report it again; sticky errors (a fault inside a kernel) leave the
// context unusable, and the message says so.
#include <string>

#include "check.cuh"
#include "core/error.h"

namespace optune::cuda {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  cudaGetLastError();
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") in " +
                    call + " at " + file + ":" + std::to_string(line);
  if (err == cudaErrorIllegalAddress || err == cudaErrorLaunchFailure || err == cudaErrorAssert)
    msg += "; the GPU context is now unusable: restart the process";
  throw Error(msg);
}

static const char* cublas_status_name(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED (GPU out of memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

void throw_cublas_error(cublasStatus_t st, const char* call, const char* file, int line) {
  throw Error(std::string("cuBLAS error ") + cublas_status_name(st) + " (" + std::to_string(static_cast<int>(st)) +
              ") in " + call + " at " + file + ":" + std::to_string(line));
}

}  // namespace optune::cuda
