// Single-query attention over the KV cache for the CUDA sampler's decode step, as device functions:
// decode_kernels.cu's attention_decode_kernel runs one (row, head) per block, and a persistent kernel may run several
// in turn (native/bench/bench_cuda_persistent.cu). Also the small pieces the sampler's kernels share: the conversion
// to the activations' type and the RoPE rotation of a pair.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "reduce.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda::sampler {

template <class T>
__device__ inline T to_act(float x);
template <>
__device__ inline float to_act<float>(float x) { return x; }
template <>
__device__ inline bf16 to_act<bf16>(float x) { return __float2bfloat16_rn(x); }

// Pair (i, i + half) of one head after its bias, rotated by (cos, sin) = cs (rope_table's entry for pos, i).
__device__ inline void rope_pair(float& x1, float& x2, float2 cs) {
  const float a = x1, b = x2;
  x1 = a * cs.x - b * cs.y;
  x2 = b * cs.x + a * cs.y;
}

// ---- single-query attention over the cache ---------------------------------------------------------------------
// One block per (row, head), 4 warps. The keys go in chunks of 32, chunk c to warp c % 4: lane j scores key j of the
// chunk by itself (its whole key row, 16-byte loads when head_dim allows), so a chunk costs one max and one sum
// across the warp instead of a warp reduction per key; the chunk's softmax weights then go to every lane by shuffle,
// and each lane accumulates its pairs of head dims (2 lane, 2 lane + 1, then + 64; PAIRS = 1 up to head_dim 64, 2
// up to 128) over the chunk's value rows: one 4- or 8-byte load per value row and lane, 8 rows per round. Each warp
// keeps an online softmax (max m, sum l, output acc); the four are merged at the end, rescaled to the common max.

static constexpr int kAttnWarps = 4;
static constexpr int kMaxDimsPerLane = 4;  // head_dim <= 128

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
// max into o[0 .. head_dim). Warp w's acc goes to s_acc + w * kAccStride; ends the warps' loops.
constexpr int kAccStride = 32 * kMaxDimsPerLane;
template <class Act, int PAIRS>
__device__ inline void merge_warps(Act* o, float m, float l, const float (&acc)[2 * PAIRS], float* s_m, float* s_l,
                                   float* s_acc, int head_dim) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) s_m[warp] = m, s_l[warp] = l;
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

// Row r's query head h against the row's cached keys (its own k and v written first): out row r, head h. A block of
// kAttnWarps warps; the caller syncs the block before calling again (the shared arrays are reused).
// rope: rope_table's rotations (null: none); computed here in double they cost GPT-2 too (which never rotates) a
// 24-byte spill (ptxas, nvcc 13.0). For sm_90 ptxas gives the bf16 kernel at head_dim <= 64 64 registers and no spill
// since softmax_chunk and merge_warps became functions (before: 56 and 16 bytes of spill): 13.25 us a call on an H200
// under Nsight (before: 13.4; earlier 62 registers and no spill, 13.5 us). Staging each warp's keys and values in
// shared memory by cp.async first (one wait per chunk; 78 registers, 35 KB of shared memory, 6 blocks per SM) ran
// 15.7 us and lost 4.6% of bf16 sampling, so it went (11th session).
template <class Act, int PAIRS>
__device__ inline void attend_head(Act* out, const QkvRows& in, const LayerCache<Act>& cache, const Rows& rows, int r,
                                   int h, int n_head, int n_kv_head, int head_dim, const float2* rope) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kvd = n_kv_head * head_dim, kvh = h / (n_head / n_kv_head), pos = rows.pos[r], n_keys = pos + 1;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  __shared__ float s_q[32 * kMaxDimsPerLane];
  const int64_t base = static_cast<int64_t>(rows.slot[r]) * cache.cap * kvd + kvh * head_dim;
  const int64_t at = base + static_cast<int64_t>(pos) * kvd;
  finish_head<Act>(s_q, in, r, h, kvh, head_dim, rope, pos, cache.k + at, cache.v + at);
  __syncthreads();  // s_q, and this row's k and v in the cache, are visible to the whole block
  float acc[2 * PAIRS];
#pragma unroll
  for (int i = 0; i < 2 * PAIRS; i++) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int c0 = 32 * warp; c0 < n_keys; c0 += 32 * kAttnWarps) {
    const int j = c0 + lane, n_chunk = min(32, n_keys - c0);
    const float sc = j < n_keys ? dot_key(s_q, cache.k + base + static_cast<int64_t>(j) * kvd, head_dim) * scale
                                : -INFINITY;
    const float p = softmax_chunk(sc, m, l, acc);
    const Act* vrow = cache.v + base + static_cast<int64_t>(c0) * kvd;
    // 8 value rows per round, those past the chunk predicated off (p = 0 there), so their loads go out together:
    // a loop over the runtime n_chunk (even under `#pragma unroll`) ran its remainder, 0-31 rows of the last chunk,
    // one dependent load at a time. Registers stay <= 64 (ptxas), so the step's 64 x 12 blocks fit the GPU in one
    // wave: a first version of these rounds took 96 (head_dim a runtime bound, 64-bit addresses per row) and ran
    // 33 us a call on an H200 instead of 23.5 (ncu), most of it a second wave.
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
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps], s_acc[kAttnWarps * kAccStride];
  merge_warps<Act, PAIRS>(out + static_cast<int64_t>(r) * n_head * head_dim + h * head_dim, m, l, acc, s_m, s_l,
                          s_acc, head_dim);
}

}  // namespace optune::cuda::sampler
