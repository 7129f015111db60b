// LoRA (Hu et al. 2021) as PEFT implements it: a targeted linear layer y = x W^T + b becomes
//   y = x W^T + b + scale * (x A^T) B^T,   A [r, in], B [out, r], scale = alpha / r,
// the base weights frozen and only A and B trained. The policy's base doubles as the reference model (adapters
// off), so a LoRA run keeps one copy of the weights instead of two, and the training state (gradients and AdamW
// moments) covers the adapters only: a 0.6B model trained in 40% of the memory (6.2 of 15.4 GB, bench/RESULTS.md).
//
// Adapters load from and save to PEFT's files (adapter_config.json + adapter_model.safetensors, tensors named
// "base_model.model.<module>.lora_A.weight"), so PeftModel.from_pretrained(base, dir) reads what optune writes.
// GPT-2's Conv1D layers store W as [in, out] (PEFT's fan_in_fan_out); A and B keep nn.Linear's layout either way.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model.h"

namespace optune {

struct LoraConfig {
  int rank = 8;
  float alpha = 16.0f;
  // Module names as PEFT's target_modules: a module is targeted when its name equals an entry or ends with
  // "." + entry ("c_proj" targets GPT-2's attn.c_proj and mlp.c_proj). "all-linear": every block's linear layer.
  std::vector<std::string> targets = {"all-linear"};
};

// One targeted linear layer.
struct LoraTarget {
  std::string module;  // e.g. "model.layers.0.self_attn.q_proj"
  int layer = 0;
  int slot = 0;        // index among its block's targets: where its x A^T rows live in LayerActs::lora_h
  size_t weight = 0;   // offset of the base weight in Model::params
  int in = 0, out = 0;
  size_t a = 0, b = 0; // offsets of A [rank, in] and B [out, rank] in Lora::params
};

struct Lora {
  LoraConfig cfg;
  float scale = 0;
  ParamLayout layout;          // the adapter tensors (PEFT names), all with weight decay
  std::vector<float> params;   // A and B of every target, flat in layout order
  std::vector<LoraTarget> targets;
  int slots = 0;               // most targets in one block
  std::unordered_map<size_t, int> by_weight;  // base weight offset -> index into targets

  const LoraTarget* find(size_t weight) const {
    const auto it = by_weight.find(weight);
    return it == by_weight.end() ? nullptr : &targets[it->second];
  }
};

// Adds adapters to a causal LM: A drawn like PEFT's default (kaiming-uniform, U(-1/sqrt(in), 1/sqrt(in))) from
// `seed`, B zero, so the model's outputs are unchanged until it trains. Its gradients and AdamW state then cover
// the adapters only (see trainable_params). Throws optune::Error for a reward model, a model that has adapters
// already or has optimizer state, a rank < 1, alpha <= 0, or a target that matches no module. On a GPU model it
// acts on the host copies, like every write to them (core/device.h): sync_to_host before, sync_to_device after
// (the binding does both; load_lora_adapter likewise).
void enable_lora(Model& m, const LoraConfig& cfg, uint64_t seed);

// The adapters that apply to a forward pass now: null without LoRA or while they are switched off.
inline const Lora* active_lora(const Model& m) { return m.lora && !m.lora_off ? m.lora.get() : nullptr; }

// What training updates: the adapters with LoRA, else every weight. Model::grads and the AdamW moments follow it.
inline std::vector<float>& trainable_params(Model& m) { return m.lora ? m.lora->params : m.params; }
inline const std::vector<float>& trainable_params(const Model& m) { return m.lora ? m.lora->params : m.params; }
inline const ParamLayout& trainable_layout(const Model& m) { return m.lora ? m.lora->layout : m.layout; }

// The base weight of `t` with its adapter merged in, W + scale * B A (transposed for GPT-2's [in, out] layout), into
// `out`, whose capacity is reused (the sampler merges every target on each call: fresh buffers would cost a page
// fault per 4 KB).
void merge_weight_into(const Model& m, const LoraTarget& t, std::vector<float>& out);
// The same into out[0 .. in * out) (the caller's buffer).
void merge_weight_into(const Model& m, const LoraTarget& t, float* out);

// Switches the adapters off for one call (the reference model's log-probs), back as they were when it ends.
class AdaptersOff {
 public:
  explicit AdaptersOff(const Model& m, bool off = true) : m_(m), was_(m.lora_off) { m_.lora_off = was_ || off; }
  ~AdaptersOff() { m_.lora_off = was_; }
  AdaptersOff(const AdaptersOff&) = delete;
  AdaptersOff& operator=(const AdaptersOff&) = delete;

 private:
  const Model& m_;
  bool was_;
};

// The modules `targets` selects in m (PEFT's matching; "all-linear" = every block's linear layer), in block order.
// Throws optune::Error for a target that matches nothing.
std::vector<LoraTarget> resolve_lora_targets(const Model& m, const std::vector<std::string>& targets);

// Reading and writing PEFT's adapter files: checkpoint.h (save_lora_adapter, load_lora_adapter, read_lora_config).

}  // namespace optune
