// Causal self-attention over a packed ragged batch with grouped-query heads, FlashAttention-style: scores live only
// in 32 x 32 tiles in shared memory, never as [L, L] blocks in global memory. Correctness first; fp32 throughout.
//
// Forward: one block per (32-query tile, sequence, head) walks the key tiles left of the diagonal, keeping per query
// row a running max m, a running sum l and the output accumulator O (the online softmax: when m grows, l and O are
// rescaled by exp(m_old - m_new)). It saves lse = m + log(l) per row and head.
// Backward recomputes P = exp(scale * Q K^T - lse) tile by tile (FlashAttention-2) in two kernels, so every output
// element has one owner and there are no atomics (results do not change from run to run):
//   dK/dV: one block per (32-key tile, sequence, kv head) walks the query tiles right of the diagonal, for each query
//          head of the group (so GQA groups sum into dK/dV inside one block):
//          dV += P^T dO, dS = P * (dO V^T - D) * scale, dK += dS^T Q, with D = rowsum(dO * O) precomputed;
//   dQ:    one block per (32-query tile, sequence, head) walks the key tiles again: dQ += dS K.
// Complexity: forward ~2 * sum_s L_s^2 * H * hd flops (half of the square, causal), backward ~2.5x that (S is
// recomputed in both backward kernels). Extra memory: lse and D, T * H floats each. Limits: head_dim <= 256 (shared
// memory: up to 73 KB per block at head_dim 128, in the dK/dV kernel, within the 99 KB of sm_86 / sm_89 / sm_120; at
// 256 (Gemma 3) 137 KB, which the A100 (163 KB), H100, H200 and B200 allow and the 99 KB GPUs do not (up to head_dim
// 180 there): attention_smem_problem; both backward kernels keep their sums in registers); one block walks its row
// of tiles serially, so a long sequence with few heads leaves SMs idle (split-K over key tiles is future work);
// the inner products are plain fp32 FMAs from shared memory (no tensor cores, no register tiling).
#include <algorithm>
#include <cmath>
#include <string>

#include "attention_window.cuh"
#include "check.cuh"
#include "core/error.h"
#include "memory.h"
#include "ops.h"
#include "reduce.cuh"

namespace optune::cuda {

static constexpr int kTile = 32;      // query rows and key columns per tile; a warp's lanes are a tile's columns
static constexpr int kThreads = 256;  // 8 warps
static constexpr int kSp = kTile + 1; // row stride of score tiles in shared memory (+1: no bank conflicts)

// Copies rows [row0, row0 + n) (n <= kTile) of a head slice into a [kTile][hdp] shared tile; rows >= n become 0.
// Unrolled with non-aliasing pointers, so several of a thread's loads are in flight before its first store.
__device__ inline void load_tile(float* __restrict__ dst, const float* __restrict__ src, int stride, int row0, int n,
                                 int col0, int hd, int hdp) {
#pragma unroll 4
  for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
    const int r = idx / hd, d = idx % hd;
    dst[r * hdp + d] = r < n ? src[static_cast<int64_t>(row0 + r) * stride + col0 + d] : 0.0f;
  }
}

__device__ inline float dot_shared(const float* a, const float* b, int hd) {
  float s = 0.0f;
  for (int d = 0; d < hd; d++) s += a[d] * b[d];
  return s;
}

// ---- forward ---------------------------------------------------------------------------------------------------

__global__ void attention_forward_kernel(float* out, float* lse, const float* q, int qs, const float* k, int ks,
                                         const float* v, int vs, const int32_t* offsets, int n_head, int group,
                                         int hd, float scale, int window) {
  const int s = blockIdx.y, h = blockIdx.z, kvh = h / group, od = n_head * hd, hdp = hd + 1;
  const int start = offsets[s], L = offsets[s + 1] - start;
  extern __shared__ float smem[];
  float* Qs = smem;               // [kTile][hdp]
  float* Ks = Qs + kTile * hdp;   // [kTile][hdp]
  float* Vs = Ks + kTile * hdp;   // [kTile][hdp]
  float* Os = Vs + kTile * hdp;   // [kTile][hdp] unnormalized output
  float* Ss = Os + kTile * hdp;   // [kTile][kSp] scores, then probabilities
  float* row_m = Ss + kTile * kSp;
  float* row_l = row_m + kTile;
  float* row_alpha = row_l + kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;

  // A grid narrower than the longest sequence stays correct: each block takes every gridDim.x-th query tile.
  for (int i0 = blockIdx.x * kTile; i0 < L; i0 += gridDim.x * kTile) {
    const int nq = min(kTile, L - i0);
    load_tile(Qs, q, qs, start + i0, nq, h * hd, hd, hdp);
    for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) Os[(idx / hd) * hdp + idx % hd] = 0.0f;
    if (threadIdx.x < kTile) row_m[threadIdx.x] = -INFINITY, row_l[threadIdx.x] = 0.0f;
    const int j_end = i0 + nq;  // causal: the tile's last query sees keys 0 .. j_end - 1
    for (int j0 = first_visible_key(i0, window) / kTile * kTile; j0 < j_end; j0 += kTile) {
      const int nk = min(kTile, j_end - j0);
      __syncthreads();  // the previous tile's readers of Ks/Vs/Ss are done (and Qs/Os/row_* are set)
      load_tile(Ks, k, ks, start + j0, nk, kvh * hd, hd, hdp);
      load_tile(Vs, v, vs, start + j0, nk, kvh * hd, hd, hdp);
      __syncthreads();
      for (int idx = threadIdx.x; idx < kTile * kTile; idx += blockDim.x) {
        const int r = idx / kTile, c = idx % kTile;
        float sc = -INFINITY;
        if (r < nq && c < nk && visible(i0 + r, j0 + c, window))
          sc = scale * dot_shared(Qs + r * hdp, Ks + c * hdp, hd);
        Ss[r * kSp + c] = sc;
      }
      __syncthreads();
      // online softmax, one warp per row, lane = key column
      for (int r = warp; r < kTile; r += n_warps) {
        const float sc = Ss[r * kSp + lane];
        const float m_old = row_m[r], m_new = fmaxf(m_old, warp_max(sc));
        const float p = m_new == -INFINITY ? 0.0f : expf(sc - m_new);  // masked: exp(-inf) = 0
        const float sum = warp_sum(p);
        Ss[r * kSp + lane] = p;
        if (lane == 0) {
          const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);  // O and l are still 0 when -inf
          row_alpha[r] = alpha;
          row_l[r] = row_l[r] * alpha + sum;
          row_m[r] = m_new;
        }
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
        const int r = idx / hd, d = idx % hd;
        float acc = Os[r * hdp + d] * row_alpha[r];
        for (int c = 0; c < nk; c++) acc += Ss[r * kSp + c] * Vs[c * hdp + d];
        Os[r * hdp + d] = acc;
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nq * hd; idx += blockDim.x) {
      const int r = idx / hd, d = idx % hd;
      out[static_cast<int64_t>(start + i0 + r) * od + h * hd + d] = Os[r * hdp + d] / row_l[r];
    }
    if (threadIdx.x < nq)
      lse[static_cast<int64_t>(start + i0 + threadIdx.x) * n_head + h] = row_m[threadIdx.x] + logf(row_l[threadIdx.x]);
    __syncthreads();  // Qs/Os/row_* are rewritten by the next query tile
  }
}

// ---- backward --------------------------------------------------------------------------------------------------

// D[row * n_head + h] = sum_d dO[row, h, d] * O[row, h, d] (= rowsum(P * dP)); one warp per (row, head).
__global__ void attention_dsum_kernel(float* D, const float* dout, const float* out, int T, int n_head, int hd) {
  const int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= static_cast<int64_t>(T) * n_head) return;
  const int64_t base = w * hd;  // row * (n_head * hd) + h * hd, as w = row * n_head + h
  float s = 0.0f;
  for (int d = lane; d < hd; d += 32) s += dout[base + d] * out[base + d];
  s = warp_sum(s);
  if (lane == 0) D[w] = s;
}

// P and dS of one (query tile, key tile) pair: P = exp(scale q.k - lse), dS = P * (dO.v - D) * scale, 0 where masked.
__device__ inline void attention_p_ds(float* Ps, float* dSs, const float* Qs, const float* dOs, const float* Ks,
                                      const float* Vs, const float* lse_s, const float* D_s, int i0, int nq, int j0,
                                      int nk, int hd, int hdp, float scale, int window) {
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += blockDim.x) {
    const int r = idx / kTile, c = idx % kTile;
    float p = 0.0f, ds = 0.0f;
    if (r < nq && c < nk && visible(i0 + r, j0 + c, window)) {
      p = expf(scale * dot_shared(Qs + r * hdp, Ks + c * hdp, hd) - lse_s[r]);
      ds = p * (dot_shared(dOs + r * hdp, Vs + c * hdp, hd) - D_s[r]) * scale;
    }
    if (Ps) Ps[r * kSp + c] = p;
    dSs[r * kSp + c] = ds;
  }
}

__device__ inline void load_row_stats(float* lse_s, float* D_s, const float* lse, const float* D, int row0, int nq,
                                      int n_head, int h) {
  if (threadIdx.x < kTile) {
    const bool ok = threadIdx.x < nq;
    const int64_t i = static_cast<int64_t>(row0 + threadIdx.x) * n_head + h;
    lse_s[threadIdx.x] = ok ? lse[i] : 0.0f;
    D_s[threadIdx.x] = ok ? D[i] : 0.0f;
  }
}

// dK/dV elements per thread: a thread owns elements threadIdx.x + m * kThreads (m < ACC) of the key tile's
// [kTile][hd], the same ones for every query tile, so their sums stay in its registers. In shared memory they took
// 2 x 16.5 KB at head_dim 128: 105 KB per block, more than the 99 KB GeForce and workstation GPUs allow. ACC covers
// head_dim 128 (16) or 256 (32): the wider kernel's registers do not burden the common head dims.
template <int MAX_HD>
constexpr int acc_per_thread() {
  static_assert(kTile * MAX_HD % kThreads == 0, "the threads' elements must cover the tile exactly");
  return kTile * MAX_HD / kThreads;
}

template <int ACC>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* D,
                                   const float* q, int qs, const float* k, int ks, const float* v, int vs,
                                   const int32_t* offsets, int n_head, int group, int hd, float scale, int window) {
  const int s = blockIdx.y, kvh = blockIdx.z, od = n_head * hd, hdp = hd + 1;
  const int start = offsets[s], L = offsets[s + 1] - start;
  extern __shared__ float smem[];
  float* Ks = smem;
  float* Vs = Ks + kTile * hdp;
  float* Qs = Vs + kTile * hdp;
  float* dOs = Qs + kTile * hdp;
  float* Ps = dOs + kTile * hdp;  // [kTile][kSp]
  float* dSs = Ps + kTile * kSp;  // [kTile][kSp]
  float* lse_s = dSs + kTile * kSp;
  float* D_s = lse_s + kTile;

  for (int j0 = blockIdx.x * kTile; j0 < L; j0 += gridDim.x * kTile) {
    const int nk = min(kTile, L - j0);
    __syncthreads();  // the previous key tile's readers of Ks/Vs are done
    load_tile(Ks, k, ks, start + j0, nk, kvh * hd, hd, hdp);
    load_tile(Vs, v, vs, start + j0, nk, kvh * hd, hd, hdp);
    float acc_k[ACC], acc_v[ACC];
#pragma unroll
    for (int m = 0; m < ACC; m++) acc_k[m] = 0.0f, acc_v[m] = 0.0f;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
      // causal: query tiles from the diagonal down, to the last query that sees the tile's last key
      for (int i0 = j0; i0 < visible_query_end(j0 + nk - 1, window, L); i0 += kTile) {
        const int nq = min(kTile, L - i0);
        __syncthreads();  // readers of the previous Qs/dOs/Ps/dSs are done
        load_tile(Qs, q, qs, start + i0, nq, h * hd, hd, hdp);
        load_tile(dOs, dout, od, start + i0, nq, h * hd, hd, hdp);
        load_row_stats(lse_s, D_s, lse, D, start + i0, nq, n_head, h);
        __syncthreads();
        attention_p_ds(Ps, dSs, Qs, dOs, Ks, Vs, lse_s, D_s, i0, nq, j0, nk, hd, hdp, scale, window);
        __syncthreads();
#pragma unroll
        for (int m = 0; m < ACC; m++) {
          const int idx = threadIdx.x + m * kThreads;
          if (idx >= kTile * hd) break;
          const int c = idx / hd, d = idx % hd;
          float av = 0.0f, ak = 0.0f;
          for (int r = 0; r < nq; r++) {
            av += Ps[r * kSp + c] * dOs[r * hdp + d];
            ak += dSs[r * kSp + c] * Qs[r * hdp + d];
          }
          acc_v[m] += av;
          acc_k[m] += ak;
        }
      }
    }
#pragma unroll
    for (int m = 0; m < ACC; m++) {
      const int idx = threadIdx.x + m * kThreads;
      if (idx >= nk * hd) break;
      const int c = idx / hd, d = idx % hd;
      dk[static_cast<int64_t>(start + j0 + c) * ks + kvh * hd + d] = acc_k[m];
      dv[static_cast<int64_t>(start + j0 + c) * vs + kvh * hd + d] = acc_v[m];
    }
  }
}

// dQ's elements per thread: as dK/dV's (acc_per_thread), in registers, so the kernel's shared memory is four tiles
// (133 KB at head_dim 256, within the A100's 163 KB) instead of five.
template <int ACC>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(float* dq, const float* dout, const float* lse, const float* D, const float* q,
                                 int qs, const float* k, int ks, const float* v, int vs, const int32_t* offsets,
                                 int n_head, int group, int hd, float scale, int window) {
  const int s = blockIdx.y, h = blockIdx.z, kvh = h / group, od = n_head * hd, hdp = hd + 1;
  const int start = offsets[s], L = offsets[s + 1] - start;
  extern __shared__ float smem[];
  float* Qs = smem;
  float* dOs = Qs + kTile * hdp;
  float* Ks = dOs + kTile * hdp;
  float* Vs = Ks + kTile * hdp;
  float* dSs = Vs + kTile * hdp;  // [kTile][kSp]
  float* lse_s = dSs + kTile * kSp;
  float* D_s = lse_s + kTile;

  for (int i0 = blockIdx.x * kTile; i0 < L; i0 += gridDim.x * kTile) {
    const int nq = min(kTile, L - i0);
    __syncthreads();  // the previous query tile's readers of Qs/dOs/lse_s/D_s are done
    load_tile(Qs, q, qs, start + i0, nq, h * hd, hd, hdp);
    load_tile(dOs, dout, od, start + i0, nq, h * hd, hd, hdp);
    load_row_stats(lse_s, D_s, lse, D, start + i0, nq, n_head, h);
    float acc[ACC];  // element threadIdx.x + m * kThreads of the tile's [kTile][hd]
#pragma unroll
    for (int m = 0; m < ACC; m++) acc[m] = 0.0f;
    const int j_end = i0 + nq;
    for (int j0 = first_visible_key(i0, window) / kTile * kTile; j0 < j_end; j0 += kTile) {
      const int nk = min(kTile, j_end - j0);
      __syncthreads();  // readers of the previous Ks/dSs are done
      load_tile(Ks, k, ks, start + j0, nk, kvh * hd, hd, hdp);
      load_tile(Vs, v, vs, start + j0, nk, kvh * hd, hd, hdp);
      __syncthreads();
      attention_p_ds(nullptr, dSs, Qs, dOs, Ks, Vs, lse_s, D_s, i0, nq, j0, nk, hd, hdp, scale, window);
      __syncthreads();
#pragma unroll
      for (int m = 0; m < ACC; m++) {
        const int idx = threadIdx.x + m * kThreads;
        if (idx >= kTile * hd) break;
        const int r = idx / hd, d = idx % hd;
        float sum = 0.0f;
        for (int c = 0; c < nk; c++) sum += dSs[r * kSp + c] * Ks[c * hdp + d];
        acc[m] += sum;
      }
    }
#pragma unroll
    for (int m = 0; m < ACC; m++) {
      const int idx = threadIdx.x + m * kThreads;
      if (idx >= nq * hd) break;
      const int r = idx / hd, d = idx % hd;
      dq[static_cast<int64_t>(start + i0 + r) * qs + h * hd + d] = acc[m];
    }
  }
}

// ---- launchers -------------------------------------------------------------------------------------------------

static void check_bias(const char* fn, const QkvBias& bias, bool bf16, int head_dim) {
  OPTUNE_CHECK(!bias.any() || (bf16 && attention_mma_supported(head_dim)),
               std::string(fn) + ": q/k/v biases are taken by the bf16 tensor-core kernels only (head_dim " +
                   std::to_string(head_dim) + (bf16 ? ")" : ", fp32)") + "; add them to q|k|v first");
}

static void check_shape(const char* fn, int n_seq, int max_len, int n_head, int n_kv_head, int head_dim) {
  OPTUNE_CHECK(head_dim > 0 && head_dim <= kAttentionMaxHeadDim,
               std::string(fn) + ": head_dim " + std::to_string(head_dim) + " is outside 1.." +
                   std::to_string(kAttentionMaxHeadDim) + " (the CUDA attention kernels' per-thread accumulators)");
  OPTUNE_CHECK(n_kv_head > 0 && n_head % n_kv_head == 0,
               std::string(fn) + ": n_head " + std::to_string(n_head) + " is not a multiple of n_kv_head " +
                   std::to_string(n_kv_head));
  OPTUNE_CHECK(n_seq >= 0 && n_seq <= 65535 && n_head <= 65535 && max_len >= 0,
               std::string(fn) + ": n_seq " + std::to_string(n_seq) + " must be in 0..65535, max_len >= 0");
}

// Dynamic shared memory of the three fp32 kernels (tiles of hd + 1 floats a row: no bank conflicts).
static size_t fp32_forward_smem(int hd) {
  return sizeof(float) * (4 * kTile * (hd + 1) + kTile * kSp + 3 * kTile);
}
static size_t fp32_backward_kv_smem(int hd) {
  return sizeof(float) * (4 * kTile * (hd + 1) + 2 * kTile * kSp + 2 * kTile);
}
static size_t fp32_backward_q_smem(int hd) {
  return sizeof(float) * (4 * kTile * (hd + 1) + kTile * kSp + 2 * kTile);
}

// (up to head_dim 128 the fp32 kernels take at most 73 KB, which every GPU from sm_80 on allows; the tensor-core
// kernels check their own: attention_mma_supported)
std::string attention_smem_problem(int head_dim) {
  const size_t need =
      std::max({fp32_forward_smem(head_dim), fp32_backward_kv_smem(head_dim), fp32_backward_q_smem(head_dim)});
  const size_t have = block_smem_limit();
  if (need <= have) return "";
  return "its attention at head_dim " + std::to_string(head_dim) + " needs " + std::to_string((need + 1023) / 1024) +
         " KB of shared memory per block and this GPU allows " + std::to_string(have / 1024) +
         " KB (the A100 allows 163 KB; the H100, H200 and B200 227 KB)";
}

// Grid x: query (or key) tiles of the longest sequence; shorter sequences' blocks past their end exit at once.
static dim3 tile_grid(int max_len, int n_seq, int heads) {
  return dim3(static_cast<unsigned>(std::max(1, (max_len + kTile - 1) / kTile)), n_seq, heads);
}

// Raises the kernel's shared memory limit to `bytes`; a GPU that allows less per block is a clear error (the kernels
// take up to 73 KB at head_dim 128, which every GPU from sm_80 on allows; wider heads: attention_smem_problem).
template <class Kernel>
static void set_smem(Kernel kernel, size_t bytes, const char* what, int head_dim) {
  const size_t optin = block_smem_limit();
  OPTUNE_CHECK(bytes <= optin,
               std::string("cuda attention: the ") + what + " at head_dim " + std::to_string(head_dim) + " needs " +
                   std::to_string(bytes) + " bytes of shared memory per block and this GPU allows " +
                   std::to_string(optin) + "; run this model on a GPU with more or on the CPU");
  OPTUNE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void attention_forward(float* out, float* lse, const float* q, int qs, const float* k, int ks, const float* v, int vs,
                       const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head, int head_dim,
                       bool bf16, const QkvBias& bias, int window) {
  check_shape("cuda::attention_forward", n_seq, max_len, n_head, n_kv_head, head_dim);
  check_bias("cuda::attention_forward", bias, bf16, head_dim);
  if (n_seq == 0 || max_len == 0) return;
  if (bf16 && attention_mma_supported(head_dim))
    return attention_forward_mma(out, lse, q, qs, k, ks, v, vs, offsets, n_seq, max_len, n_head, n_kv_head, head_dim,
                                 bias, window);
  const size_t smem = fp32_forward_smem(head_dim);
  set_smem(attention_forward_kernel, smem, "forward", head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  attention_forward_kernel<<<tile_grid(max_len, n_seq, n_head), kThreads, smem>>>(
      out, lse, q, qs, k, ks, v, vs, offsets, n_head, n_head / n_kv_head, head_dim, scale, window);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, int qs, const float* k, int ks, const float* v, int vs,
                        const int32_t* offsets, int n_seq, int max_len, int T, int n_head, int n_kv_head,
                        int head_dim, bool bf16, const QkvBias& bias, int window) {
  check_shape("cuda::attention_backward", n_seq, max_len, n_head, n_kv_head, head_dim);
  check_bias("cuda::attention_backward", bias, bf16, head_dim);
  if (n_seq == 0 || max_len == 0 || T == 0) return;
  const int group = n_head / n_kv_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  Buffer<float> D(static_cast<size_t>(T) * n_head, "attention backward rowsum(dO * O)");
  const int64_t warps = static_cast<int64_t>(T) * n_head;
  attention_dsum_kernel<<<static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads), kThreads>>>(
      D.data(), dout, out, T, n_head, head_dim);
  OPTUNE_CUDA_CHECK_LAUNCH();
  if (bf16 && attention_mma_supported(head_dim))
    return attention_backward_mma(dq, dk, dv, dout, lse, D.data(), q, qs, k, ks, v, vs, offsets, n_seq, max_len,
                                  n_head, n_kv_head, head_dim, bias, window);

  const size_t smem_kv = fp32_backward_kv_smem(head_dim);
  const auto dkdv = head_dim <= kAttentionNarrowHeadDim
                        ? attention_backward_dkdv_kernel<acc_per_thread<kAttentionNarrowHeadDim>()>
                        : attention_backward_dkdv_kernel<acc_per_thread<kAttentionMaxHeadDim>()>;
  set_smem(dkdv, smem_kv, "backward (dK/dV)", head_dim);
  dkdv<<<tile_grid(max_len, n_seq, n_kv_head), kThreads, smem_kv>>>(dk, dv, dout, lse, D.data(), q, qs, k, ks, v, vs,
                                                                     offsets, n_head, group, head_dim, scale, window);
  OPTUNE_CUDA_CHECK_LAUNCH();

  const size_t smem_q = fp32_backward_q_smem(head_dim);
  const auto dq_kernel = head_dim <= kAttentionNarrowHeadDim
                             ? attention_backward_dq_kernel<acc_per_thread<kAttentionNarrowHeadDim>()>
                             : attention_backward_dq_kernel<acc_per_thread<kAttentionMaxHeadDim>()>;
  set_smem(dq_kernel, smem_q, "backward (dQ)", head_dim);
  dq_kernel<<<tile_grid(max_len, n_seq, n_head), kThreads, smem_q>>>(
      dq, dout, lse, D.data(), q, qs, k, ks, v, vs, offsets, n_head, group, head_dim, scale, window);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
