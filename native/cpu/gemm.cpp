#include "gemm.h"

#include <algorithm>
#include <vector>

#ifdef OPTUNE_HAVE_CBLAS
#include <cblas.h>
#endif

namespace optune::cpu {

const char* blas_name() { return OPTUNE_BLAS_NAME; }

// Built-in GEMM. op(B) is first packed into a contiguous [K, N] panel so the inner loop is a unit-stride AXPY over
// columns that the compiler vectorizes; rows of C are split across threads (each element has one owner and a fixed
// summation order over K). Blocking over K and N keeps the B panel block in cache.
void gemm_builtin(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  constexpr int KB = 256, NB = 512, MB = 16;
  std::vector<float> panel(static_cast<size_t>(std::min(K, KB)) * std::min(N, NB));
  for (int i = 0; i < M; i++) {
    float* c = C + static_cast<size_t>(i) * ldc;
    if (beta == 0.0f)
      std::fill(c, c + N, 0.0f);
    else if (beta != 1.0f)
      for (int j = 0; j < N; j++) c[j] *= beta;
  }
  for (int n0 = 0; n0 < N; n0 += NB) {
    const int nb = std::min(NB, N - n0);
    for (int k0 = 0; k0 < K; k0 += KB) {
      const int kb = std::min(KB, K - k0);
      // pack op(B)[k0:k0+kb, n0:n0+nb] into panel[kb][nb]
      for (int k = 0; k < kb; k++)
        for (int j = 0; j < nb; j++)
          panel[static_cast<size_t>(k) * nb + j] =
              trans_b ? B[static_cast<size_t>(n0 + j) * ldb + (k0 + k)] : B[static_cast<size_t>(k0 + k) * ldb + n0 + j];
      const float* P = panel.data();
#pragma omp parallel for schedule(static)
      for (int m0 = 0; m0 < M; m0 += MB) {
        const int mb = std::min(MB, M - m0);
        for (int i = m0; i < m0 + mb; i++) {
          float* c = C + static_cast<size_t>(i) * ldc + n0;
          for (int k = 0; k < kb; k++) {
            const float a = alpha * (trans_a ? A[static_cast<size_t>(k0 + k) * lda + i] : A[static_cast<size_t>(i) * lda + k0 + k]);
            const float* p = P + static_cast<size_t>(k) * nb;
#pragma omp simd
            for (int j = 0; j < nb; j++) c[j] += a * p[j];
          }
        }
      }
    }
  }
}

PackedB pack_b(const float* B, int ldb, int K, int N, bool trans_b) {
  constexpr int W = PackedB::kPanel;
  PackedB p;
  p.K = K;
  p.N = N;
  const int panels = (N + W - 1) / W;
  p.data.assign(static_cast<size_t>(panels) * K * W, 0.0f);
#pragma omp parallel for schedule(static)
  for (int pi = 0; pi < panels; pi++) {
    float* dst = p.data.data() + static_cast<size_t>(pi) * K * W;
    for (int k = 0; k < K; k++)
      for (int j = 0; j < W && pi * W + j < N; j++) {
        const int n = pi * W + j;
        dst[static_cast<size_t>(k) * W + j] = trans_b ? B[static_cast<size_t>(n) * ldb + k] : B[static_cast<size_t>(k) * ldb + n];
      }
  }
  return p;
}

// One block of MR rows of C against every panel of B. MR is a compile-time constant so the accumulators stay in
// registers and no padded (all-zero) rows are computed: a decode group of 8 rows costs 8 rows of FMAs, not 16.
template <int MR>
static void gemm_packed_rows(const float* A, int lda, const PackedB& B, float* C, int ldc) {
  constexpr int W = PackedB::kPanel;
  const int K = B.K, N = B.N, panels = (N + W - 1) / W;
  std::vector<float> ap(static_cast<size_t>(K) * MR);  // the block's rows of A, k-major
  for (int r = 0; r < MR; r++)
    for (int k = 0; k < K; k++) ap[static_cast<size_t>(k) * MR + r] = A[static_cast<size_t>(r) * lda + k];
  const float* a = ap.data();
#pragma omp parallel for schedule(static)
  for (int pi = 0; pi < panels; pi++) {
    const float* panel = B.data.data() + static_cast<size_t>(pi) * K * W;
    float acc[MR][W] = {};
    for (int k = 0; k < K; k++) {
      const float* b = panel + static_cast<size_t>(k) * W;
      const float* ak = a + static_cast<size_t>(k) * MR;
      for (int r = 0; r < MR; r++) {
#pragma omp simd
        for (int j = 0; j < W; j++) acc[r][j] += ak[r] * b[j];
      }
    }
    const int nj = std::min(W, N - pi * W);
    for (int r = 0; r < MR; r++) std::copy_n(acc[r], nj, C + static_cast<size_t>(r) * ldc + pi * W);
  }
}

void gemm_packed(int M, const float* A, int lda, const PackedB& B, float* C, int ldc) {
  // rows in blocks of 16, then the remainder in blocks of 8, 4, 2, 1
  int i = 0;
  auto run = [&](auto kernel, int mr) {
    for (; i + mr <= M; i += mr) kernel(A + static_cast<size_t>(i) * lda, lda, B, C + static_cast<size_t>(i) * ldc, ldc);
  };
  run(gemm_packed_rows<16>, 16);
  run(gemm_packed_rows<8>, 8);
  run(gemm_packed_rows<4>, 4);
  run(gemm_packed_rows<2>, 2);
  run(gemm_packed_rows<1>, 1);
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
#ifdef OPTUNE_HAVE_CBLAS
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha,
              A, lda, B, ldb, beta, C, ldc);
#else
  gemm_builtin(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace optune::cpu
