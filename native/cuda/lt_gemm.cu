// cuBLASLt decode GEMMs (see lt_gemm.h). Row-major C[M, N] = A[M, K] op(B) is computed column-major as
// C^T = op(B)^T A^T (as gemm.cu does): cuBLASLt's A is our weights B, its B our activations A, its D our C^T.
#include "lt_gemm.h"

#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "check.cuh"
#include "core/error.h"
#include "memory.h"

namespace optune::cuda {

namespace {

// One handle per host thread, kept for the thread's lifetime (as gemm.cu's cuBLAS handle).
cublasLtHandle_t lt_handle() {
  thread_local cublasLtHandle_t handle = [] {
    cublasLtHandle_t h = nullptr;
    OPTUNE_CUBLAS_CHECK(cublasLtCreate(&h));
    return h;
  }();
  return handle;
}

// The largest power of two up to 256 that divides p's address (and, for a strided batch, the byte offset from one
// matrix to the next): the heuristic must not pick an algorithm that needs more (its default assumption is 256).
int alignment_of(const void* p, size_t batch_stride_bytes = 0) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(batch_stride_bytes);
  int b = 256;
  while (b > 1 && a % b != 0) b /= 2;
  return b;
}

enum Epilogue { kNone = 0, kBiasGelu = 1 };

template <class T>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& value) {
  OPTUNE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(value)));
}
void set_batch(cublasLtMatrixLayout_t l, int count, int64_t stride) {
  OPTUNE_CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  OPTUNE_CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
}
template <class T>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
  OPTUNE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof(value)));
}

// One GEMM shape's descriptors and algorithm.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool bias = false;
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// A preference object for one query (destroyed on every path).
class Preference {
 public:
  Preference() { OPTUNE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&p_)); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(p_); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  cublasLtMatmulPreference_t get() const { return p_; }

 private:
  cublasLtMatmulPreference_t p_ = nullptr;
};

// What a plan depends on: M, N, K, trans_b, beta != 0, ldc, epilogue, the alignments of A, B, C and the bias, the
// workspace bytes, the device, and the K-slices (1: the whole product; S: S products over K / S each, a strided batch).
using PlanKey = std::tuple<int, int, int, bool, bool, int, int, int, int, int, int, size_t, int, int>;

// The operands of one GEMM.
struct Call {
  const void *A, *B, *bias;
  void* C;
  float beta;
  void* workspace;
  size_t bytes;
  cudaStream_t stream;
};

void run(const Plan& p, const Call& c) {
  const float alpha = 1.0f;
  if (p.bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, c.bias);
  // cuBLASLt's A is the weights (our B), its B the activations (our A)
  OPTUNE_CUBLAS_CHECK(cublasLtMatmul(lt_handle(), p.desc, &alpha, c.B, p.a, c.A, p.b, &c.beta, c.C, p.c, c.C, p.c,
                                     &p.algo, c.workspace, c.bytes, c.stream));
}

// The plan of a key (bias: the making call's, for its alignment).
Plan* make_plan(const PlanKey& key, const Call& call) {
  const auto [M, N, K, trans_b, accumulate, ldc, epilogue, align_a, align_b, align_c, align_bias, bytes, device,
              slices] = key;
  (void)accumulate, (void)align_bias, (void)device;  // plans differ by them; the query takes them otherwise
  const void* bias = call.bias;
  auto p = std::make_unique<Plan>();
  OPTUNE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(trans_b ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(CUBLAS_OP_N));
  const cublasLtEpilogue_t ep = epilogue == kBiasGelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(ep));
  p->bias = epilogue == kBiasGelu;
  if (p->bias) set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);  // the heuristic reads its alignment
  // the weights as stored: [K, N] row-major is column-major N x K (ld N); [N, K] is K x N (ld K), transposed. A
  // K-slice of Ks = K / slices takes Ks of those rows (or columns) and of the activations' columns.
  const int Ks = K / slices;
  OPTUNE_CUBLAS_CHECK(trans_b ? cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, Ks, N, K)
                              : cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, N, Ks, N));
  OPTUNE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, Ks, M, K));
  OPTUNE_CUBLAS_CHECK(epilogue == kNone ? cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, N, M, ldc)
                                        : cublasLtMatrixLayoutCreate(&p->c, CUDA_R_16BF, N, M, N));
  if (slices > 1) {  // slice s: the weights' and activations' s-th Ks, written to C + s * M * ldc
    set_batch(p->a, slices, trans_b ? Ks : static_cast<int64_t>(Ks) * N);
    set_batch(p->b, slices, Ks);
    set_batch(p->c, slices, static_cast<int64_t>(M) * ldc);
  }
  Preference pref;
  set_pref(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(bytes));
  // K-splits reduced in place only (asked for; on an H200 the MLP output projection still got cuBLASLt's reduction
  // kernel: lt_gemm.h)
  const uint32_t in_place_only = CUBLASLT_REDUCTION_SCHEME_INPLACE;
  set_pref(pref.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, in_place_only);
  set_pref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<uint32_t>(align_b));  // (weights)
  set_pref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<uint32_t>(align_a));  // (activations)
  set_pref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<uint32_t>(align_c));
  set_pref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<uint32_t>(align_c));
  cublasLtMatmulHeuristicResult_t result = {};
  int found = 0;
  OPTUNE_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt_handle(), p->desc, p->a, p->b, p->c, p->c, pref.get(), 1,
                                                     &result, &found));
  OPTUNE_CHECK(found > 0 && result.state == CUBLAS_STATUS_SUCCESS,
               "OPTUNE_CUDA_DECODE_GEMM=lt: cuBLASLt offers no algorithm for the decode GEMM [" + std::to_string(M) +
                   ", " + std::to_string(N) + ", " + std::to_string(K) + "]" +
                   (slices > 1 ? " in " + std::to_string(slices) + " K-slices" : "") +
                   (epilogue == kNone ? "" : " with its bias and GELU epilogue") +
                   " on this GPU; set OPTUNE_CUDA_DECODE_GEMM=cublas to use cuBLAS's GEMMs");
  p->algo = result.algo;
  return p.release();
}

// The plan of a key, made on its first use in this thread (by that call) and kept for the thread's lifetime.
const Plan& plan_for(const PlanKey& key, const Call& call) {
  thread_local std::map<PlanKey, std::unique_ptr<Plan>> plans;
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, std::unique_ptr<Plan>(make_plan(key, call))).first;
  return *it->second;
}

}  // namespace

LtGemms::LtGemms(cudaStream_t stream, void* workspace, size_t bytes)
    : stream_(stream), workspace_(workspace), bytes_(bytes), device_(current_device()) {
  lt_handle();  // a failure to create the handle shows here, before any work
}

void LtGemms::mm(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, float beta,
                 float* C, int ldc) {
  product(M, N, K, A, B, trans_b, beta, C, ldc, 1);
}

void LtGemms::mm_sliced(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, int S,
                        float* C) {
  product(M, N, K, A, B, trans_b, 0.0f, C, N, S);
}

void LtGemms::product(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, float beta,
                      float* C, int ldc, int S) {
  if (M <= 0 || N <= 0) return;
  OPTUNE_CHECK(S >= 1 && K % S == 0, "internal: a cuBLASLt GEMM with K " + std::to_string(K) + " in " +
                                         std::to_string(S) + " slices");
  // a strided batch's later matrices must keep the alignment its first one gives the plan (S = 1: no batch)
  const size_t Ks = K / S, bf = sizeof(__nv_bfloat16);
  const size_t step_a = S > 1 ? Ks * bf : 0, step_b = S > 1 ? (trans_b ? Ks : Ks * N) * bf : 0,
               step_c = S > 1 ? static_cast<size_t>(M) * ldc * sizeof(float) : 0;
  const PlanKey key{M, N, K, trans_b, beta != 0.0f, ldc, kNone, alignment_of(A, step_a), alignment_of(B, step_b),
                    alignment_of(C, step_c), 0, bytes_, device_, S};
  const Call call{A, B, nullptr, C, beta, workspace_, bytes_, stream_};
  run(plan_for(key, call), call);
}

void LtGemms::mm_bias_gelu(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b,
                           const __nv_bfloat16* bias, __nv_bfloat16* out) {
  if (M <= 0 || N <= 0) return;
  OPTUNE_CHECK(bias, "internal: LtGemms::mm_bias_gelu without a bias");
  const PlanKey key{M, N, K, trans_b, false, N, kBiasGelu, alignment_of(A), alignment_of(B), alignment_of(out),
                    alignment_of(bias), bytes_, device_, 1};
  const Call call{A, B, bias, out, 0.0f, workspace_, bytes_, stream_};
  run(plan_for(key, call), call);
}

}  // namespace optune::cuda
