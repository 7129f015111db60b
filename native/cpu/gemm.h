// Row-major single-precision GEMM: C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C.
// op(X) is X or X^T. Goes to CBLAS (OpenBLAS) when the build found it, else to a built-in blocked, vectorized,
// OpenMP-parallel kernel. Both compute every element of C in a fixed order, so results do not depend on the thread
// count (the built-in kernel by construction; OpenBLAS splits the output, not the reduction).
#pragma once
#include <vector>

namespace optune::cpu {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc);

// The built-in kernel, always compiled, so tests can compare it with BLAS.
void gemm_builtin(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc);

const char* blas_name();  // "openblas" | "builtin"

// op(B) [K, N] repacked once into zero-padded panels of 16 columns ([N/16][K][16]) for many products with a few
// rows of A (token-by-token decoding), where a general GEMM would repack the weights on every call.
struct PackedB {
  static constexpr int kPanel = 16;
  int K = 0, N = 0;
  std::vector<float> data;
};
PackedB pack_b(const float* B, int ldb, int K, int N, bool trans_b);

// C[M, N] = A[M, K] @ op(B). Every element is the same sequence of fused multiply-adds over K whatever M or the
// thread count, so a row's result does not depend on which other rows share the call.
void gemm_packed(int M, const float* A, int lda, const PackedB& B, float* C, int ldc);

}  // namespace optune::cpu
