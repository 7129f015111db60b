// The bf16 GEMMs of a decode step on cuBLASLt (the default of OPTUNE_CUDA_DECODE_GEMM in sampler_cuda.cu):
// row-major C[M, N] (+)= A[M, K] op(B), bf16 operands, fp32 accumulation, with bias + GELU on the product inside the
// GEMM for GPT-2's MLP input projection, written as bf16: no separate bias_gelu kernel (3.3 us a layer on an H200).
// cuBLASLt's GELU is the tanh form GPT-2 uses; the bias is added as bf16 (the bf16 weight copy's), as PyTorch's bf16
// autocast does, where the cuBLAS path adds it in fp32. On an H200 (11th session) the GELU GEMM took 7.6 us a layer
// against cuBLAS's plain GEMM 7.0 + bias_gelu 3.3, and bf16 sampling at GPT-2 124M's shape ran 103.2k tok/s against
// 100.2k. The heuristic is asked for K-splits reduced in place only, yet it still gave the MLP output projection
// (64 x 768 x 3072) a split with cuBLASLt's reduction kernel, as cuBLAS does (4.4-4.7 us a layer, Nsight), so the
// sampler splits that one itself (mm_sliced, sampler_cuda.cu lt_split).
// Each shape's plan (descriptors and the heuristic's first algorithm for these operands' alignments) is made on its
// first use in a host thread and kept for the thread's later calls (as its cuBLASLt handle): the sampler's first
// (eager) decode step of a batch bucket makes them before the step is captured into a CUDA graph, and a later
// sampling call on the same thread asks the heuristic nothing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace optune::cuda {

class LtGemms {
 public:
  // Work goes to `stream`, with `workspace` (bytes) as cuBLASLt's scratch (K-split slices or their counters; the
  // caller keeps it alive and uses it for nothing else while these GEMMs run).
  LtGemms(cudaStream_t stream, void* workspace, size_t bytes);
  LtGemms(const LtGemms&) = delete;
  LtGemms& operator=(const LtGemms&) = delete;

  // C (fp32, row stride ldc) = beta C + A op(B); op(B) = B [K, N] (row-major) or, trans_b, B^T for B [N, K].
  void mm(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, float beta, float* C,
          int ldc);
  // The same product in S K-slices (K % S == 0), as one strided-batched GEMM: slice s = A[:, s Ks : (s+1) Ks]
  // op(B)[s Ks : (s+1) Ks, :], Ks = K / S, written to C + s * M * N (row stride N, fp32). The caller's consumer adds
  // them (Partials), so no reduction kernel runs.
  void mm_sliced(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, int S, float* C);
  // out[M, N] (bf16, row stride N) = gelu_tanh(A op(B) + bias), bias [N] (bf16).
  void mm_bias_gelu(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b,
                    const __nv_bfloat16* bias, __nv_bfloat16* out);

 private:
  // C (row stride ldc) = beta C + the product, in S K-slices (S = 1: whole; mm_sliced's layout otherwise).
  void product(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, float beta, float* C,
               int ldc, int S);
  cudaStream_t stream_;
  void* workspace_;
  size_t bytes_;
  int device_;  // the device the stream belongs to (a plan's key)
};

}  // namespace optune::cuda
