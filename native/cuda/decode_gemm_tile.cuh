// One block's tile of a decode-step GEMM on tensor cores, as device functions: decode_gemm.cu's kernel runs one tile
// per block, and a persistent kernel may run several in turn (bench/bench_cuda_persistent.cu).
//
// A block owns all rows (up to 64) of A and 64 columns of C, over a range [k_begin, k_end) of K. Four warps take 16
// columns each. Chunks of 64 along K stream through shared memory in a kStages-deep cp.async pipeline (A's rows and
// B's chunk side by side), so a block keeps ~kStages x 8 KB of weights in flight; ldmatrix feeds the m16n8k16
// products. Rows past M, columns past N and K past k_end are zero-filled by cp.async (src-size 0), so they add
// nothing. Needs N % 8 == 0, (k_end - k_begin) % 8 == 0 and 16-byte aligned A and B. A is [M, K] row-major; B is
// [K, N] row-major (GPT-2's Conv1D weights) or, TRANS_B, [N, K] (nn.Linear's).
#pragma once
#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "decode_gemm.h"
#include "mma.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda::decode_tile {

using bf16 = __nv_bfloat16;

constexpr int kTileM = 64, kTileN = 64, kTileK = 64;  // a block's rows and columns; the K chunk
static_assert(kTileM == kDecodeGemmMaxRows, "a block holds every row");
constexpr int kStages = 4;
constexpr int kThreads = 128;  // 4 warps x 16 columns
constexpr int kLd = 64 + 8;    // shared row stride (elements): 144 bytes, so ldmatrix's 8 rows hit distinct banks
constexpr int kStageElems = (kTileM + 64) * kLd;  // A chunk [64 rows][kLd] + B chunk [64][kLd]
constexpr size_t kSmemBytes = sizeof(bf16) * kStages * kStageElems;

// One K chunk [k0, k0 + 64) of A's rows into a stage: each thread copies 4 pieces of 16 bytes.
__device__ inline void load_a_chunk(bf16* stage, const bf16* A, int M, int K, int k0, int k_end) {
  bf16* sA = stage;
#pragma unroll
  for (int i = 0; i < kTileM * 8 / kThreads; i++) {
    const int idx = threadIdx.x + i * kThreads, r = idx >> 3, k = k0 + (idx & 7) * 8;
    const bool valid = r < M && k < k_end;
    cp_async16(sA + r * kLd + (idx & 7) * 8, valid ? A + static_cast<int64_t>(r) * K + k : A, valid);
  }
}

// The same chunk of B's columns n0 .. n0 + 63 into the stage, 4 pieces of 16 bytes per thread. B row-major [K, N]
// (GPT-2's Conv1D weights): the stage holds B[k][n]; TRANS_B ([N, K], nn.Linear's): B^T[n][k].
template <bool TRANS_B>
__device__ inline void load_b_chunk(bf16* stage, const bf16* B, int N, int K, int n0, int k0, int k_end) {
  bf16* sB = stage + kTileM * kLd;
#pragma unroll
  for (int i = 0; i < 64 * 8 / kThreads; i++) {
    const int idx = threadIdx.x + i * kThreads, r = idx >> 3, seg = (idx & 7) * 8;
    if constexpr (TRANS_B) {  // row r: column n0 + r of C, 8 k's per piece
      const int n = n0 + r, k = k0 + seg;
      const bool valid = n < N && k < k_end;
      cp_async16(sB + r * kLd + seg, valid ? B + static_cast<int64_t>(n) * K + k : B, valid);
    } else {  // row r: k0 + r, 8 columns per piece
      const int k = k0 + r, n = n0 + seg;
      const bool valid = k < k_end && n < N;
      cp_async16(sB + r * kLd + seg, valid ? B + static_cast<int64_t>(k) * N + n : B, valid);
    }
  }
}

// Requests the block's weights for K in [k0, k_end) into L2 (columns n0 .. n0 + 63): one prefetch per 128-byte line,
// spread over the threads. A hint: nothing waits on it.
template <bool TRANS_B>
__device__ inline void prefetch_b_l2(const bf16* B, int N, int K, int n0, int k0, int k_end) {
  if (k0 >= k_end) return;
  constexpr int kLine = 128 / sizeof(bf16);  // elements per line
  if constexpr (TRANS_B) {  // rows n of B, K contiguous: lines along k
    const int lines = (k_end - k0 + kLine - 1) / kLine + 1;  // + 1: the range need not start on a line
    for (int i = threadIdx.x; i < 64 * lines; i += kThreads) {
      const int n = n0 + i / lines, k = min(k0 + (i % lines) * kLine, k_end - 1);
      if (n < N) sampler::prefetch_l2(B + static_cast<int64_t>(n) * K + k);
    }
  } else {  // rows k of B, the block's 64 columns (128 bytes) in one or two lines
    const int last = min(N, n0 + 64) - 1;
    for (int i = threadIdx.x; i < 2 * (k_end - k0); i += kThreads) {
      const int k = k0 + i / 2;
      sampler::prefetch_l2(B + static_cast<int64_t>(k) * N + (i % 2 ? last : n0));
    }
  }
}

// acc[mt][nt] += rows mt*16.. of the stage's A chunk times the warp's columns nt*8.. of its B chunk (4 k16 steps).
template <bool TRANS_B>
__device__ inline void multiply_chunk(float (&acc)[4][2][4], const bf16* stage, int m_tiles) {
  const bf16* sA = stage;
  const bf16* sB = stage + kTileM * kLd;
  const int lane = threadIdx.x & 31, n_w = (threadIdx.x >> 5) * 16;
#pragma unroll
  for (int kk = 0; kk < kTileK; kk += 16) {
    uint32_t b[4];  // b0, b1 of columns n_w .. n_w + 7, then of n_w + 8 .. n_w + 15
    if constexpr (TRANS_B)
      ldmatrix_x4(b, sB + (n_w + (lane & 7) + ((lane >> 4) << 3)) * kLd + kk + ((lane >> 3) & 1) * 8);
    else
      ldmatrix_x4_trans(b, sB + (kk + (lane & 15)) * kLd + n_w + (lane >> 4) * 8);
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
      if (mt < m_tiles) {  // warp-uniform: row tiles past M are skipped
        uint32_t a[4];
        ldmatrix_x4(a, sA + (mt * 16 + (lane & 15)) * kLd + kk + (lane >> 4) * 8);
        mma_bf16_16816(acc[mt][0], a, b[0], b[1]);
        mma_bf16_16816(acc[mt][1], a, b[2], b[3]);
      }
    }
  }
}

// The B loads of the tile's first kStages - 1 chunks (weights: constants, so they may go out before the kernel or
// phase that writes A has finished), and with prefetch_rest, L2 requests for the rest of the tile's weights.
template <bool TRANS_B>
__device__ inline void start_tile(bf16* smem, const bf16* B, int N, int K, int n0, int k_begin, int k_end,
                                  bool prefetch_rest) {
  const int chunks = (k_end - k_begin + kTileK - 1) / kTileK;
  for (int c = 0; c < kStages - 1 && c < chunks; c++)
    load_b_chunk<TRANS_B>(smem + c * kStageElems, B, N, K, n0, k_begin + c * kTileK, k_end);
  if (prefetch_rest) prefetch_b_l2<TRANS_B>(B, N, K, n0, k_begin + (kStages - 1) * kTileK, k_end);
}

// After start_tile with the same arguments: acc = the tile's A op(B) over [k_begin, k_end). A is read only here.
// Returns with every copy landed; the caller syncs the block before shared memory is reused.
template <bool TRANS_B>
__device__ inline void run_tile(float (&acc)[4][2][4], bf16* smem, const bf16* A, const bf16* B, int M, int N, int K,
                                int n0, int k_begin, int k_end) {
  const int chunks = (k_end - k_begin + kTileK - 1) / kTileK;
  const int m_tiles = (M + 15) / 16;
#pragma unroll
  for (int mt = 0; mt < 4; mt++)
#pragma unroll
    for (int nt = 0; nt < 2; nt++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;
  // The first group holds start_tile's B chunks and A's chunk 0, group c A's chunk c: group c is complete by the
  // wait for chunk c below, as when each group held both halves of its chunk.
#pragma unroll
  for (int c = 0; c < kStages - 1; c++) {
    if (c < chunks) load_a_chunk(smem + c * kStageElems, A, M, K, k_begin + c * kTileK, k_end);
    cp_async_commit();  // (an empty group past the last chunk keeps the wait count below uniform)
  }
  for (int c = 0; c < chunks; c++) {
    cp_async_wait<kStages - 2>();  // chunk c has landed (this thread's copies) ...
    __syncthreads();               // ... everyone's, and everyone is done with the stage refilled below (c - 1's)
    const int next = c + kStages - 1;
    if (next < chunks) {
      bf16* stage = smem + (next % kStages) * kStageElems;
      load_a_chunk(stage, A, M, K, k_begin + next * kTileK, k_end);
      load_b_chunk<TRANS_B>(stage, B, N, K, n0, k_begin + next * kTileK, k_end);
    }
    cp_async_commit();
    multiply_chunk<TRANS_B>(acc, smem + (c % kStages) * kStageElems, m_tiles);
  }
  cp_async_wait<0>();
}

// Calls f(row, col, v0, v1) for the thread's pairs of C[row][col], C[row][col + 1] in the tile (rows < M, col < N).
template <class F>
__device__ inline void for_each_pair(const float (&acc)[4][2][4], int n0, int M, int N, const F& f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 4; mt++) {
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
      const int col = n0 + (threadIdx.x >> 5) * 16 + nt * 8 + 2 * t;
      if (col >= N) continue;  // N % 8 == 0: col + 1 < N too
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int row = mt * 16 + g + 8 * half;
        if (row < M) f(row, col, acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
      }
    }
  }
}

}  // namespace optune::cuda::decode_tile
