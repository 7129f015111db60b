// The transformer pieces of the CUDA sampler: embedding, norm with a deferred bias, q/k/v finishing (bias, RoPE,
// KV-cache write), single-query attention over the cache, and the MLP activations. Inference only, so the kernels
// fuse what the training kernels keep apart (a norm does not save its statistics, the bias of a GEMM whose output is
// the residual stream is added by the next norm, the cache write rides on the RoPE kernel). The math is the CPU
// reference's (cpu/*.cpp): two-pass fp32 norm statistics, RoPE angles in double, tanh-GELU, scaled dot products.
#include <algorithm>
#include <cmath>

#include "check.cuh"
#include "reduce.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda::sampler {

template <class T>
__device__ inline T to_act(float x);
template <>
__device__ inline float to_act<float>(float x) { return x; }
template <>
__device__ inline bf16 to_act<bf16>(float x) { return __float2bfloat16_rn(x); }
__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(bf16 x) { return __bfloat162float(x); }

static constexpr int kThreads = 256;
static int grid_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)));
}

#define GRID_STRIDE_LOOP(i, n)                                                              \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- embedding -------------------------------------------------------------------------------------------------

__global__ void embed_kernel(float* x, const float* wte, const float* wpe, Rows rows, int d) {
  const int r = blockIdx.x;
  const float* e = wte + static_cast<int64_t>(rows.tok[r]) * d;
  const float* p = wpe ? wpe + static_cast<int64_t>(rows.pos[r]) * d : nullptr;
  float* o = x + static_cast<int64_t>(r) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = p ? e[i] + p[i] : e[i];
}

void embed(float* x, const float* wte, const float* wpe, const Rows& rows, int d, cudaStream_t st) {
  if (rows.n <= 0) return;
  embed_kernel<<<rows.n, kThreads, 0, st>>>(x, wte, wpe, rows, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- norm with a deferred bias: one warp per row -----------------------------------------------------------------

static constexpr int kNormRows = 8;

template <class Act>
__global__ void add_norm_kernel(Act* out, float* xbuf, const int32_t* src, const float* add, const float* w,
                                const float* b, int rows, int d, float eps, bool layernorm) {
  const int r = blockIdx.x * kNormRows + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r >= rows) return;
  float* x = xbuf + static_cast<int64_t>(src ? src[r] : r) * d;
  if (add)
    for (int i = lane; i < d; i += 32) x[i] += add[i];  // each lane rereads only what it wrote
  Act* o = out + static_cast<int64_t>(r) * d;
  if (layernorm) {
    float s = 0.0f;
    for (int i = lane; i < d; i += 32) s += x[i];
    const float m = warp_sum(s) / d;
    float v = 0.0f;
    for (int i = lane; i < d; i += 32) v += (x[i] - m) * (x[i] - m);
    const float rs = rsqrtf(warp_sum(v) / d + eps);
    for (int i = lane; i < d; i += 32) o[i] = to_act<Act>((x[i] - m) * rs * w[i] + (b ? b[i] : 0.0f));
  } else {
    float ss = 0.0f;
    for (int i = lane; i < d; i += 32) ss += x[i] * x[i];
    const float rs = rsqrtf(warp_sum(ss) / d + eps);
    for (int i = lane; i < d; i += 32) o[i] = to_act<Act>(w[i] * (x[i] * rs));
  }
}

template <class Act>
void add_norm(Act* out, float* x, const int32_t* src, const float* add, const float* w, const float* b, int rows,
              int d, float eps, bool layernorm, cudaStream_t st) {
  if (rows <= 0) return;
  add_norm_kernel<Act><<<(rows + kNormRows - 1) / kNormRows, kNormRows * 32, 0, st>>>(out, x, src, add, w, b, rows, d,
                                                                                      eps, layernorm);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- q/k/v: bias, RoPE, cache write; one block per row -------------------------------------------------------------

// Pair (i, i + half) of one head after its bias, rotated by pos * theta^(-2i/hd) as cpu/rope.cpp (angle in double).
__device__ inline void rope_pair(float& x1, float& x2, int i, int head_dim, int pos, float theta) {
  const double inv_freq = 1.0 / pow(static_cast<double>(theta), (2.0 * i) / head_dim);
  const double angle = static_cast<double>(pos) * inv_freq;
  const float c = static_cast<float>(cos(angle)), s = static_cast<float>(sin(angle));
  const float a = x1, b = x2;
  x1 = a * c - b * s;
  x2 = b * c + a * s;
}

template <class Act>
__global__ void qkv_finish_kernel(float* q, int qs, float* k, int ks, float* v, int vs, const float* bq,
                                  const float* bk, const float* bv, Rows rows, int n_head, int n_kv_head,
                                  int head_dim, bool rope, float theta, LayerCache<Act> cache) {
  const int r = blockIdx.x, pos = rows.pos[r], slot = rows.slot[r];
  const int half = head_dim / 2, kvd = n_kv_head * head_dim;
  float* qr = q + static_cast<int64_t>(r) * qs;
  float* kr = k + static_cast<int64_t>(r) * ks;
  float* vr = v + static_cast<int64_t>(r) * vs;
  auto cached = [&](Act* base, int c, int col) {
    return base + (static_cast<int64_t>(slot + c) * cache.cap + pos) * kvd + col;
  };
  if (rope) {
    for (int idx = threadIdx.x; idx < n_head * half; idx += blockDim.x) {
      const int col = (idx / half) * head_dim + idx % half;
      float x1 = qr[col] + (bq ? bq[col] : 0.0f), x2 = qr[col + half] + (bq ? bq[col + half] : 0.0f);
      rope_pair(x1, x2, idx % half, head_dim, pos, theta);
      qr[col] = x1, qr[col + half] = x2;
    }
    for (int idx = threadIdx.x; idx < n_kv_head * half; idx += blockDim.x) {
      const int col = (idx / half) * head_dim + idx % half;
      float x1 = kr[col] + (bk ? bk[col] : 0.0f), x2 = kr[col + half] + (bk ? bk[col + half] : 0.0f);
      rope_pair(x1, x2, idx % half, head_dim, pos, theta);
      kr[col] = x1, kr[col + half] = x2;
      for (int c = 0; c < rows.copies; c++)
        *cached(cache.k, c, col) = to_act<Act>(x1), *cached(cache.k, c, col + half) = to_act<Act>(x2);
    }
  } else {
    if (bq)
      for (int col = threadIdx.x; col < n_head * head_dim; col += blockDim.x) qr[col] += bq[col];
    for (int col = threadIdx.x; col < kvd; col += blockDim.x) {
      const float x = kr[col] + (bk ? bk[col] : 0.0f);
      kr[col] = x;
      for (int c = 0; c < rows.copies; c++) *cached(cache.k, c, col) = to_act<Act>(x);
    }
  }
  for (int col = threadIdx.x; col < kvd; col += blockDim.x) {
    const float x = vr[col] + (bv ? bv[col] : 0.0f);
    vr[col] = x;
    for (int c = 0; c < rows.copies; c++) *cached(cache.v, c, col) = to_act<Act>(x);
  }
}

template <class Act>
void qkv_finish(float* q, int qs, float* k, int ks, float* v, int vs, const float* bq, const float* bk,
                const float* bv, const Rows& rows, int n_head, int n_kv_head, int head_dim, bool rope, float theta,
                const LayerCache<Act>& cache, cudaStream_t st) {
  if (rows.n <= 0) return;
  qkv_finish_kernel<Act><<<rows.n, 128, 0, st>>>(q, qs, k, ks, v, vs, bq, bk, bv, rows, n_head, n_kv_head, head_dim,
                                                 rope, theta, cache);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- single-query attention over the cache ---------------------------------------------------------------------
// One block per (row, head), 8 warps. Warp w takes keys w, w + 8, ..., two at a time (both key and value rows are
// loaded before any arithmetic, so each warp keeps four row loads in flight: the kernel is bound by the latency of
// reading the cache, not by its arithmetic). A lane holds head dims lane, lane + 32, ... (head_dim <= 128); the warp
// sums each dot product and keeps an online softmax (running max m, sum l, output acc). The eight partial results
// are merged at the end, rescaled to the common max.

static constexpr int kAttnWarps = 8;
static constexpr int kMaxDimsPerLane = 4;  // head_dim <= 128

template <class Act>
__global__ void attention_decode_kernel(Act* out, const float* q, int qs, LayerCache<Act> cache, Rows rows, int n_head,
                                        int n_kv_head, int head_dim) {
  const int r = blockIdx.x, h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kvd = n_kv_head * head_dim, kvh = h / (n_head / n_kv_head), n_keys = rows.pos[r] + 1;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  const float* qr = q + static_cast<int64_t>(r) * qs + h * head_dim;
  const int64_t base = static_cast<int64_t>(rows.slot[r]) * cache.cap * kvd + kvh * head_dim;
  float qv[kMaxDimsPerLane], acc[kMaxDimsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; i++) {
    const int d = lane + 32 * i;
    qv[i] = d < head_dim ? qr[d] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int j = warp; j < n_keys; j += 2 * kAttnWarps) {
    const int j2 = j + kAttnWarps;
    const bool two = j2 < n_keys;  // the same for the whole warp
    const Act* k1 = cache.k + base + static_cast<int64_t>(j) * kvd;
    const Act* v1 = cache.v + base + static_cast<int64_t>(j) * kvd;
    const Act* k2 = cache.k + base + static_cast<int64_t>(two ? j2 : j) * kvd;
    const Act* v2 = cache.v + base + static_cast<int64_t>(two ? j2 : j) * kvd;
    float ka[kMaxDimsPerLane], kb[kMaxDimsPerLane], va[kMaxDimsPerLane], vb[kMaxDimsPerLane];
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; i++) {
      const int d = lane + 32 * i;
      const bool in = d < head_dim;
      ka[i] = in ? to_float(k1[d]) : 0.0f, kb[i] = in ? to_float(k2[d]) : 0.0f;
      va[i] = in ? to_float(v1[d]) : 0.0f, vb[i] = in ? to_float(v2[d]) : 0.0f;
    }
    float dot1 = 0.0f, dot2 = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; i++) dot1 += qv[i] * ka[i], dot2 += qv[i] * kb[i];
    const float s1 = warp_sum(dot1) * scale;
    const float s2 = two ? warp_sum(dot2) * scale : -INFINITY;
    const float m_new = fmaxf(m, fmaxf(s1, s2));
    const float corr = expf(m - m_new);  // m = -inf at the first key: corr = 0 while l and acc are still 0
    const float p1 = expf(s1 - m_new), p2 = two ? expf(s2 - m_new) : 0.0f;
    l = l * corr + p1 + p2;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; i++) acc[i] = acc[i] * corr + p1 * va[i] + p2 * vb[i];
    m = m_new;
  }
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps], s_acc[kAttnWarps][32 * kMaxDimsPerLane];
  if (lane == 0) s_m[warp] = m, s_l[warp] = l;
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; i++) s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kAttnWarps; w++) mx = fmaxf(mx, s_m[w]);
  float total = 0.0f;
  for (int w = 0; w < kAttnWarps; w++) total += s_m[w] == -INFINITY ? 0.0f : s_l[w] * expf(s_m[w] - mx);
  Act* o = out + static_cast<int64_t>(r) * n_head * head_dim + h * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kAttnWarps; w++)
      if (s_m[w] != -INFINITY) sum += s_acc[w][d] * expf(s_m[w] - mx);
    o[d] = to_act<Act>(sum / total);
  }
}

template <class Act>
void attention_decode(Act* out, const float* q, int qs, const LayerCache<Act>& cache, const Rows& rows, int n_head,
                      int n_kv_head, int head_dim, cudaStream_t st) {
  if (rows.n <= 0) return;
  attention_decode_kernel<Act><<<dim3(rows.n, n_head), kAttnWarps * 32, 0, st>>>(out, q, qs, cache, rows, n_head,
                                                                                 n_kv_head, head_dim);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- MLP activations and conversion ---------------------------------------------------------------------------------

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)

template <class Act>
__global__ void bias_gelu_kernel(Act* out, const float* fc, const float* b, int64_t n, int f) {
  GRID_STRIDE_LOOP(i, n) {
    const float x = fc[i] + (b ? b[i % f] : 0.0f);
    out[i] = to_act<Act>(0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x))));
  }
}

template <class Act>
void bias_gelu(Act* out, const float* fc, const float* b, int rows, int f, cudaStream_t st) {
  const int64_t n = static_cast<int64_t>(rows) * f;
  if (n <= 0) return;
  bias_gelu_kernel<Act><<<grid_for(n), kThreads, 0, st>>>(out, fc, b, n, f);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

template <class Act>
__global__ void swiglu_kernel(Act* out, const float* gate, const float* up, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    const float g = gate[i];
    out[i] = to_act<Act>(g / (1.0f + expf(-g)) * up[i]);
  }
}

template <class Act>
void swiglu(Act* out, const float* gate, const float* up, int64_t n, cudaStream_t st) {
  if (n <= 0) return;
  swiglu_kernel<Act><<<grid_for(n), kThreads, 0, st>>>(out, gate, up, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
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

#define OPTUNE_SAMPLER_ACT(Act)                                                                                      \
  template void add_norm<Act>(Act*, float*, const int32_t*, const float*, const float*, const float*, int, int,     \
                              float, bool, cudaStream_t);                                                           \
  template void qkv_finish<Act>(float*, int, float*, int, float*, int, const float*, const float*, const float*,     \
                                const Rows&, int, int, int, bool, float, const LayerCache<Act>&, cudaStream_t);     \
  template void attention_decode<Act>(Act*, const float*, int, const LayerCache<Act>&, const Rows&, int, int, int,  \
                                      cudaStream_t);                                                                \
  template void bias_gelu<Act>(Act*, const float*, const float*, int, int, cudaStream_t);                           \
  template void swiglu<Act>(Act*, const float*, const float*, int64_t, cudaStream_t);                               \
  template void convert<Act>(Act*, const float*, int64_t, cudaStream_t);
OPTUNE_SAMPLER_ACT(float)
OPTUNE_SAMPLER_ACT(bf16)
#undef OPTUNE_SAMPLER_ACT

}  // namespace optune::cuda::sampler
