// The reward model's scalar head read at each sequence's last token, as core/heads.h's score_dot (accumulated in
// double) and train.cpp's Bradley-Terry backward. One block per sequence for the forward; the backward adds
// g[s] * w into dh at each last row (rows are distinct: every sequence has a token) and, one thread per column,
// sum_s g[s] * h[row_s] into dw in sequence order.
#include "check.cuh"
#include "ops.h"
#include "reduce.cuh"

namespace optune::cuda {

static constexpr int kThreads = 256;

__global__ void score_forward_kernel(float* score, const float* h, const int32_t* rows, const float* w, int d) {
  __shared__ double scratch[32];
  const float* x = h + static_cast<int64_t>(rows[blockIdx.x]) * d;
  double acc = 0.0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) acc += static_cast<double>(x[i]) * w[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) score[blockIdx.x] = static_cast<float>(acc);
}

void score_forward(float* score, const float* h, const int32_t* rows, int n, const float* w, int d) {
  if (n <= 0) return;
  score_forward_kernel<<<n, kThreads>>>(score, h, rows, w, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

__global__ void score_backward_kernel(float* dh, float* dw, const float* g, const float* h, const int32_t* rows,
                                      int n, const float* w, int d) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d) return;
  float acc = dw[i];
  for (int s = 0; s < n; s++) {
    const int64_t row = static_cast<int64_t>(rows[s]) * d;
    dh[row + i] += g[s] * w[i];
    acc += g[s] * h[row + i];
  }
  dw[i] = acc;
}

void score_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* rows, int n, const float* w,
                    int d) {
  if (n <= 0) return;
  score_backward_kernel<<<(d + kThreads - 1) / kThreads, kThreads>>>(dh, dw, g, h, rows, n, w, d);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
