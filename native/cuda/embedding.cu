// Token (+ learned position) embeddings, forward and backward, as core/transformer.cpp's embed_forward and the
// embedding part of transformer_backward. Backward must add every row t into the table row of its token id, and
// ids repeat: the host groups the rows by id (a CSR index, rows in increasing t), and one block per id sums its
// rows in that order. No atomics, the same order as the CPU's sequential loop, the same result on every run.
#include "check.cuh"
#include "ops.h"

namespace optune::cuda {

static constexpr int kThreads = 256;

__global__ void embedding_forward_kernel(float* out, const float* wte, const float* wpe, const int32_t* tokens,
                                         const int32_t* pos, int d) {
  const int t = blockIdx.x;
  const float* e = wte + static_cast<int64_t>(tokens[t]) * d;
  const float* p = wpe ? wpe + static_cast<int64_t>(pos[t]) * d : nullptr;
  float* x = out + static_cast<int64_t>(t) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) x[i] = p ? e[i] + p[i] : e[i];
}

void embedding_forward(float* out, const float* wte, const float* wpe, const int32_t* tokens, const int32_t* pos,
                       int rows, int d) {
  if (rows <= 0) return;
  embedding_forward_kernel<<<rows, kThreads>>>(out, wte, wpe, tokens, pos, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

__global__ void embedding_backward_kernel(float* dw, const float* dx, const int32_t* ids, const int32_t* starts,
                                          const int32_t* rows, int d) {
  const int k = blockIdx.x;
  float* w = dw + static_cast<int64_t>(ids[k]) * d;
  const int r0 = starts[k], r1 = starts[k + 1];
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = w[i];
    for (int r = r0; r < r1; r++) acc += dx[static_cast<int64_t>(rows[r]) * d + i];
    w[i] = acc;
  }
}

void embedding_backward(float* dw, const float* dx, const int32_t* ids, const int32_t* starts, const int32_t* rows,
                        int n_ids, int d) {
  if (n_ids <= 0) return;
  embedding_backward_kernel<<<n_ids, kThreads>>>(dw, dx, ids, starts, rows, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
