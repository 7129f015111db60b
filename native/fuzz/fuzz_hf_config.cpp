// libFuzzer target: config_from_hf_json (a transformers config.json). Bad configs must be rejected with
// optune::Error. A config that is accepted must also be writable: config_to_hf_json must not throw, and reading
// its output back must give the same ModelConfig, so a model loaded from it can always be saved again.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/params.h"

using namespace optune;

static bool same(const ModelConfig& a, const ModelConfig& b) {
  return a.arch == b.arch && a.reward_model == b.reward_model && a.vocab_size == b.vocab_size &&
         a.d_model == b.d_model && a.n_layer == b.n_layer && a.n_head == b.n_head && a.n_kv_head == b.n_kv_head &&
         a.head_dim == b.head_dim && a.d_ff == b.d_ff && a.max_positions == b.max_positions &&
         a.norm_eps == b.norm_eps && (a.is_gpt2() || a.rope_theta == b.rope_theta) &&
         a.tie_embeddings == b.tie_embeddings && a.qkv_bias == b.qkv_bias && a.o_bias == b.o_bias &&
         a.bos_token_id == b.bos_token_id && a.eos_token_id == b.eos_token_id && a.pad_token_id == b.pad_token_id &&
         a.attn_scalar == b.attn_scalar && a.sliding_window == b.sliding_window && a.sliding == b.sliding &&
         a.rope_local_theta == b.rope_local_theta && a.rope_scaling == b.rope_scaling && a.nope == b.nope;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  ModelConfig cfg;
  try {
    cfg = config_from_hf_json(text, "config.json");
  } catch (const Error&) {
    return 0;
  }
  // Layout sizes must not overflow for any accepted config (only metadata: no weights are allocated).
  const ParamLayout layout = build_param_layout(cfg);
  (void)layout;
  std::string written;
  try {
    written = config_to_hf_json(cfg);
  } catch (const Error& e) {
    std::fprintf(stderr, "accepted config cannot be written back: %s\n", e.what());
    std::abort();
  }
  const ModelConfig back = config_from_hf_json(written, "written config.json");
  if (!same(cfg, back)) {
    std::fprintf(stderr, "config changed in a write/read round trip:\n%s\n", written.c_str());
    std::abort();
  }
  return 0;
}
