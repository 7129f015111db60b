#include "transformer.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "host_memory.h"
#include "lora.h"

namespace optune {

using cpu::WeightLayout;

QKV qkv_view(const ModelConfig& c, float* qkv, int T) {
  if (c.is_gpt2()) {
    const int D = c.d_model;
    return {qkv, qkv + D, qkv + 2 * D, 3 * D, 3 * D, 3 * D};
  }
  const size_t qd = c.q_dim(), kvd = c.kv_dim();
  return {qkv, qkv + T * qd, qkv + T * qd + T * kvd, static_cast<int>(qd), static_cast<int>(kvd),
          static_cast<int>(kvd)};
}

static size_t qkv_size(const ModelConfig& c, int T) {
  return static_cast<size_t>(T) * (c.is_gpt2() ? 3 * c.d_model : c.q_dim() + 2 * c.kv_dim());
}

// Every buffer of a block's activations, with the number of floats it needs for T tokens.
template <class Fn>
static void for_each_layer_buffer(LayerActs& a, const ModelConfig& c, int T, int64_t probs_size, Fn&& fn) {
  const size_t D = c.d_model, F = c.d_ff, Tn = T;
  const size_t pre = c.pre_norms() ? 1 : 0;  // OLMo 2 has no norms before the attention and the MLP
  fn(a.norm1, pre * Tn * D);
  fn(a.norm1_mean, pre * Tn);
  fn(a.norm1_rstd, pre * Tn);
  fn(a.qkv, qkv_size(c, T));
  fn(a.qk_raw, c.qk_norm() ? Tn * (c.q_dim() + c.kv_dim()) : 0);
  fn(a.qk_rstd, c.qk_norm() ? Tn * (c.n_head + c.n_kv_head) : 0);
  fn(a.probs, static_cast<size_t>(probs_size));
  fn(a.atty, Tn * c.q_dim());
  fn(a.res_attn, Tn * D);
  fn(a.norm2, pre * Tn * D);
  fn(a.norm2_mean, pre * Tn);
  fn(a.norm2_rstd, pre * Tn);
  fn(a.fc, Tn * F);
  fn(a.up, c.is_llama() ? Tn * F : 0);
  fn(a.act, Tn * F);
  fn(a.res_mlp, Tn * D);
  fn(a.post_attn, c.post_norms() ? Tn * D : 0);
  fn(a.post_attn_rstd, c.post_norms() ? Tn : 0);
  fn(a.post_mlp, c.post_norms() ? Tn * D : 0);
  fn(a.post_mlp_rstd, c.post_norms() ? Tn : 0);
}

void size_layer_acts(LayerActs& a, const ModelConfig& c, int T, int64_t probs_size) {
  for_each_layer_buffer(a, c, T, probs_size, [](std::vector<float>& v, size_t n) { v.resize(n); });
}

// Bytes of one block's activation buffers for T tokens.
static size_t layer_bytes(const ModelConfig& c, int T, int64_t probs_size) {
  size_t n = 0;
  LayerActs sizing;
  for_each_layer_buffer(sizing, c, T, probs_size, [&n](std::vector<float>&, size_t k) { n += k; });
  return n * sizeof(float);
}

bool recompute_blocks(size_t keep_bytes) {
  const char* env = std::getenv("OPTUNE_RECOMPUTE");
  if (env && std::string(env) == "1") return true;
  if (env && std::string(env) == "0") return false;
  const size_t available = available_host_bytes();
  return available > 0 && keep_bytes > available / 2;
}

// Refuses a batch whose activations would not fit in memory (before growing any buffer: see host_memory.h).
static void check_acts_memory(Acts& acts, const ModelConfig& c, int T, int64_t probs_size, size_t n_layers,
                              size_t n_inputs, bool training) {
  size_t grow = 0;  // bytes beyond what the buffers already hold
  LayerActs empty;
  for (size_t l = 0; l < n_layers; l++) {
    LayerActs& a = l < acts.layers.size() ? acts.layers[l] : empty;
    for_each_layer_buffer(a, c, T, probs_size, [&grow](std::vector<float>& v, size_t n) {
      if (n > v.capacity()) grow += (n - v.capacity()) * sizeof(float);
    });
  }
  const size_t input_floats = static_cast<size_t>(T) * c.d_model;
  for (size_t l = 0; l < n_inputs; l++) {
    const size_t have = l < acts.inputs.size() ? acts.inputs[l].capacity() : 0;
    if (input_floats > have) grow += (input_floats - have) * sizeof(float);
  }
  check_host_memory(grow, std::string(training ? "training" : "forward") + " activations of " + std::to_string(T) +
                              " tokens",
                    "use fewer or shorter sequences per call (a smaller batchPairs, or fewer prompts per call)");
}

// Norm dispatch: LayerNorm (GPT-2) or RMSNorm (Llama; Gemma's scales by 1 + weight).
static void norm_forward(const ModelConfig& c, float* out, float* mean, float* rstd, const float* x, const float* w,
                         const float* bias, int T) {
  if (c.is_gpt2())
    cpu::layernorm_forward(out, mean, rstd, x, w, bias, T, c.d_model, c.norm_eps);
  else
    cpu::rmsnorm_forward(out, rstd, x, w, T, c.d_model, c.norm_eps, c.norm_offset());
}

static void norm_backward(const ModelConfig& c, float* dx, float* dw, float* db, const float* dout, const float* x,
                          const float* w, const float* mean, const float* rstd, int T) {
  if (c.is_gpt2())
    cpu::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, T, c.d_model);
  else
    cpu::rmsnorm_backward(dx, dw, dout, x, w, rstd, T, c.d_model, c.norm_offset());
}

// x[i] *= s over n floats (Gemma's query scale, forward and backward)
static void scale_in_place(float* x, int64_t n, float s) {
  cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) x[i] *= s;
  });
}

void embed_forward(const Model& m, const int32_t* tokens, const int32_t* pos, int T, float* out) {
  const int D = m.cfg.d_model;
  const float* wte = at(m.params.data(), m.layout.tok_emb);
  const float* wpe = at(m.params.data(), m.layout.pos_emb);
  const float scale = m.cfg.embed_scale();
  cpu::parallel_for(T, [&](int64_t t) {
    float* x = out + static_cast<size_t>(t) * D;
    const float* e = wte + static_cast<size_t>(tokens[t]) * D;
    if (wpe) {
      const float* p = wpe + static_cast<size_t>(pos[t]) * D;
      for (int i = 0; i < D; i++) x[i] = e[i] + p[i];
    } else if (scale != 1.0f) {
      for (int i = 0; i < D; i++) x[i] = e[i] * scale;
    } else {
      std::copy_n(e, D, x);
    }
  });
}

// Where a LoRA target's h = scale x A^T rows start in the block's LayerActs::lora_h.
static size_t lora_rows(const LoraTarget& t, int T, int r) { return static_cast<size_t>(t.slot) * T * r; }

void block_forward(const Model& m, int l, LayerActs& a, const float* x, int T, const int32_t* pos,
                   const AttendFn& attend, const PackedWeights* packed, bool bf16) {
  const ModelConfig& c = m.cfg;
  const float* P = m.params.data();
  const LayerOffsets& o = m.layout.layers[l];
  const int D = c.d_model, F = c.d_ff, QD = c.q_dim(), KVD = c.kv_dim();
  const WeightLayout layout = c.is_gpt2() ? WeightLayout::InOut : WeightLayout::OutIn;
  const Lora* lora = active_lora(m);
  if (lora) a.lora_h.resize(static_cast<size_t>(lora->slots) * T * lora->cfg.rank);
  auto linear = [&](float* out, const float* inp, size_t w, size_t bias, int in, int outf) {
    const auto it = packed ? packed->find(w) : PackedWeights::const_iterator();
    if (packed && it != packed->end()) {  // packed with the adapters merged in (sampler.cpp)
      cpu::linear_forward_packed(out, inp, it->second, at(P, bias), T);
      return;
    }
    cpu::linear_forward(out, inp, at(P, w), at(P, bias), T, in, outf, layout, bf16);
    if (const LoraTarget* t = lora ? lora->find(w) : nullptr) {
      const int r = lora->cfg.rank;
      const float* LP = lora->params.data();
      cpu::lora_forward(out, a.lora_h.data() + lora_rows(*t, T, r), inp, LP + t->a, LP + t->b, lora->scale, T, in,
                        outf, r);
    }
  };

  // attention
  if (c.pre_norms())
    norm_forward(c, a.norm1.data(), a.norm1_mean.data(), a.norm1_rstd.data(), x, at(P, o.norm1_w), at(P, o.norm1_b),
                 T);
  const float* attn_in = c.pre_norms() ? a.norm1.data() : x;
  QKV v = qkv_view(c, a.qkv.data(), T);
  if (c.is_gpt2()) {
    linear(a.qkv.data(), attn_in, o.qkv_w, o.qkv_b, D, 3 * D);
  } else {
    if (c.qk_norm()) {  // Qwen3: q and k projected into qk_raw, then each head normalized into place
      float* raw_q = a.qk_raw.data();
      float* raw_k = raw_q + static_cast<size_t>(T) * QD;
      linear(raw_q, attn_in, o.q_w, o.q_b, D, QD);
      linear(raw_k, attn_in, o.k_w, o.k_b, D, KVD);
      const int qw = c.q_norm_width(), kw = c.k_norm_width();
      cpu::rmsnorm_forward(v.q, a.qk_rstd.data(), raw_q, at(P, o.q_norm_w), T * (QD / qw), qw, c.norm_eps,
                           c.norm_offset());
      cpu::rmsnorm_forward(v.k, a.qk_rstd.data() + static_cast<size_t>(T) * c.n_head, raw_k, at(P, o.k_norm_w),
                           T * (KVD / kw), kw, c.norm_eps, c.norm_offset());
    } else {
      linear(v.q, attn_in, o.q_w, o.q_b, D, QD);
      linear(v.k, attn_in, o.k_w, o.k_b, D, KVD);
    }
    linear(v.v, attn_in, o.v_w, o.v_b, D, KVD);
    if (c.layer_rotates(l)) {  // (SmolLM3's NoPE layers do not)
      cpu::rope_forward(v.q, T, v.qs, c.n_head, c.head_dim, pos, c.layer_rope_theta(l), c.layer_rope_scaling(l));
      cpu::rope_forward(v.k, T, v.ks, c.n_kv_head, c.head_dim, pos, c.layer_rope_theta(l), c.layer_rope_scaling(l));
    }
    // Gemma's attention scale: q takes the factor, so every attention kernel keeps its 1/sqrt(head_dim)
    if (c.q_scale() != 1.0f) scale_in_place(v.q, static_cast<int64_t>(T) * QD, c.q_scale());
  }
  attend(l, v, a.atty.data());
  const int64_t n = static_cast<int64_t>(T) * D;
  if (c.post_norms()) {  // Gemma: the output normalized before the residual add
    linear(a.post_attn.data(), a.atty.data(), o.o_w, o.o_b, QD, D);
    norm_forward(c, a.res_attn.data(), nullptr, a.post_attn_rstd.data(), a.post_attn.data(), at(P, o.post_attn_norm_w),
                 nullptr, T);
  } else {
    linear(a.res_attn.data(), a.atty.data(), o.o_w, o.o_b, QD, D);
  }
  cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) a.res_attn[i] += x[i];
  });

  // MLP
  if (c.pre_norms())
    norm_forward(c, a.norm2.data(), a.norm2_mean.data(), a.norm2_rstd.data(), a.res_attn.data(), at(P, o.norm2_w),
                 at(P, o.norm2_b), T);
  const float* mlp_in = c.pre_norms() ? a.norm2.data() : a.res_attn.data();
  linear(a.fc.data(), mlp_in, o.fc_w, o.fc_b, D, F);
  if (c.is_gpt2()) {
    cpu::gelu_forward(a.act.data(), a.fc.data(), static_cast<int64_t>(T) * F);
  } else {
    linear(a.up.data(), mlp_in, o.up_w, kAbsent, D, F);
    if (c.is_gemma())
      cpu::geglu_forward(a.act.data(), a.fc.data(), a.up.data(), static_cast<int64_t>(T) * F);
    else
      cpu::swiglu_forward(a.act.data(), a.fc.data(), a.up.data(), static_cast<int64_t>(T) * F);
  }
  if (c.post_norms()) {
    linear(a.post_mlp.data(), a.act.data(), o.proj_w, o.proj_b, F, D);
    norm_forward(c, a.res_mlp.data(), nullptr, a.post_mlp_rstd.data(), a.post_mlp.data(), at(P, o.post_mlp_norm_w),
                 nullptr, T);
  } else {
    linear(a.res_mlp.data(), a.act.data(), o.proj_w, o.proj_b, F, D);
  }
  cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) a.res_mlp[i] += a.res_attn[i];
  });
}

void final_norm_forward(const Model& m, Acts& acts, const float* x, int T) {
  const float* P = m.params.data();
  acts.normf.resize(static_cast<size_t>(T) * m.cfg.d_model);
  acts.normf_mean.resize(T);
  acts.normf_rstd.resize(T);
  norm_forward(m.cfg, acts.normf.data(), acts.normf_mean.data(), acts.normf_rstd.data(), x, at(P, m.layout.normf_w),
               at(P, m.layout.normf_b), T);
}

SharedRows share_prefixes(const Batch& b) {
  constexpr int kMinShared = 8;
  SharedRows sr;
  const char* env = std::getenv("OPTUNE_SHARE_PREFIX");
  if (env && std::string(env) == "0") return sr;
  const int n_seq = b.n_seq();
  const int32_t* tok = b.tokens.data();
  sr.row_of.resize(b.n_tokens());
  sr.owner.assign(b.n_tokens(), 1);
  auto add_rows = [&](int from, int to, int first_pos) {  // the batch's tokens [from, to) as new tree rows
    for (int i = from; i < to; i++) {
      sr.row_of[i] = static_cast<int32_t>(sr.tokens.size());
      sr.tokens.push_back(tok[i]);
      sr.pos.push_back(first_pos + i - from);
    }
  };
  // leading tokens sequences s and t share, at most `limit`
  auto common = [&](int s, int t, int limit) {
    int n = 0;
    while (n < limit && tok[b.offsets[s] + n] == tok[b.offsets[t] + n]) n++;
    return n;
  };
  for (int g = 0; g < n_seq;) {
    // the run of sequences after g sharing >= kMinShared leading tokens with it; P: what all of them share. A
    // sequence sharing under half of P with g, or under half of what it shares with the next one, starts a run of
    // its own: prompts behind one system prompt share that, but a prompt's K responses share the whole prompt,
    // which is the larger saving.
    int P = b.seq_len(g) - 1, end = g + 1;
    for (; end < n_seq; end++) {
      const int lcp = common(g, end, std::min(P, b.seq_len(end) - 1));
      if (lcp < kMinShared || (end > g + 1 && 2 * lcp < P)) break;
      if (end + 1 < n_seq &&
          2 * lcp < common(end, end + 1, std::min(b.seq_len(end), b.seq_len(end + 1)) - 1))
        break;
      P = lcp;
    }
    if (end - g < 2) {
      add_rows(b.offsets[g], b.offsets[g + 1], 0);
      g++;
      continue;
    }
    add_rows(b.offsets[g], b.offsets[g] + P, 0);
    for (int s = g; s < end; s++) {
      for (int i = 0; i < P; i++) {
        sr.row_of[b.offsets[s] + i] = sr.row_of[b.offsets[g] + i];
        sr.owner[b.offsets[s] + i] = s == g;
      }
      add_rows(b.offsets[s] + P, b.offsets[s + 1], P);
    }
    g = end;
  }
  sr.T = static_cast<int>(sr.tokens.size());
  if (sr.T == b.n_tokens()) return SharedRows{};  // nothing shared
  return sr;
}

// The tree's attention goes over whole sequences, a chunk of them at a time (>= 4096 tokens' worth, so that the
// gathered rows stay few): fn(s0, s1, base) for sequences [s0, s1), whose tokens start at `base`, with
// g.offsets their offsets from it.
template <class Fn>
static void for_each_sequence_chunk(const Batch& b, TreeScratch& g, const Fn& fn) {
  int chunk = 4096;
  for (int s = 0; s < b.n_seq(); s++) chunk = std::max(chunk, b.seq_len(s));
  for (int s0 = 0, s1; s0 < b.n_seq(); s0 = s1) {
    const int base = b.offsets[s0];
    for (s1 = s0 + 1; s1 < b.n_seq() && b.offsets[s1 + 1] - base <= chunk;) s1++;
    g.offsets.assign(b.offsets.begin() + s0, b.offsets.begin() + s1 + 1);
    for (int32_t& o : g.offsets) o -= base;
    fn(s0, s1, base);
  }
}

// Copies the tree rows of tokens [base, base + n) into rows 0 .. n-1 of q, k, v (strides QD, KVD, KVD).
static void gather_qkv(const ModelConfig& c, const SharedRows& sr, const QKV& v, int base, int n, TreeScratch& g) {
  const int QD = c.q_dim(), KVD = c.kv_dim();
  g.q.resize(static_cast<size_t>(n) * QD), g.k.resize(static_cast<size_t>(n) * KVD), g.v.resize(g.k.size());
  cpu::parallel_for(n, [&](int64_t i) {
    const size_t r = sr.row_of[base + i];
    std::copy_n(v.q + r * v.qs, QD, g.q.data() + i * QD);
    std::copy_n(v.k + r * v.ks, KVD, g.k.data() + i * KVD);
    std::copy_n(v.v + r * v.vs, KVD, g.v.data() + i * KVD);
  });
}

// Attention output [T, QD] of the tree rows: each sequence's rows gathered back, attended, and each row written by
// its owner (a shared row's output is the same in every member). probs: the softmax in the batch's layout.
static void tree_attention_forward(const ModelConfig& c, const Batch& b, const SharedRows& sr, const QKV& v,
                                   float* atty, float* probs, TreeScratch& g, int window) {
  const int QD = c.q_dim(), KVD = c.kv_dim();
  for_each_sequence_chunk(b, g, [&](int s0, int s1, int base) {
    const int n = g.offsets.back();
    gather_qkv(c, sr, v, base, n, g);
    g.out.resize(static_cast<size_t>(n) * QD);
    float* p = probs ? probs + cpu::attention_probs_size(b.offsets.data(), s0, c.n_head) : nullptr;
    cpu::attention_forward(g.out.data(), p, g.q.data(), QD, g.k.data(), KVD, g.v.data(), KVD, g.offsets.data(),
                           s1 - s0, c.n_head, c.n_kv_head, c.head_dim, window);
    cpu::parallel_for(n, [&](int64_t i) {
      if (sr.owner[base + i])
        std::copy_n(g.out.data() + i * QD, QD, atty + static_cast<size_t>(sr.row_of[base + i]) * QD);
    });
  });
}

// Its backward: dq, dk, dv of the tree rows (zeroed here) from datty. A row's output gradient enters once, through
// its owner; every member's keys and values gradients add into the shared rows, member by member (a fixed order),
// each feature range by one thread.
static void tree_attention_backward(const ModelConfig& c, const Batch& b, const SharedRows& sr, const QKV& v,
                                    const float* datty, const float* probs, const QKV& dv, float* dqkv,
                                    size_t dqkv_size, TreeScratch& g) {
  const int QD = c.q_dim(), KVD = c.kv_dim();
  cpu::parallel_zero(dqkv, static_cast<int64_t>(dqkv_size));
  for_each_sequence_chunk(b, g, [&](int s0, int s1, int base) {
    const int n = g.offsets.back();
    gather_qkv(c, sr, v, base, n, g);
    g.dout.resize(static_cast<size_t>(n) * QD);
    cpu::parallel_for(n, [&](int64_t i) {
      float* d = g.dout.data() + i * QD;
      if (sr.owner[base + i])
        std::copy_n(datty + static_cast<size_t>(sr.row_of[base + i]) * QD, QD, d);
      else
        std::fill(d, d + QD, 0.0f);
    });
    g.dq.resize(g.q.size()), g.dk.resize(g.k.size()), g.dv.resize(g.v.size());
    cpu::attention_backward(g.dq.data(), g.dk.data(), g.dv.data(), g.dout.data(),
                            probs + cpu::attention_probs_size(b.offsets.data(), s0, c.n_head), g.q.data(), QD,
                            g.k.data(), KVD, g.v.data(), KVD, g.offsets.data(), s1 - s0, c.n_head, c.n_kv_head,
                            c.head_dim);
    auto scatter_add = [&](const std::vector<float>& from, int width, float* to, int stride) {
      cpu::parallel_columns(width, [&](int j0, int j1) {
        for (int i = 0; i < n; i++) {
          float* t = to + static_cast<size_t>(sr.row_of[base + i]) * stride;
          const float* f = from.data() + static_cast<size_t>(i) * width;
          for (int j = j0; j < j1; j++) t[j] += f[j];
        }
      });
    };
    scatter_add(g.dq, QD, dv.q, dv.qs);
    scatter_add(g.dk, KVD, dv.k, dv.ks);
    scatter_add(g.dv, KVD, dv.v, dv.vs);
  });
}

// Block l's attention over the batch's sequences (the tree's rows when acts.shared has them); probs_buf (training)
// keeps the softmax for backward.
static AttendFn attend_batch(const ModelConfig& c, const Batch& b, Acts& acts, float* probs_buf,
                             const KvHook* kv_hook) {
  return [&c, &b, &acts, probs_buf, kv_hook](int layer, const QKV& v, float* atty) {
    if (kv_hook) (*kv_hook)(layer, v);
    if (acts.shared.T > 0)
      tree_attention_forward(c, b, acts.shared, v, atty, probs_buf, acts.tree, c.layer_window(layer));
    else
      cpu::attention_forward(atty, probs_buf, v.q, v.qs, v.k, v.ks, v.v, v.vs, b.offsets.data(), b.n_seq(),
                             c.n_head, c.n_kv_head, c.head_dim, c.layer_window(layer));
  };
}

// Block l's input in a training forward's activations.
static const float* block_input(const Acts& acts, int l) {
  if (l == 0) return acts.x0.data();
  return acts.recompute ? acts.inputs[l].data() : acts.layers[l - 1].res_mlp.data();
}

void transformer_forward(const Model& m, const Batch& b, Acts& acts, bool training, const KvHook* kv_hook,
                         bool bf16, const PackedWeights* packed, bool share) {
  const ModelConfig& c = m.cfg;
  acts.shared = share && !kv_hook && !packed ? share_prefixes(b) : SharedRows{};
  const bool tree = acts.shared.T > 0;
  const int T = tree ? acts.shared.T : b.n_tokens();
  acts.T = T;
  acts.training = training;
  acts.bf16 = bf16;
  if (tree) {
    acts.pos = acts.shared.pos;
  } else {
    acts.pos.resize(T);
    for (int s = 0; s < b.n_seq(); s++)
      for (int t = b.offsets[s]; t < b.offsets[s + 1]; t++) acts.pos[t] = t - b.offsets[s];
  }
  const int64_t probs = training ? cpu::attention_probs_size(b.offsets.data(), b.n_seq(), c.n_head) : 0;
  acts.recompute = training && recompute_blocks(c.n_layer * layer_bytes(c, T, probs));
  const size_t n_layers = training && !acts.recompute ? c.n_layer : 1;
  const size_t n_inputs = acts.recompute ? c.n_layer + 1 : 0;
  check_acts_memory(acts, c, T, probs, n_layers, n_inputs, training);
  acts.layers.resize(n_layers);
  for (auto& la : acts.layers) size_layer_acts(la, c, T, probs);
  acts.inputs.resize(n_inputs);
  for (auto& in : acts.inputs) in.resize(static_cast<size_t>(T) * c.d_model);
  acts.x0.resize(static_cast<size_t>(T) * c.d_model);
  embed_forward(m, tree ? acts.shared.tokens.data() : b.tokens.data(), acts.pos.data(), T, acts.x0.data());

  const bool keep_all = training && !acts.recompute;
  for (int l = 0; l < c.n_layer; l++) {
    LayerActs& a = acts.layers[keep_all ? l : 0];
    if (!training && l > 0) std::swap(acts.x0, a.res_mlp);  // the previous block's output becomes this input
    const float* x = training ? block_input(acts, l) : acts.x0.data();
    block_forward(m, l, a, x, T, acts.pos.data(),
                  attend_batch(c, b, acts, keep_all ? a.probs.data() : nullptr, kv_hook), packed, bf16);
    if (acts.recompute) std::swap(a.res_mlp, acts.inputs[l + 1]);  // kept as the next block's input
  }
  const float* last =
      acts.recompute ? acts.inputs[c.n_layer].data() : acts.layers[keep_all ? c.n_layer - 1 : 0].res_mlp.data();
  final_norm_forward(m, acts, last, T);
}

Workspace& workspace_of(const Model& m) {
  if (!m.workspace) m.workspace = std::make_shared<Workspace>();
  return *m.workspace;
}

void release_large_buffers(Workspace& ws) {
  size_t bytes = 0;
  auto count = [&bytes](const std::vector<float>& v) { bytes += v.capacity() * sizeof(float); };
  for (Acts* a : {&ws.train, &ws.infer}) {
    for (LayerActs& l : a->layers)  // every buffer of the block (the sizes it would give are not needed)
      for_each_layer_buffer(l, ModelConfig{}, 0, 0, [&](std::vector<float>& v, size_t) { count(v); });
    for (const std::vector<float>& v : a->inputs) count(v);
    count(a->x0), count(a->normf);
  }
  const BackwardScratch& b = ws.back;
  for (const std::vector<float>* v :
       {&b.dresid, &b.dnorm, &b.dact, &b.dfc, &b.dup, &b.datty, &b.dqkv, &b.dqk_raw, &b.dpost})
    count(*v);
  count(ws.dnormf), count(ws.head_probs);
  if (bytes <= cpu::kScratchKeepBytes) return;  // (reads /proc and /sys only past this)
  const size_t available = available_host_bytes();
  if (available == 0 || bytes <= available / 4) return;
  ws.train = Acts{};
  ws.infer = Acts{};
  ws.back = BackwardScratch{};
  std::vector<float>().swap(ws.dnormf);
  std::vector<float>().swap(ws.head_probs);
}

// resize + zero without giving memory back
static void zeros(std::vector<float>& v, size_t n) {
  v.resize(n);
  cpu::parallel_zero(v.data(), static_cast<int64_t>(n));
}

void transformer_backward(Model& m, const Batch& b, Acts& acts, const float* dnormf) {
  const ModelConfig& c = m.cfg;
  const ParamLayout& L = m.layout;
  const float* P = m.params.data();
  // With LoRA the base is frozen: no gradient for its weights (null G: every at(G, ...) is null and its products are
  // skipped), m.grads holds the adapters' (adapter_backward).
  const Lora* lora = m.lora.get();
  float* G = lora ? nullptr : m.grads.data();
  const int T = acts.T, D = c.d_model, F = c.d_ff, QD = c.q_dim(), KVD = c.kv_dim();
  const WeightLayout lin = c.is_gpt2() ? WeightLayout::InOut : WeightLayout::OutIn;

  BackwardScratch& sc = workspace_of(m).back;
  // The adapter beside base weight w, after the base's own backward wrote or added its input gradient.
  auto adapter_backward = [&](const LayerActs& a, size_t w, float* dinp, const float* dout, const float* inp, int in,
                              int outf) {
    const LoraTarget* t = lora ? lora->find(w) : nullptr;
    if (!t) return;
    const int r = lora->cfg.rank;
    sc.dlora_h.resize(static_cast<size_t>(T) * r);
    float* LG = m.grads.data();
    const float* LP = lora->params.data();
    const float* h = a.lora_h.data() + lora_rows(*t, T, r);
    cpu::lora_backward(dinp, LG + t->a, LG + t->b, sc.dlora_h.data(), dout, inp, h, LP + t->a, LP + t->b, lora->scale,
                       T, in, outf, r);
  };
  std::vector<float>&dresid = sc.dresid, &dnorm = sc.dnorm, &dact = sc.dact, &dfc = sc.dfc, &dup = sc.dup,
  &datty = sc.datty, &dqkv = sc.dqkv, &dqk_raw = sc.dqk_raw, &dpost = sc.dpost;
  zeros(dresid, static_cast<size_t>(T) * D);
  dnorm.resize(static_cast<size_t>(T) * D);
  dact.resize(static_cast<size_t>(T) * F);
  dfc.resize(static_cast<size_t>(T) * F);
  dup.resize(c.is_llama() ? static_cast<size_t>(T) * F : 0);
  datty.resize(static_cast<size_t>(T) * QD);
  dqkv.resize(qkv_size(c, T));
  dpost.resize(c.post_norms() ? static_cast<size_t>(T) * D : 0);
  // Gemma: the gradient of a sublayer's output before its post-norm (in dpost), from the block's residual gradient
  auto post_norm_backward = [&](size_t w, const std::vector<float>& raw, const std::vector<float>& rstd) {
    zeros(dpost, dpost.size());
    norm_backward(c, dpost.data(), at(G, w), nullptr, dresid.data(), raw.data(), at(P, w), nullptr, rstd.data(), T);
    return static_cast<const float*>(dpost.data());
  };

  const float* last = acts.recompute ? acts.inputs[c.n_layer].data() : acts.layers.back().res_mlp.data();
  norm_backward(c, dresid.data(), at(G, L.normf_w), at(G, L.normf_b), dnormf, last, at(P, L.normf_w),
                acts.normf_mean.data(), acts.normf_rstd.data(), T);

  for (int l = c.n_layer - 1; l >= 0; l--) {
    const float* x = block_input(acts, l);
    if (acts.recompute) {  // the block's activations again, softmax kept this time
      LayerActs& redo = acts.layers[0];
      block_forward(m, l, redo, x, T, acts.pos.data(), attend_batch(c, b, acts, redo.probs.data(), nullptr),
                    nullptr, acts.bf16);
    }
    const LayerActs& a = acts.layers[acts.recompute ? 0 : l];
    const LayerOffsets& o = L.layers[l];
    // the projections' inputs: the pre-norms' outputs, or (OLMo 2) the block input and the attention's residual
    const float* attn_in = c.pre_norms() ? a.norm1.data() : x;
    const float* mlp_in = c.pre_norms() ? a.norm2.data() : a.res_attn.data();
    // the gradient of such an input into the residual stream's: through the pre-norm, or straight
    auto input_backward = [&](size_t w, size_t b, const float* in, const std::vector<float>& mean,
                              const std::vector<float>& rstd) {
      if (c.pre_norms()) {
        norm_backward(c, dresid.data(), at(G, w), at(G, b), dnorm.data(), in, at(P, w), mean.data(), rstd.data(), T);
        return;
      }
      const int64_t n = static_cast<int64_t>(T) * D;
      cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
        for (int64_t i = i0; i < i1; i++) dresid[i] += dnorm[i];
      });
    };

    // MLP: res_mlp = res_attn + Proj(Act(FC(Norm2(res_attn)))) (Gemma: PostNorm(Proj(...))). The first product
    // into each input-gradient buffer overwrites it (add_dinp false), so only the activations' += outputs are
    // zeroed first.
    const float* dmlp = c.post_norms() ? post_norm_backward(o.post_mlp_norm_w, a.post_mlp, a.post_mlp_rstd)
                                       : dresid.data();
    cpu::linear_backward(dact.data(), at(G, o.proj_w), at(G, o.proj_b), dmlp, a.act.data(), at(P, o.proj_w), T, F, D,
                         lin, acts.bf16, false);
    adapter_backward(a, o.proj_w, dact.data(), dmlp, a.act.data(), F, D);
    zeros(dfc, dfc.size());
    if (c.is_gpt2()) {
      cpu::gelu_backward(dfc.data(), a.fc.data(), dact.data(), static_cast<int64_t>(T) * F);
    } else {
      zeros(dup, dup.size());
      const int64_t nf = static_cast<int64_t>(T) * F;
      if (c.is_gemma())
        cpu::geglu_backward(dfc.data(), dup.data(), dact.data(), a.fc.data(), a.up.data(), nf);
      else
        cpu::swiglu_backward(dfc.data(), dup.data(), dact.data(), a.fc.data(), a.up.data(), nf);
      cpu::linear_backward(dnorm.data(), at(G, o.up_w), nullptr, dup.data(), mlp_in, at(P, o.up_w), T, D, F,
                           lin, acts.bf16, false);
      adapter_backward(a, o.up_w, dnorm.data(), dup.data(), mlp_in, D, F);
    }
    cpu::linear_backward(dnorm.data(), at(G, o.fc_w), at(G, o.fc_b), dfc.data(), mlp_in, at(P, o.fc_w), T, D,
                         F, lin, acts.bf16, c.is_llama());
    adapter_backward(a, o.fc_w, dnorm.data(), dfc.data(), mlp_in, D, F);
    input_backward(o.norm2_w, o.norm2_b, a.res_attn.data(), a.norm2_mean, a.norm2_rstd);

    // attention: res_attn = x + O(Attn(QKV(Norm1(x)))) (Gemma: PostNorm(O(...)))
    const float* dattn = c.post_norms() ? post_norm_backward(o.post_attn_norm_w, a.post_attn, a.post_attn_rstd)
                                        : dresid.data();
    cpu::linear_backward(datty.data(), at(G, o.o_w), at(G, o.o_b), dattn, a.atty.data(), at(P, o.o_w), T, QD, D, lin,
                         acts.bf16, false);
    adapter_backward(a, o.o_w, datty.data(), dattn, a.atty.data(), QD, D);
    QKV v = qkv_view(c, const_cast<float*>(a.qkv.data()), T);
    QKV dv = qkv_view(c, dqkv.data(), T);
    if (acts.shared.T > 0)
      tree_attention_backward(c, b, acts.shared, v, datty.data(), a.probs.data(), dv, dqkv.data(), dqkv.size(),
                              acts.tree);
    else
      cpu::attention_backward(dv.q, dv.k, dv.v, datty.data(), a.probs.data(), v.q, v.qs, v.k, v.ks, v.v, v.vs,
                              b.offsets.data(), b.n_seq(), c.n_head, c.n_kv_head, c.head_dim);
    if (c.is_gpt2()) {
      cpu::linear_backward(dnorm.data(), at(G, o.qkv_w), at(G, o.qkv_b), dqkv.data(), attn_in, at(P, o.qkv_w),
                           T, D, 3 * D, lin, acts.bf16, false);
      adapter_backward(a, o.qkv_w, dnorm.data(), dqkv.data(), attn_in, D, 3 * D);
    } else {
      if (c.q_scale() != 1.0f) scale_in_place(dv.q, static_cast<int64_t>(T) * QD, c.q_scale());
      if (c.layer_rotates(l)) {
        cpu::rope_backward(dv.q, T, dv.qs, c.n_head, c.head_dim, acts.pos.data(), c.layer_rope_theta(l),
                           c.layer_rope_scaling(l));
        cpu::rope_backward(dv.k, T, dv.ks, c.n_kv_head, c.head_dim, acts.pos.data(), c.layer_rope_theta(l),
                           c.layer_rope_scaling(l));
      }
      float *dq = dv.q, *dk = dv.k;
      if (c.qk_norm()) {  // back through the per-head norms, into the projections' outputs
        const float* raw_q = a.qk_raw.data();
        const float* raw_k = raw_q + static_cast<size_t>(T) * QD;
        const float* rstd_k = a.qk_rstd.data() + static_cast<size_t>(T) * c.n_head;
        zeros(dqk_raw, static_cast<size_t>(T) * (QD + KVD));
        dq = dqk_raw.data();
        dk = dq + static_cast<size_t>(T) * QD;
        const int qw = c.q_norm_width(), kw = c.k_norm_width();
        cpu::rmsnorm_backward(dq, at(G, o.q_norm_w), dv.q, raw_q, at(P, o.q_norm_w), a.qk_rstd.data(),
                              T * (QD / qw), qw, c.norm_offset());
        cpu::rmsnorm_backward(dk, at(G, o.k_norm_w), dv.k, raw_k, at(P, o.k_norm_w), rstd_k, T * (KVD / kw), kw,
                              c.norm_offset());
      }
      cpu::linear_backward(dnorm.data(), at(G, o.q_w), at(G, o.q_b), dq, attn_in, at(P, o.q_w), T, D, QD, lin,
                           acts.bf16, false);
      adapter_backward(a, o.q_w, dnorm.data(), dq, attn_in, D, QD);
      cpu::linear_backward(dnorm.data(), at(G, o.k_w), at(G, o.k_b), dk, attn_in, at(P, o.k_w), T, D, KVD,
                           lin, acts.bf16);
      adapter_backward(a, o.k_w, dnorm.data(), dk, attn_in, D, KVD);
      cpu::linear_backward(dnorm.data(), at(G, o.v_w), at(G, o.v_b), dv.v, attn_in, at(P, o.v_w), T, D, KVD,
                           lin, acts.bf16);
      adapter_backward(a, o.v_w, dnorm.data(), dv.v, attn_in, D, KVD);
    }
    input_backward(o.norm1_w, o.norm1_b, x, a.norm1_mean, a.norm1_rstd);
  }

  // embeddings: tokens in order (a token id may repeat, and a fixed order keeps results reproducible), the
  // features split over threads
  float* dwte = at(G, L.tok_emb);
  float* dwpe = at(G, L.pos_emb);
  if (!dwte) return;  // frozen (LoRA)
  const int32_t* tokens = acts.shared.T > 0 ? acts.shared.tokens.data() : b.tokens.data();
  const float scale = c.embed_scale();  // (1 but for Gemma: x * 1.0f is x exactly)
  cpu::parallel_columns(D, [&](int i0, int i1) {
    for (int t = 0; t < T; t++) {
      const float* d = dresid.data() + static_cast<size_t>(t) * D;
      float* e = dwte + static_cast<size_t>(tokens[t]) * D;
#pragma omp simd
      for (int i = i0; i < i1; i++) e[i] += d[i] * scale;
      if (dwpe) {
        float* p = dwpe + static_cast<size_t>(acts.pos[t]) * D;
#pragma omp simd
        for (int i = i0; i < i1; i++) p[i] += d[i];
      }
    }
  });
}

}  // namespace optune
