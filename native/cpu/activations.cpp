// GPT-2's tanh-approximated GELU, Llama's SwiGLU and Gemma's GELU-gated unit, forward and backward.
#include <cmath>

#include "ops.h"
#include "parallel.h"
#include "vecmath.h"

namespace optune::cpu {

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)

static inline float gelu(float x) { return 0.5f * x * (1.0f + vtanh(kGeluScale * (x + 0.044715f * x * x * x))); }

static inline float gelu_grad(float x) {
  const float t = vtanh(kGeluScale * (x + 0.044715f * x * x * x));
  const float sech2 = 1.0f - t * t;
  return 0.5f * (1.0f + t) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
}

void gelu_forward(float* out, const float* inp, int64_t n) {
  parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) out[i] = gelu(inp[i]);
  });
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) dinp[i] += gelu_grad(inp[i]) * dout[i];
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
      const float g = gate[i];
      const float sig = 1.0f / (1.0f + vexp(-g));
      out[i] = g * sig * up[i];
    }
  });
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    const float sig = 1.0f / (1.0f + vexp(-g));
    const float silu = g * sig;
    dup[i] += dout[i] * silu;
    dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
  }
}

void geglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) out[i] = gelu(gate[i]) * up[i];
  });
}

void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    dup[i] += dout[i] * gelu(gate[i]);
    dgate[i] += dout[i] * up[i] * gelu_grad(gate[i]);
  }
}

}  // namespace optune::cpu
