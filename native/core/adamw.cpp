// AdamW as torch.optim.AdamW computes it: decoupled weight decay p -= lr*wd*p, bias-corrected moments,
// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Global-norm clipping as torch.nn.utils.clip_grad_norm_.
// Weight decay applies to the tensors ParamInfo marks (matrices and embeddings), not biases or norm weights.
#include <cmath>
#include <algorithm>
#include <string>
#include <vector>

#include "adamw.h"
#include "device.h"
#include "engine.h"
#include "error.h"
#include "lora.h"

namespace optune {

void check_grad_norm(double norm) {
  OPTUNE_CHECK(std::isfinite(norm), "non-finite gradient (norm " + std::to_string(norm) +
                                        "): the step was not applied and the weights are unchanged; lower the "
                                        "learning rate or check the inputs for extreme values");
}

AdamWScalars adamw_scalars(Model& m, const AdamWConfig& o, double norm) {
  AdamWScalars s;
  s.clip = o.max_grad_norm > 0 ? static_cast<float>(std::min(1.0, o.max_grad_norm / (norm + 1e-6))) : 1.0f;
  m.adam_step++;
  const double bc1 = 1.0 - std::pow(static_cast<double>(o.beta1), static_cast<double>(m.adam_step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(o.beta2), static_cast<double>(m.adam_step));
  s.step_size = static_cast<float>(o.lr / bc1);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  return s;
}

// Sum of squares in fixed-size chunks, each in 8 explicit lanes (one running sum was a chain of dependent adds,
// ~4 cycles per element), combined in chunk order: the same result for any thread count.
double grad_norm(const std::vector<float>& g) {
  constexpr size_t kChunk = 1 << 16;
  constexpr int kLanes = 8;
  const size_t n_chunks = (g.size() + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < n_chunks; c++) {
    double lane[kLanes] = {};
    const size_t end = std::min(g.size(), (c + 1) * kChunk);
    size_t i = c * kChunk;
    for (; i + kLanes <= end; i += kLanes)
      for (int l = 0; l < kLanes; l++) lane[l] += static_cast<double>(g[i + l]) * g[i + l];
    for (; i < end; i++) lane[0] += static_cast<double>(g[i]) * g[i];
    double s = 0.0;
    for (int l = 0; l < kLanes; l++) s += lane[l];
    partial[c] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return std::sqrt(total);
}

AdamWConfig adamw_at_step(const Model& m, const AdamWConfig& opt) {
  AdamWConfig o = opt;
  const int64_t step = m.adam_step + 1;
  if (o.warmup_steps > 0 && step < o.warmup_steps)
    o.lr = static_cast<float>(static_cast<double>(o.lr) * static_cast<double>(step) / o.warmup_steps);
  return o;
}

double adamw_update(Model& m, const AdamWConfig& opt) {
  const AdamWConfig o = adamw_at_step(m, opt);
  if (m.device) return m.device->adamw_update(m, o);
  std::vector<float>& params = trainable_params(m);  // every weight, or a LoRA model's adapters
  OPTUNE_CHECK(m.grads.size() == params.size(), "optimizer step before any gradient was computed");
  const double norm = grad_norm(m.grads);
  check_grad_norm(norm);
  if (m.adam_m.size() != params.size()) {
    m.adam_m.assign(params.size(), 0.0f);
    m.adam_v.assign(params.size(), 0.0f);
    m.adam_step = 0;
  }
  const AdamWScalars s = adamw_scalars(m, o, norm);
  const float clip = s.clip, step_size = s.step_size, bc2_sqrt = s.bc2_sqrt;
  for (const ParamInfo& t : trainable_layout(m).tensors) {
    float* p = params.data() + t.offset;
    const float* g = m.grads.data() + t.offset;
    float* mm = m.adam_m.data() + t.offset;
    float* vv = m.adam_v.data() + t.offset;
    const float decay = adamw_decay(o, t);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < t.numel; i++) {
      const float gi = g[i] * clip;
      p[i] *= decay;
      mm[i] = o.beta1 * mm[i] + (1.0f - o.beta1) * gi;
      vv[i] = o.beta2 * vv[i] + (1.0f - o.beta2) * gi * gi;
      p[i] -= step_size * mm[i] / (std::sqrt(vv[i]) / bc2_sqrt + o.eps);
    }
  }
  return norm;
}

}  // namespace optune
