// The CPU GEMMs against a double-precision reference: the BLAS/built-in fp32 product, the packed few-row product
// (fp32 and bf16 panels) and the bf16 mixed-precision product, in every transpose combination, with row counts
// that hit every row-block kernel and the multi-slab split, an odd K and a ragged last 16-column panel.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "testing.h"

using namespace optune;

namespace {

struct Operands {
  int M, N, K;
  bool ta, tb;
  std::vector<float> A, B, C;  // A stored [K, M] when ta, B stored [N, K] when tb
  int lda() const { return ta ? M : K; }
  int ldb() const { return tb ? K : N; }
  float a(int i, int k) const { return ta ? A[static_cast<size_t>(k) * M + i] : A[static_cast<size_t>(i) * K + k]; }
  float b(int k, int j) const { return tb ? B[static_cast<size_t>(j) * K + k] : B[static_cast<size_t>(k) * N + j]; }
};

Operands make(int M, int N, int K, bool ta, bool tb) {
  Operands o{M, N, K, ta, tb, {}, {}, {}};
  o.A.resize(static_cast<size_t>(M) * K);
  o.B.resize(static_cast<size_t>(K) * N);
  o.C.resize(static_cast<size_t>(M) * N);
  for (size_t i = 0; i < o.A.size(); i++) o.A[i] = static_cast<float>(std::sin(0.37 * i + M));
  for (size_t i = 0; i < o.B.size(); i++) o.B[i] = static_cast<float>(std::cos(0.91 * i + N));
  for (size_t i = 0; i < o.C.size(); i++) o.C[i] = static_cast<float>(std::sin(1.3 * i));
  return o;
}

// worst |C - (alpha op(A) op(B) + beta C0)| relative to alpha sum |a b| + |beta C0|, with the operands rounded
// through `round` first (identity for fp32, bf16 for the mixed-precision products)
template <class Round>
double worst_error(const Operands& o, const std::vector<float>& C, float alpha, float beta, Round round) {
  double worst = 0;
  for (int i = 0; i < o.M; i++)
    for (int j = 0; j < o.N; j++) {
      double ref = 0, mag = 0;
      for (int k = 0; k < o.K; k++) {
        const double t = static_cast<double>(round(o.a(i, k))) * round(o.b(k, j));
        ref += t;
        mag += std::fabs(t);
      }
      const double c0 = o.C[static_cast<size_t>(i) * o.N + j];
      const double want = alpha * ref + beta * c0;
      const double scale = std::fabs(alpha) * mag + std::fabs(beta * c0) + 1e-30;
      worst = std::max(worst, std::fabs(C[static_cast<size_t>(i) * o.N + j] - want) / scale);
    }
  return worst;
}

float same(float x) { return x; }
float bf16(float x) { return cpu::from_bf16(cpu::to_bf16(x)); }

std::string name(const Operands& o, float beta) {
  return "M=" + std::to_string(o.M) + " N=" + std::to_string(o.N) + " K=" + std::to_string(o.K) +
         " ta=" + std::to_string(o.ta) + " tb=" + std::to_string(o.tb) + " beta=" + std::to_string(beta);
}

}  // namespace

TEST(fp32_gemm_and_builtin_match_double) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int M : {1, 17, 130}) {
        Operands o = make(M, 45, 37, ta, tb);
        for (float beta : {0.0f, 1.0f}) {
          std::vector<float> C = o.C, Cb = o.C;
          cpu::gemm(ta, tb, M, o.N, o.K, 0.5f, o.A.data(), o.lda(), o.B.data(), o.ldb(), beta, C.data(), o.N);
          cpu::gemm_builtin(ta, tb, M, o.N, o.K, 0.5f, o.A.data(), o.lda(), o.B.data(), o.ldb(), beta, Cb.data(), o.N);
          const double e = worst_error(o, C, 0.5f, beta, same), eb = worst_error(o, Cb, 0.5f, beta, same);
          CHECK_MSG(e < 1e-6 && eb < 1e-6, name(o, beta) + ": gemm " + std::to_string(e) + ", builtin " + std::to_string(eb));
        }
      }
}

TEST(builtin_gemm_across_its_blocks_is_exact_and_thread_count_free) {
  // 137 rows (two row blocks and ragged register tiles), 4133 columns (past the 2048 / 4096 column block of either
  // vector width, a ragged last panel), K 790 (three K blocks); C holds NaN where beta 0 must ignore it. Checked
  // against double on a grid of elements, and bit for bit between 1 and 2 threads.
  const int threads = omp_get_max_threads();
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Operands o = make(137, 4133, 790, ta, tb);
      for (float beta : {0.0f, 0.75f}) {
        std::vector<float> C = o.C;
        if (beta == 0.0f) std::fill(C.begin(), C.end(), NAN);
        std::vector<float> C1 = C;
        omp_set_num_threads(std::max(2, threads));
        cpu::gemm_builtin(ta, tb, o.M, o.N, o.K, -1.5f, o.A.data(), o.lda(), o.B.data(), o.ldb(), beta, C.data(), o.N);
        omp_set_num_threads(1);
        cpu::gemm_builtin(ta, tb, o.M, o.N, o.K, -1.5f, o.A.data(), o.lda(), o.B.data(), o.ldb(), beta, C1.data(),
                          o.N);
        omp_set_num_threads(threads);
        CHECK_MSG(C1 == C, name(o, beta) + ": 1 and 2 threads differ");
        double worst = 0;
        for (int i = 0; i < o.M; i++)
          for (int j = 0; j < o.N; j++) {
            if (!(i % 9 == 0 || i == o.M - 1) || !(j % 31 == 0 || j >= o.N - 3)) continue;
            double ref = 0, mag = 0;
            for (int k = 0; k < o.K; k++) {
              const double t = static_cast<double>(o.a(i, k)) * o.b(k, j);
              ref += t, mag += std::fabs(t);
            }
            const double c0 = beta == 0.0f ? 0.0 : o.C[static_cast<size_t>(i) * o.N + j];
            const double want = -1.5 * ref + beta * c0, scale = 1.5 * mag + std::fabs(beta * c0);
            worst = std::max(worst, std::fabs(C[static_cast<size_t>(i) * o.N + j] - want) / scale);
          }
        CHECK_MSG(worst < 1e-6, name(o, beta) + ": worst relative error " + std::to_string(worst));
      }
    }
}

TEST(bf16_gemm_is_the_exact_product_of_bf16_rounded_operands) {
  // rows 1..7 use the small-row kernels on one slab; 64 and 130 rows split into 64-row slabs over the threads
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int M : {1, 3, 7, 64, 130}) {
        Operands o = make(M, 45, 37, ta, tb);
        for (float beta : {0.0f, 1.0f}) {
          std::vector<float> C = o.C;
          cpu::gemm_bf16(ta, tb, M, o.N, o.K, 0.5f, o.A.data(), o.lda(), o.B.data(), o.ldb(), beta, C.data(), o.N);
          const double e = worst_error(o, C, 0.5f, beta, bf16);
          CHECK_MSG(e < 1e-6, name(o, beta) + ": worst relative error " + std::to_string(e));
          // and it is really bf16: against the unrounded operands the error is of bf16's size, not fp32's
          const double e32 = worst_error(o, C, 0.5f, beta, same);
          CHECK_MSG(e32 > 1e-5 && e32 < 2e-2, name(o, beta) + ": error vs fp32 operands " + std::to_string(e32));
        }
      }
}

TEST(bf16_gemm_with_b_packed_once_splits_k_and_columns_the_same) {
  // wide B (split over threads by panel pairs), long K (several 512-row slices of B, partial sums added in C), and
  // one packed B used for two products, as the LM head's chunks do
  struct Shape { int M, N, K; };
  for (const Shape sh : {Shape{7, 300, 37}, Shape{130, 45, 1100}, Shape{70, 520, 1030}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        Operands o = make(sh.M, sh.N, sh.K, ta, tb);
        cpu::Bf16B pb;
        cpu::pack_b_bf16(pb, o.B.data(), o.ldb(), o.K, o.N, tb);
        for (float beta : {0.0f, 1.0f}) {
          std::vector<float> C = o.C, C2 = o.C;
          cpu::gemm_bf16(ta, o.M, o.A.data(), o.lda(), pb, 0.5f, beta, C.data(), o.N);
          const double e = worst_error(o, C, 0.5f, beta, bf16);
          CHECK_MSG(e < 2e-6, name(o, beta) + ": worst relative error " + std::to_string(e));
          cpu::gemm_bf16(ta, tb, o.M, o.N, o.K, 0.5f, o.A.data(), o.lda(), o.B.data(), o.ldb(), beta, C2.data(), o.N);
          CHECK_MSG(C2 == C, name(o, beta) + ": packing once and packing per call differ");
        }
      }
}

TEST(bf16_gemm_with_empty_k_scales_c_by_beta) {
  std::vector<float> A(3), B(5), C(15, 2.0f);
  cpu::gemm_bf16(false, false, 3, 5, 0, 1.0f, A.data(), 1, B.data(), 5, 1.0f, C.data(), 5);
  CHECK(C == std::vector<float>(15, 2.0f));
  cpu::gemm_bf16(false, false, 3, 5, 0, 1.0f, A.data(), 1, B.data(), 5, 0.0f, C.data(), 5);
  CHECK(C == std::vector<float>(15, 0.0f));
}

TEST(packed_products_match_their_reference) {
  for (bool tb : {false, true})
    for (bool half : {false, true})
      for (int M : {1, 3, 8, 13, 16, 21}) {
        Operands o = make(M, 45, 37, false, tb);
        const cpu::PackedB pb = cpu::pack_b(o.B.data(), o.ldb(), o.K, o.N, tb, half);
        std::vector<float> C(o.C.size());
        cpu::gemm_packed(M, o.A.data(), o.K, pb, C.data(), o.N);
        const double e = half ? worst_error(o, C, 1.0f, 0.0f, bf16) : worst_error(o, C, 1.0f, 0.0f, same);
        CHECK_MSG(e < 1e-6, name(o, 0) + (half ? " bf16" : " fp32") + ": worst relative error " + std::to_string(e));
      }
}

// Decoding deals rows out to thread groups of any size, and its tokens must not depend on that: a row of a packed
// product has the same bits whichever block of rows (16, 8, 4, 2, 1) it was computed in.
TEST(packed_product_rows_do_not_depend_on_their_block) {
  for (bool half : {false, true}) {
    Operands o = make(37, 45, 70, false, true);  // 37 rows: blocks of 16, 16, 4, 1
    const cpu::PackedB pb = cpu::pack_b(o.B.data(), o.ldb(), o.K, o.N, true, half);
    std::vector<float> all(o.C.size()), one(o.N);
    cpu::gemm_packed(37, o.A.data(), o.K, pb, all.data(), o.N);
    for (int r = 0; r < 37; r++) {
      cpu::gemm_packed(1, o.A.data() + static_cast<size_t>(r) * o.K, o.K, pb, one.data(), o.N);
      CHECK_MSG(std::memcmp(one.data(), all.data() + static_cast<size_t>(r) * o.N, o.N * sizeof(float)) == 0,
                std::string(half ? "bf16" : "fp32") + " row " + std::to_string(r));
    }
  }
}

TEST(bf16_rounding_is_nearest_even) {
  CHECK(cpu::to_bf16(1.0f) == 0x3f80);
  CHECK(cpu::to_bf16(1.00390625f) == 0x3f80);  // halfway between 1 and the next bf16: ties to even (down)
  CHECK(cpu::to_bf16(1.01171875f) == 0x3f82);  // halfway between 0x3f81 and 0x3f82: ties to even (up)
  CHECK(cpu::to_bf16(-2.0f) == 0xc000);
  CHECK(cpu::from_bf16(cpu::to_bf16(3.4e38f)) == INFINITY);  // beyond bf16's largest finite value: rounds to inf
  CHECK(std::isnan(cpu::from_bf16(cpu::to_bf16(std::nanf("")))));
}

TEST_MAIN()
