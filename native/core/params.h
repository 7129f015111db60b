// Parameter layout: every weight of a model lives in one flat fp32 buffer, in a fixed order, under the tensor name
// transformers uses (GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM / Gemma3ForCausalLM, or
// *ForSequenceClassification for a reward model). Gradients and AdamW moments use the same layout, so the optimizer
// and norms are single loops. Tensors keep transformers' storage layout: GPT-2's Conv1D weights are [in, out],
// nn.Linear weights are [out, in].
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

namespace optune {

struct ParamInfo {
  std::string name;            // transformers' state_dict key
  std::vector<int64_t> shape;
  size_t offset = 0;           // in floats, into the flat buffer
  size_t numel = 0;
  bool decay = false;          // AdamW weight decay applies (matrices and embeddings, not biases or norms)
};

constexpr size_t kAbsent = static_cast<size_t>(-1);

// Offsets of one transformer block's tensors. kAbsent where a family has no such tensor.
struct LayerOffsets {
  size_t norm1_w = kAbsent, norm1_b = kAbsent;  // ln_1 | input_layernorm
  size_t qkv_w = kAbsent, qkv_b = kAbsent;      // GPT-2 c_attn (fused q|k|v, [D, 3D])
  size_t q_w = kAbsent, q_b = kAbsent;          // Llama q_proj [H*hd, D]
  size_t k_w = kAbsent, k_b = kAbsent;          // Llama k_proj [KV*hd, D]
  size_t v_w = kAbsent, v_b = kAbsent;          // Llama v_proj [KV*hd, D]
  size_t q_norm_w = kAbsent, k_norm_w = kAbsent;  // Qwen3 q_norm / k_norm [hd], shared by every head
  size_t o_w = kAbsent, o_b = kAbsent;          // attn c_proj [D, D] | o_proj [D, H*hd]
  size_t post_attn_norm_w = kAbsent;            // Gemma post_attention_layernorm: on the attention's output
  size_t norm2_w = kAbsent, norm2_b = kAbsent;  // ln_2 | post_attention_layernorm | Gemma pre_feedforward_layernorm
  size_t post_mlp_norm_w = kAbsent;             // Gemma post_feedforward_layernorm: on the MLP's output
  size_t fc_w = kAbsent, fc_b = kAbsent;        // GPT-2 c_fc [D, F] | Llama gate_proj [F, D]
  size_t up_w = kAbsent;                        // Llama up_proj [F, D]
  size_t proj_w = kAbsent, proj_b = kAbsent;    // GPT-2 mlp c_proj [F, D] | Llama down_proj [D, F]
};

struct ParamLayout {
  std::vector<ParamInfo> tensors;
  size_t total = 0;  // floats
  size_t tok_emb = kAbsent;   // wte | embed_tokens [V, D]
  size_t pos_emb = kAbsent;   // GPT-2 wpe [P, D]
  std::vector<LayerOffsets> layers;
  size_t normf_w = kAbsent, normf_b = kAbsent;  // ln_f | norm
  size_t lm_head = kAbsent;   // [V, D]; == tok_emb when tied
  size_t score = kAbsent;     // reward model head [1, D]

  const ParamInfo* find(const std::string& name) const;
};

ParamLayout build_param_layout(const ModelConfig& cfg);

// Appends a tensor at the end of `L` (offset = the old total) and returns its offset.
size_t add_param(ParamLayout& L, const std::string& name, std::vector<int64_t> shape, bool decay);

// Pointer helper: base + offset, or nullptr when the tensor is absent.
// A null base (no gradients kept for the weights: a LoRA model's frozen base) gives nullptr too.
inline float* at(float* base, size_t off) { return off == kAbsent || !base ? nullptr : base + off; }
inline const float* at(const float* base, size_t off) { return off == kAbsent || !base ? nullptr : base + off; }

}  // namespace optune
