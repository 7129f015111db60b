// Rotary position embedding in transformers' "rotate_half" layout: dimension i pairs with i + head_dim/2, and pair i
// rotates by angle pos * theta^(-2i/head_dim) (scaled as RopeScaling says). Angles are computed in double, then
// rounded once.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <vector>

#include "ops.h"
#include "parallel.h"

namespace optune::cpu {

namespace {

// cos and sin of every (position, pair) angle, rounded to float, for positions [0, positions): computed once and
// shared (a decode step or a training batch needs the same few angles again and again, and libm's sincos per row
// and pair was ~4% of a Llama's bf16 sampling). Immutable once built: a caller keeps its table alive while a longer
// one may replace it for later calls.
struct RopeTable {
  int head_dim = 0, positions = 0;
  float theta = 0.0f;
  RopeScaling scaling;
  std::vector<float> cos, sin;  // [positions][head_dim / 2]
};

// The table for (head_dim, theta, scaling) covering `positions`, from a small cache with one table per such key
// (a policy and a reward model may differ, and Gemma's two layer kinds); a table too short is replaced by one at
// least twice as long.
std::shared_ptr<const RopeTable> rope_table(int head_dim, float theta, const RopeScaling& scaling, int positions) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<const RopeTable>> cache;
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<const RopeTable>* slot = nullptr;
  for (auto& t : cache)
    if (t->head_dim == head_dim && t->theta == theta && t->scaling == scaling) slot = &t;
  if (slot && (*slot)->positions >= positions) return *slot;
  auto t = std::make_shared<RopeTable>();
  t->head_dim = head_dim;
  t->theta = theta;
  t->scaling = scaling;
  t->positions = slot ? std::max(positions, 2 * (*slot)->positions) : positions;
  const int half = head_dim / 2;
  const std::vector<double> inv_freq = rope_inv_freq(head_dim, theta, scaling);
  t->cos.resize(static_cast<size_t>(t->positions) * half);
  t->sin.resize(t->cos.size());
  for (int p = 0; p < t->positions; p++)
    for (int i = 0; i < half; i++) {
      const double angle = static_cast<double>(p) * inv_freq[i];
      t->cos[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(angle));
      t->sin[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(angle));
    }
  if (slot)
    *slot = t;
  else
    cache.push_back(t);
  return t;
}

void rope_apply(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                const RopeScaling& scaling, float sign) {
  if (rows <= 0) return;
  const int half = head_dim / 2;
  int max_pos = 0;
  for (int r = 0; r < rows; r++) max_pos = std::max(max_pos, pos[r]);
  const std::shared_ptr<const RopeTable> table = rope_table(head_dim, theta, scaling, max_pos + 1);
  parallel_for(rows, [&](int64_t r) {
    float* row = x + static_cast<size_t>(r) * stride;
    const float* cr = table->cos.data() + static_cast<size_t>(pos[r]) * half;
    const float* sr = table->sin.data() + static_cast<size_t>(pos[r]) * half;
    for (int i = 0; i < half; i++) {
      const float c = cr[i], s = sign * sr[i];
      for (int h = 0; h < n_heads; h++) {
        float* v = row + h * head_dim;
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
      }
    }
  });
}

}  // namespace

// transformers' _compute_linear_scaling_rope_parameters / _compute_llama3_parameters, in double.
std::vector<double> rope_inv_freq(int head_dim, float theta, const RopeScaling& scaling) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  const double pi = 3.14159265358979323846;
  for (int i = 0; i < half; i++) {
    double f = 1.0 / std::pow(static_cast<double>(theta), (2.0 * i) / head_dim);
    if (scaling.type == RopeScaling::LINEAR) {
      f /= scaling.factor;
    } else if (scaling.type == RopeScaling::LLAMA3) {
      const double old_len = scaling.original_max_positions;
      const double low_wavelen = old_len / scaling.low_freq_factor, high_wavelen = old_len / scaling.high_freq_factor;
      const double wavelen = 2.0 * pi / f;
      if (wavelen > low_wavelen) {
        f /= scaling.factor;  // long wavelengths: scaled
      } else if (wavelen >= high_wavelen) {  // between: blended
        const double smooth =
            (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }  // short wavelengths: kept
    }
    inv_freq[i] = f;
  }
  return inv_freq;
}

void rope_forward(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                  const RopeScaling& scaling) {
  rope_apply(x, rows, stride, n_heads, head_dim, pos, theta, scaling, 1.0f);
}

void rope_backward(float* dx, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                   const RopeScaling& scaling) {
  rope_apply(dx, rows, stride, n_heads, head_dim, pos, theta, scaling, -1.0f);
}

}  // namespace optune::cpu
