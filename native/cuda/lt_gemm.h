// The bf16 GEMMs of a decode step on cuBLASLt (OPTUNE_CUDA_DECODE_GEMM=lt in sampler_cuda.cu): row-major
// C[M, N] (+)= A[M, K] op(B), bf16 operands, fp32 accumulation, with two things cublasGemmEx cannot be asked for:
//  - no K-split whose slices a second kernel adds: at GPT-2's MLP projection (64 x 768 x 3072) cuBLAS chose one, and
//    its reduction kernel took 4.4 us a layer on an H200 (Nsight). Here the heuristic may only pick K-splits reduced
//    in place, in an order its counters fix (so the sum does not depend on timing), or none;
//  - bias + GELU on the product inside the GEMM, written as bf16 (GPT-2's MLP input projection): no separate
//    bias_gelu kernel (3.3 us a layer on an H200). cuBLASLt's GELU is the tanh form GPT-2 uses; the bias is added
//    as bf16 (the bf16 weight copy's), as PyTorch's bf16 autocast does, where the default path adds it in fp32.
// Each shape's plan (descriptors and the heuristic's first algorithm for these operands' alignments) is made on its
// first use in a host thread and kept for the thread's later calls (as its cuBLASLt handle): the sampler's first
// (eager) decode step of a batch bucket makes them before the step is captured into a CUDA graph, and a later
// sampling call on the same thread asks the heuristic nothing. Not measured on a GPU yet, so not the default.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace optune::cuda {

class LtGemms {
 public:
  // Work goes to `stream`, with `workspace` (bytes) as cuBLASLt's scratch (it may hold in-place reductions' counters;
  // the caller keeps it alive and uses it for nothing else while these GEMMs run). tune: a plan made by a call that
  // is not being captured into a graph times the heuristic's candidates that give its first one's bits on that
  // call's operands and keeps the fastest (lt_gemm.cu; OPTUNE_CUDA_DECODE_GEMM=lt-tuned).
  LtGemms(cudaStream_t stream, void* workspace, size_t bytes, bool tune);
  LtGemms(const LtGemms&) = delete;
  LtGemms& operator=(const LtGemms&) = delete;

  // C (fp32, row stride ldc) = beta C + A op(B); op(B) = B [K, N] (row-major) or, trans_b, B^T for B [N, K].
  void mm(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b, float beta, float* C,
          int ldc);
  // out[M, N] (bf16, row stride N) = gelu_tanh(A op(B) + bias), bias [N] (bf16).
  void mm_bias_gelu(int M, int N, int K, const __nv_bfloat16* A, const __nv_bfloat16* B, bool trans_b,
                    const __nv_bfloat16* bias, __nv_bfloat16* out);

 private:
  cudaStream_t stream_;
  void* workspace_;
  size_t bytes_;
  bool tune_;
  int device_;  // the device the stream belongs to (a plan's key)
};

}  // namespace optune::cuda
