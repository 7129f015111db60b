#include "params.h"

namespace optune {

const ParamInfo* ParamLayout::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

size_t add_param(ParamLayout& L, const std::string& name, std::vector<int64_t> shape, bool decay) {
  ParamInfo p;
  p.name = name;
  p.shape = std::move(shape);
  p.numel = 1;
  for (auto s : p.shape) p.numel *= static_cast<size_t>(s);
  p.offset = L.total;
  p.decay = decay;
  L.total += p.numel;
  L.tensors.push_back(p);
  return p.offset;
}

namespace {
struct Builder {
  ParamLayout& L;
  size_t add(const std::string& name, std::vector<int64_t> shape, bool decay) {
    return add_param(L, name, std::move(shape), decay);
  }
};
}  // namespace

ParamLayout build_param_layout(const ModelConfig& c) {
  ParamLayout L;
  Builder b{L};
  const int64_t V = c.vocab_size, D = c.d_model, F = c.d_ff, P = c.max_positions;
  const int64_t QD = c.q_dim(), KVD = c.kv_dim();
  L.layers.resize(c.n_layer);
  if (c.is_gpt2()) {
    L.tok_emb = b.add("transformer.wte.weight", {V, D}, true);
    L.pos_emb = b.add("transformer.wpe.weight", {P, D}, true);
    for (int l = 0; l < c.n_layer; l++) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      LayerOffsets& o = L.layers[l];
      o.norm1_w = b.add(p + "ln_1.weight", {D}, false);
      o.norm1_b = b.add(p + "ln_1.bias", {D}, false);
      o.qkv_w = b.add(p + "attn.c_attn.weight", {D, 3 * D}, true);
      o.qkv_b = b.add(p + "attn.c_attn.bias", {3 * D}, false);
      o.o_w = b.add(p + "attn.c_proj.weight", {D, D}, true);
      o.o_b = b.add(p + "attn.c_proj.bias", {D}, false);
      o.norm2_w = b.add(p + "ln_2.weight", {D}, false);
      o.norm2_b = b.add(p + "ln_2.bias", {D}, false);
      o.fc_w = b.add(p + "mlp.c_fc.weight", {D, F}, true);
      o.fc_b = b.add(p + "mlp.c_fc.bias", {F}, false);
      o.proj_w = b.add(p + "mlp.c_proj.weight", {F, D}, true);
      o.proj_b = b.add(p + "mlp.c_proj.bias", {D}, false);
    }
    L.normf_w = b.add("transformer.ln_f.weight", {D}, false);
    L.normf_b = b.add("transformer.ln_f.bias", {D}, false);
  } else {
    L.tok_emb = b.add("model.embed_tokens.weight", {V, D}, true);
    for (int l = 0; l < c.n_layer; l++) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      LayerOffsets& o = L.layers[l];
      if (c.pre_norms()) o.norm1_w = b.add(p + "input_layernorm.weight", {D}, false);
      o.q_w = b.add(p + "self_attn.q_proj.weight", {QD, D}, true);
      if (c.qkv_bias) o.q_b = b.add(p + "self_attn.q_proj.bias", {QD}, false);
      o.k_w = b.add(p + "self_attn.k_proj.weight", {KVD, D}, true);
      if (c.qkv_bias) o.k_b = b.add(p + "self_attn.k_proj.bias", {KVD}, false);
      o.v_w = b.add(p + "self_attn.v_proj.weight", {KVD, D}, true);
      if (c.qkv_bias) o.v_b = b.add(p + "self_attn.v_proj.bias", {KVD}, false);
      if (c.qk_norm()) {
        o.q_norm_w = b.add(p + "self_attn.q_norm.weight", {c.q_norm_width()}, false);
        o.k_norm_w = b.add(p + "self_attn.k_norm.weight", {c.k_norm_width()}, false);
      }
      o.o_w = b.add(p + "self_attn.o_proj.weight", {D, QD}, true);
      if (c.o_bias) o.o_b = b.add(p + "self_attn.o_proj.bias", {D}, false);
      if (c.post_norms()) {
        o.post_attn_norm_w = b.add(p + "post_attention_layernorm.weight", {D}, false);
        if (c.pre_norms()) o.norm2_w = b.add(p + "pre_feedforward_layernorm.weight", {D}, false);
        o.post_mlp_norm_w = b.add(p + "post_feedforward_layernorm.weight", {D}, false);
      } else {
        o.norm2_w = b.add(p + "post_attention_layernorm.weight", {D}, false);
      }
      o.fc_w = b.add(p + "mlp.gate_proj.weight", {F, D}, true);
      o.up_w = b.add(p + "mlp.up_proj.weight", {F, D}, true);
      o.proj_w = b.add(p + "mlp.down_proj.weight", {D, F}, true);
    }
    L.normf_w = b.add("model.norm.weight", {D}, false);
  }
  if (c.reward_model) {
    L.score = b.add("score.weight", {1, D}, true);
  } else if (c.tie_embeddings) {
    L.lm_head = L.tok_emb;
  } else {
    L.lm_head = b.add("lm_head.weight", {V, D}, true);
  }
  return L;
}

}  // namespace optune
