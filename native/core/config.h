// Model configuration: the one description of a decoder-only transformer that every part of the engine reads.
// Two families: GPT-2 (LayerNorm, tanh-GELU, learned positions, tied embeddings, biases) and Llama (RMSNorm, RoPE,
// SwiGLU, grouped-query attention). Qwen2 is Llama with q/k/v biases; Qwen3 is Llama with an RMSNorm over each head
// of q and k before the rotation (q_norm, k_norm). A reward model is the same backbone with a
// scalar `score` head on the last token's final hidden state instead of the LM head.
#pragma once
#include <cstdint>
#include <string>

namespace optune {

enum class Arch { GPT2, LLAMA, QWEN2, QWEN3 };

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
  bool tie_embeddings = true;
  bool qkv_bias = false;   // Llama attention_bias / Qwen2: biases on q, k, v
  bool o_bias = false;     // Llama attention_bias: bias on o_proj too
  bool reward_model = false;  // scalar score head instead of the LM head
  int bos_token_id = -1;   // carried through save/load, not used by the engine
  int eos_token_id = -1;
  int pad_token_id = -1;

  bool is_gpt2() const { return arch == Arch::GPT2; }
  bool is_llama() const { return arch != Arch::GPT2; }
  bool qk_norm() const { return arch == Arch::QWEN3; }  // RMSNorm (weights [head_dim]) on each head of q and k
  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_kv_head * head_dim; }
};

// Throws optune::Error naming the first field that is out of range or inconsistent.
void validate_config(const ModelConfig& cfg);

// "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForSequenceClassification", ...
std::string hf_architecture_name(const ModelConfig& cfg);
// "GPT2" | "Llama" | "Qwen2" | "Qwen3": the prefix of transformers' class names
const char* hf_class_prefix(Arch a);
const char* arch_name(Arch a);  // "gpt2" | "llama" | "qwen2" | "qwen3"

}  // namespace optune
