#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "host_memory.h"
#include "lora.h"
#include "rng.h"

namespace optune {

std::unique_ptr<Model> make_model(const ModelConfig& cfg) {
  validate_config(cfg);
  auto m = std::make_unique<Model>();
  m->cfg = cfg;
  m->layout = build_param_layout(cfg);
  check_host_memory(m->layout.total * sizeof(float),
                    "the model's weights (" + std::to_string(m->layout.total) + " parameters)",
                    "use a smaller configuration (training needs ~4x this: gradients and AdamW moments)");
  m->params.assign(m->layout.total, 0.0f);
  return m;
}

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void init_weights(Model& m, uint64_t seed, float std) {
  const float resid_std = m.cfg.is_gpt2() ? std / std::sqrt(2.0f * m.cfg.n_layer) : std;
  for (size_t ti = 0; ti < m.layout.tensors.size(); ti++) {
    const ParamInfo& p = m.layout.tensors[ti];
    float* w = m.params.data() + p.offset;
    const bool is_norm = p.shape.size() == 1 && (p.name.find("ln_") != std::string::npos ||
                                                 p.name.find("layernorm") != std::string::npos ||
                                                 p.name.find("norm.weight") != std::string::npos);
    if (is_norm && ends_with(p.name, ".weight")) {  // a scale of 1 (Gemma's norms scale by 1 + weight)
      for (size_t i = 0; i < p.numel; i++) w[i] = 1.0f - m.cfg.norm_offset();
    } else if (p.shape.size() == 1) {
      for (size_t i = 0; i < p.numel; i++) w[i] = 0.0f;  // biases
    } else {
      const bool resid = ends_with(p.name, "c_proj.weight");
      const float s = resid ? resid_std : std;
      for (size_t i = 0; i < p.numel; i++) w[i] = s * static_cast<float>(rng_normal(seed, ti, i));
    }
  }
}

std::string weights_fingerprint(const Model& m) {
  // FNV-style multiply-xor over 64-bit words in 4 independent lanes per chunk (fast: ~8 bytes per multiply), the
  // chunks' hashes then mixed in order, so threads only change who computes a chunk, not the result.
  constexpr size_t kChunk = size_t(1) << 18;  // floats
  const size_t n = m.params.size(), n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<uint64_t> chunk_hash(n_chunks);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < n_chunks; c++) {
    const size_t begin = c * kChunk, end = std::min(n, begin + kChunk);
    uint64_t lane[4] = {0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull, 0x94d049bb133111ebull, 0x2545f4914f6cdd1dull};
    size_t i = begin;
    for (; i + 8 <= end; i += 8)
      for (int l = 0; l < 4; l++) {
        uint64_t w;
        std::memcpy(&w, &m.params[i + 2 * l], sizeof w);
        lane[l] = (lane[l] ^ w) * 0x100000001b3ull;
      }
    for (; i < end; i++) {
      uint32_t w;
      std::memcpy(&w, &m.params[i], sizeof w);
      lane[0] = (lane[0] ^ w) * 0x100000001b3ull;
    }
    chunk_hash[c] = mix64(lane[0] ^ mix64(lane[1] ^ mix64(lane[2] ^ mix64(lane[3]))));
  }
  uint64_t h = mix64(n);
  for (uint64_t c : chunk_hash) h = mix64(h ^ c);
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::unique_ptr<Model> clone_model(const Model& src) {
  auto m = std::make_unique<Model>();
  m->cfg = src.cfg;
  m->layout = src.layout;
  m->params = src.params;
  if (src.lora)  // each target merged straight into the copy's weights
    for (const LoraTarget& t : src.lora->targets) merge_weight_into(src, t, m->params.data() + t.weight);
  m->cpu_bf16 = src.cpu_bf16;
  m->multimodal = src.multimodal;
  return m;
}

}  // namespace optune
