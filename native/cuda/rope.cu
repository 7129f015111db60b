// Rotary position embedding, rotate_half layout (dimension i pairs with i + head_dim/2; pair i turns by
// pos * theta^(-2i/head_dim)). Angles, cos and sin in double, rounded once, as cpu/rope.cpp does, so both backends
// rotate by the same float cos/sin. One thread per (row, head, pair); backward turns by the opposite angle.
#include <algorithm>

#include "check.cuh"
#include "ops.h"

namespace optune::cuda {

__global__ void rope_kernel(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                            float sign) {
  const int half = head_dim / 2;
  const int64_t n = static_cast<int64_t>(rows) * n_heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int h = static_cast<int>((idx / half) % n_heads);
    const int r = static_cast<int>(idx / (static_cast<int64_t>(half) * n_heads));
    const double inv_freq = 1.0 / pow(static_cast<double>(theta), (2.0 * i) / head_dim);
    const double angle = static_cast<double>(pos[r]) * inv_freq;
    const float c = static_cast<float>(cos(angle)), s = sign * static_cast<float>(sin(angle));
    float* v = x + static_cast<int64_t>(r) * stride + h * head_dim;
    const float x1 = v[i], x2 = v[i + half];
    v[i] = x1 * c - x2 * s;
    v[i + half] = x2 * c + x1 * s;
  }
}

static void rope_apply(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                       float sign) {
  const int64_t n = static_cast<int64_t>(rows) * n_heads * (head_dim / 2);
  if (n <= 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65536));
  rope_kernel<<<blocks, threads>>>(x, rows, stride, n_heads, head_dim, pos, theta, sign);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

void rope_forward(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta) {
  rope_apply(x, rows, stride, n_heads, head_dim, pos, theta, 1.0f);
}
void rope_backward(float* dx, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta) {
  rope_apply(dx, rows, stride, n_heads, head_dim, pos, theta, -1.0f);
}

}  // namespace optune::cuda
