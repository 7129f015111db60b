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
#include "launch.h"
#include "reduce.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda::sampler {

template <class T>
__device__ inline T to_act(float x);
template <>
__device__ inline float to_act<float>(float x) { return x; }
template <>
__device__ inline bf16 to_act<bf16>(float x) { return __float2bfloat16_rn(x); }

static constexpr int kThreads = 256;
static int grid_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)));
}

#define GRID_STRIDE_LOOP(i, n)                                                              \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- embedding -------------------------------------------------------------------------------------------------

__global__ void embed_kernel(float* x, const float* wte, const float* wpe, Rows rows, int d, float scale) {
  wait_for_previous_kernel();  // the rows' tokens and positions
  allow_next_kernel();
  const int r = blockIdx.x;
  embed_row(x + static_cast<int64_t>(r) * d, wte, wpe, rows.tok[r], rows.pos[r], d, scale);
}

void embed(float* x, const float* wte, const float* wpe, const Rows& rows, int d, float scale, Launch on) {
  if (rows.n <= 0) return;
  OPTUNE_CUDA_CHECK(launch_kernel(embed_kernel, rows.n, kThreads, 0, on, x, wte, wpe, rows, d, scale));
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
                                                     bool layernorm, float w_offset, HeadTail<Act> tail) {
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
    constexpr int S = P <= 4 ? 4 : 2;  // slices per round: S * P loads in flight, absent ones predicated off
    for (int s0 = 0; s0 < parts.n; s0 += S) {
      float p[S][P];
#pragma unroll
      for (int k = 0; k < S; k++)
#pragma unroll
        for (int j = 0; j < P; j++) {
          const int i = threadIdx.x + j * T;
          p[k][j] = i < d && s0 + k < parts.n ? __ldg(parts.p + (s0 + k) * parts.stride + i) : 0.0f;
        }
#pragma unroll
      for (int k = 0; k < S; k++)
#pragma unroll
        for (int j = 0; j < P; j++) sum[j] += p[k][j];  // + 0.0f past the last slice: sum itself
    }
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
    wv[j] = i < d ? w[i] + w_offset : 0.0f;
    bv[j] = i < d && layernorm && b ? b[i] : 0.0f;
  }
  float m = 0.0f;
  if (layernorm) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < P; j++) s += v[j];  // 0 past the row's end
    m = block_sum(s, scratch) / d;
  }
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < P; j++) {
    const int i = threadIdx.x + j * T;
    const float c = i < d ? v[j] - m : 0.0f;
    ss += c * c;
  }
  const float rs = rsqrtf(block_sum(ss, scratch) / d + eps);
  Act* o = out + static_cast<int64_t>(r) * d;
#pragma unroll
  for (int j = 0; j < P; j++) {
    const int i = threadIdx.x + j * T;
    const Act y = to_act<Act>(layernorm ? (v[j] - m) * rs * wv[j] + bv[j] : wv[j] * (v[j] * rs));
    if (i < d) o[i] = y;
    v[j] = i < d ? static_cast<float>(y) : 0.0f;  // what the LM head's GEMM reads
  }
  for (int t = 0; t < tail.n; t++) {  // block-uniform
    const Act* wt = tail.w + static_cast<int64_t>(t) * d;
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < P; j++) {
      const int i = threadIdx.x + j * T;
      if (i < d) s += v[j] * static_cast<float>(wt[i]);
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) tail.logits[r * tail.ld + t] = s;
  }
}

template <class Act>
void add_norm(Act* out, float* x, const int32_t* src, const float* add, const Partials& parts, const float* w,
              const float* b, int rows, int d, float eps, bool layernorm, float w_offset, Launch on,
              const HeadTail<Act>& tail) {
  if (rows <= 0) return;
  OPTUNE_CHECK(d <= kMaxNormWidth, "sampler norm: rows of " + std::to_string(d) + " (at most " +
                                       std::to_string(kMaxNormWidth) + ")");
  OPTUNE_CHECK(tail.n >= 0 && tail.n <= kMaxHeadTail,
               "sampler norm: an LM head tail of " + std::to_string(tail.n) + " rows (at most " +
                   std::to_string(kMaxHeadTail) + ")");
  const auto kernel = d <= 256 * 4    ? add_norm_kernel<Act, 256, 4>
                      : d <= 256 * 8  ? add_norm_kernel<Act, 256, 8>
                      : d <= 256 * 16 ? add_norm_kernel<Act, 256, 16>
                                      : add_norm_kernel<Act, 512, 16>;
  const int threads = d <= 256 * 16 ? 256 : 512;
  OPTUNE_CUDA_CHECK(
      launch_kernel(kernel, rows, threads, 0, on, out, x, src, add, parts, w, b, d, eps, layernorm, w_offset, tail));
}

// ---- q/k/v: bias, RoPE, cache write; blocks (row, part): part 0 finishes q, 1 k, 2 v (prefill) ---------------------

__global__ void rope_table_kernel(float2* table, int64_t n, int head_dim, const double* inv_freq) {
  const int half = head_dim / 2;
  GRID_STRIDE_LOOP(idx, n) {
    const int pos = static_cast<int>(idx / half), i = static_cast<int>(idx % half);
    const double angle = static_cast<double>(pos) * inv_freq[i];
    table[idx] = make_float2(static_cast<float>(cos(angle)), static_cast<float>(sin(angle)));
  }
}

void rope_table(float2* table, int cap, int head_dim, const double* inv_freq, cudaStream_t st) {
  const int64_t n = static_cast<int64_t>(cap) * (head_dim / 2);
  if (n <= 0) return;
  rope_table_kernel<<<grid_for(n), kThreads, 0, st>>>(table, n, head_dim, inv_freq);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// Pair (i, i + half) of one head after its bias, rotated by (cos, sin) = cs (rope_table's entry for pos, i).
__device__ inline void rope_pair(float& x1, float& x2, float2 cs) {
  const float a = x1, b = x2;
  x1 = a * cs.x - b * cs.y;
  x2 = b * cs.x + a * cs.y;
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

// ---- q/k norms (Qwen3, Gemma 3: over each head; OLMo 2: over the whole width; before the rotation) ---------------

// Block (row r, group g): groups 0 .. n_q-1 are q's (width qw each), the next n_k are k's (width kw). The group's GEMM
// product (its slices when split) + bias, normalized, is written back in place. Each thread rereads only what it
// wrote itself, so no barrier is needed between the two passes beyond the sum's.
__global__ void qk_norm_kernel(float* q, int qs, float* k, int ks, Partials pq, Partials pk, const float* bq,
                               const float* bk, const float* wq, const float* wk, int n_q, int qw, int kw,
                               float eps, float w_offset, float q_scale) {
  __shared__ float scratch[32];
  const int r = blockIdx.x, g = blockIdx.y;
  const bool is_q = g < n_q;
  const int width = is_q ? qw : kw, col0 = (is_q ? g : g - n_q) * width;
  const int64_t at = static_cast<int64_t>(r) * (is_q ? qs : ks) + col0;
  float* x = (is_q ? q : k) + at;
  const Partials parts = is_q ? pq.at(at) : pk.at(at);  // (not a reference to a parameter: no stack frame)
  const float* bias = is_q ? bq : bk;
  const float* w = is_q ? wq : wk;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float y = parts.value(x, i) + (bias ? bias[col0 + i] : 0.0f);
    x[i] = y;
    ss += y * y;
  }
  const float s = rsqrtf(block_sum(ss, scratch) / width + eps), scale = is_q ? q_scale : 1.0f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) x[i] = (w[i] + w_offset) * (x[i] * s) * scale;
}

void qk_norm(float* q, int qs, float* k, int ks, const Partials& pq, const Partials& pk, const float* bq,
             const float* bk, const float* wq, const float* wk, int rows, int n_q, int qw, int n_k, int kw, float eps,
             float w_offset, float q_scale, cudaStream_t st) {
  if (rows <= 0) return;
  qk_norm_kernel<<<dim3(rows, n_q + n_k), 128, 0, st>>>(q, qs, k, ks, pq, pk, bq, bk, wq, wk, n_q, qw, kw, eps,
                                                        w_offset, q_scale);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- single-query attention over the cache ---------------------------------------------------------------------
// One block per (row, head), 4 warps. The keys go in chunks of 32, chunk c to warp c % 4: lane j scores key j of the
// chunk by itself (its whole key row, 16-byte loads when head_dim allows), so a chunk costs one max and one sum
// across the warp instead of a warp reduction per key; the chunk's softmax weights then go to every lane by shuffle,
// and each lane accumulates its pairs of head dims (2 lane, 2 lane + 1, then + 64; PAIRS = 1 up to head_dim 64, 2
// up to 128, 4 up to 256) over the chunk's value rows: one 4- or 8-byte load per value row and lane, 8 rows per
// round. Each warp keeps an online softmax (max m, sum l, output acc); the four are merged at the end, rescaled to
// the common max.

static constexpr int kAttnWarps = 4;
// Floats of one head in shared memory (the query, a warp's output sums): head_dim <= 64 * PAIRS, and at least 128
// (the size every instantiation had before PAIRS 4 existed).
template <int PAIRS>
constexpr int kHeadFloats = 64 * PAIRS > 128 ? 64 * PAIRS : 128;

// q . k over head_dim (q in shared memory); 16-byte loads of k when head_dim is a multiple of their width.
__device__ inline float dot_key(const float* q, const float* k, int hd) {
  float s = 0.0f;
  if (hd % 4 == 0) {
#pragma unroll 8
    for (int d = 0; d < hd; d += 4) {
      const float4 kv = *reinterpret_cast<const float4*>(k + d);
      s += q[d] * kv.x + q[d + 1] * kv.y + q[d + 2] * kv.z + q[d + 3] * kv.w;
    }
  } else {
    for (int d = 0; d < hd; d++) s += q[d] * k[d];
  }
  return s;
}
__device__ inline float dot_key(const float* q, const bf16* k, int hd) {
  float s = 0.0f;
  if (hd % 8 == 0) {
#pragma unroll 8  // all of a 64-dim key's loads in flight at once
    for (int d = 0; d < hd; d += 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(k + d);
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int i = 0; i < 4; i++)  // bf16 -> fp32 is exact: the bits move to the top half (low half: lower index)
        s += q[d + 2 * i] * __uint_as_float(w[i] << 16) + q[d + 2 * i + 1] * __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
    for (int d = 0; d < hd; d++) s += q[d] * __bfloat162float(k[d]);
  }
  return s;
}

// Dims d, d + 1 of a cache row (d even: 8- or 4-byte aligned) as stored (bf16: one register), and as fp32.
__device__ inline float2 load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ inline __nv_bfloat162 load_pair(const bf16* p) { return *reinterpret_cast<const __nv_bfloat162*>(p); }
__device__ inline float2 zero_pair(const float*) { return make_float2(0.0f, 0.0f); }
__device__ inline __nv_bfloat162 zero_pair(const bf16*) { return __float2bfloat162_rn(0.0f); }
__device__ inline float2 pair_value(float2 v) { return v; }
__device__ inline float2 pair_value(__nv_bfloat162 v) { return __bfloat1622float2(v); }

// This block's head of the row: q head h into s_q, k and v of kv head kvh into the cache at the row's position, as
// qkv_finish_kernel would (bias, RoPE on q and k). The blocks of a GQA group write the same k and v: equal bits.
template <class Act>
__device__ inline void finish_head(float* s_q, const QkvRows& in, int r, int h, int kvh, int head_dim,
                                   const float2* rope, int pos, Act* k_at, Act* v_at) {
  const int64_t q0 = static_cast<int64_t>(r) * in.qs + h * head_dim;
  const int64_t k0 = static_cast<int64_t>(r) * in.ks + kvh * head_dim;
  const int64_t v0 = static_cast<int64_t>(r) * in.vs + kvh * head_dim;
  const auto q = [&](int d) { return in.pq.value(in.q, q0 + d) + (in.bq ? in.bq[h * head_dim + d] : 0.0f); };
  const auto k = [&](int d) { return in.pk.value(in.k, k0 + d) + (in.bk ? in.bk[kvh * head_dim + d] : 0.0f); };
  const auto v = [&](int d) { return in.pv.value(in.v, v0 + d) + (in.bv ? in.bv[kvh * head_dim + d] : 0.0f); };
  const int half = head_dim / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {  // pairs (i, i + half), rotated together
    // every load before the first store: the stores may alias them as far as the compiler knows, so loads written
    // between stores waited for them (with the slices' sums, ~18 dependent L2 round trips per call)
    float q1 = q(i), q2 = q(i + half), k1 = k(i), k2 = k(i + half);
    const float v1 = v(i), v2 = v(i + half);
    if (rope) {
      const float2 cs = rope[static_cast<int64_t>(pos) * half + i];
      rope_pair(q1, q2, cs);
      rope_pair(k1, k2, cs);
    }
    s_q[i] = q1, s_q[i + half] = q2;
    k_at[i] = to_act<Act>(k1), k_at[i + half] = to_act<Act>(k2);
    v_at[i] = to_act<Act>(v1), v_at[i + half] = to_act<Act>(v2);
  }
}

// One chunk's step of a warp's online softmax: lane j holds the score sc of the chunk's key j (-inf past the last
// key). Updates the running max m, sum l and output acc (rescaled to the new max); returns the lane's weight.
template <int N>
__device__ inline float softmax_chunk(float sc, float& m, float& l, float (&acc)[N]) {
  const float m_new = fmaxf(m, warp_max(sc));  // finite: the chunk has at least one key
  const float corr = expf(m - m_new);          // m = -inf before the first chunk: 0, while l and acc are 0
  const float p = expf(sc - m_new);            // 0 past the last key
  l = l * corr + warp_sum(p);
  m = m_new;
#pragma unroll
  for (int i = 0; i < N; i++) acc[i] *= corr;
  return p;
}

// The block's per-warp softmaxes (m, l, acc: lane's pairs of dims 2 lane, 2 lane + 1, + 64) merged at their common
// max into o[0 .. head_dim). Warp w's acc goes to s_acc + w * kHeadFloats<PAIRS>; ends the warps' loops.
template <class Act, int PAIRS>
__device__ inline void merge_warps(Act* o, float m, float l, const float (&acc)[2 * PAIRS], float* s_m, float* s_l,
                                   float* s_acc, int head_dim) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) s_m[warp] = m, s_l[warp] = l;
  constexpr int kAccStride = kHeadFloats<PAIRS>;
  float* mine = s_acc + warp * kAccStride;
#pragma unroll
  for (int i = 0; i < PAIRS; i++) mine[2 * lane + 64 * i] = acc[2 * i], mine[2 * lane + 64 * i + 1] = acc[2 * i + 1];
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kAttnWarps; w++) mx = fmaxf(mx, s_m[w]);
  float total = 0.0f;
  for (int w = 0; w < kAttnWarps; w++) total += s_m[w] == -INFINITY ? 0.0f : s_l[w] * expf(s_m[w] - mx);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kAttnWarps; w++)
      if (s_m[w] != -INFINITY) sum += s_acc[w * kAccStride + d] * expf(s_m[w] - mx);
    o[d] = to_act<Act>(sum / total);
  }
}

// rope: rope_table's rotations (null: none); computed here in double they cost GPT-2 too (which never rotates) a
// 24-byte spill (ptxas, nvcc 13.0). For sm_90 ptxas gives the bf16 kernel at head_dim <= 64 64 registers and no spill
// since softmax_chunk and merge_warps became functions (before: 56 and 16 bytes of spill): 13.25 us a call on an H200
// under Nsight (before: 13.4; earlier 62 registers and no spill, 13.5 us). Staging each warp's keys and values in
// shared memory by cp.async first (one wait per chunk; 78 registers, 35 KB of shared memory, 6 blocks per SM) ran
// 15.7 us and lost 4.6% of bf16 sampling, so it went (11th session).
template <class Act, int PAIRS>
__global__ void __launch_bounds__(kAttnWarps * 32) attention_decode_kernel(Act* out, QkvRows in,
                                                                           LayerCache<Act> cache, Rows rows,
                                                                           int n_head, int n_kv_head, int head_dim,
                                                                           const float2* rope, int window) {
  wait_for_previous_kernel();  // q/k/v, the rows (and the cache rows earlier steps wrote)
  allow_next_kernel();
  const int r = blockIdx.x, h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kvd = n_kv_head * head_dim, kvh = h / (n_head / n_kv_head), pos = rows.pos[r], n_keys = pos + 1;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  __shared__ float s_q[kHeadFloats<PAIRS>];
  const int64_t base = static_cast<int64_t>(rows.slot[r]) * cache.cap * kvd + kvh * head_dim;
  const int64_t at = base + static_cast<int64_t>(pos) * kvd;
  finish_head<Act>(s_q, in, r, h, kvh, head_dim, rope, pos, cache.k + at, cache.v + at);
  __syncthreads();  // s_q, and this row's k and v in the cache, are visible to the whole block
  float acc[2 * PAIRS];
#pragma unroll
  for (int i = 0; i < 2 * PAIRS; i++) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  // A sliding window: keys first .. pos, in chunks from the one holding `first` (the keys before it in that chunk
  // score -inf as those past the last key do; every chunk a warp takes holds at least one key it sees).
  const int first = window > 0 ? max(0, pos - window + 1) : 0, c_first = first / 32 * 32;
  for (int c0 = c_first + 32 * warp; c0 < n_keys; c0 += 32 * kAttnWarps) {
    const int j = c0 + lane, n_chunk = min(32, n_keys - c0);
    const float sc = j < n_keys && j >= first
                         ? dot_key(s_q, cache.k + base + static_cast<int64_t>(j) * kvd, head_dim) * scale
                         : -INFINITY;
    const float p = softmax_chunk(sc, m, l, acc);
    const Act* vrow = cache.v + base + static_cast<int64_t>(c0) * kvd;
    // 8 value rows per round, those past the chunk predicated off (p = 0 there), so their loads go out together:
    // a loop over the runtime n_chunk (even under `#pragma unroll`) ran its remainder, 0-31 rows of the last chunk,
    // one dependent load at a time. Registers stay <= 64 for bf16 up to head_dim 128 (ptxas; fp32's PAIRS 2 takes
    // 72, PAIRS 4 78-112), so the step's 64 x 12 blocks fit the GPU in one wave: a first version of these rounds
    // took 96 (head_dim a runtime bound, 64-bit addresses per row) and ran 33 us a call on an H200 instead of 23.5
    // (ncu), most of it a second wave.
    // bf16 at head_dim <= 64: 16 rows per round, kept as loaded (one register a row), so a chunk waits on memory
    // twice instead of four times (~0.6-0.8 us each from HBM; not measured yet); the additions keep their order.
    // 32 rows took 80 registers (ptxas): 6 blocks per SM instead of 8. Raw pairs also took head_dim 128 from 72 to 64.
    const int vstride = kvd;  // elements between value rows (32-bit offsets within this chunk)
    using Pair = decltype(load_pair(vrow));
    constexpr int kRows = sizeof(Act) == 2 && PAIRS == 1 ? 16 : 8;
    for (int j0 = 0; j0 < n_chunk; j0 += kRows) {
      Pair vv[kRows][PAIRS];
#pragma unroll
      for (int jj = 0; jj < kRows; jj++)
#pragma unroll
        for (int i = 0; i < PAIRS; i++) {
          const int d = 2 * lane + 64 * i;  // head_dim is even: d + 1 < head_dim too
          // zeros past the chunk (not garbage: p = 0 there, and 0 * NaN would not vanish)
          vv[jj][i] = j0 + jj < n_chunk && d < head_dim ? load_pair(vrow + (j0 + jj) * vstride + d) : zero_pair(vrow);
        }
#pragma unroll
      for (int jj = 0; jj < kRows; jj++) {
        const float pj = __shfl_sync(0xffffffffu, p, (j0 + jj) & 31);  // 0 past the last key
#pragma unroll
        for (int i = 0; i < PAIRS; i++) {
          const float2 v = pair_value(vv[jj][i]);
          acc[2 * i] += pj * v.x;
          acc[2 * i + 1] += pj * v.y;
        }
      }
    }
  }
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps], s_acc[kAttnWarps * kHeadFloats<PAIRS>];
  merge_warps<Act, PAIRS>(out + static_cast<int64_t>(r) * n_head * head_dim + h * head_dim, m, l, acc, s_m, s_l,
                          s_acc, head_dim);
}

template <class Act>
void attention_decode(Act* out, const QkvRows& in, const LayerCache<Act>& cache, const Rows& rows, int n_head,
                      int n_kv_head, int head_dim, const float2* rope, int window, Launch on) {
  if (rows.n <= 0) return;
  // one pair of dims per lane up to head_dim 64, two up to 128, four up to 256 (Gemma 3)
  const auto kernel = head_dim <= 64    ? attention_decode_kernel<Act, 1>
                      : head_dim <= 128 ? attention_decode_kernel<Act, 2>
                                        : attention_decode_kernel<Act, 4>;
  OPTUNE_CUDA_CHECK(launch_kernel(kernel, dim3(rows.n, n_head), kAttnWarps * 32, 0, on, out, in, cache, rows, n_head,
                                  n_kv_head, head_dim, rope, window));
}

// ---- MLP activations and conversion ---------------------------------------------------------------------------------

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
__device__ inline float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x)));
}

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
  out[i] = to_act<Act>(gelu_tanh(x));
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
__global__ void swiglu_kernel(Act* out, const float* gate, Partials pgate, const float* up, Partials pup, int64_t n,
                              bool gelu_gate) {
  wait_for_previous_kernel();
  allow_next_kernel();
  GRID_STRIDE_LOOP(i, n) {
    const float g = pgate.value(gate, i);
    const float a = gelu_gate ? gelu_tanh(g) : g / (1.0f + expf(-g));
    out[i] = to_act<Act>(a * pup.value(up, i));
  }
}

template <class Act>
void swiglu(Act* out, const float* gate, const Partials& pgate, const float* up, const Partials& pup, int64_t n,
            bool gelu_gate, Launch on) {
  if (n <= 0) return;
  OPTUNE_CUDA_CHECK(
      launch_kernel(swiglu_kernel<Act>, grid_for(n), kThreads, 0, on, out, gate, pgate, up, pup, n, gelu_gate));
}

// ---- post-norms (OLMo 2, Gemma 3) ----------------------------------------------------------------------------------

// Block per row: v = y (its GEMM's slices when split) + bias; x += (w + w_offset) * v / rms(v); out = x in Act.
template <class Act>
__global__ void post_norm_add_kernel(float* x, Act* out, const float* y, Partials parts, const float* bias,
                                     const float* w, int d, float eps, float w_offset) {
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * d;
  const float* yr = y + base;
  const Partials p = parts.at(base);
  float ss = 0.0f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = p.value(yr, i) + (bias ? bias[i] : 0.0f);
    ss += v * v;
  }
  const float s = rsqrtf(block_sum(ss, scratch) / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = p.value(yr, i) + (bias ? bias[i] : 0.0f);
    const float nx = x[base + i] + (w[i] + w_offset) * (v * s);
    x[base + i] = nx;
    if (out) out[base + i] = to_act<Act>(nx);
  }
}

template <class Act>
void post_norm_add(float* x, Act* out, const float* y, const Partials& parts, const float* bias, const float* w,
                   int rows, int d, float eps, float w_offset, cudaStream_t st) {
  if (rows <= 0) return;
  post_norm_add_kernel<Act><<<rows, 256, 0, st>>>(x, out, y, parts, bias, w, d, eps, w_offset);
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

#define OPTUNE_SAMPLER_ACT(Act)                                                                                        \
  template void add_norm<Act>(Act*, float*, const int32_t*, const float*, const Partials&, const float*,               \
                              const float*, int, int, float, bool, float, Launch, const HeadTail<Act>&);               \
  template void qkv_finish<Act>(float*, int, float*, int, float*, int, const Partials&, const Partials&,               \
                                const Partials&, const float*, const float*, const float*, const Rows&, int, int,      \
                                int, const float2*, const LayerCache<Act>&, cudaStream_t);                             \
  template void attention_decode<Act>(Act*, const QkvRows&, const LayerCache<Act>&, const Rows&, int, int, int,        \
                                      const float2*, int, Launch);                                             \
  template void bias_gelu<Act>(Act*, const float*, const Partials&, const float*, int, int, Launch);                   \
  template void swiglu<Act>(Act*, const float*, const Partials&, const float*, const Partials&, int64_t, bool,         \
                            Launch);                                                                                   \
  template void convert<Act>(Act*, const float*, int64_t, cudaStream_t);                                           \
  template void post_norm_add<Act>(float*, Act*, const float*, const Partials&, const float*, const float*, int, int, \
                                   float, float, cudaStream_t);
OPTUNE_SAMPLER_ACT(float)
OPTUNE_SAMPLER_ACT(bf16)
#undef OPTUNE_SAMPLER_ACT

}  // namespace optune::cuda::sampler
