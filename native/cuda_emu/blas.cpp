// The CUDA emulator's cuBLAS and cuBLASLt (include/cublas_v2.h, include/cublasLt.h): every GEMM is one Product, a
// plain loop nest on the CPU, enqueued on the stream (run now, or recorded while the stream captures a graph). The
// Product holds values only (scalars, descriptor fields, pointers), taken at the call, as cuBLAS reads host scalars
// at the call and a captured graph keeps the launch's parameters.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // bookkeeping only: the emulated GEMMs need no scratch
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

struct cublasLtContext {
  int unused = 0;
};

// Each field has its attribute's type (the size SetAttribute checks).
struct cublasLtMatmulDescOpaque_t {
  int32_t compute = CUBLAS_COMPUTE_32F;
  int32_t scale = CUDA_R_32F;
  int32_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
  int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N, transc = CUBLAS_OP_N;
  int32_t fill_mode = 0;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int64_t bias_stride = 0;
  int32_t bias_type = -1;  // -1: D's type
  int32_t sm_count = 0;
};

struct cublasLtMatrixLayoutOpaque_t {
  uint32_t type = CUDA_R_32F;
  int32_t order = CUBLASLT_ORDER_COL;
  uint64_t rows = 0, cols = 0;
  int64_t ld = 0;
  int32_t batch = 1;
  int64_t stride = 0;  // elements from one matrix of the batch to the next
  int64_t plane_offset = 0;
};

struct cublasLtMatmulPreferenceOpaque_t {
  uint32_t search_mode = 0;
  uint64_t max_workspace = 0;
  uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D
  float max_waves = 0;
  uint64_t impl_mask = ~uint64_t(0);
};

namespace {

// ---- the product -------------------------------------------------------------------------------------------------

// A column-major operand as stored: element (r, c) of batch matrix b at p[b * stride + r + c * ld].
struct Operand {
  const void* p = nullptr;
  cudaDataType_t type = CUDA_R_32F;
  int64_t ld = 0, stride = 0;
};

// D = epilogue(alpha op(A) op(B) + beta C), D m x n, for each of `batch` matrices.
struct Product {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  Operand A, B, C, D;
  float alpha = 1.0f, beta = 0.0f;
  bool tf32 = false;  // fp32 operands rounded to TF32 first (tensor-core GEMMs)
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  Operand bias;  // one element per row of D; stride: elements between the batch's vectors
};

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

float load(const Operand& o, int64_t i) {
  if (o.type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(o.p)[i]);
  return static_cast<const float*>(o.p)[i];
}

void store(const Operand& o, int64_t i, float v) {
  if (o.type == CUDA_R_16BF)
    static_cast<__nv_bfloat16*>(const_cast<void*>(o.p))[i] = __float2bfloat16_rn(v);
  else
    static_cast<float*>(const_cast<void*>(o.p))[i] = v;
}

// fp32 -> TF32 (10 mantissa bits), to nearest with ties away from zero (cvt.rna.tf32.f32); Inf and NaN kept.
float round_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// GELU's tanh form (cuBLASLt's GELU epilogue, GPT-2's gelu_new).
float gelu_tanh(float x) { return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))); }

void compute(const Product& p) {
  const int64_t m = p.m, n = p.n, k = p.k;
  std::vector<float> a(static_cast<size_t>(m * k)), col(static_cast<size_t>(k));  // op(A) by rows, op(B)'s column
  for (int64_t b = 0; b < p.batch; b++) {
    const int64_t a0 = b * p.A.stride, b0 = b * p.B.stride, c0 = b * p.C.stride, d0 = b * p.D.stride;
    const bool product = p.alpha != 0.0f && k > 0;  // alpha == 0: A and B are not read (as BLAS)
    if (product)
      for (int64_t i = 0; i < m; i++)
        for (int64_t kk = 0; kk < k; kk++) {
          const float v = load(p.A, a0 + (p.ta ? kk + i * p.A.ld : i + kk * p.A.ld));
          a[i * k + kk] = p.tf32 ? round_tf32(v) : v;
        }
    for (int64_t j = 0; j < n; j++) {
      if (product)
        for (int64_t kk = 0; kk < k; kk++) {
          const float v = load(p.B, b0 + (p.tb ? j + kk * p.B.ld : kk + j * p.B.ld));
          col[kk] = p.tf32 ? round_tf32(v) : v;
        }
      for (int64_t i = 0; i < m; i++) {
        float acc = 0.0f;
        if (product)
          for (int64_t kk = 0; kk < k; kk++) acc += a[i * k + kk] * col[kk];
        float v = product ? p.alpha * acc : 0.0f;
        if (p.beta != 0.0f) v += p.beta * load(p.C, c0 + i + j * p.C.ld);  // beta == 0: C is not read
        if (p.epilogue & CUBLASLT_EPILOGUE_BIAS) v += load(p.bias, b * p.bias.stride + i);
        if (p.epilogue & CUBLASLT_EPILOGUE_RELU) v = std::fmax(v, 0.0f);
        if (p.epilogue & CUBLASLT_EPILOGUE_GELU) v = gelu_tanh(v);
        store(p.D, d0 + i + j * p.D.ld, v);
      }
    }
  }
}

// ---- cuBLAS --------------------------------------------------------------------------------------------------------

bool transpose(cublasOperation_t op, bool* t) {  // CUBLAS_OP_C is CUBLAS_OP_T for real types
  if (op != CUBLAS_OP_N && op != CUBLAS_OP_T && op != CUBLAS_OP_C) return false;
  *t = op != CUBLAS_OP_N;
  return true;
}

// The checks cuBLAS makes (and null operands, which would fault on a GPU), then the product on the handle's stream.
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                    const float* alpha, const float* beta, Product p, int lda, int ldb, int ldc, int batch) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (h->pointer_mode != CUBLAS_POINTER_MODE_HOST) return CUBLAS_STATUS_NOT_SUPPORTED;  // (not emulated)
  if (!transpose(transa, &p.ta) || !transpose(transb, &p.tb)) return CUBLAS_STATUS_INVALID_VALUE;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, p.ta ? k : m) || ldb < std::max(1, p.tb ? n : k) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  p.alpha = *alpha, p.beta = *beta;
  if (!p.D.p || (p.alpha != 0.0f && k > 0 && (!p.A.p || !p.B.p))) return CUBLAS_STATUS_INVALID_VALUE;
  p.m = m, p.n = n, p.k = k, p.batch = batch;
  p.A.ld = lda, p.B.ld = ldb, p.C.ld = ldc, p.D.ld = ldc;
  p.C.p = p.D.p, p.C.type = p.D.type, p.C.stride = p.D.stride;
  optune_emu::enqueue(h->stream, [p] { compute(p); });
  return CUBLAS_STATUS_SUCCESS;
}

// GemmEx's operand types: A, B bf16 with C bf16 or fp32, or all fp32; a 32F compute type (TF32 when asked for).
cublasStatus_t ex_types(cublasHandle_t h, cudaDataType at, cudaDataType bt, cudaDataType ct,
                        cublasComputeType_t compute, Product* p) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
      compute != CUBLAS_COMPUTE_32F_FAST_TF32)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool bf16 = at == CUDA_R_16BF && bt == CUDA_R_16BF && (ct == CUDA_R_16BF || ct == CUDA_R_32F);
  const bool fp32 = at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F;
  if (!bf16 && !fp32) return CUBLAS_STATUS_NOT_SUPPORTED;
  p->A.type = at, p->B.type = bt, p->D.type = ct;
  p->tf32 = fp32 && (compute == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                     (compute == CUBLAS_COMPUTE_32F && (h->math & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH));
  return CUBLAS_STATUS_SUCCESS;
}

Product fp32_product(cublasHandle_t h, const float* A, const float* B, float* C) {
  Product p;
  p.A.p = A, p.B.p = B, p.D.p = C;
  p.tf32 = h && (h->math & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH;
  return p;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr, handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  // cuBLAS refuses a workspace that is not 256-byte aligned
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return CUBLAS_STATUS_INVALID_VALUE;
  handle->workspace = workspace, handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int base = mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
  if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH && base != CUBLAS_PEDANTIC_MATH &&
      base != CUBLAS_TF32_TENSOR_OP_MATH)
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t* mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, beta, fp32_product(handle, A, B, C), lda, ldb, ldc, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long strideA, const float* B, int ldb, long long strideB,
                                         const float* beta, float* C, int ldc, long long strideC, int batchCount) {
  Product p = fp32_product(handle, A, B, C);
  p.A.stride = strideA, p.B.stride = strideB, p.D.stride = strideC;
  return gemm(handle, transa, transb, m, n, k, alpha, beta, p, lda, ldb, ldc, batchCount);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  Product p;
  const cublasStatus_t st = ex_types(handle, Atype, Btype, Ctype, computeType, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  p.A.p = A, p.B.p = B, p.D.p = C;
  return gemm(handle, transa, transb, m, n, k, static_cast<const float*>(alpha), static_cast<const float*>(beta), p,
              lda, ldb, ldc, 1);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long strideB, const void* beta, void* C, cudaDataType Ctype, int ldc,
                                          long long strideC, int batchCount, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t) {
  Product p;
  const cublasStatus_t st = ex_types(handle, Atype, Btype, Ctype, computeType, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  p.A.p = A, p.B.p = B, p.D.p = C;
  p.A.stride = strideA, p.B.stride = strideB, p.D.stride = strideC;
  return gemm(handle, transa, transb, m, n, k, static_cast<const float*>(alpha), static_cast<const float*>(beta), p,
              lda, ldb, ldc, batchCount);
}

// ---- cuBLASLt ------------------------------------------------------------------------------------------------------

namespace {

constexpr uint64_t kAlgoTag = 0x6f7074756e65ull;  // marks an algorithm the heuristic handed out

// SetAttribute: the value's size must be the attribute's; GetAttribute: size 0 asks for it.
template <class T>
cublasStatus_t put(T& field, const void* buf, size_t bytes) {
  if (!buf || bytes != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&field, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}
template <class T>
cublasStatus_t get(const T& field, void* buf, size_t bytes, size_t* written) {
  if (bytes == 0 && written) {
    *written = sizeof(T);
    return CUBLAS_STATUS_SUCCESS;
  }
  if (!buf || bytes < sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(buf, &field, sizeof(T));
  if (written) *written = sizeof(T);
  return CUBLAS_STATUS_SUCCESS;
}

// f(the field of attr); the attributes of scale vectors, aux outputs and fp8 are not emulated.
template <class D, class F>
cublasStatus_t desc_field(D* d, cublasLtMatmulDescAttributes_t attr, F&& f) {
  if (!d) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return f(d->compute);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return f(d->scale);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return f(d->pointer_mode);
    case CUBLASLT_MATMUL_DESC_TRANSA: return f(d->transa);
    case CUBLASLT_MATMUL_DESC_TRANSB: return f(d->transb);
    case CUBLASLT_MATMUL_DESC_TRANSC: return f(d->transc);
    case CUBLASLT_MATMUL_DESC_FILL_MODE: return f(d->fill_mode);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return f(d->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return f(d->bias);
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: return f(d->bias_stride);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return f(d->bias_type);
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: return f(d->sm_count);  // a scheduling hint
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

template <class L, class F>
cublasStatus_t layout_field(L* l, cublasLtMatrixLayoutAttribute_t attr, F&& f) {
  if (!l) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return f(l->type);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return f(l->order);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return f(l->rows);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return f(l->cols);
    case CUBLASLT_MATRIX_LAYOUT_LD: return f(l->ld);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return f(l->batch);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return f(l->stride);
    case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: return f(l->plane_offset);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}

template <class P, class F>
cublasStatus_t pref_field(P* p, cublasLtMatmulPreferenceAttributes_t attr, F&& f) {
  if (!p) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return f(p->search_mode);
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return f(p->max_workspace);
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return f(p->reduction_mask);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return f(p->align[0]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return f(p->align[1]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return f(p->align[2]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return f(p->align[3]);
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: return f(p->max_waves);
    case CUBLASLT_MATMUL_PREF_IMPL_MASK: return f(p->impl_mask);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}

bool lt_transpose(int32_t op, bool* t) { return transpose(static_cast<cublasOperation_t>(op), t); }

Operand operand(const cublasLtMatrixLayoutOpaque_t& l) {
  Operand o;
  o.type = static_cast<cudaDataType_t>(l.type);
  o.ld = l.ld, o.stride = l.stride;
  return o;
}

// The Product (no pointers yet) of a matmul, after the checks cuBLASLt makes: NOT_SUPPORTED for what it (or this
// emulator) does not compute, INVALID_VALUE for shapes that do not fit.
cublasStatus_t lt_product(const cublasLtMatmulDescOpaque_t* d, const cublasLtMatrixLayoutOpaque_t* a,
                          const cublasLtMatrixLayoutOpaque_t* b, const cublasLtMatrixLayoutOpaque_t* c,
                          const cublasLtMatrixLayoutOpaque_t* dl, Product* p) {
  if (!d || !a || !b || !c || !dl) return CUBLAS_STATUS_INVALID_VALUE;
  const int32_t compute = d->compute;
  if ((compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
       compute != CUBLAS_COMPUTE_32F_FAST_TF32) ||
      d->scale != CUDA_R_32F || d->pointer_mode != CUBLASLT_POINTER_MODE_HOST || d->transc != CUBLAS_OP_N)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!lt_transpose(d->transa, &p->ta) || !lt_transpose(d->transb, &p->tb)) return CUBLAS_STATUS_INVALID_VALUE;
  for (const auto* l : {a, b, c, dl})
    if (l->order != CUBLASLT_ORDER_COL) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool bf16 = a->type == CUDA_R_16BF && b->type == CUDA_R_16BF &&
                    (dl->type == CUDA_R_16BF || dl->type == CUDA_R_32F);
  const bool fp32 = a->type == CUDA_R_32F && b->type == CUDA_R_32F && dl->type == CUDA_R_32F;
  if ((!bf16 && !fp32) || c->type != dl->type) return CUBLAS_STATUS_NOT_SUPPORTED;
  const uint32_t ep = d->epilogue;
  if (ep != CUBLASLT_EPILOGUE_DEFAULT && ep != CUBLASLT_EPILOGUE_BIAS && ep != CUBLASLT_EPILOGUE_RELU &&
      ep != CUBLASLT_EPILOGUE_RELU_BIAS && ep != CUBLASLT_EPILOGUE_GELU && ep != CUBLASLT_EPILOGUE_GELU_BIAS)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const int32_t bias_type = d->bias_type < 0 ? static_cast<int32_t>(dl->type) : d->bias_type;
  if ((ep & CUBLASLT_EPILOGUE_BIAS) && bias_type != CUDA_R_16BF && bias_type != CUDA_R_32F)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  // op(A) is m x k, op(B) k x n, C and D m x n
  const uint64_t m = dl->rows, n = dl->cols, k = p->ta ? a->rows : a->cols;
  if ((p->ta ? a->cols : a->rows) != m || (p->tb ? b->cols : b->rows) != k || (p->tb ? b->rows : b->cols) != n ||
      c->rows != m || c->cols != n)
    return CUBLAS_STATUS_INVALID_VALUE;
  for (const auto* l : {a, b, c, dl})
    if (l->ld < std::max<int64_t>(1, static_cast<int64_t>(l->rows)) || l->batch != dl->batch || l->batch < 1)
      return CUBLAS_STATUS_INVALID_VALUE;
  p->m = static_cast<int64_t>(m), p->n = static_cast<int64_t>(n), p->k = static_cast<int64_t>(k);
  p->batch = dl->batch;
  p->A = operand(*a), p->B = operand(*b), p->C = operand(*c), p->D = operand(*dl);
  p->tf32 = fp32 && compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  p->epilogue = ep;
  p->bias.p = d->bias, p->bias.type = static_cast<cudaDataType_t>(bias_type), p->bias.stride = d->bias_stride;
  return CUBLAS_STATUS_SUCCESS;
}

// The address bits every matrix (or vector) of o's batch starts with.
uintptr_t start_bits(const Operand& o, int64_t batch) {
  const uintptr_t step = static_cast<uintptr_t>(o.stride) * type_bytes(o.type);
  return reinterpret_cast<uintptr_t>(o.p) | (batch > 1 ? step : 0);
}
bool aligned(const Operand& o, int64_t batch, size_t need) { return start_bits(o, batch) % need == 0; }

// The largest power of two up to 16 that divides every start of o's batch.
size_t alignment(const Operand& o, int64_t batch) {
  size_t b = 16;
  while (b > 1 && !aligned(o, batch, b)) b /= 2;
  return b;
}

}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = new cublasLtMatmulDescOpaque_t();
  (*desc)->compute = computeType, (*desc)->scale = scaleType;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t sizeInBytes) {
  return desc_field(desc, attr, [&](auto& field) { return put(field, buf, sizeInBytes); });
}

cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              void* buf, size_t sizeInBytes, size_t* sizeWritten) {
  return desc_field(desc, attr, [&](const auto& field) { return get(field, buf, sizeInBytes, sizeWritten); });
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque_t();
  (*layout)->type = type, (*layout)->rows = rows, (*layout)->cols = cols, (*layout)->ld = ld;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t sizeInBytes) {
  return layout_field(layout, attr, [&](auto& field) { return put(field, buf, sizeInBytes); });
}

cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                                                void* buf, size_t sizeInBytes, size_t* sizeWritten) {
  return layout_field(layout, attr, [&](const auto& field) { return get(field, buf, sizeInBytes, sizeWritten); });
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
  *pref = new cublasLtMatmulPreferenceOpaque_t();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t sizeInBytes) {
  return pref_field(pref, attr, [&](auto& field) { return put(field, buf, sizeInBytes); });
}

cublasStatus_t cublasLtMatmulPreferenceGetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, void* buf,
                                                    size_t sizeInBytes, size_t* sizeWritten) {
  return pref_field(pref, attr, [&](const auto& field) { return get(field, buf, sizeInBytes, sizeWritten); });
}

// The algorithm records what it may assume: data[1..4] the bytes A, B, C, D start at a multiple of, data[5] the
// bias vectors' (min(what it was told or saw, 16): the widest vector access a GPU algorithm makes).
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int* returnAlgoCount) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!preference || requestedAlgoCount < 1 || !heuristicResultsArray || !returnAlgoCount)
    return CUBLAS_STATUS_INVALID_VALUE;
  Product p;
  const cublasStatus_t st = lt_product(operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  cublasLtMatmulHeuristicResult_t r = {};
  r.algo.data[0] = kAlgoTag;
  for (int i = 0; i < 4; i++) r.algo.data[1 + i] = std::min<uint32_t>(std::max<uint32_t>(preference->align[i], 1), 16);
  r.algo.data[5] = operationDesc->bias ? alignment(p.bias, p.batch) : 16;
  r.workspaceSize = 0;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  heuristicResultsArray[0] = r;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void*, size_t,
                              cudaStream_t stream) {
  if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
  Product p;
  const cublasStatus_t st = lt_product(computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (!alpha || !beta || (algo && algo->data[0] != kAlgoTag)) return CUBLAS_STATUS_INVALID_VALUE;
  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  p.alpha = *static_cast<const float*>(alpha), p.beta = *static_cast<const float*>(beta);
  p.A.p = A, p.B.p = B, p.C.p = C, p.D.p = D;
  const bool reads_ab = p.alpha != 0.0f && p.k > 0, has_bias = p.epilogue & CUBLASLT_EPILOGUE_BIAS;
  if (!D || (reads_ab && (!A || !B)) || (p.beta != 0.0f && !C) || (has_bias && !p.bias.p))
    return CUBLAS_STATUS_INVALID_VALUE;
  // every operand at least element-aligned, and as aligned as the algorithm was told it would be
  const auto need = [&](const Operand& o, int i) {
    return std::max<size_t>(type_bytes(o.type), algo ? static_cast<size_t>(algo->data[i]) : 1);
  };
  if ((reads_ab && (!aligned(p.A, p.batch, need(p.A, 1)) || !aligned(p.B, p.batch, need(p.B, 2)))) ||
      (p.beta != 0.0f && !aligned(p.C, p.batch, need(p.C, 3))) || !aligned(p.D, p.batch, need(p.D, 4)) ||
      (has_bias && !aligned(p.bias, p.batch, need(p.bias, 5))))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  optune_emu::enqueue(stream, [p] { compute(p); });
  return CUBLAS_STATUS_SUCCESS;
}
