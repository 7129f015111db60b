// Row-major GEMMs on cuBLAS (which is column-major). A row-major [M, N] matrix with leading dimension ld is, read
// column-major, its transpose [N, M] with the same ld, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T:
// cuBLAS gets B first, then A, with m = N, n = M, and each operand keeps its own transpose flag.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <cuda_bf16.h>

#include "check.cuh"
#include "core/error.h"
#include "ops.h"
#include "store.cuh"

namespace optune::cuda {

// One handle per host thread (cuBLAS handles must not be shared by threads issuing work concurrently), created on
// first use and kept for the thread's lifetime: destroying it at exit could run after the CUDA context is gone.
static cublasHandle_t cublas() {
  thread_local cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    OPTUNE_CUBLAS_CHECK(cublasCreate(&h));  // (the math mode is set at each fp32 GEMM: tf32_matmuls())
    return h;
  }();
  return handle;
}

bool tf32_matmuls() {  // on every fp32 GEMM: no string is built unless the value is bad
  const char* v = std::getenv("OPTUNE_CUDA_TF32");
  if (!v || !*v || std::strcmp(v, "0") == 0) return false;
  if (std::strcmp(v, "1") == 0) return true;
  throw Error("OPTUNE_CUDA_TF32 must be 1 (TF32 tensor cores for fp32 GEMMs) or 0 (got '" + std::string(v) + "')");
}

static cublasOperation_t op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc, bool allow_tf32) {
  if (M <= 0 || N <= 0) return;
  // fp32 stays fp32 (parity with the CPU) unless TF32 is asked for
  const bool tf32 = allow_tf32 && tf32_matmuls();
  OPTUNE_CUBLAS_CHECK(cublasSetMathMode(cublas(), tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  OPTUNE_CUBLAS_CHECK(cublasSgemm(cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A, int lda,
               const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  OPTUNE_CUBLAS_CHECK(cublasGemmEx(cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, B, CUDA_R_16BF, ldb, A,
                                   CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
}

__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* inp, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(inp[i]);
}

// Four at a time: 16-byte loads, 8-byte stores (the conversions before bf16 GEMMs are a pass over every activation).
__global__ void to_bf16_x4_kernel(uint2* out, const float4* inp, int64_t n4) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 x = inp[i];
    out[i] = make_uint2(pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w));
  }
}

void to_bf16(uint16_t* out, const float* inp, int64_t n) {
  if (n <= 0) return;
  const int threads = 256;
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(inp) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    const int64_t n4 = n / 4;
    const int blocks = static_cast<int>(std::min<int64_t>((n4 + threads - 1) / threads, 65536));
    to_bf16_x4_kernel<<<blocks, threads>>>(reinterpret_cast<uint2*>(out), reinterpret_cast<const float4*>(inp), n4);
  } else {
    const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65536));
    to_bf16_kernel<<<blocks, threads>>>(reinterpret_cast<__nv_bfloat16*>(out), inp, n);
  }
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
