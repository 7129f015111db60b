// Causal attention on tensor cores for bf16 mixed precision: the same FlashAttention-2 scheme and the same
// interface as attention.cu (fp32 q/k/v/dout in, fp32 out/lse/dq/dk/dv), with every inner product on
// mma.sync.m16n8k16 (bf16 operands, fp32 accumulation). Tiles are rounded to bf16 as they are copied to shared
// memory; the online softmax, lse, D = rowsum(dO * O) and all accumulators stay fp32. P and dS are rounded to bf16
// only as operands of the next product (as FlashAttention does). Biases of q/k/v (QkvBias, GPT-2's) are added as the
// tiles are read, so the engine needs no bias pass over q|k|v.
//
// Blocks: 8 warps; a block owns 128 rows (queries in forward and dQ, keys in dK/dV), each warp 16 of them, and walks
// the 64-wide tiles of the other side along the causal triangle (a warp skips the products of a tile that the causal
// mask hides from all its rows). 128 rows per block: each tile loaded into shared memory feeds twice the products
// of 64-row blocks (which ran at ~20 TFLOP/s on an H100, bound by the tile loads). Backward is two kernels as in attention.cu (dK/dV
// per key tile summing the GQA group's heads, dQ per query tile), so every output element has one owner: no atomics,
// the same result on every run. Head dims: multiples of 16 up to 128 (others use the fp32 kernels).
//
// mma.sync.m16n8k16 fragments: see mma.cuh. Two adjacent C tiles of a product are, rounded to bf16, the A fragment
// of the next product (P -> P V).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "attention_window.cuh"
#include "check.cuh"
#include "core/error.h"
#include "memory.h"
#include "mma.cuh"
#include "ops.h"

namespace optune::cuda {

namespace {

constexpr int kRows = 128;  // rows a block owns (16 per warp)
constexpr int kCols = 64;   // width of the tiles it walks
constexpr int kMmaThreads = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using bf16 = __nv_bfloat16;

__device__ inline uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo: the lower column, as fragments want
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ inline uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// A fragment of rows m0.., columns k0.. of a row-major [rows][ld] tile.
__device__ inline void load_a(uint32_t (&a)[4], const bf16* s, int ld, int m0, int k0) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const bf16* p = s + (m0 + g) * ld + k0 + 2 * t;
  a[0] = ld32(p);
  a[1] = ld32(p + 8 * ld);
  a[2] = ld32(p + 8);
  a[3] = ld32(p + 8 * ld + 8);
}

// B fragment (k0.. k0+15, n0.. n0+7) of B = M^T, M a row-major [n][ld] tile (B[k][n] = M[n][k]: K for Q K^T).
__device__ inline void load_b(uint32_t& b0, uint32_t& b1, const bf16* s, int ld, int n0, int k0) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const bf16* p = s + (n0 + g) * ld + k0 + 2 * t;
  b0 = ld32(p);
  b1 = ld32(p + 8);
}

// B fragment (k0.., n0..) of B = M itself, M a row-major [k][ld] tile (V for P V): ldmatrix's transposing load; lanes
// 0-15 give the addresses of rows k0.. k0+15 (lanes 16-31 are ignored by .x2 but point inside the tile too).
__device__ inline void load_b_trans(uint32_t& b0, uint32_t& b1, const bf16* s, int ld, int n0, int k0) {
  const bf16* p = s + (k0 + (threadIdx.x & 15)) * ld + n0;
#ifdef OPTUNE_CUDA_EMU
  ldmatrix_x2_trans(b0, b1, p);
#else
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
#endif
}

// Rows [row0, row0 + n) of a head slice (fp32, row stride `stride`) into a [ROWS][HD + 8] bf16 tile; rows >= n
// become 0 (padding rows must hold finite values: 0 * NaN would poison the products).
struct TileCopy {
  bf16* dst;
  const float* src;
  int64_t stride;
  const float* bias;  // [HD] added to every row as it is read (QkvBias), or null
  __device__ bool wide() const {  // 16-byte loads possible (the usual case: strides, head offsets multiples of 4)
    return reinterpret_cast<uintptr_t>(src) % 16 == 0 && stride % 4 == 0;
  }
};

// One tile with 8-byte loads (a slice that is not 16-byte aligned).
template <int HD, int ROWS>
__device__ inline void load_tile_narrow(const TileCopy& t, int row0, int n) {
  constexpr int ld = HD + 8, pairs = HD / 2;
  for (int idx = threadIdx.x; idx < ROWS * pairs; idx += blockDim.x) {
    const int r = idx / pairs, d = 2 * (idx % pairs);
    float x0 = 0.0f, x1 = 0.0f;
    if (r < n) {
      const float* p = t.src + (row0 + r) * t.stride + d;
      x0 = p[0] + (t.bias ? t.bias[d] : 0.0f), x1 = p[1] + (t.bias ? t.bias[d + 1] : 0.0f);
    }
    *reinterpret_cast<uint32_t*>(t.dst + r * ld + d) = pack_bf16(x0, x1);
  }
}

// The bias slice of one head (null when there is none).
__device__ inline const float* head_bias(const float* bias, int head, int hd) { return bias ? bias + head * hd : nullptr; }

// A thread's share of NT tiles of ROWS rows (K and V, Q and dO) with 16-byte loads, in two steps: fetch() issues
// the loads into registers, store() adds the bias, rounds to bf16 and writes the tiles' shared memory. The loads
// carry no branch and nothing uses their values before store(), so they all go out back to back. The first version
// guarded each load with `if (row < n)` and added its bias inside the guard: the SASS had a branch region per 16
// bytes whose add waited for its load before the next load issued (Nsight on an H200: 39% of the forward's stall
// samples, on those adds; ~8 serialized L2 round trips per tile). Rows >= n read row n - 1 (n >= 1: a valid row)
// and are stored as 0 (padding rows must hold finite values: 0 * NaN would poison the products).
// Pipelined kernels (prefetch_wanted()) fetch tile j + 1 right after storing tile j, so those loads are
// in flight during tile j's products. Launches use kMmaThreads threads per block.
template <int HD, int ROWS, int NT>
struct TileFetch {
  static constexpr int quads = HD / 4, per_tile = ROWS * quads / kMmaThreads, total = NT * per_tile;
  static_assert((ROWS * quads) % kMmaThreads == 0, "whole float4s per thread");
  static_assert(kMmaThreads % quads == 0, "a thread's columns are the same in every row it copies");
  float4 x[total];

  __device__ void fetch(const TileCopy (&t)[NT], int row0, int n) {  // every t[i].wide(); n >= 1
#pragma unroll
    for (int e = 0; e < total; e++) {
      const int idx = threadIdx.x + (e % per_tile) * kMmaThreads, r = min(idx / quads, n - 1), d = 4 * (idx % quads);
      const TileCopy& c = t[e / per_tile];
      x[e] = __ldg(reinterpret_cast<const float4*>(c.src + (row0 + r) * c.stride + d));
    }
  }
  __device__ void store(const TileCopy (&t)[NT], int n) const {
    constexpr int ld = HD + 8;
    const int dq = 4 * (threadIdx.x % quads);  // this thread's 4 columns in every row it copies
    float4 b4[NT];
#pragma unroll
    for (int i = 0; i < NT; i++)
      b4[i] = t[i].bias ? make_float4(t[i].bias[dq], t[i].bias[dq + 1], t[i].bias[dq + 2], t[i].bias[dq + 3])
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int e = 0; e < total; e++) {
      const int idx = threadIdx.x + (e % per_tile) * kMmaThreads, r = idx / quads, d = 4 * (idx % quads);
      const TileCopy& c = t[e / per_tile];
      const float4 bb = b4[e / per_tile];
      float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < n) {
        y = x[e];
        if (c.bias) y.x += bb.x, y.y += bb.y, y.z += bb.z, y.w += bb.w;
      }
      *reinterpret_cast<uint2*>(c.dst + r * ld + d) = make_uint2(pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
    }
  }
};

// NT tiles at once: fetch then store when every slice allows 16-byte loads, else 8-byte loads tile by tile.
template <int HD, int ROWS, int NT>
__device__ inline void load_tiles(const TileCopy (&t)[NT], int row0, int n) {
  bool wide = true;
#pragma unroll
  for (int i = 0; i < NT; i++) wide = wide && t[i].wide();
  if (!wide) {
#pragma unroll
    for (int i = 0; i < NT; i++) load_tile_narrow<HD, ROWS>(t[i], row0, n);
    return;
  }
  TileFetch<HD, ROWS, NT> f;
  f.fetch(t, row0, n);
  f.store(t, n);
}

// The K/V tiles of the step at key j0 (of 0 .. j_end - 1) into Ks/Vs for every warp, after a barrier that ends
// the previous step's reads. PREFETCH: they come from the registers fetched during the previous step, and the next
// step's fetch goes out before returning (its loads in flight during this step's products).
template <int HD, bool PREFETCH>
__device__ inline void kv_step(TileFetch<HD, kCols, 2>& next, const TileCopy (&kv)[2], int start, int j0, int j_end,
                               int L) {
  __syncthreads();
  if constexpr (PREFETCH) {
    next.store(kv, min(kCols, L - j0));
    __syncthreads();
    if (j0 + kCols < j_end) next.fetch(kv, start + j0 + kCols, min(kCols, L - j0 - kCols));
  } else {
    load_tiles<HD, kCols, 2>(kv, start + j0, min(kCols, L - j0));
    __syncthreads();
  }
}

// The A fragment (16 x 16, columns 16 kk .. 16 kk + 15) of the next product from a row of C tiles of this one,
// rounded to bf16: C tiles 2 kk and 2 kk + 1 hold those columns (kk: a compile-time constant after unrolling).
template <int N>
__device__ inline void c_to_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// x = A1 B1^T and y = A2 B2^T over head_dim, for this warp's 16 rows (from m0) and a tile's kCols columns: A1, A2
// are [rows][HD + 8] tiles, B1, B2 [kCols][HD + 8] tiles (row-major, so the fragments of B^T are plain loads).
template <int HD>
__device__ inline void two_products(float (&x)[kCols / 8][4], float (&y)[kCols / 8][4], const bf16* A1,
                                    const bf16* A2, const bf16* B1, const bf16* B2, int m0) {
  constexpr int ld = HD + 8;
#pragma unroll
  for (int nt = 0; nt < kCols / 8; nt++)
#pragma unroll
    for (int e = 0; e < 4; e++) x[nt][e] = y[nt][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < HD / 16; kk++) {
    uint32_t a1[4], a2[4];
    load_a(a1, A1, ld, m0, 16 * kk);
    load_a(a2, A2, ld, m0, 16 * kk);
#pragma unroll
    for (int nt = 0; nt < kCols / 8; nt++) {
      uint32_t b0, b1;
      load_b(b0, b1, B1, ld, 8 * nt, 16 * kk);
      mma_bf16_16816(x[nt], a1, b0, b1);
      load_b(b0, b1, B2, ld, 8 * nt, 16 * kk);
      mma_bf16_16816(y[nt], a2, b0, b1);
    }
  }
}

// acc += C B for this warp's 16 rows: C (16 x kCols) is a row of C tiles of the previous product (P, dS), B a
// [kCols][HD + 8] tile in shared memory (V, dO, Q or K), read with transposing loads.
template <int HD>
__device__ inline void add_product(float (&acc)[HD / 8][4], const float (&c)[kCols / 8][4], const bf16* B) {
#pragma unroll
  for (int kk = 0; kk < kCols / 16; kk++) {
    uint32_t a[4];
    c_to_a(a, c, kk);
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) {
      uint32_t b0, b1;
      load_b_trans(b0, b1, B, HD + 8, 8 * nt, 16 * kk);
      mma_bf16_16816(acc[nt], a, b0, b1);
    }
  }
}

__device__ inline float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ inline float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- forward ---------------------------------------------------------------------------------------------------

// Grid (query tiles, sequences, heads). Scores are kept in log2 units (scale * log2 e folded in) for exp2f.
// Two blocks per SM up to head_dim 64 (at most 128 registers a thread): one block's tile loads overlap the other's
// products. Unbounded, the batched loads took the kernel to ~140 registers and one block per SM.
// PREFETCH (OPTUNE_CUDA_ATTN_PREFETCH=1, wide slices): the next K/V tiles are fetched into registers while this
// tile's products run (TileFetch); their 32 registers do not fit the 128 of two blocks per SM, so one block per SM.
template <int HD, bool PREFETCH>
__global__ void __launch_bounds__(kMmaThreads, HD <= 64 && !PREFETCH ? 2 : 1) attention_forward_mma_kernel(
    float* out, float* lse, const float* q, int qs, const float* k, int ks, const float* v, int vs,
    const int32_t* offsets, int n_head, int group, float scale_log2, QkvBias bias, int window) {
  constexpr int ld = HD + 8, NT = HD / 8;
  const int s = blockIdx.y, h = blockIdx.z, kvh = h / group, od = n_head * HD;
  const int start = offsets[s], L = offsets[s + 1] - start, i0 = blockIdx.x * kRows;
  if (i0 >= L) return;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [kRows][ld]
  bf16* Ks = Qs + kRows * ld;                    // [kCols][ld]
  bf16* Vs = Ks + kCols * ld;                    // [kCols][ld]
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, m0 = 16 * warp;
  const int nq = min(kRows, L - i0);
  const int row[2] = {i0 + m0 + g, i0 + m0 + g + 8};  // this lane's two query rows (positions in the sequence)

  load_tiles<HD, kRows, 1>({TileCopy{Qs, q + h * HD, qs, head_bias(bias.q, h, HD)}}, start + i0, nq);
  __syncthreads();
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; kk++) load_a(qf[kk], Qs, ld, m0, 16 * kk);

  float o[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};  // l: this lane's partial sums

  const int j_end = i0 + nq;  // causal: the tile's last query sees keys 0 .. j_end - 1
  const TileCopy kv_tiles[2] = {TileCopy{Ks, k + kvh * HD, ks, head_bias(bias.k, kvh, HD)},
                                TileCopy{Vs, v + kvh * HD, vs, head_bias(bias.v, kvh, HD)}};
  const int j_begin = first_visible_key(i0, window) / kCols * kCols;  // tiles left of the block's window: none
  TileFetch<HD, kCols, 2> next;
  if constexpr (PREFETCH) next.fetch(kv_tiles, start + j_begin, min(kCols, L - j_begin));
  for (int j0 = j_begin; j0 < j_end; j0 += kCols) {
    kv_step<HD, PREFETCH>(next, kv_tiles, start, j0, j_end, L);
    if (j0 > i0 + m0 + 15) continue;  // the whole tile is right of this warp's last row's diagonal (warp-uniform)
    // (sliding window) the whole tile is left of this warp's first row's window
    if (window > 0 && j0 + kCols - 1 <= i0 + m0 - window) continue;

    float sc[kCols / 8][4];
#pragma unroll
    for (int nt = 0; nt < kCols / 8; nt++) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
      for (int nt = 0; nt < kCols / 8; nt++) {
        uint32_t b0, b1;
        load_b(b0, b1, Ks, ld, 8 * nt, 16 * kk);
        mma_bf16_16816(sc[nt], qf[kk], b0, b1);
      }

    // scale, causal mask (key <= query < L, and key > query - window with a window), running max per row. A tile
    // wholly left of the warp's first row's diagonal, and (with a window) wholly inside its last row's window, needs
    // no mask (most tiles): its keys are below every row's, and below L for every row < L (the rows >= L, zero
    // padding, are never written out).
    float mx[2] = {-INFINITY, -INFINITY};
    if (j0 + kCols - 1 <= i0 + m0 && (window <= 0 || j0 > i0 + m0 + 15 - window)) {  // warp-uniform
#pragma unroll
      for (int nt = 0; nt < kCols / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          sc[nt][e] *= scale_log2;
          mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < kCols / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = j0 + 8 * nt + 2 * t + (e & 1), r = row[e >> 1];
          const float x = key <= r && r < L && (window <= 0 || key > r - window) ? sc[nt][e] * scale_log2 : -INFINITY;
          sc[nt][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const float m_new = fmaxf(m_run[r], quad_max(mx[r]));
      // O and l are still 0 while the row has seen no key (m = -inf): any finite factor will do
      const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_run[r] - m_new);
      m_run[r] = m_new;
      l_run[r] *= alpha;
#pragma unroll
      for (int nt = 0; nt < NT; nt++) o[nt][2 * r] *= alpha, o[nt][2 * r + 1] *= alpha;
    }
#pragma unroll
    for (int nt = 0; nt < kCols / 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float m = m_run[e >> 1];
        const float p = m == -INFINITY ? 0.0f : exp2f(sc[nt][e] - m);  // masked: exp2(-inf) = 0
        sc[nt][e] = p;
        l_run[e >> 1] += p;
      }

    add_product<HD>(o, sc, Vs);  // O += P V
  }

#pragma unroll
  for (int r = 0; r < 2; r++) {
    const float l = quad_sum(l_run[r]);
    if (row[r] >= L) continue;
    const int64_t base = static_cast<int64_t>(start + row[r]) * od + h * HD + 2 * t;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
      out[base + 8 * nt] = o[nt][2 * r] / l;
      out[base + 8 * nt + 1] = o[nt][2 * r + 1] / l;
    }
    if (t == 0) lse[static_cast<int64_t>(start + row[r]) * n_head + h] = m_run[r] * kLn2 + logf(l);
  }
}

// ---- backward --------------------------------------------------------------------------------------------------

// The Q and dO tiles of one query head (a copyable pair for TileFetch).
struct QdoTiles {
  TileCopy t[2];
};

// load_row_stats in two steps for the pipelined dK/dV kernel: thread r < kCols fetches row r's lse and D (rows past
// the end read the last valid row), store() writes them as load_row_stats does.
struct RowStatsFetch {
  float lse = 0.0f, D = 0.0f;
  __device__ void fetch(const float* lse_g, const float* D_g, int row0, int n, int n_head, int h) {
    if (threadIdx.x >= kCols) return;
    const int64_t i = static_cast<int64_t>(row0 + min(static_cast<int>(threadIdx.x), n - 1)) * n_head + h;
    lse = lse_g[i], D = D_g[i];
  }
  __device__ void store(float* lse2_s, float* D_s, int n) const {
    const int r = threadIdx.x;
    if (r >= kCols) return;
    lse2_s[r] = r < n ? lse * kLog2e : 0.0f;
    D_s[r] = r < n ? D : 0.0f;
  }
};

// Per-query softmax statistics of a tile into shared memory: lse in log2 units, D; 0 for padding rows.
__device__ inline void load_row_stats(float* lse2_s, float* D_s, const float* lse, const float* D, int row0, int n,
                                      int n_head, int h) {
  for (int r = threadIdx.x; r < kCols; r += blockDim.x) {
    const int64_t i = static_cast<int64_t>(row0 + r) * n_head + h;
    lse2_s[r] = r < n ? lse[i] * kLog2e : 0.0f;
    D_s[r] = r < n ? D[i] : 0.0f;
  }
}

// Grid (key tiles, sequences, kv heads): dK, dV of 64 keys, summed over the query heads of the GQA group and the
// query tiles from the diagonal down. Per query tile: S^T = K Q^T, P^T = exp(S^T - lse), dV += P^T dO,
// dP^T = V dO^T, dS^T = P^T (dP^T - D) scale, dK += dS^T Q.
// PREFETCH: the next step's Q/dO tiles and softmax statistics are fetched into registers during this step's
// products (TileFetch, RowStatsFetch); the steps run over (head of the group, query tile) in the same order.
template <int HD, bool PREFETCH>
__global__ void __launch_bounds__(kMmaThreads) attention_backward_dkdv_mma_kernel(
    float* dk, float* dv, const float* dout, const float* lse, const float* D, const float* q, int qs, const float* k,
    int ks, const float* v, int vs, const int32_t* offsets, int n_head, int group, float scale, float scale_log2,
    QkvBias bias, int window) {
  constexpr int ld = HD + 8, NT = HD / 8;
  const int s = blockIdx.y, kvh = blockIdx.z, od = n_head * HD;
  const int start = offsets[s], L = offsets[s + 1] - start, j0 = blockIdx.x * kRows;
  if (j0 >= L) return;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);  // [kRows][ld]
  bf16* Vs = Ks + kRows * ld;
  bf16* Qs = Vs + kRows * ld;                    // [kCols][ld]
  bf16* dOs = Qs + kCols * ld;
  float* lse2_s = reinterpret_cast<float*>(dOs + kCols * ld);
  float* D_s = lse2_s + kCols;
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, m0 = 16 * warp;
  const int key[2] = {j0 + m0 + g, j0 + m0 + g + 8};  // this lane's two keys

  load_tiles<HD, kRows, 2>({TileCopy{Ks, k + kvh * HD, ks, head_bias(bias.k, kvh, HD)},
                              TileCopy{Vs, v + kvh * HD, vs, head_bias(bias.v, kvh, HD)}}, start + j0,
                           min(kRows, L - j0));
  float dk_acc[NT][4], dv_acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk_acc[nt][e] = dv_acc[nt][e] = 0.0f;

  // Steps: the group's heads in turn, each over the query tiles from the block's diagonal down (kRows % kCols == 0)
  // to the last query that sees the block's last key.
  const int q_end = visible_query_end(min(L, j0 + kRows) - 1, window, L);
  const int n_qt = (q_end - j0 + kCols - 1) / kCols, steps = group * n_qt;
  const auto tiles_of = [&](int h) {
    return QdoTiles{{TileCopy{Qs, q + h * HD, qs, head_bias(bias.q, h, HD)},
                     TileCopy{dOs, dout + h * HD, od, nullptr}}};
  };
  TileFetch<HD, kCols, 2> next;
  RowStatsFetch next_stats;
  if constexpr (PREFETCH) {
    next.fetch(tiles_of(kvh * group).t, start + j0, min(kCols, L - j0));
    next_stats.fetch(lse, D, start + j0, min(kCols, L - j0), n_head, kvh * group);
  }
  for (int step = 0; step < steps; step++) {
    const int h = kvh * group + step / n_qt, i0 = j0 + (step % n_qt) * kCols, nq = min(kCols, L - i0);
    __syncthreads();  // Ks/Vs are loaded; the previous tile's readers of Qs/dOs/stats are done
    if constexpr (PREFETCH) {
      next.store(tiles_of(h).t, nq);
      next_stats.store(lse2_s, D_s, nq);
      __syncthreads();
      if (step + 1 < steps) {
        const int h1 = kvh * group + (step + 1) / n_qt, i1 = j0 + ((step + 1) % n_qt) * kCols;
        next.fetch(tiles_of(h1).t, start + i1, min(kCols, L - i1));
        next_stats.fetch(lse, D, start + i1, min(kCols, L - i1), n_head, h1);
      }
    } else {
      load_tiles<HD, kCols, 2>(tiles_of(h).t, start + i0, nq);
      load_row_stats(lse2_s, D_s, lse, D, start + i0, nq, n_head, h);
      __syncthreads();
    }
    if (i0 + kCols - 1 < j0 + m0) continue;  // every query of the tile precedes this warp's keys (warp-uniform)
    if (i0 >= visible_query_end(j0 + m0 + 15, window, L)) continue;  // (window) and follows their last query's

    float st[kCols / 8][4], dpt[kCols / 8][4];  // S^T then P^T; dP^T then dS^T (rows: keys, columns: queries)
    two_products<HD>(st, dpt, Ks, Vs, Qs, dOs, m0);  // S^T = K Q^T, dP^T = V dO^T
#pragma unroll
    for (int nt = 0; nt < kCols / 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int c = 8 * nt + 2 * t + (e & 1), qi = i0 + c;
        // causal (implies key < L), within the window, no padding query
        const bool live = qi >= key[e >> 1] && qi < L && (window <= 0 || qi < key[e >> 1] + window);
        const float p = live ? exp2f(st[nt][e] * scale_log2 - lse2_s[c]) : 0.0f;
        st[nt][e] = p;
        dpt[nt][e] = p * (dpt[nt][e] - D_s[c]) * scale;
      }
    add_product<HD>(dv_acc, st, dOs);  // dV += P^T dO
    add_product<HD>(dk_acc, dpt, Qs);  // dK += dS^T Q
  }

#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (key[r] >= L) continue;
    const int64_t row = start + key[r];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
      const int d = kvh * HD + 8 * nt + 2 * t;
      dk[row * ks + d] = dk_acc[nt][2 * r];
      dk[row * ks + d + 1] = dk_acc[nt][2 * r + 1];
      dv[row * vs + d] = dv_acc[nt][2 * r];
      dv[row * vs + d + 1] = dv_acc[nt][2 * r + 1];
    }
  }
}

// Grid (query tiles, sequences, heads): dQ of 64 queries over the key tiles left of the diagonal. Per key tile:
// S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - D) scale, dQ += dS K.
// PREFETCH: as the forward's (the next K/V tiles in registers during this tile's products).
template <int HD, bool PREFETCH>
__global__ void __launch_bounds__(kMmaThreads) attention_backward_dq_mma_kernel(
    float* dq, const float* dout, const float* lse, const float* D, const float* q, int qs, const float* k, int ks,
    const float* v, int vs, const int32_t* offsets, int n_head, int group, float scale, float scale_log2,
    QkvBias bias, int window) {
  constexpr int ld = HD + 8, NT = HD / 8;
  const int s = blockIdx.y, h = blockIdx.z, kvh = h / group, od = n_head * HD;
  const int start = offsets[s], L = offsets[s + 1] - start, i0 = blockIdx.x * kRows;
  if (i0 >= L) return;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [kRows][ld]
  bf16* dOs = Qs + kRows * ld;
  bf16* Ks = dOs + kRows * ld;                   // [kCols][ld]
  bf16* Vs = Ks + kCols * ld;
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, m0 = 16 * warp;
  const int nq = min(kRows, L - i0);
  const int row[2] = {i0 + m0 + g, i0 + m0 + g + 8};
  float lse2[2], Dr[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int64_t i = static_cast<int64_t>(start + row[r]) * n_head + h;
    lse2[r] = row[r] < L ? lse[i] * kLog2e : 0.0f;
    Dr[r] = row[r] < L ? D[i] : 0.0f;
  }

  load_tiles<HD, kRows, 2>({TileCopy{Qs, q + h * HD, qs, head_bias(bias.q, h, HD)},
                              TileCopy{dOs, dout + h * HD, od, nullptr}}, start + i0, nq);
  float dq_acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) dq_acc[nt][0] = dq_acc[nt][1] = dq_acc[nt][2] = dq_acc[nt][3] = 0.0f;

  const int j_end = i0 + nq;
  const TileCopy kv_tiles[2] = {TileCopy{Ks, k + kvh * HD, ks, head_bias(bias.k, kvh, HD)},
                                TileCopy{Vs, v + kvh * HD, vs, head_bias(bias.v, kvh, HD)}};
  const int j_begin = first_visible_key(i0, window) / kCols * kCols;  // tiles left of the block's window: none
  TileFetch<HD, kCols, 2> next;
  if constexpr (PREFETCH) next.fetch(kv_tiles, start + j_begin, min(kCols, L - j_begin));
  for (int j0 = j_begin; j0 < j_end; j0 += kCols) {
    kv_step<HD, PREFETCH>(next, kv_tiles, start, j0, j_end, L);  // (Qs/dOs were loaded before the loop)
    if (j0 > i0 + m0 + 15) continue;  // the whole tile is right of this warp's last row's diagonal (warp-uniform)
    if (window > 0 && j0 + kCols - 1 <= i0 + m0 - window) continue;  // (window) left of this warp's first row's

    float sc[kCols / 8][4], dp[kCols / 8][4];
    two_products<HD>(sc, dp, Qs, dOs, Ks, Vs, m0);  // S = Q K^T, dP = dO V^T
#pragma unroll
    for (int nt = 0; nt < kCols / 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int kj = j0 + 8 * nt + 2 * t + (e & 1), r = e >> 1;
        const bool live = kj <= row[r] && row[r] < L && (window <= 0 || kj > row[r] - window);
        const float p = live ? exp2f(sc[nt][e] * scale_log2 - lse2[r]) : 0.0f;
        dp[nt][e] = p * (dp[nt][e] - Dr[r]) * scale;  // dS
      }
    add_product<HD>(dq_acc, dp, Ks);  // dQ += dS K
  }

#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (row[r] >= L) continue;
    const int64_t base = static_cast<int64_t>(start + row[r]) * qs + h * HD + 2 * t;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
      dq[base + 8 * nt] = dq_acc[nt][2 * r];
      dq[base + 8 * nt + 1] = dq_acc[nt][2 * r + 1];
    }
  }
}

// kernel<<<grid, kMmaThreads, smem>>>(args...), its shared memory limit raised to smem first.
template <class... Params, class... Args>
void launch_mma(void (*kernel)(Params...), dim3 grid, size_t smem, Args... args) {
  OPTUNE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, kMmaThreads, smem>>>(args...);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// Dynamic shared memory per block: the forward (Q tile, K and V tiles), the backward's dK/dV kernel (Q and dO
// tiles, K and V tiles, the tile's lse and D) and its dQ kernel. The dK/dV kernel's is the largest.
constexpr size_t forward_smem(int hd) { return sizeof(bf16) * (kRows + 2 * kCols) * (hd + 8); }
constexpr size_t backward_kv_smem(int hd) {
  return sizeof(bf16) * (2 * kRows + 2 * kCols) * (hd + 8) + 2 * kCols * sizeof(float);
}
constexpr size_t backward_q_smem(int hd) { return sizeof(bf16) * (2 * kRows + 2 * kCols) * (hd + 8); }

dim3 grid_of(int max_len, int n_seq, int heads) {
  return dim3(static_cast<unsigned>(std::max(1, (max_len + kRows - 1) / kRows)), n_seq, heads);
}

// Which kernels run pipelined (TileFetch fetching the next tiles during this tile's products), where every slice
// allows 16-byte loads. Measured on an H100 (head_dim 64, 4 x 1024 tokens): the pipelined backward (dQ + dK/dV)
// 0.287 ms against 0.331 plain, the pipelined forward 0.099 against 0.093; so by default the backward is pipelined
// at head_dim <= 64 (at 128 the pipelined dK/dV spills 240 bytes, unmeasured) and the forward is plain.
// OPTUNE_CUDA_ATTN_PREFETCH: unset: that default; "0": all plain; "1": all pipelined (any head_dim).
enum class Pass { forward, backward };
template <int HD>
bool prefetch_wanted(Pass pass) {
  const char* v = std::getenv("OPTUNE_CUDA_ATTN_PREFETCH");
  if (v && std::string(v) == "0") return false;
  if (v && std::string(v) == "1") return true;
  return pass == Pass::backward && HD <= 64;
}
bool wide_slice(const float* p, int stride) { return reinterpret_cast<uintptr_t>(p) % 16 == 0 && stride % 4 == 0; }

template <int HD>
void forward_hd(float* out, float* lse, const float* q, int qs, const float* k, int ks, const float* v, int vs,
                const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head, const QkvBias& bias,
                int window) {
  const size_t smem = forward_smem(HD);
  const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(HD));
  // (the heads' offsets are multiples of 4: the slices are wide when their bases and strides are)
  const bool pipelined = prefetch_wanted<HD>(Pass::forward) && wide_slice(k, ks) && wide_slice(v, vs);
  launch_mma(pipelined ? attention_forward_mma_kernel<HD, true> : attention_forward_mma_kernel<HD, false>,
             grid_of(max_len, n_seq, n_head), smem, out, lse, q, qs, k, ks, v, vs, offsets, n_head,
             n_head / n_kv_head, scale_log2, bias, window);
}

template <int HD>
void backward_hd(float* dq, float* dk, float* dv, const float* dout, const float* lse, const float* D,
                 const float* q, int qs, const float* k, int ks, const float* v, int vs, const int32_t* offsets,
                 int n_seq, int max_len, int n_head, int n_kv_head, const QkvBias& bias, int window) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD)), scale_log2 = scale * kLog2e;
  const int group = n_head / n_kv_head;
  const size_t smem_kv = backward_kv_smem(HD);
  const bool pipelined = prefetch_wanted<HD>(Pass::backward);
  launch_mma(pipelined && wide_slice(q, qs) && wide_slice(dout, n_head * HD)
                 ? attention_backward_dkdv_mma_kernel<HD, true>
                 : attention_backward_dkdv_mma_kernel<HD, false>,
             grid_of(max_len, n_seq, n_kv_head), smem_kv, dk, dv, dout, lse, D, q, qs, k, ks, v, vs, offsets, n_head,
             group, scale, scale_log2, bias, window);
  const size_t smem_q = backward_q_smem(HD);
  launch_mma(pipelined && wide_slice(k, ks) && wide_slice(v, vs) ? attention_backward_dq_mma_kernel<HD, true>
                                                                 : attention_backward_dq_mma_kernel<HD, false>,
             grid_of(max_len, n_seq, n_head), smem_q, dq, dout, lse, D, q, qs, k, ks, v, vs, offsets, n_head, group,
             scale, scale_log2, bias, window);
}

}  // namespace

bool attention_mma_supported(int head_dim) {
  if (head_dim != 16 && head_dim != 32 && head_dim != 64 && head_dim != 128) return false;
  // The block's shared memory must fit the GPU: data-center GPUs allow 163-227 KB per block, the GeForce and
  // workstation ones (sm_86, sm_89, sm_120) 99 KB, less than head_dim 128's backward takes (102.5 KB); there the
  // attention runs on the fp32 kernels (attention.cu), forward and backward alike.
  const size_t most = std::max({forward_smem(head_dim), backward_kv_smem(head_dim), backward_q_smem(head_dim)});
  return most <= block_smem_limit();
}

void attention_forward_mma(float* out, float* lse, const float* q, int qs, const float* k, int ks, const float* v,
                           int vs, const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head,
                           int head_dim, const QkvBias& bias, int window) {
  switch (head_dim) {
#define OPTUNE_FWD(HD)                                                                                           \
  case HD:                                                                                                       \
    return forward_hd<HD>(out, lse, q, qs, k, ks, v, vs, offsets, n_seq, max_len, n_head, n_kv_head, bias, \
                          window);
    OPTUNE_FWD(16)
    OPTUNE_FWD(32)
    OPTUNE_FWD(64)
    OPTUNE_FWD(128)
#undef OPTUNE_FWD
    default: throw Error("cuda::attention_forward_mma: head_dim " + std::to_string(head_dim) + " has no kernel");
  }
}

void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const float* lse, const float* D,
                            const float* q, int qs, const float* k, int ks, const float* v, int vs,
                            const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head, int head_dim,
                            const QkvBias& bias, int window) {
  switch (head_dim) {
#define OPTUNE_BWD(HD)                                                                                         \
  case HD:                                                                                                     \
    return backward_hd<HD>(dq, dk, dv, dout, lse, D, q, qs, k, ks, v, vs, offsets, n_seq, max_len, n_head, \
                           n_kv_head, bias, window);
    OPTUNE_BWD(16)
    OPTUNE_BWD(32)
    OPTUNE_BWD(64)
    OPTUNE_BWD(128)
#undef OPTUNE_BWD
    default: throw Error("cuda::attention_backward_mma: head_dim " + std::to_string(head_dim) + " has no kernel");
  }
}

}  // namespace optune::cuda
