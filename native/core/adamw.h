// What one AdamW step computes once for all tensors, shared by the CPU optimizer (adamw.cpp) and the CUDA one
// (cuda/train_cuda.cpp), which differ only in where the per-element update runs.
#pragma once
#include "engine.h"

namespace optune {

// The global L2 norm of the gradients (CPU), the same for any thread count.
double grad_norm(const std::vector<float>& g);

// A non-finite gradient norm must never reach the weights: an optune::Error, with weights and moments untouched.
void check_grad_norm(double norm);

struct AdamWScalars {
  float clip;       // global-norm clipping factor applied to every gradient (1 without clipping)
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
};
// The config of the step about to be taken (m.adam_step + 1) with its warmup applied to lr. adam_step is 0 until the
// first step (it restarts with the moments' allocation) and is saved with the optimizer state. The engine's entry
// points (adamw_update, and train_step before it hands a step to a device) apply it, so a device never sees warmup.
AdamWConfig adamw_at_step(const Model& m, const AdamWConfig& o);

// Advances m.adam_step (the moments must exist) and returns the step's scalars.
AdamWScalars adamw_scalars(Model& m, const AdamWConfig& o, double norm);

// 1 - lr * weight_decay for the tensors ParamInfo marks for decay (matrices, embeddings), else 1.
inline float adamw_decay(const AdamWConfig& o, const ParamInfo& t) {
  return t.decay ? 1.0f - o.lr * o.weight_decay : 1.0f;
}

}  // namespace optune
