// Rotary position embedding, rotate_half layout (dimension i pairs with i + head_dim/2; pair i turns by pos *
// inv_freq[i], the CPU's frequencies: rope_sets.h). Angles, cos and sin in double, rounded once, as cpu/rope.cpp does,
// so both backends rotate by the same float cos/sin. A block per row: the row's cos/sin per pair index go to shared
// memory once and serve every head (they do not depend on the head; per (row, head, pair) the double pow/cos/sin and a
// 64-bit index division dominated the kernel). Backward turns by the opposite angle.
#include <algorithm>

#include "check.cuh"
#include "ops.h"

namespace optune::cuda {

__global__ void rope_kernel(float* x, int stride, int n_heads, int head_dim, const int32_t* pos,
                            const double* inv_freq, float sign) {
  extern __shared__ float cs[];  // [half] cos, then [half] sign * sin
  const int r = blockIdx.x, half = head_dim / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double angle = static_cast<double>(pos[r]) * inv_freq[i];
    cs[i] = static_cast<float>(cos(angle));
    cs[half + i] = sign * static_cast<float>(sin(angle));
  }
  __syncthreads();
  float* row = x + static_cast<int64_t>(r) * stride;
  for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx - h * half;
    float* v = row + h * head_dim;
    const float c = cs[i], s = cs[half + i], x1 = v[i], x2 = v[i + half];
    v[i] = x1 * c - x2 * s;
    v[i + half] = x2 * c + x1 * s;
  }
}

static void rope_apply(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos,
                       const double* inv_freq, float sign) {
  if (rows <= 0 || n_heads <= 0 || head_dim < 2) return;
  rope_kernel<<<rows, 128, head_dim * sizeof(float)>>>(x, stride, n_heads, head_dim, pos, inv_freq, sign);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

void rope_forward(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos,
                  const double* inv_freq) {
  rope_apply(x, rows, stride, n_heads, head_dim, pos, inv_freq, 1.0f);
}
void rope_backward(float* dx, int rows, int stride, int n_heads, int head_dim, const int32_t* pos,
                   const double* inv_freq) {
  rope_apply(dx, rows, stride, n_heads, head_dim, pos, inv_freq, -1.0f);
}

}  // namespace optune::cuda
