// Rotary position embedding in transformers' "rotate_half" layout: dimension i pairs with i + head_dim/2, and pair i
// rotates by angle pos * theta^(-2i/head_dim). Angles are computed in double, then rounded once.
#include <cmath>
#include <vector>

#include "ops.h"
#include "parallel.h"

namespace optune::cpu {

static void rope_apply(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                       float sign) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; i++) inv_freq[i] = 1.0 / std::pow(static_cast<double>(theta), (2.0 * i) / head_dim);
  parallel_for(rows, [&](int64_t r) {
    float* row = x + static_cast<size_t>(r) * stride;
    for (int i = 0; i < half; i++) {
      const double angle = static_cast<double>(pos[r]) * inv_freq[i];
      const float c = static_cast<float>(std::cos(angle)), s = sign * static_cast<float>(std::sin(angle));
      for (int h = 0; h < n_heads; h++) {
        float* v = row + h * head_dim;
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
      }
    }
  });
}

void rope_forward(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta) {
  rope_apply(x, rows, stride, n_heads, head_dim, pos, theta, 1.0f);
}

void rope_backward(float* dx, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta) {
  rope_apply(dx, rows, stride, n_heads, head_dim, pos, theta, -1.0f);
}

}  // namespace optune::cpu
