// GPT-2's tanh-approximated GELU and Llama's SwiGLU, forward and backward: elementwise, grid-stride loops. The math
// is cpu/activations.cpp's, with libdevice tanhf/expf in place of the CPU's polynomial vtanh/vexp (both within a
// few ulp of the true value).
#include <algorithm>

#include "check.cuh"
#include "ops.h"
#include "store.cuh"

namespace optune::cuda {

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
static constexpr int kThreads = 256;

static int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

#define GRID_STRIDE_LOOP(i, n)                                                              \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void gelu_forward_kernel(float* out, const float* inp, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    const float x = inp[i];
    out[i] = 0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x)));
  }
}

// fc[r, :] += bias; act[r, :] = gelu(fc[r, :]): the MLP's first bias and its activation in one pass (fc keeps the
// biased pre-activation, which gelu_backward reads). A block per row. act (fp32) and/or act16 (bf16).
__global__ void bias_gelu_forward_kernel(float* act, uint16_t* act16, float* fc, const float* bias, int cols) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float x = fc[base + c] + (bias ? bias[c] : 0.0f);
    fc[base + c] = x;
    store_out(act, act16, base + c, 0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x))));
  }
}

__global__ void gelu_backward_kernel(float* dinp, uint16_t* dinp16, const float* inp, const float* dout, int64_t n,
                                     bool accumulate) {
  GRID_STRIDE_LOOP(i, n) {
    const float x = inp[i];
    const float t = tanhf(kGeluScale * (x + 0.044715f * x * x * x));
    const float sech2 = 1.0f - t * t;
    const float grad = 0.5f * (1.0f + t) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
    store_out(dinp, dinp16, i, (accumulate ? dinp[i] : 0.0f) + grad * dout[i]);
  }
}

__global__ void swiglu_forward_kernel(float* out, uint16_t* out16, const float* gate, const float* up, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    const float g = gate[i];
    store_out(out, out16, i, g / (1.0f + expf(-g)) * up[i]);
  }
}

__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                       int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    const float g = gate[i];
    const float sig = 1.0f / (1.0f + expf(-g));
    dup[i] += dout[i] * g * sig;
    dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
  }
}

void gelu_forward(float* out, const float* inp, int64_t n) {
  if (n <= 0) return;
  gelu_forward_kernel<<<blocks_for(n), kThreads>>>(out, inp, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void bias_gelu_forward(float* act, float* fc, const float* bias, int rows, int cols, uint16_t* act16) {
  if (rows <= 0 || cols <= 0) return;
  bias_gelu_forward_kernel<<<rows, kThreads>>>(act, act16, fc, bias, cols);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, bool accumulate, uint16_t* dinp16) {
  if (n <= 0) return;
  gelu_backward_kernel<<<blocks_for(n), kThreads>>>(dinp, dinp16, inp, dout, n, accumulate);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, uint16_t* out16) {
  if (n <= 0) return;
  swiglu_forward_kernel<<<blocks_for(n), kThreads>>>(out, out16, gate, up, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  if (n <= 0) return;
  swiglu_backward_kernel<<<blocks_for(n), kThreads>>>(dgate, dup, dout, gate, up, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
