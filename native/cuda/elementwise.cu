// The small glue of a transformer block: residual adds, bias adds after a GEMM, and bias gradients (column sums).
// Bias gradients reduce per column with a 32 x 16 thread tile summed in a fixed order through shared memory (as the
// norm parameter gradients in norms.cu): no atomics, the same result on every run.
#include <algorithm>

#include "check.cuh"
#include "ops.h"

namespace optune::cuda {

static constexpr int kThreads = 256;
static int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

__global__ void add_inplace_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

void add_inplace(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_inplace_kernel<<<blocks_for(n), kThreads>>>(y, x, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

__global__ void bias_add_kernel(float* out, const float* bias, int64_t n, int cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] += bias[i % cols];
}

void bias_add(float* out, const float* bias, int rows, int cols) {
  const int64_t n = static_cast<int64_t>(rows) * cols;
  if (n <= 0) return;
  bias_add_kernel<<<blocks_for(n), kThreads>>>(out, bias, n, cols);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

__global__ void bias_backward_kernel(float* dbias, const float* dout, int rows, int cols) {
  __shared__ float part[16][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (col < cols)
    for (int r = threadIdx.y; r < rows; r += 16) acc += dout[static_cast<int64_t>(r) * cols + col];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
    for (int y = 0; y < 16; y++) total += part[y][threadIdx.x];
    dbias[col] += total;
  }
}

void bias_backward(float* dbias, const float* dout, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  bias_backward_kernel<<<(cols + 31) / 32, dim3(32, 16)>>>(dbias, dout, rows, cols);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
