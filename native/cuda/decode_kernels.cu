// The transformer pieces of the CUDA sampler: embedding, norm with a deferred bias, q/k/v finishing (bias, RoPE,
// KV-cache write), single-query attention over the cache, and the MLP activations. Inference only, so the kernels
// fuse what the training kernels keep apart (a norm does not save its statistics, the bias of a GEMM whose output is
// the residual stream is added by the next norm, the cache write rides on the RoPE kernel). The math is the CPU
// reference's (cpu/*.cpp): two-pass fp32 norm statistics, RoPE angles in double, tanh-GELU, scaled dot products.
#include <algorithm>
#include <cmath>
#include <string>

#include "check.cuh"
#include "core/error.h"
#include "decode_attention.cuh"
#include "launch.h"
#include "reduce.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda::sampler {

static constexpr int kThreads = 256;
static int grid_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)));
}

#define GRID_STRIDE_LOOP(i, n)                                                              \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- embedding -------------------------------------------------------------------------------------------------

__global__ void embed_kernel(float* x, const float* wte, const float* wpe, Rows rows, int d) {
  wait_for_previous_kernel();  // the rows' tokens and positions
  allow_next_kernel();
  const int r = blockIdx.x;
  const float* e = wte + static_cast<int64_t>(rows.tok[r]) * d;
  const float* p = wpe ? wpe + static_cast<int64_t>(rows.pos[r]) * d : nullptr;
  float* o = x + static_cast<int64_t>(r) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = p ? e[i] + p[i] : e[i];
}

void embed(float* x, const float* wte, const float* wpe, const Rows& rows, int d, Launch on) {
  if (rows.n <= 0) return;
  OPTUNE_CUDA_CHECK(launch_kernel(embed_kernel, rows.n, kThreads, 0, on, x, wte, wpe, rows, d));
}

// ---- norm with a deferred bias: one block per row -----------------------------------------------------------------
// A decode step has only a few dozen rows: a warp per row left most SMs idle and chained each lane through d / 32
// dependent loads per pass (~23 us per call on an H100); a block per row spreads the row over its threads. Each
// thread keeps its elements in registers: its loads (x, the bias, every slice, w, b) go out together and nothing is
// read twice. The first version reread x per pass and summed the slices one load at a time after a store to x:
// ~9.5 us per call on an H200 at d = 768, most of it waiting on L2.

// T threads per row, P elements per thread (compile-time: a thread's addresses are one base plus constant offsets,
// and P as small as the row allows keeps registers, so occupancy, up for the prefill's thousands of rows).
static_assert(16 * 512 >= kMaxNormWidth, "add_norm covers kMaxNormWidth with 512 threads of 16");

template <class Act, int T, int P>
__global__ void __launch_bounds__(T) add_norm_kernel(Act* __restrict__ out, float* __restrict__ xbuf,
                                                     const int32_t* src, const float* __restrict__ add,
                                                     Partials parts, const float* __restrict__ w,
                                                     const float* __restrict__ b, int d, float eps,
                                                     bool layernorm) {
  __shared__ float scratch[32];
  // w and b load after the wait all the same: loaded before it, they stayed in registers through the row's loads
  // (ptxas: up to 140 registers at P = 16 instead of 97-119, one block per SM fewer in a prefill)
  wait_for_previous_kernel();
  allow_next_kernel();
  const int r = blockIdx.x;
  const int64_t row = static_cast<int64_t>(src ? src[r] : r) * d;
  float* x = xbuf + row;
  parts = parts.at(row);
  float v[P];
#pragma unroll
  for (int j = 0; j < P; j++) {
    const int i = threadIdx.x + j * T;
    v[j] = i < d ? x[i] : 0.0f;
  }
  if (add || parts.n) {  // x += add + the slices, added in slice order
    float sum[P];
#pragma unroll
    for (int j = 0; j < P; j++) {
      const int i = threadIdx.x + j * T;
      sum[j] = i < d && add ? add[i] : 0.0f;
    }
    constexpr int S = P <= 4 ? 4 : 2;  // slices per round: S * P loads in flight
    add_row_slices<T, P, S>(sum, parts.p, parts.n, parts.stride, d, [](const float* a) { return __ldg(a); });
#pragma unroll
    for (int j = 0; j < P; j++) {
      const int i = threadIdx.x + j * T;
      if (i < d) v[j] += sum[j], x[i] = v[j];
    }
  }
  float wv[P], bv[P];  // loaded here: their latency overlaps the reductions
#pragma unroll
  for (int j = 0; j < P; j++) {
    const int i = threadIdx.x + j * T;
    wv[j] = i < d ? w[i] : 0.0f;
    bv[j] = i < d && layernorm && b ? b[i] : 0.0f;
  }
  float m, rs;
  row_norm_stats<T, P>(v, d, eps, layernorm, scratch, m, rs);
  Act* o = out + static_cast<int64_t>(r) * d;
#pragma unroll
  for (int j = 0; j < P; j++) {
    const int i = threadIdx.x + j * T;
    if (i < d) o[i] = to_act<Act>(layernorm ? (v[j] - m) * rs * wv[j] + bv[j] : wv[j] * (v[j] * rs));
  }
}

template <class Act>
void add_norm(Act* out, float* x, const int32_t* src, const float* add, const Partials& parts, const float* w,
              const float* b, int rows, int d, float eps, bool layernorm, Launch on) {
  if (rows <= 0) return;
  OPTUNE_CHECK(d <= kMaxNormWidth, "sampler norm: rows of " + std::to_string(d) + " (at most " +
                                       std::to_string(kMaxNormWidth) + ")");
  const auto kernel = d <= 256 * 4    ? add_norm_kernel<Act, 256, 4>
                      : d <= 256 * 8  ? add_norm_kernel<Act, 256, 8>
                      : d <= 256 * 16 ? add_norm_kernel<Act, 256, 16>
                                      : add_norm_kernel<Act, 512, 16>;
  const int threads = d <= 256 * 16 ? 256 : 512;
  OPTUNE_CUDA_CHECK(launch_kernel(kernel, rows, threads, 0, on, out, x, src, add, parts, w, b, d, eps, layernorm));
}

// ---- q/k/v: bias, RoPE, cache write; blocks (row, part): part 0 finishes q, 1 k, 2 v (prefill) ---------------------

__global__ void rope_table_kernel(float2* table, int64_t n, int head_dim, float theta) {
  const int half = head_dim / 2;
  GRID_STRIDE_LOOP(idx, n) {
    const int pos = static_cast<int>(idx / half), i = static_cast<int>(idx % half);
    const double inv_freq = 1.0 / pow(static_cast<double>(theta), (2.0 * i) / head_dim);
    const double angle = static_cast<double>(pos) * inv_freq;
    table[idx] = make_float2(static_cast<float>(cos(angle)), static_cast<float>(sin(angle)));
  }
}

void rope_table(float2* table, int cap, int head_dim, float theta, cudaStream_t st) {
  const int64_t n = static_cast<int64_t>(cap) * (head_dim / 2);
  if (n <= 0) return;
  rope_table_kernel<<<grid_for(n), kThreads, 0, st>>>(table, n, head_dim, theta);
  OPTUNE_CUDA_CHECK_LAUNCH();
}


// One part of one row: x (n_heads heads; its GEMM's slices in parts when split) + bias, RoPE'd when asked, written to
// x; copied into the cache when `cache_base` is set.
template <class Act>
__device__ inline void finish_part(float* x, Partials parts, const float* bias, int n_heads, int head_dim,
                                   const float2* rope, int pos, Act* cache_base, int64_t copy_stride, int copies) {
  const int half = head_dim / 2;
  if (rope) {
    const float2* at_pos = rope + static_cast<int64_t>(pos) * half;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
      const int col = (idx / half) * head_dim + idx % half;
      float x1 = parts.value(x, col) + (bias ? bias[col] : 0.0f);
      float x2 = parts.value(x, col + half) + (bias ? bias[col + half] : 0.0f);
      rope_pair(x1, x2, at_pos[idx % half]);
      x[col] = x1, x[col + half] = x2;
      for (int c = 0; c < copies && cache_base; c++)
        cache_base[c * copy_stride + col] = to_act<Act>(x1), cache_base[c * copy_stride + col + half] = to_act<Act>(x2);
    }
  } else {
    for (int col = threadIdx.x; col < n_heads * head_dim; col += blockDim.x) {
      const float y = parts.value(x, col) + (bias ? bias[col] : 0.0f);
      x[col] = y;
      for (int c = 0; c < copies && cache_base; c++) cache_base[c * copy_stride + col] = to_act<Act>(y);
    }
  }
}

template <class Act>
__global__ void qkv_finish_kernel(float* q, int qs, float* k, int ks, float* v, int vs, Partials pq, Partials pk,
                                  Partials pv, const float* bq, const float* bk, const float* bv, Rows rows,
                                  int n_head, int n_kv_head, int head_dim, const float2* rope,
                                  LayerCache<Act> cache) {
  const int r = blockIdx.x, part = blockIdx.y, pos = rows.pos[r], slot = rows.slot[r];
  const int kvd = n_kv_head * head_dim;
  const int64_t at = (static_cast<int64_t>(slot) * cache.cap + pos) * kvd;
  const int64_t copy_stride = static_cast<int64_t>(cache.cap) * kvd;
  const int64_t rq = static_cast<int64_t>(r) * qs, rk = static_cast<int64_t>(r) * ks, rv = static_cast<int64_t>(r) * vs;
  if (part == 0)
    finish_part<Act>(q + rq, pq.at(rq), bq, n_head, head_dim, rope, pos, nullptr, 0, 0);
  else if (part == 1)
    finish_part<Act>(k + rk, pk.at(rk), bk, n_kv_head, head_dim, rope, pos, cache.k + at, copy_stride, rows.copies);
  else
    finish_part<Act>(v + rv, pv.at(rv), bv, n_kv_head, head_dim, nullptr, pos, cache.v + at, copy_stride,
                     rows.copies);
}

template <class Act>
void qkv_finish(float* q, int qs, float* k, int ks, float* v, int vs, const Partials& pq, const Partials& pk,
                const Partials& pv, const float* bq, const float* bk, const float* bv, const Rows& rows, int n_head,
                int n_kv_head, int head_dim, const float2* rope, const LayerCache<Act>& cache, cudaStream_t st) {
  if (rows.n <= 0) return;
  qkv_finish_kernel<Act><<<dim3(rows.n, 3), 256, 0, st>>>(q, qs, k, ks, v, vs, pq, pk, pv, bq, bk, bv, rows, n_head,
                                                          n_kv_head, head_dim, rope, cache);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- single-query attention over the cache (decode_attention.cuh): one block per (row, head) ---------------------

template <class Act, int PAIRS>
__global__ void __launch_bounds__(kAttnWarps * 32) attention_decode_kernel(Act* out, QkvRows in,
                                                                           LayerCache<Act> cache, Rows rows,
                                                                           int n_head, int n_kv_head, int head_dim,
                                                                           const float2* rope) {
  wait_for_previous_kernel();  // q/k/v, the rows (and the cache rows earlier steps wrote)
  allow_next_kernel();
  attend_head<Act, PAIRS>(out, in, cache, rows, blockIdx.x, blockIdx.y, n_head, n_kv_head, head_dim, rope);
}

template <class Act>
void attention_decode(Act* out, const QkvRows& in, const LayerCache<Act>& cache, const Rows& rows, int n_head,
                      int n_kv_head, int head_dim, const float2* rope, Launch on) {
  if (rows.n <= 0) return;
  // one pair of dims per lane up to head_dim 64
  const auto kernel = head_dim <= 64 ? attention_decode_kernel<Act, 1> : attention_decode_kernel<Act, 2>;
  OPTUNE_CUDA_CHECK(launch_kernel(kernel, dim3(rows.n, n_head), kAttnWarps * 32, 0, on, out, in, cache, rows, n_head,
                                  n_kv_head, head_dim, rope));
}

// ---- MLP activations and conversion ---------------------------------------------------------------------------------

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)

// Grid (column blocks, rows), a thread per element: its loads (the slices, the bias) go out together. A block per
// row walking its columns waited on each element's slice loads in turn (~18 us per call at 64 x 3072 on an H200).
template <class Act>
__global__ void bias_gelu_kernel(Act* __restrict__ out, const float* __restrict__ fc, Partials pfc,
                                 const float* __restrict__ b, int f) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const float bias = c < f && b ? b[c] : 0.0f;  // a constant: before the wait
  wait_for_previous_kernel();
  allow_next_kernel();
  if (c >= f) return;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * f + c;
  const float x = pfc.value(fc, i) + bias;
  out[i] = to_act<Act>(0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x))));
}

template <class Act>
void bias_gelu(Act* out, const float* fc, const Partials& pfc, const float* b, int rows, int f, Launch on) {
  if (rows <= 0 || f <= 0) return;
  for (int r0 = 0; r0 < rows; r0 += 65535) {  // gridDim.y's limit
    const int64_t at = static_cast<int64_t>(r0) * f;
    const dim3 grid((f + kThreads - 1) / kThreads, std::min(65535, rows - r0));
    OPTUNE_CUDA_CHECK(launch_kernel(bias_gelu_kernel<Act>, grid, kThreads, 0, on, out + at, fc + at, pfc.at(at), b, f));
  }
}

template <class Act>
__global__ void swiglu_kernel(Act* out, const float* gate, Partials pgate, const float* up, Partials pup, int64_t n) {
  wait_for_previous_kernel();
  allow_next_kernel();
  GRID_STRIDE_LOOP(i, n) {
    const float g = pgate.value(gate, i);
    out[i] = to_act<Act>(g / (1.0f + expf(-g)) * pup.value(up, i));
  }
}

template <class Act>
void swiglu(Act* out, const float* gate, const Partials& pgate, const float* up, const Partials& pup, int64_t n,
            Launch on) {
  if (n <= 0) return;
  OPTUNE_CUDA_CHECK(launch_kernel(swiglu_kernel<Act>, grid_for(n), kThreads, 0, on, out, gate, pgate, up, pup, n));
}

template <class Act>
__global__ void convert_kernel(Act* out, const float* in, int64_t n) {
  GRID_STRIDE_LOOP(i, n) out[i] = to_act<Act>(in[i]);
}

template <class Act>
void convert(Act* out, const float* in, int64_t n, cudaStream_t st) {
  if (n <= 0) return;
  convert_kernel<Act><<<grid_for(n), kThreads, 0, st>>>(out, in, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

#define OPTUNE_SAMPLER_ACT(Act)                                                                                        \
  template void add_norm<Act>(Act*, float*, const int32_t*, const float*, const Partials&, const float*,               \
                              const float*, int, int, float, bool, Launch);                                            \
  template void qkv_finish<Act>(float*, int, float*, int, float*, int, const Partials&, const Partials&,               \
                                const Partials&, const float*, const float*, const float*, const Rows&, int, int,      \
                                int, const float2*, const LayerCache<Act>&, cudaStream_t);                             \
  template void attention_decode<Act>(Act*, const QkvRows&, const LayerCache<Act>&, const Rows&, int, int, int,        \
                                      const float2*, Launch);                                                          \
  template void bias_gelu<Act>(Act*, const float*, const Partials&, const float*, int, int, Launch);                   \
  template void swiglu<Act>(Act*, const float*, const Partials&, const float*, const Partials&, int64_t,               \
                            Launch);                                                                                   \
  template void convert<Act>(Act*, const float*, int64_t, cudaStream_t);
OPTUNE_SAMPLER_ACT(float)
OPTUNE_SAMPLER_ACT(bf16)
#undef OPTUNE_SAMPLER_ACT

}  // namespace optune::cuda::sampler
