// The small glue of a transformer block: residual adds, scaling, bias adds after a GEMM, bias gradients (column
// sums), fill.
#include <algorithm>

#include "check.cuh"
#include "ops.h"
#include "store.cuh"

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

__global__ void scale_inplace_kernel(float* y, float s, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] *= s;
}

void scale_inplace(float* y, float s, int64_t n) {
  if (n <= 0) return;
  scale_inplace_kernel<<<blocks_for(n), kThreads>>>(y, s, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// A block per row: the column comes from the thread index, not from a 64-bit division of a flat index per element
// (it expands to tens of instructions, on the order of the element's memory traffic; not timed).
__global__ void bias_add_kernel(float* out, const float* bias, int cols) {
  float* o = out + static_cast<int64_t>(blockIdx.x) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] += bias[c];
}

void bias_add(float* out, const float* bias, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  bias_add_kernel<<<rows, kThreads>>>(out, bias, cols);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// out[r, :] += bias + x[r, :] (bias may be null): a projection's bias and the residual stream in one pass over the
// rows (a block per row: no index division). Saves a separate bias_add pass over the output.
// quads: 4 elements per access (quad_rows).
__global__ void bias_residual_kernel(float* out, const float* bias, const float* x, int cols, bool quads) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const auto b = [&](int c) { return bias ? bias[c] : 0.0f; };
  if (quads) {
    for (int c = 4 * threadIdx.x; c < cols; c += 4 * blockDim.x) {
      float4 y = load4(out, base + c);
      const float4 r = load4(x, base + c);
      y.x += b(c) + r.x, y.y += b(c + 1) + r.y, y.z += b(c + 2) + r.z, y.w += b(c + 3) + r.w;
      store_out4(out, nullptr, base + c, y);
    }
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[base + c] += b(c) + x[base + c];
  }
}

void bias_residual(float* out, const float* bias, const float* x, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  bias_residual_kernel<<<rows, kThreads>>>(out, bias, x, cols, quad_rows(cols, out, x));
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// Column sums as a GEMM with a ones row: dbias[1, cols] += ones[1, rows] @ dout[rows, cols]. cuBLAS spreads the
// rows over the whole GPU (a per-column kernel would leave most SMs idle at T = 32k rows) and its result does not
// change from run to run for the same shapes. Strict fp32 also under OPTUNE_CUDA_TF32 (a sum, not a matmul).
void bias_backward(float* dbias, const float* dout, const float* ones, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  gemm(false, false, 1, cols, rows, 1.0f, ones, rows, dout, cols, 1.0f, dbias, cols, /*allow_tf32=*/false);
}

__global__ void fill_kernel(float* p, float value, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = value;
}

void fill(float* p, float value, int64_t n) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads>>>(p, value, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
