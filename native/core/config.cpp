#include "config.h"

#include <cmath>

#include "error.h"

namespace optune {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::GPT2: return "gpt2";
    case Arch::LLAMA: return "llama";
    case Arch::QWEN2: return "qwen2";
    case Arch::QWEN3: return "qwen3";
    case Arch::GEMMA3: return "gemma3_text";
    case Arch::SMOLLM3: return "smollm3";
    case Arch::OLMO2: return "olmo2";
    case Arch::MISTRAL: return "mistral";
  }
  return "?";
}

const char* hf_class_prefix(Arch a) {
  switch (a) {
    case Arch::GPT2: return "GPT2";
    case Arch::LLAMA: return "Llama";
    case Arch::QWEN2: return "Qwen2";
    case Arch::QWEN3: return "Qwen3";
    case Arch::GEMMA3: return "Gemma3";
    case Arch::SMOLLM3: return "SmolLM3";
    case Arch::OLMO2: return "Olmo2";
    case Arch::MISTRAL: return "Mistral";
  }
  return "?";
}

std::string hf_architecture_name(const ModelConfig& cfg) {
  const std::string base = hf_class_prefix(cfg.arch);
  if (cfg.reward_model) return base + (cfg.is_gemma() ? "TextForSequenceClassification" : "ForSequenceClassification");
  return base + (cfg.arch == Arch::GPT2 ? "LMHeadModel" : "ForCausalLM");
}

static void positive(int v, const char* name) {
  OPTUNE_CHECK(v > 0, "model config: " + name + " must be a positive integer, got " + std::to_string(v));
}

void validate_config(const ModelConfig& c) {
  positive(c.vocab_size, "vocab_size");
  positive(c.d_model, "d_model (hidden_size / n_embd)");
  positive(c.n_layer, "n_layer (num_hidden_layers)");
  positive(c.n_head, "n_head (num_attention_heads)");
  positive(c.n_kv_head, "n_kv_head (num_key_value_heads)");
  positive(c.head_dim, "head_dim");
  positive(c.d_ff, "d_ff (intermediate_size / n_inner)");
  positive(c.max_positions, "max_positions (n_positions / max_position_embeddings)");
  OPTUNE_CHECK(c.n_head % c.n_kv_head == 0, "model config: num_attention_heads (" + std::to_string(c.n_head) +
                                                 ") must be a multiple of num_key_value_heads (" +
                                                 std::to_string(c.n_kv_head) + ")");
  if (c.is_gpt2()) {
    OPTUNE_CHECK(c.n_kv_head == c.n_head, "model config: GPT-2 has no grouped-query attention (n_kv_head != n_head)");
    OPTUNE_CHECK(c.head_dim * c.n_head == c.d_model,
                 "model config: GPT-2 needs n_embd (" + std::to_string(c.d_model) + ") divisible by n_head (" +
                     std::to_string(c.n_head) + ")");
  } else {
    OPTUNE_CHECK(c.head_dim % 2 == 0, "model config: head_dim must be even for rotary embeddings, got " +
                                          std::to_string(c.head_dim));
    OPTUNE_CHECK(c.rope_theta > 0 && std::isfinite(c.rope_theta),
                 "model config: rope_theta must be positive and within float range, got " +
                     std::to_string(c.rope_theta));
  }
  OPTUNE_CHECK(c.norm_eps > 0 && c.norm_eps < 1, "model config: norm eps must be in (0, 1)");
  const cpu::RopeScaling& rs = c.rope_scaling;
  if (rs.type != cpu::RopeScaling::NONE) {
    OPTUNE_CHECK(!c.is_gpt2(), "model config: GPT-2 has no RoPE to scale");
    OPTUNE_CHECK(rs.factor >= 1 && rs.factor <= 1e6f, "model config: the RoPE scaling factor must be in [1, 1e6]");
    if (rs.type == cpu::RopeScaling::LLAMA3)
      OPTUNE_CHECK(rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor && rs.high_freq_factor <= 1e6f &&
                       rs.original_max_positions >= 1,
                   "model config: llama3 RoPE needs 0 < low_freq_factor < high_freq_factor and "
                   "original_max_position_embeddings >= 1");
  }
  if (c.is_gemma()) {
    // an integer, as transformers' Gemma3TextConfig takes it
    OPTUNE_CHECK(c.attn_scalar >= 1 && c.attn_scalar <= (1 << 24) && c.attn_scalar == std::floor(c.attn_scalar),
                 "model config: query_pre_attn_scalar must be a positive integer, got " +
                     std::to_string(c.attn_scalar));
    OPTUNE_CHECK(c.sliding.size() == static_cast<size_t>(c.n_layer),
                 "model config: layer_types needs one entry per layer (" + std::to_string(c.n_layer) + "), got " +
                     std::to_string(c.sliding.size()));
    positive(c.sliding_window, "sliding_window");
    OPTUNE_CHECK(c.nope.empty(), "model config: Gemma 3 has no NoPE layers");
    OPTUNE_CHECK(c.rope_local_theta > 0 && std::isfinite(c.rope_local_theta),
                 "model config: the sliding-window layers' rope_theta (rope_local_base_freq) must be positive and "
                 "within float range");
  } else {
    OPTUNE_CHECK(c.attn_scalar == 0 && c.rope_local_theta == 0,
                 std::string("model config: query_pre_attn_scalar and a local RoPE base are Gemma 3's; ") +
                     arch_name(c.arch) + " has neither");
  }
  if (c.arch == Arch::SMOLLM3) {
    OPTUNE_CHECK(c.nope.size() == static_cast<size_t>(c.n_layer),
                 "model config: no_rope_layers needs one entry per layer (" + std::to_string(c.n_layer) + "), got " +
                     std::to_string(c.nope.size()));
    OPTUNE_CHECK(c.sliding.empty() || c.sliding.size() == static_cast<size_t>(c.n_layer),
                 "model config: layer_types needs one entry per layer (" + std::to_string(c.n_layer) + ")");
    if (!c.sliding.empty()) positive(c.sliding_window, "sliding_window");
  } else if (c.arch == Arch::MISTRAL) {  // one window for every layer, or none
    OPTUNE_CHECK(c.nope.empty(), "model config: Mistral has no NoPE layers");
    OPTUNE_CHECK(c.sliding.empty() || c.sliding == std::vector<uint8_t>(c.n_layer, 1),
                 "model config: Mistral's sliding window applies to every layer or to none");
    if (!c.sliding.empty()) positive(c.sliding_window, "sliding_window");
    OPTUNE_CHECK(!c.qkv_bias && !c.o_bias, "model config: Mistral's attention has no biases");
  } else if (!c.is_gemma()) {
    OPTUNE_CHECK(c.sliding.empty() && c.sliding_window == 0 && c.nope.empty(),
                 std::string("model config: sliding-window layers are Gemma 3's, SmolLM3's and Mistral's, NoPE "
                             "layers SmolLM3's; ") +
                     arch_name(c.arch) + " has neither");
  }

  OPTUNE_CHECK(c.vocab_size <= (1 << 24), "model config: vocab_size " + std::to_string(c.vocab_size) + " is too large");
}

}  // namespace optune
