// Token log-probs through the LM head without materializing [n x vocab] logits, as cpu/logprob.cpp: rows go in
// chunks; per chunk the h rows are gathered, logits = H W^T come from one cuBLAS sgemm, and a fused kernel (one block
// per row) reduces max and sum-exp in one pass over the row and picks the target's log-prob. Backward recomputes the
// chunk's logits (cheaper than storing them for 50k-150k vocabularies; a training step's head reuses the forward's
// logits and lse instead, logprob_train_groups) and turns them into dLoss/dlogits (in place, or written straight
// into the bf16 operand of the next GEMMs), then two GEMMs give dH and dW. dh[src[r]] += dH[r] runs one thread per
// column over the chunk's rows in order, so repeated src rows need no atomics and the sum order is fixed; when the
// caller promises distinct rows (training: one per response token), a block per row.
// With a bf16 copy of W (bf16 mixed precision) the three GEMMs take bf16 operands (the gathered rows, and dLoss/dz,
// rounded per chunk) with fp32 accumulation; the softmax and everything else stay fp32.
#include <algorithm>
#include <type_traits>

#include "check.cuh"
#include "core/error.h"
#include "core/heads.h"
#include "memory.h"
#include "ops.h"
#include "reduce.cuh"
#include "store.cuh"

namespace optune::cuda {

static constexpr int kThreads = 256;

int logprob_chunk_rows(int vocab) {
  // floats per chunk (768 MB of logits): ~4k rows at a 50k vocabulary, enough for full-speed GEMMs, bounded memory
  const int64_t budget = 192 << 20;
  return static_cast<int>(std::max<int64_t>(8, std::min<int64_t>(8192, budget / logits_stride(vocab))));
}

// Row stride of a logits chunk: the vocabulary rounded up to 8 elements, so every row starts 16-byte aligned. The
// padding columns are never read.
int logits_stride(int vocab) { return (vocab + 7) / 8 * 8; }

namespace {

// The head's three GEMMs, each split along the vocabulary into its bulk and a remainder of < 8 rows of W
// (vocab_bulk, ops.h: in any position, M, N or K, an odd vocabulary got slow kernels). T: float (fp32) or uint16_t
// (bf16 operands).
template <class T>
void mm(bool ta, bool tb, int M, int N, int K, const T* A, int lda, const T* B, int ldb, float beta, float* C,
        int ldc) {
  if constexpr (std::is_same_v<T, float>)
    gemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

// logits[rows, vocab] (row stride ld) = H[rows, d] W^T
template <class T>
void head_logits(float* logits, int ld, const T* H, const T* W, int rows, int d, int vocab) {
  const int bulk = vocab_bulk(vocab);
  if (bulk > 0) mm<T>(false, true, rows, bulk, d, H, d, W, d, 0.0f, logits, ld);
  if (vocab > bulk)
    mm<T>(false, true, rows, vocab - bulk, d, H, d, W + static_cast<size_t>(bulk) * d, d, 0.0f, logits + bulk, ld);
}

// dH[rows, d] = dZ[rows, vocab] W (dZ row stride ld)
template <class T>
void head_dh(float* dH, const T* dZ, int ld, const T* W, int rows, int d, int vocab) {
  const int bulk = vocab_bulk(vocab);
  mm<T>(false, false, rows, d, bulk, dZ, ld, W, d, 0.0f, dH, d);  // K = 0 (vocab < 8) writes zeros
  if (vocab > bulk)
    mm<T>(false, false, rows, d, vocab - bulk, dZ + bulk, ld, W + static_cast<size_t>(bulk) * d, d, 1.0f, dH, d);
}

// dW[vocab, d] += dZ^T H (nothing for a frozen head: dW null)
template <class T>
void head_dw(float* dW, const T* dZ, int ld, const T* H, int rows, int d, int vocab) {
  if (!dW) return;
  const int bulk = vocab_bulk(vocab);
  if (bulk > 0) mm<T>(true, false, bulk, d, rows, dZ, ld, H, d, 1.0f, dW, d);
  if (vocab > bulk)
    mm<T>(true, false, vocab - bulk, d, rows, dZ + bulk, ld, H, d, 1.0f, dW + static_cast<size_t>(bulk) * d, d);
}

}  // namespace

__global__ void gather_rows_kernel(float* out, const float* h, const int32_t* src, int rows, int d) {
  const float* s = h + static_cast<int64_t>(src[blockIdx.x]) * d;
  float* o = out + static_cast<int64_t>(blockIdx.x) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = s[i];
}

// lse of one row of logits (16-byte aligned: logits_stride) in one pass: each thread keeps a running max and its sum
// of exp(z - max), rescaled when the max grows; the block merges them. Every thread of the block gets it.
__device__ float row_lse(const float* z, int vocab, float* scratch) {
  float m = -INFINITY, s = 0.0f;
  for_each_in_row(z, vocab, [&](int, float x) {
    if (x > m) {
      s = s * expf(m - x) + 1.0f;  // m = -inf before the first element: expf(-inf) = 0
      m = x;
    } else {
      s += expf(x - m);
    }
  });
  const float mx = block_max(m, scratch);
  s = block_sum(m == -INFINITY ? 0.0f : s * expf(m - mx), scratch);
  return mx + logf(s);
}

// lse_out (may be null): each row's lse, for a backward over the same logits.
__global__ void logprob_forward_kernel(float* logp, float* lse_out, const float* logits, int ld,
                                       const int32_t* target, int vocab) {
  __shared__ float scratch[32];
  const float* z = logits + static_cast<int64_t>(blockIdx.x) * ld;
  const float lse = row_lse(z, vocab, scratch);
  if (threadIdx.x == 0) {
    logp[blockIdx.x] = z[target[blockIdx.x]] - lse;
    if (lse_out) lse_out[blockIdx.x] = lse;
  }
}

// dLoss/dz = g * (onehot(target) - softmax(z)) from each row's lse (lse_in: the forward's; null: computed here),
// written over the logits (dz16 null: fp32 GEMMs follow) or, rounded, into dz16 (bf16 GEMMs; same row stride; the
// logits are left as they are and dz16's padding columns are not written: no GEMM reads them).
__global__ void logprob_backward_kernel(float* logits, uint16_t* dz16, int ld, const float* lse_in, const float* g,
                                        const int32_t* target, int vocab) {
  __shared__ float scratch[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * ld;
  float* z = logits + row;
  // row_lse ends with __syncthreads: every read of z is done before the in-place writes below
  const float lse = lse_in ? lse_in[blockIdx.x] : row_lse(z, vocab, scratch);
  const float gr = g[blockIdx.x];
  const int t = target[blockIdx.x];
  const auto dz = [&](int j, float x) { return -gr * expf(x - lse) + (j == t ? gr : 0.0f); };
  if (dz16) {
    uint2* o4 = reinterpret_cast<uint2*>(dz16 + row);
    const float4* z4 = reinterpret_cast<const float4*>(z);
    const int n4 = vocab / 4;
#pragma unroll 4
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {  // 4 logits in, 4 bf16 (8 bytes) out
      const float4 x = z4[i];
      const int j = 4 * i;
      o4[i] = make_uint2(pack_bf16x2(dz(j, x.x), dz(j + 1, x.y)), pack_bf16x2(dz(j + 2, x.z), dz(j + 3, x.w)));
    }
    for (int j = 4 * n4 + threadIdx.x; j < vocab; j += blockDim.x)
      reinterpret_cast<__nv_bfloat16*>(dz16 + row)[j] = __float2bfloat16_rn(dz(j, z[j]));
  } else {
    for_each_in_row(z, vocab, [&](int j, float x) { z[j] = dz(j, x); });
  }
}

// dh[src[r]] += rows_buf[r] with distinct src rows: a block per row.
__global__ void add_rows_kernel(float* dh, const float* rows_buf, const int32_t* src, int d) {
  float* o = dh + static_cast<int64_t>(src[blockIdx.x]) * d;
  const float* i = rows_buf + static_cast<int64_t>(blockIdx.x) * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) o[c] += i[c];
}

__global__ void scatter_add_rows_kernel(float* dh, const float* rows_buf, const int32_t* src, int rows, int d) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d) return;
  for (int r = 0; r < rows; r++) dh[static_cast<int64_t>(src[r]) * d + i] += rows_buf[static_cast<int64_t>(r) * d + i];
}

// Gathers the chunk's h rows into hbuf (and its bf16 copy hbuf16 when w16 is given) and computes its logits
// (row stride logits_stride(vocab)).
static void chunk_logits(float* hbuf, uint16_t* hbuf16, float* logits, const float* h, const int32_t* src, int rows,
                         const float* w, const uint16_t* w16, int d, int vocab) {
  gather_rows_kernel<<<rows, kThreads>>>(hbuf, h, src, rows, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
  const int ld = logits_stride(vocab);
  if (w16) {
    to_bf16(hbuf16, hbuf, static_cast<int64_t>(rows) * d);
    head_logits<uint16_t>(logits, ld, hbuf16, w16, rows, d, vocab);
  } else {
    head_logits<float>(logits, ld, hbuf, w, rows, d, vocab);
  }
}

void logprob_forward(float* logp, const float* h, const int32_t* src, const int32_t* target, int n, const float* w,
                     int d, int vocab, int chunk_rows, const uint16_t* w16) {
  if (n <= 0) return;
  OPTUNE_CHECK(vocab > 0 && d > 0, "logprob_forward: vocab and d must be positive");
  const int chunk = std::min(n, chunk_rows > 0 ? chunk_rows : logprob_chunk_rows(vocab));
  Buffer<float> hbuf(static_cast<size_t>(chunk) * d, "logprob hidden-state chunk");
  Buffer<uint16_t> hbuf16(w16 ? static_cast<size_t>(chunk) * d : 0, "logprob bf16 hidden-state chunk");
  const int ld = logits_stride(vocab);
  Buffer<float> logits(static_cast<size_t>(chunk) * ld, "logprob logits chunk");
  for (int r0 = 0; r0 < n; r0 += chunk) {
    const int rows = std::min(chunk, n - r0);
    chunk_logits(hbuf.data(), hbuf16.data(), logits.data(), h, src + r0, rows, w, w16, d, vocab);
    logprob_forward_kernel<<<rows, kThreads>>>(logp + r0, nullptr, logits.data(), ld, target + r0, vocab);
    OPTUNE_CUDA_CHECK_LAUNCH();
  }
}

// A chunk's logits (row stride logits_stride) -> dLoss/dz with g (in place, or under bf16 into dz16), then
// dH = dZ W, dw += dZ^T H and dh[src[r]] += dH[r]. lse: each row's, from the forward over these logits (null: the
// backward kernel computes it). hbuf/hbuf16: the chunk's gathered rows (chunk_logits); dhbuf, dz16: scratch.
static void backward_from_logits(float* logits, const float* lse, const float* g, const int32_t* target,
                                 const int32_t* src, int rows, float* dh, float* dw, const float* hbuf,
                                 const uint16_t* hbuf16, float* dhbuf, uint16_t* dz16, const float* w,
                                 const uint16_t* w16, int d, int vocab, bool src_distinct) {
  const int ld = logits_stride(vocab);
  logprob_backward_kernel<<<rows, kThreads>>>(logits, w16 ? dz16 : nullptr, ld, lse, g, target, vocab);
  OPTUNE_CUDA_CHECK_LAUNCH();
  if (w16) {
    head_dh<uint16_t>(dhbuf, dz16, ld, w16, rows, d, vocab);
    head_dw<uint16_t>(dw, dz16, ld, hbuf16, rows, d, vocab);
  } else {
    head_dh<float>(dhbuf, logits, ld, w, rows, d, vocab);   // dH = dZ W
    head_dw<float>(dw, logits, ld, hbuf, rows, d, vocab);  // dW += dZ^T H
  }
  if (src_distinct)
    add_rows_kernel<<<rows, kThreads>>>(dh, dhbuf, src, d);
  else
    scatter_add_rows_kernel<<<(d + kThreads - 1) / kThreads, kThreads>>>(dh, dhbuf, src, rows, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

void logprob_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* src, const int32_t* target,
                      int n, const float* w, int d, int vocab, int chunk_rows, const uint16_t* w16,
                      bool src_distinct) {
  if (n <= 0) return;
  OPTUNE_CHECK(vocab > 0 && d > 0, "logprob_backward: vocab and d must be positive");
  const int chunk = std::min(n, chunk_rows > 0 ? chunk_rows : logprob_chunk_rows(vocab));
  Buffer<float> hbuf(static_cast<size_t>(chunk) * d, "logprob hidden-state chunk");
  Buffer<float> dhbuf(static_cast<size_t>(chunk) * d, "logprob hidden-state gradient chunk");
  const int ld = logits_stride(vocab);
  Buffer<float> logits(static_cast<size_t>(chunk) * ld, "logprob logits chunk");
  Buffer<uint16_t> hbuf16(w16 ? static_cast<size_t>(chunk) * d : 0, "logprob bf16 hidden-state chunk");
  Buffer<uint16_t> dz16(w16 ? static_cast<size_t>(chunk) * ld : 0, "logprob bf16 logit-gradient chunk");
  for (int r0 = 0; r0 < n; r0 += chunk) {
    const int rows = std::min(chunk, n - r0);
    chunk_logits(hbuf.data(), hbuf16.data(), logits.data(), h, src + r0, rows, w, w16, d, vocab);
    backward_from_logits(logits.data(), nullptr, g + r0, target + r0, src + r0, rows, dh, dw, hbuf.data(),
                         hbuf16.data(), dhbuf.data(), dz16.data(), w, w16, d, vocab, src_distinct);
  }
}

void logprob_train_groups(float* dh, float* dw, const std::vector<std::vector<int32_t>>& groups,
                          const HeadGradFn& grad, const float* h, const std::vector<int32_t>& src,
                          const std::vector<int32_t>& target, const float* w, int d, int vocab, const uint16_t* w16) {
  size_t chunk = 0;
  for (const std::vector<int32_t>& group : groups) chunk = std::max(chunk, group.size());
  if (chunk == 0) return;
  OPTUNE_CHECK(vocab > 0 && d > 0, "logprob_train_groups: vocab and d must be positive");
  const int ld = logits_stride(vocab);
  Buffer<float> hbuf(chunk * d, "logprob hidden-state chunk");
  Buffer<float> dhbuf(chunk * d, "logprob hidden-state gradient chunk");
  Buffer<float> logits(chunk * ld, "logprob logits chunk");
  Buffer<uint16_t> hbuf16(w16 ? chunk * d : 0, "logprob bf16 hidden-state chunk");
  Buffer<uint16_t> dz16(w16 ? chunk * ld : 0, "logprob bf16 logit-gradient chunk");
  Buffer<int32_t> src_d(chunk, "logprob row sources"), target_d(chunk, "logprob row targets");
  Buffer<float> logp_d(chunk, "logprob log-probs"), lse_d(chunk, "logprob row lse");
  Buffer<float> g_d(chunk, "logprob row gradients");
  std::vector<int32_t> gsrc, gtarget;
  std::vector<float> logp, g;
  for (const std::vector<int32_t>& group : groups) {
    const int n = static_cast<int>(group.size());
    gather_rows(group, src, target, gsrc, gtarget);
    copy_to_device(src_d.data(), gsrc.data(), n * sizeof(int32_t));
    copy_to_device(target_d.data(), gtarget.data(), n * sizeof(int32_t));
    chunk_logits(hbuf.data(), hbuf16.data(), logits.data(), h, src_d.data(), n, w, w16, d, vocab);
    logprob_forward_kernel<<<n, kThreads>>>(logp_d.data(), lse_d.data(), logits.data(), ld, target_d.data(), vocab);
    OPTUNE_CUDA_CHECK_LAUNCH();
    logp.resize(n);
    g.resize(n);
    copy_to_host(logp.data(), logp_d.data(), n * sizeof(float));  // waits for the forward
    grad(group, logp.data(), g.data());
    copy_to_device(g_d.data(), g.data(), n * sizeof(float));
    backward_from_logits(logits.data(), lse_d.data(), g_d.data(), target_d.data(), src_d.data(), n, dh, dw,
                         hbuf.data(), hbuf16.data(), dhbuf.data(), dz16.data(), w, w16, d, vocab,
                         /*src_distinct=*/true);
  }
}

}  // namespace optune::cuda
