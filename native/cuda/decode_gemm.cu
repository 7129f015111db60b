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
// A block computes one tile of decode_gemm_tile.cuh: all rows (up to 64) and 64 columns of C, over K slice
// blockIdx.y of S (for the Partials of sampler_kernels.cuh).
// Needs N % 8 == 0, K / S % 8 == 0 and 16-byte aligned A and B (decode_gemm_fits); other shapes use cuBLAS.
// Declared in decode_gemm.h.
#include <algorithm>
#include <string>

#include "check.cuh"
#include "core/error.h"
#include "decode_gemm.h"
#include "decode_gemm_tile.cuh"
#include "launch.h"

namespace optune::cuda {

namespace {

using namespace decode_tile;

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
  float acc[4][2][4];
  start_tile<TRANS_B>(smem, B, N, K, n0, k_begin, k_end, prefetch_rest);
  wait_for_previous_kernel();
  allow_next_kernel();
  run_tile<TRANS_B>(acc, smem, A, B, M, N, K, n0, k_begin, k_end);
  float* out = C + static_cast<int64_t>(blockIdx.y) * slice_stride;
  for_each_pair(acc, n0, M, N, [&](int row, int col, float v0, float v1) {
    float2* p = reinterpret_cast<float2*>(out + static_cast<int64_t>(row) * ldc + col);
    float2 v = make_float2(v0, v1);
    if (beta != 0.0f) {
      const float2 old = *p;
      v.x += beta * old.x, v.y += beta * old.y;
    }
    *p = v;
  });
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
