// GPT-2's tanh-approximated GELU, Llama's SwiGLU and Gemma's GELU-gated unit (GEGLU), forward and backward:
// elementwise, grid-stride loops. The math is cpu/activations.cpp's, with libdevice tanhf/expf in place of the CPU's
// polynomial vtanh/vexp (both within a few ulp of the true value).
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

__device__ inline float gelu(float x) { return 0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x))); }

// d gelu(x) / dx
__device__ inline float gelu_grad(float x) {
  const float t = tanhf(kGeluScale * (x + 0.044715f * x * x * x));
  const float sech2 = 1.0f - t * t;
  return 0.5f * (1.0f + t) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
}

__global__ void gelu_forward_kernel(float* out, const float* inp, int64_t n) {
  GRID_STRIDE_LOOP(i, n) out[i] = gelu(inp[i]);
}

// act[r, :] = gelu(fc[r, :] + bias): the MLP's first bias and its activation in one pass. fc keeps the product
// without the bias (bias_gelu_backward adds it again): writing the biased value back cost a pass over [rows, F]. A
// block per row. act (fp32) and/or act16 (bf16).
// quads: 4 elements per access (quad_rows).
__global__ void bias_gelu_forward_kernel(float* act, uint16_t* act16, const float* fc, const float* bias, int cols,
                                         bool quads) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const auto b = [&](int c) { return bias ? bias[c] : 0.0f; };
  if (quads) {
    for (int c = 4 * threadIdx.x; c < cols; c += 4 * blockDim.x) {
      const float4 x = load4(fc, base + c);
      store_out4(act, act16, base + c,
                 make_float4(gelu(x.x + b(c)), gelu(x.y + b(c + 1)), gelu(x.z + b(c + 2)), gelu(x.w + b(c + 3))));
    }
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) store_out(act, act16, base + c, gelu(fc[base + c] + b(c)));
  }
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, int64_t n) {
  GRID_STRIDE_LOOP(i, n) dinp[i] += gelu_grad(inp[i]) * dout[i];
}

// The same through bias_gelu_forward (the pre-activation is fc + bias), written or added to, in fp32 and/or bf16
// (the dY operand of the c_fc GEMMs). A block per row.
__global__ void bias_gelu_backward_kernel(float* dinp, uint16_t* dinp16, const float* fc, const float* bias,
                                          const float* dout, int cols, bool accumulate, bool quads) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const auto b = [&](int c) { return bias ? bias[c] : 0.0f; };
  if (quads) {
    for (int c = 4 * threadIdx.x; c < cols; c += 4 * blockDim.x) {
      const int64_t i = base + c;
      const float4 x = load4(fc, i), dy = load4(dout, i);
      float4 d = accumulate ? load4(dinp, i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      d.x += gelu_grad(x.x + b(c)) * dy.x, d.y += gelu_grad(x.y + b(c + 1)) * dy.y;
      d.z += gelu_grad(x.z + b(c + 2)) * dy.z, d.w += gelu_grad(x.w + b(c + 3)) * dy.w;
      store_out4(dinp, dinp16, i, d);
    }
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const int64_t i = base + c;
      store_out(dinp, dinp16, i, (accumulate ? dinp[i] : 0.0f) + gelu_grad(fc[i] + b(c)) * dout[i]);
    }
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

// Gemma: out = gelu(gate) * up; backward dup += dout gelu(gate), dgate += dout up gelu'(gate) (cpu::geglu_*).
__global__ void geglu_forward_kernel(float* out, uint16_t* out16, const float* gate, const float* up, int64_t n) {
  GRID_STRIDE_LOOP(i, n) store_out(out, out16, i, gelu(gate[i]) * up[i]);
}

__global__ void geglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                      int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    const float g = gate[i];
    dup[i] += dout[i] * gelu(g);
    dgate[i] += dout[i] * up[i] * gelu_grad(g);
  }
}

void gelu_forward(float* out, const float* inp, int64_t n) {
  if (n <= 0) return;
  gelu_forward_kernel<<<blocks_for(n), kThreads>>>(out, inp, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void bias_gelu_forward(float* act, const float* fc, const float* bias, int rows, int cols, uint16_t* act16) {
  if (rows <= 0 || cols <= 0) return;
  bias_gelu_forward_kernel<<<rows, kThreads>>>(act, act16, fc, bias, cols, quad_rows(cols, fc, act, nullptr, act16));
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  if (n <= 0) return;
  gelu_backward_kernel<<<blocks_for(n), kThreads>>>(dinp, inp, dout, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void bias_gelu_backward(float* dinp, const float* fc, const float* bias, const float* dout, int rows, int cols,
                        bool accumulate, uint16_t* dinp16) {
  if (rows <= 0 || cols <= 0) return;
  bias_gelu_backward_kernel<<<rows, kThreads>>>(dinp, dinp16, fc, bias, dout, cols, accumulate,
                                                quad_rows(cols, fc, dout, dinp, dinp16));
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
void geglu_forward(float* out, const float* gate, const float* up, int64_t n, uint16_t* out16) {
  if (n <= 0) return;
  geglu_forward_kernel<<<blocks_for(n), kThreads>>>(out, out16, gate, up, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  if (n <= 0) return;
  geglu_backward_kernel<<<blocks_for(n), kThreads>>>(dgate, dup, dout, gate, up, n);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
