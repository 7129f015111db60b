// Row-major single-precision GEMM: C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C.
// op(X) is X or X^T. Goes to CBLAS (OpenBLAS) when the build found it, else to a built-in blocked, vectorized,
// OpenMP-parallel kernel. Both compute every element of C in a fixed order, so results do not depend on the thread
// count (the built-in kernel by construction; OpenBLAS splits the output, not the reduction).
#pragma once

namespace optune::cpu {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc);

// The built-in kernel, always compiled, so tests can compare it with BLAS.
void gemm_builtin(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc);

const char* blas_name();  // "openblas" | "builtin"

}  // namespace optune::cpu
