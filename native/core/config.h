// Model configuration: the one description of a decoder-only transformer that every part of the engine reads.
// Two families: GPT-2 (LayerNorm, tanh-GELU, learned positions, tied embeddings, biases) and Llama (RMSNorm, RoPE,
// SwiGLU, grouped-query attention). Qwen2 is Llama with q/k/v biases; Qwen3 is Llama with an RMSNorm over each head
// of q and k before the rotation (q_norm, k_norm). Gemma 3 (text) is Qwen3 with: RMSNorms that scale by 1 + weight,
// a norm after attention and after the MLP as well as before each (four a block), the embedding scaled by
// sqrt(hidden_size), a tanh-GELU gate instead of SiLU, attention scaled by query_pre_attn_scalar^-1/2, and layers of
// two kinds: sliding-window ones (each query sees its last `sliding_window` positions, RoPE base
// rope_local_theta) and full ones. SmolLM3 is Llama with some layers that do not rotate q and k at all (NoPE,
// every 4th by default), and optionally sliding-window layers. OLMo 2 is Llama with its norms moved: none before
// the attention and the MLP, one on each one's output, and q and k normalized over their whole width (all heads
// together) before the rotation. Mistral is Llama without biases whose layers all attend through a sliding window
// when its config sets one (Mistral 7B v0.1: 4096; later versions none). A reward model is the same backbone with a
// scalar `score` head on the last token's final hidden state instead of the LM head.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/rope_scaling.h"

namespace optune {

enum class Arch { GPT2, LLAMA, QWEN2, QWEN3, GEMMA3, SMOLLM3, OLMO2, MISTRAL };

struct ModelConfig {
  Arch arch = Arch::GPT2;
  int vocab_size = 0;
  int d_model = 0;        // hidden size
  int n_layer = 0;
  int n_head = 0;
  int n_kv_head = 0;      // == n_head for GPT-2; < n_head for grouped-query attention
  int head_dim = 0;       // d_model / n_head unless the checkpoint says otherwise (Llama head_dim)
  int d_ff = 0;           // MLP inner size
  int max_positions = 0;  // learned positions (GPT-2) or the longest sequence allowed (Llama)
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  cpu::RopeScaling rope_scaling;  // Llama 3.1+'s "llama3", or "linear" (Gemma: its full-attention layers only)
  bool tie_embeddings = true;
  bool qkv_bias = false;   // Llama attention_bias / Qwen2: biases on q, k, v
  bool o_bias = false;     // Llama attention_bias: bias on o_proj too
  bool reward_model = false;  // scalar score head instead of the LM head
  // Gemma 3 only:
  float attn_scalar = 0;           // query_pre_attn_scalar: scores scale by its -1/2 power (0: head_dim's)
  float rope_local_theta = 0;      // RoPE base of the sliding-window layers
  // Gemma 3, SmolLM3 and Mistral:
  int sliding_window = 0;          // positions a sliding-window layer's query sees, itself included
  std::vector<uint8_t> sliding;    // per layer: 1 = sliding-window attention (empty: every layer full)
  // SmolLM3 only: per layer, 1 = no RoPE (NoPE; transformers' no_rope_layers holds the opposite: 1 = RoPE)
  std::vector<uint8_t> nope;
  int bos_token_id = -1;   // carried through save/load, not used by the engine
  int eos_token_id = -1;
  int pad_token_id = -1;

  bool is_gpt2() const { return arch == Arch::GPT2; }
  bool is_llama() const { return arch != Arch::GPT2; }
  // RMSNorm on q and k before the rotation: over each head (Qwen3, Gemma 3) or the whole width (OLMo 2)
  bool qk_norm() const { return arch == Arch::QWEN3 || arch == Arch::GEMMA3 || arch == Arch::OLMO2; }
  int q_norm_width() const { return arch == Arch::OLMO2 ? q_dim() : head_dim; }
  int k_norm_width() const { return arch == Arch::OLMO2 ? kv_dim() : head_dim; }
  // norms before the attention and the MLP (all but OLMo 2)
  bool pre_norms() const { return arch != Arch::OLMO2; }
  bool is_gemma() const { return arch == Arch::GEMMA3; }
  bool layer_rotates(int l) const { return is_llama() && !(l < static_cast<int>(nope.size()) && nope[l]); }
  // Gemma: the RMSNorms' scale is 1 + weight (the stored weight is transformers' own).
  float norm_offset() const { return is_gemma() ? 1.0f : 0.0f; }
  // Gemma: norms on the attention's and the MLP's outputs too (post_attention / post_feedforward_layernorm).
  bool post_norms() const { return is_gemma() || arch == Arch::OLMO2; }
  // Gemma multiplies the token embedding by sqrt(hidden_size), as an fp32 value (transformers' buffer).
  float embed_scale() const { return is_gemma() ? static_cast<float>(std::sqrt(static_cast<double>(d_model))) : 1.0f; }
  // The factor on q (after RoPE) that turns the attention's own 1/sqrt(head_dim) into 1/sqrt(attn_scalar).
  float q_scale() const {
    return attn_scalar > 0 ? static_cast<float>(std::sqrt(static_cast<double>(head_dim) / attn_scalar)) : 1.0f;
  }
  bool layer_sliding(int l) const { return l < static_cast<int>(sliding.size()) && sliding[l]; }
  int layer_window(int l) const { return layer_sliding(l) ? sliding_window : 0; }  // 0: no window
  // Gemma's sliding-window layers have a RoPE base of their own, and no scaling
  float layer_rope_theta(int l) const { return is_gemma() && layer_sliding(l) ? rope_local_theta : rope_theta; }
  cpu::RopeScaling layer_rope_scaling(int l) const {
    return is_gemma() && layer_sliding(l) ? cpu::RopeScaling{} : rope_scaling;
  }
  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_kv_head * head_dim; }
};

// Throws optune::Error naming the first field that is out of range or inconsistent.
void validate_config(const ModelConfig& cfg);

// "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForSequenceClassification", ...
std::string hf_architecture_name(const ModelConfig& cfg);
// "GPT2" | "Llama" | "Qwen2" | "Qwen3" | "Gemma3" | "SmolLM3" | "Olmo2" | "Mistral": transformers' class names' prefix
const char* hf_class_prefix(Arch a);
// "gpt2" | "llama" | "qwen2" | "qwen3" | "gemma3_text" | "smollm3" | "olmo2" | "mistral" (config.json's model_type)
const char* arch_name(Arch a);

}  // namespace optune
