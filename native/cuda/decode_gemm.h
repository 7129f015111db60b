// A decode step's bf16 GEMMs on tensor cores (decode_gemm.cu): a few rows (one per generating sequence) against
// the weights. bf16 operands as their bits (uint16_t, as ops.h), fp32 accumulation and output.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "launch.h"

namespace optune::cuda {

constexpr int kDecodeGemmMaxRows = 64;  // more rows go to cuBLAS (a block holds all rows of A in shared memory)
// Whether decode_gemm takes [M, N, K] in S slices: M <= kDecodeGemmMaxRows, N % 8 == 0, K % S == 0, (K / S) % 8 == 0,
// A and B 16-byte aligned, C 8-byte aligned with an even ldc >= N.
bool decode_gemm_fits(int M, int N, int K, int S, const uint16_t* A, const uint16_t* B, const float* C, int ldc);
// Once per device before the first decode_gemm (the kernels' shared memory limit; not allowed inside a capture).
void decode_gemm_prepare();
// Row-major C[M, N] = beta C + A[M, K] op(B), op(B) = B [K, N] or, trans_b, B^T for B [N, K]; fp32 C (row stride
// ldc). S > 1: slice s = A[:, s K/S ..] op(B)[s K/S .., :] goes to C + s * slice_stride and beta is ignored (the
// consumer adds the slices: sampler::Partials). Throws when decode_gemm_fits is false. on.early (PDL, launch.h):
// the weights' loads, and L2 requests for the rest of each block's weights, start before the kernel before ends.
void decode_gemm(int M, int N, int K, const uint16_t* A, const uint16_t* B, bool trans_b, float beta, float* C,
                 int ldc, int S, int64_t slice_stride, Launch on);

}  // namespace optune::cuda
