// AdamW on the GPU, element for element core/adamw.cpp: the host computes the scalars (bias corrections, clip
// factor, decay) exactly as the CPU optimizer does, the kernel applies them. The gradient norm is a sum of squares
// in double over a fixed grid, whose per-block partial sums are added on the host in block order: the same value
// on every run, and the host needs it anyway to refuse non-finite steps.
#include <algorithm>
#include <vector>

#include "check.cuh"
#include "memory.h"
#include "ops.h"
#include "reduce.cuh"

namespace optune::cuda {

static constexpr int kNormBlocks = 512, kNormThreads = 256;

__global__ void sum_squares_kernel(double* partial, const float* g, size_t n) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    s += static_cast<double>(g[i]) * g[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

double sum_squares(const float* g, size_t n) {
  if (n == 0) return 0.0;
  Buffer<double> partial(kNormBlocks, "gradient norm partial sums");
  sum_squares_kernel<<<kNormBlocks, kNormThreads>>>(partial.data(), g, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
  double total = 0.0;
  for (double p : partial.download()) total += p;
  return total;
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float decay, float beta1,
                             float beta2, float eps, float step_size, float bc2_sqrt, float clip) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * clip;
    float pi = p[i] * decay;
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    pi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    p[i] = pi, m[i] = mi, v[i] = vi;
  }
}

void adamw_step(float* p, const float* g, float* m, float* v, size_t n, float decay, float beta1, float beta2,
                float eps, float step_size, float bc2_sqrt, float clip) {
  if (n == 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<size_t>((n + threads - 1) / threads, 65536));
  adamw_kernel<<<blocks, threads>>>(p, g, m, v, n, decay, beta1, beta2, eps, step_size, bc2_sqrt, clip);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
