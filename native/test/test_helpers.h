// Shared helpers for native tests: tiny model configs, random batches, a seeded generator.
#pragma once
#include <cstdint>
#include <vector>

#include "core/batch.h"
#include "core/config.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/rng.h"

namespace testing {

inline optune::ModelConfig tiny_gpt2(int vocab = 17) {
  optune::ModelConfig c;
  c.arch = optune::Arch::GPT2;
  c.vocab_size = vocab;
  c.d_model = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_kv_head = 2;
  c.head_dim = 4;
  c.d_ff = 16;
  c.max_positions = 32;
  c.tie_embeddings = true;
  return c;
}

// Qwen2-like: GQA (4 query heads, 2 kv heads), q/k/v biases, untied LM head.
inline optune::ModelConfig tiny_llama(int vocab = 17) {
  optune::ModelConfig c;
  c.arch = optune::Arch::QWEN2;
  c.vocab_size = vocab;
  c.d_model = 8;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.head_dim = 2;
  c.d_ff = 12;
  c.max_positions = 32;
  c.norm_eps = 1e-6f;
  c.tie_embeddings = false;
  c.qkv_bias = true;
  return c;
}

// Qwen3-like: per-head q/k norms, head_dim 4 with 4 heads (q wider than the hidden state), GQA, tied, no biases.
inline optune::ModelConfig tiny_qwen3(int vocab = 17) {
  optune::ModelConfig c = tiny_llama(vocab);
  c.arch = optune::Arch::QWEN3;
  c.head_dim = 4;
  c.tie_embeddings = true;
  c.qkv_bias = false;
  return c;
}

// Gemma-3-like: Qwen3's shape with 1 + weight norms, post-attention/post-MLP norms, the scaled embedding, the GELU
// gate, a query scale (query_pre_attn_scalar 6, head_dim 4), a sliding window of 3 positions on layer 0 (the test
// sequences are longer) and full attention with another RoPE base on layer 1.
inline optune::ModelConfig tiny_gemma3(int vocab = 17) {
  optune::ModelConfig c = tiny_qwen3(vocab);
  c.arch = optune::Arch::GEMMA3;
  c.attn_scalar = 6.0f;
  c.sliding_window = 3;
  c.sliding = {1, 0};
  c.rope_theta = 100000.0f;
  c.rope_local_theta = 10000.0f;
  return c;
}

// SmolLM3-like: Llama with layer 1 NoPE (no rotation) and sliding over 3 positions, layer 0 rotating and full.
inline optune::ModelConfig tiny_smollm3(int vocab = 17) {
  optune::ModelConfig c = tiny_llama(vocab);
  c.arch = optune::Arch::SMOLLM3;
  c.qkv_bias = false;
  c.tie_embeddings = true;
  c.nope = {0, 1};
  c.sliding = {0, 1};
  c.sliding_window = 3;
  return c;
}

// OLMo-2-like: no pre-norms, post-norms on the attention's and the MLP's outputs, q and k normalized over their
// whole width (all heads), GQA, untied.
inline optune::ModelConfig tiny_olmo2(int vocab = 17) {
  optune::ModelConfig c = tiny_llama(vocab);
  c.arch = optune::Arch::OLMO2;
  c.qkv_bias = false;
  return c;
}

// Mistral-like: Llama without biases, a sliding window of 3 positions on every layer (the test sequences are longer).
inline optune::ModelConfig tiny_mistral(int vocab = 17) {
  optune::ModelConfig c = tiny_llama(vocab);
  c.arch = optune::Arch::MISTRAL;
  c.qkv_bias = false;
  c.sliding = std::vector<uint8_t>(c.n_layer, 1);
  c.sliding_window = 3;
  return c;
}

// One tiny config per block structure, for tests that must hold for every family.
inline std::vector<optune::ModelConfig> tiny_families(int vocab = 17) {
  return {tiny_gpt2(vocab),    tiny_llama(vocab),  tiny_qwen3(vocab),  tiny_gemma3(vocab),
          tiny_smollm3(vocab), tiny_olmo2(vocab), tiny_mistral(vocab)};
}

struct Rand {
  uint64_t seed, n = 0;
  explicit Rand(uint64_t s) : seed(s) {}
  double uniform() { return optune::rng_uniform(seed, 0, n++); }
  float normal(float std = 1.0f) { return std * static_cast<float>(optune::rng_normal(seed, 1, n++)); }
  int below(int k) { return static_cast<int>(uniform() * k); }
};

// Gives every parameter (norm weights and biases too) a random value so all gradient paths are exercised. Norms
// scale by about 1 (Gemma's by 1 + weight: their weights are drawn about 0).
inline void randomize(optune::Model& m, uint64_t seed, float std = 0.3f) {
  Rand r(seed);
  for (auto& p : m.params) p = r.normal(std);
  for (const auto& t : m.layout.tensors)
    if (t.shape.size() == 1 && t.name.find("weight") != std::string::npos)
      for (size_t i = 0; i < t.numel; i++) m.params[t.offset + i] = 1.0f - m.cfg.norm_offset() + r.normal(0.2f);
}

// Adapters on every linear layer with B drawn too (fresh adapters have B = 0: no output change, A's gradient 0).
inline void enable_random_lora(optune::Model& m, const optune::LoraConfig& lc, uint64_t seed, float std) {
  optune::enable_lora(m, lc, seed);
  Rand r(seed + 1);
  for (float& x : m.lora->params) x = r.normal(std);
}

inline optune::Batch random_batch(const std::vector<int>& lens, const std::vector<int>& prompt_lens, int vocab,
                                  uint64_t seed) {
  Rand r(seed);
  optune::Batch b;
  b.offsets.push_back(0);
  for (size_t i = 0; i < lens.size(); i++) {
    for (int t = 0; t < lens[i]; t++) b.tokens.push_back(r.below(vocab));
    b.offsets.push_back(static_cast<int32_t>(b.tokens.size()));
    b.prompt_lens.push_back(prompt_lens[i]);
  }
  return b;
}

}  // namespace testing
