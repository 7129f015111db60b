// The model shapes and random batches the native benchmarks share (bench_engine, bench_cuda_model,
// bench_cuda_sample): a GPT-2 config from its width, depth and vocabulary, and batches of random tokens.
#pragma once
#include <cstdint>

#include "core/engine.h"
#include "core/rng.h"

namespace optune::bench {

// GPT-2: head_dim = d / heads, d_ff = 4d, 1024 positions (gpt2_shape(768, 12, 12, 50257) is GPT-2 124M).
inline ModelConfig gpt2_shape(int d, int layers, int heads, int vocab) {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.vocab_size = vocab;
  c.d_model = d;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_kv_head = heads;
  c.head_dim = d / heads;
  c.d_ff = 4 * d;
  c.max_positions = 1024;
  return c;
}

inline ModelConfig gpt2_124m() { return gpt2_shape(768, 12, 12, 50257); }

// Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention, untied head) of the same width and depth as
// gpt2_shape(d, ...): head_dim = d / heads, kv_heads key/value heads, d_ff = 8d/3 rounded to 16.
inline ModelConfig llama_shape(int d, int layers, int heads, int kv_heads, int vocab) {
  ModelConfig c = gpt2_shape(d, layers, heads, vocab);
  c.arch = Arch::LLAMA;
  c.n_kv_head = kv_heads;
  c.d_ff = (8 * d / 3 + 15) / 16 * 16;
  c.tie_embeddings = false;
  return c;
}

// n sequences of len random tokens, the first `prompt` of each its prompt.
inline Batch random_batch(int n, int len, int prompt, int vocab, uint64_t seed) {
  Batch b;
  b.offsets.push_back(0);
  for (int i = 0; i < n; i++) {
    for (int t = 0; t < len; t++) b.tokens.push_back(static_cast<int32_t>(rng_u64(seed, i, t) % vocab));
    b.offsets.push_back(static_cast<int32_t>(b.tokens.size()));
    b.prompt_lens.push_back(prompt);
  }
  return b;
}

}  // namespace optune::bench
