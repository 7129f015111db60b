// The bf16 GEMMs of a decode step on tensor cores: C[M, N] = A[M, K] op(B) with a few rows (M <= 64, one row per
// generating sequence), bf16 operands, fp32 accumulation and output.
//
// Why: at M = 64 a decode step's GEMM is a read of its weights (GPT-2 124M: 14 MB of bf16 per layer, ~4 us at an
// H100's bandwidth), but cuBLAS ran the four of a layer in ~28 us (Nsight Compute on an H100, 64 x 32 output tiles,
// 96 blocks, ~0.5 TB/s), and splitting them along K through cuBLAS lost 2-8%.
// Not there yet: on an H100 this kernel ran 7.5-9.7 us per GEMM under Nsight (cuBLAS 6.2-7.7) and bf16 sampling at
// 79.8k tok/s with the automatic K-split against cuBLAS's 88.9k (H200: 84.3-84.6k against 96.9-98.9k), so it is
// opt-in (OPTUNE_CUDA_DECODE_GEMM=own in sampler_cuda.cu). A likely limit, not yet profiled: one block per SM with
// 4 warps keeps only ~24 KB of weights in flight per SM (3 stages ahead x 8 KB).
//
// A block owns all rows (up to 64) and 64 columns of C, over its slice of K
// (grid.y: S slices, for the Partials of sampler_kernels.cuh). Four warps take 16 columns each. Chunks of 64 along K
// stream through shared memory in a kStages-deep cp.async pipeline (A's rows and B's chunk side by side), so a block
// keeps ~kStages x 8 KB of weights in flight; ldmatrix feeds the m16n8k16 products. Rows past M, columns past N
// and K past the slice's end are zero-filled by cp.async (src-size 0), so they add nothing.
// Needs N % 8 == 0, K / S % 8 == 0 and 16-byte aligned A and B (decode_gemm_fits); other shapes use cuBLAS.
// Declared in decode_gemm.h.
#include <algorithm>
#include <string>

#include "check.cuh"
#include "core/error.h"
#include "decode_gemm.h"
#include "launch.h"
#include "mma.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda {

namespace {

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

// C (+ slice blockIdx.y * slice_stride) = beta C + A op(B) over K slice blockIdx.y of S (beta only when S == 1).
// The weights go first: they are constants, so under PDL (launch.h) the first stages' B chunks and, with
// prefetch_rest, L2 requests for the rest of the block's weights go out while the kernel before (the norm or
// activation that writes A) finishes. A and C are touched only after wait_for_previous_kernel().
template <bool TRANS_B>
__global__ void __launch_bounds__(kThreads) decode_gemm_kernel(float* C, int ldc, int64_t slice_stride, float beta,
                                                               const bf16* A, const bf16* B, int M, int N, int K,
                                                               int k_slice, bool prefetch_rest) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  const int n0 = blockIdx.x * kTileN;
  const int k_begin = blockIdx.y * k_slice, k_end = min(K, k_begin + k_slice);
  const int chunks = (k_end - k_begin + kTileK - 1) / kTileK;
  const int m_tiles = (M + 15) / 16;
  float acc[4][2][4] = {};

  for (int c = 0; c < kStages - 1 && c < chunks; c++)
    load_b_chunk<TRANS_B>(smem + c * kStageElems, B, N, K, n0, k_begin + c * kTileK, k_end);
  if (prefetch_rest) prefetch_b_l2<TRANS_B>(B, N, K, n0, k_begin + (kStages - 1) * kTileK, k_end);
  wait_for_previous_kernel();
  allow_next_kernel();
  // The first group holds the B chunks above and A's chunk 0, group c A's chunk c: group c is complete by the wait
  // for chunk c below, as when each group held both halves of its chunk.
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

  float* out = C + static_cast<int64_t>(blockIdx.y) * slice_stride;
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
        if (row >= M) continue;
        float2* p = reinterpret_cast<float2*>(out + static_cast<int64_t>(row) * ldc + col);
        float2 v = make_float2(acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
        if (beta != 0.0f) {
          const float2 old = *p;
          v.x += beta * old.x, v.y += beta * old.y;
        }
        *p = v;
      }
    }
  }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

bool decode_gemm_fits(int M, int N, int K, int S, const uint16_t* A, const uint16_t* B, const float* C, int ldc) {
  return M >= 1 && M <= kDecodeGemmMaxRows && N >= 8 && N % 8 == 0 && K >= 8 && S >= 1 && K % S == 0 &&
         (K / S) % 8 == 0 && aligned(A, 16) && aligned(B, 16) && aligned(C, 8) && ldc % 2 == 0 && ldc >= N;
}

void decode_gemm_prepare() {
  OPTUNE_CUDA_CHECK(cudaFuncSetAttribute(decode_gemm_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmemBytes)));
  OPTUNE_CUDA_CHECK(cudaFuncSetAttribute(decode_gemm_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmemBytes)));
}

void decode_gemm(int M, int N, int K, const uint16_t* A16, const uint16_t* B16, bool trans_b, float beta, float* C,
                 int ldc, int S, int64_t slice_stride, Launch on) {
  const bf16* A = reinterpret_cast<const bf16*>(A16);
  const bf16* B = reinterpret_cast<const bf16*>(B16);
  OPTUNE_CHECK(decode_gemm_fits(M, N, K, S, A16, B16, C, ldc),
               "internal: decode_gemm [" + std::to_string(M) + ", " + std::to_string(N) + ", " + std::to_string(K) +
                   "] in " + std::to_string(S) + " slices does not fit its kernel (check decode_gemm_fits first)");
  const dim3 grid((N + kTileN - 1) / kTileN, S);
  const float b = S == 1 ? beta : 0.0f;
  OPTUNE_CUDA_CHECK(launch_kernel(trans_b ? decode_gemm_kernel<true> : decode_gemm_kernel<false>, grid, kThreads,
                                  kSmemBytes, on, C, ldc, slice_stride, b, A, B, M, N, K, K / S, on.early));
}

}  // namespace optune::cuda
