// The CUDA emulator's math libraries (native/cuda_emu: cuda_bf16.h, cuBLAS, cuBLASLt, cub's radix sort) against
// naive loops, on small odd sizes in every transpose combination: bf16 rounding, cublasSgemm (strided batches,
// TF32), cublasGemmEx (bf16), cublasLtMatmul (a batch of 2 with the GELU + bias epilogue; the checks a GPU makes:
// shapes, attribute sizes, alignment), a captured GEMM (scalars taken at the call, operands read at the launch), and
// SortPairs (stable, by a bit range). Built in the emulator build only (OPTUNE_CUDA=EMU): device memory is host
// memory there, so the operands live in std::vector.
#include "cuda_runtime.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "testing.h"

namespace {

// Deterministic values in [-1, 1), a few exact zeros.
std::vector<float> values(size_t n, int seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = i % 11 == 3 ? 0.0f : static_cast<float>(std::sin(0.731 * i + 1.37 * seed));
  return v;
}

std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A column-major operand as stored (rows x cols, leading dimension ld, `count` matrices `stride` apart).
struct Mat {
  int rows, cols, ld;
  int64_t stride;
  int count;
  size_t size() const { return static_cast<size_t>(stride) * (count - 1) + static_cast<size_t>(ld) * cols; }
};

// Column-major reference: want[b](i, j) = alpha sum_k op(A)(i, k) op(B)(k, j) + beta C0 in double, and the scale
// sum |terms| + |beta C0| an fp32 result's error is relative to.
struct Reference {
  std::vector<double> want, scale;
};
template <class GetA, class GetB, class GetC>
Reference reference(int m, int n, int k, int batch, double alpha, double beta, GetA a, GetB b, GetC c) {
  Reference r;
  for (int bt = 0; bt < batch; bt++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double s = 0, mag = 0;
        for (int kk = 0; kk < k; kk++) {
          const double t = static_cast<double>(a(bt, i, kk)) * b(bt, kk, j);
          s += t, mag += std::fabs(t);
        }
        const double c0 = beta != 0 ? beta * c(bt, i, j) : 0.0;
        r.want.push_back(alpha * s + c0);
        r.scale.push_back(std::fabs(alpha) * mag + std::fabs(c0) + 1e-30);
      }
  return r;
}

// op(X)(r, c) of a stored operand
template <class T>
float element(const std::vector<T>& x, const Mat& l, bool trans, int b, int r, int c) {
  const size_t at = static_cast<size_t>(b * l.stride) + (trans ? c + static_cast<size_t>(r) * l.ld
                                                               : r + static_cast<size_t>(c) * l.ld);
  return static_cast<float>(x[at]);
}

const char* op_name(bool t) { return t ? "T" : "N"; }

// worst = max(worst, e), a NaN kept (std::max would drop it)
void note_worst(double& worst, double e) {
  if (!(e <= worst)) worst = e;
}

}  // namespace

// ---- cuda_bf16.h -------------------------------------------------------------------------------------------------

TEST(bf16_conversions_round_to_nearest_even) {
  static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "bf16 layout");
  static_assert(sizeof(__nv_bfloat162) == 4 && alignof(__nv_bfloat162) == 4, "bf16 pair layout");
  static_assert(std::is_trivially_copyable_v<__nv_bfloat16> && std::is_trivially_default_constructible_v<__nv_bfloat16>,
                "bf16 is raw bits");
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(1.0f)) == 0x3f80);
  // halfway cases go to the even neighbour: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(bits_to_float(0x3f808000u))) == 0x3f80);
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(bits_to_float(0x3f818000u))) == 0x3f82);
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(bits_to_float(0x3f808001u))) == 0x3f81);  // above half: up
  CHECK(__bfloat16_as_ushort(__float2bfloat16(-bits_to_float(0x3f80ffffu))) == 0xbf81);
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(bits_to_float(0x7f7fffffu))) == 0x7f80);  // FLT_MAX -> inf
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(-std::numeric_limits<float>::infinity())) == 0xff80);
  CHECK(std::isnan(__bfloat162float(__float2bfloat16_rn(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(__bfloat162float(__float2bfloat16_rn(bits_to_float(0x7f800001u)))));  // a NaN that rounds to inf
  CHECK(__bfloat162float(__ushort_as_bfloat16(0x4049)) == 3.140625f);
  // implicit conversions as in CUDA's host code, and the pairs (.x the low half)
  const __nv_bfloat16 h = 2.5f;
  const float f = h;
  CHECK(f == 2.5f && static_cast<float>(h) * 2 == 5.0f);
  const __nv_bfloat162 p = __floats2bfloat162_rn(1.5f, -3.0f);
  uint32_t word;
  std::memcpy(&word, &p, 4);
  CHECK(word == (0xc040u << 16 | 0x3fc0u));
  const float2 p2 = __bfloat1622float2(p);
  CHECK(p2.x == 1.5f && p2.y == -3.0f && __low2float(p) == 1.5f && __high2float(p) == -3.0f);
  const __nv_bfloat162 q = __float2bfloat162_rn(0.25f);
  CHECK(__low2float(q) == 0.25f && __high2float(q) == 0.25f);
}

// ---- cuBLAS ------------------------------------------------------------------------------------------------------

TEST(sgemm_matches_reference) {
  cublasHandle_t h = nullptr;
  CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  const int m = 7, n = 5, k = 9;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (const float beta : {0.0f, -0.5f}) {
        const Mat la{ta ? k : m, ta ? m : k, (ta ? k : m) + 2, 0, 1};
        const Mat lb{tb ? n : k, tb ? k : n, (tb ? n : k) + 1, 0, 1};
        const Mat lc{m, n, m + 3, 0, 1};
        const auto A = values(la.size(), 1), B = values(lb.size(), 2), C0 = values(lc.size(), 3);
        std::vector<float> C = C0;
        if (beta == 0.0f) std::fill(C.begin(), C.end(), std::numeric_limits<float>::quiet_NaN());  // not read
        const float alpha = 1.5f;
        CHECK(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A.data(),
                          la.ld, B.data(), lb.ld, &beta, C.data(), lc.ld) == CUBLAS_STATUS_SUCCESS);
        const Reference r = reference(
            m, n, k, 1, alpha, beta, [&](int, int i, int kk) { return element(A, la, ta, 0, i, kk); },
            [&](int, int kk, int j) { return element(B, lb, tb, 0, kk, j); },
            [&](int, int i, int j) { return C0[i + static_cast<size_t>(j) * lc.ld]; });
        double worst = 0;
        for (int j = 0; j < n; j++)
          for (int i = 0; i < m; i++) {
            const size_t at = static_cast<size_t>(j) * m + i;
            note_worst(worst, std::fabs(C[i + static_cast<size_t>(j) * lc.ld] - r.want[at]) / r.scale[at]);
          }
        CHECK_MSG(worst < 1e-6, std::string("op ") + op_name(ta) + op_name(tb) + " beta " + std::to_string(beta) +
                                    ": worst relative error " + std::to_string(worst));
        // the padding between columns is not written
        CHECK(beta != 0.0f || std::isnan(C[m]));
      }
  // what cuBLAS refuses
  const float one = 1.0f;
  std::vector<float> X(64);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, X.data(), 3, X.data(), 4, &one, X.data(), 4) ==
        CUBLAS_STATUS_INVALID_VALUE);  // lda < m
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 4, 4, &one, X.data(), 4, X.data(), 4, &one, X.data(), 4) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, X.data(), 4, X.data(), 4, &one, X.data(), 4) ==
        CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
}

TEST(sgemm_strided_batched_and_tf32) {
  cublasHandle_t h = nullptr;
  CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  // a batch of 3 slices along k, as the sampler's mm_sliced: C_s = A[:, s Ks .. ] B[s Ks .., :]
  const int m = 5, n = 3, Ks = 3, S = 3, K = Ks * S;
  const auto A = values(static_cast<size_t>(m) * K, 4), B = values(static_cast<size_t>(K) * n, 5);
  std::vector<float> C(static_cast<size_t>(m) * n * S, -7.0f);
  const float one = 1.0f, zero = 0.0f;
  // column-major: A is m x K (ld m), slice s starts at column s Ks; B is K x n (ld K), slice s at row s Ks
  CHECK(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, Ks, &one, A.data(), m,
                                  static_cast<long long>(m) * Ks, B.data(), K, Ks, &zero, C.data(), m,
                                  static_cast<long long>(m) * n, S) == CUBLAS_STATUS_SUCCESS);
  double worst = 0;
  for (int s = 0; s < S; s++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double want = 0, mag = 0;
        for (int kk = s * Ks; kk < (s + 1) * Ks; kk++) {
          const double t = static_cast<double>(A[i + static_cast<size_t>(kk) * m]) * B[kk + static_cast<size_t>(j) * K];
          want += t, mag += std::fabs(t);
        }
        note_worst(worst, std::fabs(C[static_cast<size_t>(s) * m * n + i + static_cast<size_t>(j) * m] - want) /
                                    (mag + 1e-30));
      }
  CHECK_MSG(worst < 1e-6, "strided batch: worst relative error " + std::to_string(worst));
  // TF32 math drops the low 13 mantissa bits of fp32 operands (to nearest); the default keeps them
  const float a = 1.0f + std::ldexp(1.0f, -20), b = 1.0f;
  float c = 0.0f;
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, &a, 1, &b, 1, &zero, &c, 1) == CUBLAS_STATUS_SUCCESS);
  CHECK(c == a);
  CHECK(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, &a, 1, &b, 1, &zero, &c, 1) == CUBLAS_STATUS_SUCCESS);
  CHECK(c == 1.0f);
  const float a_up = 1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -12);  // rounds up to 1 + 2^-10
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, &a_up, 1, &b, 1, &zero, &c, 1) ==
        CUBLAS_STATUS_SUCCESS);
  CHECK(c == 1.0f + std::ldexp(1.0f, -10));
  CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, &a, CUDA_R_32F, 1, &b, CUDA_R_32F, 1, &zero, &c,
                     CUDA_R_32F, 1, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  CHECK(c == 1.0f);
  CHECK(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
}

TEST(gemm_ex_bf16_matches_reference) {
  cublasHandle_t h = nullptr;
  CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  const int m = 9, n = 6, k = 11;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (const bool out16 : {false, true}) {
        const Mat la{ta ? k : m, ta ? m : k, (ta ? k : m) + 1, 0, 1}, lb{tb ? n : k, tb ? k : n, tb ? n : k, 0, 1};
        const Mat lc{m, n, m + 2, 0, 1};
        const auto A = to_bf16(values(la.size(), 6)), B = to_bf16(values(lb.size(), 7));
        const auto C0 = values(lc.size(), 8);
        std::vector<float> C = C0;
        std::vector<__nv_bfloat16> C16 = to_bf16(C0);
        const float alpha = 0.75f, beta = 2.0f;
        void* out = out16 ? static_cast<void*>(C16.data()) : static_cast<void*>(C.data());
        CHECK(cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
                           A.data(), CUDA_R_16BF, la.ld, B.data(), CUDA_R_16BF, lb.ld, &beta, out,
                           out16 ? CUDA_R_16BF : CUDA_R_32F, lc.ld, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
        const Reference r = reference(
            m, n, k, 1, alpha, beta, [&](int, int i, int kk) { return element(A, la, ta, 0, i, kk); },
            [&](int, int kk, int j) { return element(B, lb, tb, 0, kk, j); },
            [&](int, int i, int j) {
              const size_t at = i + static_cast<size_t>(j) * lc.ld;
              return out16 ? __bfloat162float(__float2bfloat16_rn(C0[at])) : C0[at];
            });
        double worst = 0;
        for (int j = 0; j < n; j++)
          for (int i = 0; i < m; i++) {
            const size_t at = static_cast<size_t>(j) * m + i, c_at = i + static_cast<size_t>(j) * lc.ld;
            const double got = out16 ? static_cast<double>(__bfloat162float(C16[c_at])) : C[c_at];
            // bf16 output: the fp32 result rounded once (half an ulp of 2^-8 relative)
            const double tol = out16 ? std::ldexp(1.0, -8) * std::fabs(r.want[at]) + 1e-6 * r.scale[at]
                                     : 1e-6 * r.scale[at];
            note_worst(worst, std::fabs(got - r.want[at]) / tol);
          }
        CHECK_MSG(worst <= 1.0, std::string("op ") + op_name(ta) + op_name(tb) + (out16 ? " bf16 out" : " fp32 out") +
                                    ": worst error / tolerance " + std::to_string(worst));
      }
  // a strided batch of 2 (the sampler's bf16 mm_sliced), beta 0 over NaN
  const int S = 2, Ks = 4;
  const auto A = to_bf16(values(static_cast<size_t>(m) * Ks * S, 9));
  const auto B = to_bf16(values(static_cast<size_t>(Ks) * S * n, 10));
  std::vector<float> C(static_cast<size_t>(m) * n * S, std::numeric_limits<float>::quiet_NaN());
  const float one = 1.0f, zero = 0.0f;
  CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, Ks, &one, A.data(), CUDA_R_16BF, m,
                                   static_cast<long long>(m) * Ks, B.data(), CUDA_R_16BF, Ks * S, Ks, &zero, C.data(),
                                   CUDA_R_32F, m, static_cast<long long>(m) * n, S, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  double worst = 0;
  for (int s = 0; s < S; s++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double want = 0, mag = 0;
        for (int kk = s * Ks; kk < (s + 1) * Ks; kk++) {
          const double t = static_cast<double>(__bfloat162float(A[i + static_cast<size_t>(kk) * m])) *
                           __bfloat162float(B[kk + static_cast<size_t>(j) * Ks * S]);
          want += t, mag += std::fabs(t);
        }
        const float got = C[static_cast<size_t>(s) * m * n + i + static_cast<size_t>(j) * m];
        note_worst(worst, std::fabs(got - want) / (mag + 1e-30));
      }
  CHECK_MSG(worst < 1e-6, "bf16 strided batch: worst relative error " + std::to_string(worst));
  // type combinations cuBLAS does not have
  CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, A.data(), CUDA_R_16BF, 1, C.data(), CUDA_R_32F, 1,
                     &zero, C.data(), CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
        CUBLAS_STATUS_NOT_SUPPORTED);
  CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, A.data(), CUDA_R_16BF, 1, A.data(), CUDA_R_16BF, 1,
                     &zero, C.data(), CUDA_R_32F, 1, CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT) ==
        CUBLAS_STATUS_NOT_SUPPORTED);
  CHECK(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
}

// ---- cuBLASLt ----------------------------------------------------------------------------------------------------

namespace {

double gelu_tanh_ref(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

struct LtSetup {
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtSetup() {
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatmulDescDestroy(desc);
    if (handle) cublasLtDestroy(handle);
  }
};

template <class T>
cublasStatus_t set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& v) {
  return cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v));
}
cublasStatus_t set_batch(cublasLtMatrixLayout_t l, int count, int64_t stride) {
  const cublasStatus_t st = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                             sizeof(count));
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  return cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride));
}

}  // namespace

TEST(lt_matmul_batched_gelu_bias_matches_reference) {
  // D (m x n, bf16) = gelu(op(A) op(B) + bias) for a batch of 2, bf16 bias of m; op(A) m x k, op(B) k x n
  const int m = 7, n = 5, k = 13, batch = 2;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      LtSetup s;
      CHECK(cublasLtCreate(&s.handle) == CUBLAS_STATUS_SUCCESS);
      Mat la{ta ? k : m, ta ? m : k, (ta ? k : m) + 1, 0, batch}, lb{tb ? n : k, tb ? k : n, tb ? n : k, 0, batch};
      la.stride = static_cast<int64_t>(la.ld) * la.cols + 3;  // odd strides: later matrices 2-byte aligned
      lb.stride = static_cast<int64_t>(lb.ld) * lb.cols;
      const Mat lc{m, n, m, static_cast<int64_t>(m) * n + 1, batch};
      const auto A = to_bf16(values(la.size(), 11)), B = to_bf16(values(lb.size(), 12));
      const auto bias = to_bf16(values(static_cast<size_t>(m) * batch, 13));  // per batch: m apart
      std::vector<__nv_bfloat16> D(lc.size(), __ushort_as_bfloat16(0x7fff));  // NaN: beta 0 reads nothing
      CHECK(cublasLtMatmulDescCreate(&s.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
      CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(ta ? CUBLAS_OP_T : CUBLAS_OP_N)) ==
            CUBLAS_STATUS_SUCCESS);
      CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(tb ? CUBLAS_OP_T : CUBLAS_OP_N)) ==
            CUBLAS_STATUS_SUCCESS);
      CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(CUBLASLT_EPILOGUE_GELU_BIAS)) ==
            CUBLAS_STATUS_SUCCESS);
      CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias.data())) ==
            CUBLAS_STATUS_SUCCESS);
      CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, static_cast<int64_t>(m)) == CUBLAS_STATUS_SUCCESS);
      CHECK(cublasLtMatrixLayoutCreate(&s.a, CUDA_R_16BF, la.rows, la.cols, la.ld) == CUBLAS_STATUS_SUCCESS);
      CHECK(cublasLtMatrixLayoutCreate(&s.b, CUDA_R_16BF, lb.rows, lb.cols, lb.ld) == CUBLAS_STATUS_SUCCESS);
      CHECK(cublasLtMatrixLayoutCreate(&s.c, CUDA_R_16BF, lc.rows, lc.cols, lc.ld) == CUBLAS_STATUS_SUCCESS);
      CHECK(set_batch(s.a, batch, la.stride) == CUBLAS_STATUS_SUCCESS);
      CHECK(set_batch(s.b, batch, lb.stride) == CUBLAS_STATUS_SUCCESS);
      CHECK(set_batch(s.c, batch, lc.stride) == CUBLAS_STATUS_SUCCESS);
      CHECK(cublasLtMatmulPreferenceCreate(&s.pref) == CUBLAS_STATUS_SUCCESS);
      const uint32_t two = 2;  // the odd batch strides leave the later matrices 2-byte aligned
      for (const auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                              CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
        CHECK(cublasLtMatmulPreferenceSetAttribute(s.pref, attr, &two, sizeof(two)) == CUBLAS_STATUS_SUCCESS);
      cublasLtMatmulHeuristicResult_t result = {};
      int found = 0;
      CHECK(cublasLtMatmulAlgoGetHeuristic(s.handle, s.desc, s.a, s.b, s.c, s.c, s.pref, 1, &result, &found) ==
            CUBLAS_STATUS_SUCCESS);
      CHECK(found == 1 && result.state == CUBLAS_STATUS_SUCCESS);
      const float alpha = 1.25f, beta = 0.0f;
      CHECK(cublasLtMatmul(s.handle, s.desc, &alpha, A.data(), s.a, B.data(), s.b, &beta, D.data(), s.c, D.data(), s.c,
                           &result.algo, nullptr, 0, nullptr) == CUBLAS_STATUS_SUCCESS);
      const Reference r = reference(
          m, n, k, batch, alpha, 0.0, [&](int bt, int i, int kk) { return element(A, la, ta, bt, i, kk); },
          [&](int bt, int kk, int j) { return element(B, lb, tb, bt, kk, j); }, [](int, int, int) { return 0.0f; });
      double worst = 0;
      size_t at = 0;
      for (int bt = 0; bt < batch; bt++)
        for (int j = 0; j < n; j++)
          for (int i = 0; i < m; i++, at++) {
            const double pre = r.want[at] + __bfloat162float(bias[static_cast<size_t>(bt) * m + i]);
            const double want = gelu_tanh_ref(pre);
            const size_t d_at = static_cast<size_t>(bt * lc.stride) + i + static_cast<size_t>(j) * lc.ld;
            const double got = __bfloat162float(D[d_at]);
            // bf16 rounding of the result, and fp32 error of the sum carried through gelu (slope <= 1.2)
            const double tol = std::ldexp(1.0, -8) * std::fabs(want) + 2e-6 * (r.scale[at] + 1);
            note_worst(worst, std::fabs(got - want) / tol);
          }
      CHECK_MSG(worst <= 1.0, std::string("op ") + op_name(ta) + op_name(tb) + ": worst error / tolerance " +
                                  std::to_string(worst));
      // the padding element between the two D matrices stays untouched
      CHECK(std::isnan(__bfloat162float(D[static_cast<size_t>(m) * n])));
    }
}

TEST(lt_matmul_accumulates_fp32_and_checks_like_a_gpu) {
  // the decode GEMM's plain form: D = C (fp32) += op(A) op(B), A transposed, no batch, default preferences
  const int m = 6, n = 3, k = 5;
  LtSetup s;
  CHECK(cublasLtCreate(&s.handle) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmulDescCreate(&s.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(CUBLAS_OP_T)) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatrixLayoutCreate(&s.a, CUDA_R_16BF, k, m, k) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatrixLayoutCreate(&s.b, CUDA_R_16BF, k, n, k) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatrixLayoutCreate(&s.c, CUDA_R_32F, m, n, m) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmulPreferenceCreate(&s.pref) == CUBLAS_STATUS_SUCCESS);
  const uint64_t ws = 1 << 20;
  CHECK(cublasLtMatmulPreferenceSetAttribute(s.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)) ==
        CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t result = {};
  int found = 0;
  CHECK(cublasLtMatmulAlgoGetHeuristic(s.handle, s.desc, s.a, s.b, s.c, s.c, s.pref, 1, &result, &found) ==
        CUBLAS_STATUS_SUCCESS);
  CHECK(found == 1);
  // 16-byte aligned storage (the heuristic was told 256, so the algorithm may use 16-byte accesses)
  std::vector<float4> a_store(8), b_store(8), c_store(8);
  auto* A = reinterpret_cast<__nv_bfloat16*>(a_store.data());
  auto* B = reinterpret_cast<__nv_bfloat16*>(b_store.data());
  auto* C = reinterpret_cast<float*>(c_store.data());
  const auto av = values(static_cast<size_t>(k) * m, 14), bv = values(static_cast<size_t>(k) * n, 15);
  const auto c0 = values(static_cast<size_t>(m) * n, 16);
  for (size_t i = 0; i < av.size(); i++) A[i] = av[i];
  for (size_t i = 0; i < bv.size(); i++) B[i] = bv[i];
  std::copy(c0.begin(), c0.end(), C);
  const float alpha = 1.0f, beta = 1.0f;
  CHECK(cublasLtMatmul(s.handle, s.desc, &alpha, A, s.a, B, s.b, &beta, C, s.c, C, s.c, &result.algo, nullptr, 0,
                       nullptr) == CUBLAS_STATUS_SUCCESS);
  double worst = 0;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double want = c0[i + static_cast<size_t>(j) * m], mag = std::fabs(want);
      for (int kk = 0; kk < k; kk++) {
        const double t = static_cast<double>(static_cast<float>(A[kk + static_cast<size_t>(i) * k])) *
                         static_cast<float>(B[kk + static_cast<size_t>(j) * k]);
        want += t, mag += std::fabs(t);
      }
      note_worst(worst, std::fabs(C[i + static_cast<size_t>(j) * m] - want) / mag);
    }
  CHECK_MSG(worst < 1e-6, "worst relative error " + std::to_string(worst));
  // an operand less aligned than the heuristic was told: refused, as the algorithm's vector loads would fault
  CHECK(cublasLtMatmul(s.handle, s.desc, &alpha, A + 1, s.a, B, s.b, &beta, C, s.c, C, s.c, &result.algo, nullptr, 0,
                       nullptr) == CUBLAS_STATUS_NOT_SUPPORTED);
  // shapes that do not fit: op(A) is m x k, so B must have k rows
  cublasLtMatrixLayout_t wrong = nullptr;
  CHECK(cublasLtMatrixLayoutCreate(&wrong, CUDA_R_16BF, k + 1, n, k + 1) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmulAlgoGetHeuristic(s.handle, s.desc, s.a, wrong, s.c, s.c, s.pref, 1, &result, &found) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasLtMatmul(s.handle, s.desc, &alpha, A, s.a, B, wrong, &beta, C, s.c, C, s.c, nullptr, nullptr, 0,
                       nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  cublasLtMatrixLayoutDestroy(wrong);
  // attribute values of the wrong size, and a bias epilogue without a bias
  const int64_t wide = CUBLAS_OP_N;
  CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_TRANSB, wide) == CUBLAS_STATUS_INVALID_VALUE);
  const uint32_t small = 5;
  CHECK(cublasLtMatmulPreferenceSetAttribute(s.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &small,
                                             sizeof(small)) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(set_desc(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(CUBLASLT_EPILOGUE_BIAS)) ==
        CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmul(s.handle, s.desc, &alpha, A, s.a, B, s.b, &beta, C, s.c, C, s.c, nullptr, nullptr, 0,
                       nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  uint32_t epilogue = 0;
  size_t written = 0;
  CHECK(cublasLtMatmulDescGetAttribute(s.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue),
                                       &written) == CUBLAS_STATUS_SUCCESS);
  CHECK(epilogue == CUBLASLT_EPILOGUE_BIAS && written == sizeof(uint32_t));
}

// ---- stream capture ------------------------------------------------------------------------------------------------

TEST(captured_gemm_takes_scalars_at_the_call_and_operands_at_the_launch) {
  cudaStream_t st = nullptr;
  CHECK(cudaStreamCreate(&st) == cudaSuccess);
  cublasHandle_t h = nullptr;
  CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasSetStream(h, st) == CUBLAS_STATUS_SUCCESS);
  float a[2] = {1.0f, 2.0f}, b[2] = {3.0f, 4.0f}, c = -1.0f;  // c = a . b (1 x 2 times 2 x 1)
  float alpha = 2.0f, beta = 0.0f;
  CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 2, &alpha, a, 1, b, 2, &beta, &c, 1) == CUBLAS_STATUS_SUCCESS);
  alpha = 100.0f, beta = 5.0f;  // too late for the captured GEMM
  cudaGraph_t g = nullptr;
  CHECK(cudaStreamEndCapture(st, &g) == cudaSuccess);
  CHECK(c == -1.0f);  // recorded, not run
  cudaGraphExec_t exec = nullptr;
  CHECK(cudaGraphInstantiate(&exec, g, 0) == cudaSuccess);
  a[1] = 10.0f;  // read at the launch
  CHECK(cudaGraphLaunch(exec, st) == cudaSuccess);
  CHECK(cudaStreamSynchronize(st) == cudaSuccess);
  CHECK(c == 2.0f * (1.0f * 3.0f + 10.0f * 4.0f));
  CHECK(cudaGraphExecDestroy(exec) == cudaSuccess);
  CHECK(cudaGraphDestroy(g) == cudaSuccess);
  CHECK(cublasSetStream(h, nullptr) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
  CHECK(cudaStreamDestroy(st) == cudaSuccess);
}

// ---- cub::DeviceRadixSort ----------------------------------------------------------------------------------------

TEST(sort_pairs_is_stable_by_the_bit_range) {
  // (row, logit)-like keys: the low 20 bits and 4 row bits compared (end_bit 24), garbage above that is ignored
  const int n = 301;
  std::vector<uint64_t> keys(n), keys_out(n);
  std::vector<int32_t> vals(n), vals_out(n, -1);
  uint64_t x = 12345;
  for (int i = 0; i < n; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    keys[i] = (x >> 40 << 24) | ((x >> 7) & 0xf) << 20 | (x >> 13) % 37;  // many equal (row, value) pairs
    vals[i] = i;
  }
  size_t bytes = 0;
  CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                        static_cast<uint64_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                        static_cast<int32_t*>(nullptr), n, 0, 64) == cudaSuccess);
  CHECK(bytes > 0);
  std::vector<char> temp(bytes);
  size_t too_few = bytes - 1;
  CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), too_few, keys.data(), keys_out.data(), vals.data(),
                                        vals_out.data(), n, 0, 24) == cudaErrorInvalidValue);
  CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), bytes, keys.data(), keys_out.data(), vals.data(),
                                        vals_out.data(), n, 0, 24, nullptr) == cudaSuccess);
  std::vector<int32_t> order(n);
  for (int i = 0; i < n; i++) order[i] = i;
  const auto low = [](uint64_t k) { return k & 0xffffffull; };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return low(keys[a]) < low(keys[b]); });
  bool same = true;
  for (int i = 0; i < n; i++) same = same && vals_out[i] == order[i] && keys_out[i] == keys[order[i]];
  CHECK_MSG(same, "SortPairs(0, 24) differs from a stable sort by the low 24 bits");
  // 32-bit keys, all bits (the default range)
  std::vector<uint32_t> k32 = {5, 3, 5, 0xffffffffu, 0, 3}, k32_out(6);
  std::vector<int32_t> v32 = {0, 1, 2, 3, 4, 5}, v32_out(6);
  size_t bytes32 = 0;
  CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes32, k32.data(), k32_out.data(), v32.data(), v32_out.data(),
                                        6) == cudaSuccess);
  std::vector<char> temp32(bytes32);
  CHECK(cub::DeviceRadixSort::SortPairs(temp32.data(), bytes32, k32.data(), k32_out.data(), v32.data(),
                                        v32_out.data(), 6) == cudaSuccess);
  CHECK((k32_out == std::vector<uint32_t>{0, 3, 3, 5, 5, 0xffffffffu}));
  CHECK((v32_out == std::vector<int32_t>{4, 1, 5, 0, 2, 3}));
}

TEST_MAIN()
