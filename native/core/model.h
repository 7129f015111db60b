// A model: its config, its flat parameter buffer (see params.h), and — allocated on first use — gradients and
// AdamW moments in the same layout. Plain data; the operations live in engine.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "params.h"

namespace optune {

struct Workspace;     // scratch buffers reused across calls (transformer.h)
struct DeviceEngine;  // device copies and kernels when the model runs on a GPU (device.h)
struct Lora;          // low-rank adapters on a frozen base (lora.h)
struct MultimodalParts;  // what a multimodal checkpoint holds besides the language model (checkpoint.h)

struct Model {
  ModelConfig cfg;
  ParamLayout layout;
  std::vector<float> params;
  // Gradients and AdamW moments cover what trains: every weight, or only the adapters of a LoRA model
  // (trainable_params in lora.h).
  std::vector<float> grads;     // empty until the first backward
  std::vector<float> adam_m;    // empty until the first optimizer step
  std::vector<float> adam_v;
  int64_t adam_step = 0;
  // Activation and gradient scratch kept between calls: a model runs one operation at a time, and reusing the
  // buffers avoids a page fault per 4 KB of fresh memory on every call. Never copied by clone_model.
  mutable std::shared_ptr<Workspace> workspace;
  // Null on the CPU. Set by set_device (device.h); the engine's entry points forward to it. Not copied by clone_model.
  std::shared_ptr<DeviceEngine> device;
  // CPU precision (set_device with Precision::BF16): sampling decodes and training multiplies in bf16 with fp32
  // accumulation (SampleRequest::bf16, TrainRequest::bf16 for every call). Log-probs and scores stay fp32.
  bool cpu_bf16 = false;
  // LoRA adapters (enable_lora); null for full fine-tuning. lora_off: the base alone runs (AdaptersOff, one call).
  std::shared_ptr<Lora> lora;
  mutable bool lora_off = false;
  // Loaded from a multimodal checkpoint (a multimodal Gemma 3): the rest of it, which save_checkpoint writes again
  // around the language model. Null otherwise. Copied by clone_model.
  std::shared_ptr<const MultimodalParts> multimodal;

  size_t num_params() const { return layout.total; }
};

// A model with zeroed weights (validate_config is called first).
std::unique_ptr<Model> make_model(const ModelConfig& cfg);

// transformers-style init from a seed: normal(0, std) for matrices and embeddings, zeros for biases, ones for norm
// weights. GPT-2's residual projections (attn.c_proj, mlp.c_proj) use std / sqrt(2 * n_layer) as in GPT2's init.
void init_weights(Model& m, uint64_t seed, float std = 0.02f);

// A 64-bit fingerprint of the weights (Model::params, not LoRA adapters), as 16 hex digits: the same for the same
// bits, whatever the thread count. A resumed run checks that its frozen reference is the model it started with.
std::string weights_fingerprint(const Model& m);

// A frozen copy of the weights (no gradients, no optimizer state): a reference model. A LoRA model's copy has its
// adapters merged into the weights.
std::unique_ptr<Model> clone_model(const Model& m);

}  // namespace optune
