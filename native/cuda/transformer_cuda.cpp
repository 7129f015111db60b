// The transformer on CUDA: core/transformer.cpp's forward and backward, kernel for kernel (cuda/ops.h in place of
// cpu/ops.h), over device buffers carved from the shared activation arena. Under BF16 the GEMM operands are bf16
// (weights from DeviceState::params_bf16, activations and output gradients converted right before each GEMM),
// everything else stays fp32. A GEMM input whose only readers are GEMMs (a block norm's output, the MLP activation)
// is written in bf16 by its producer, with no fp32 copy and no conversion pass.
#include "transformer_cuda.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "core/heads.h"
#include "core/lora.h"
#include "core/transformer.h"
#include "memory.h"
#include "ops.h"

namespace optune::cuda {

namespace {

int qkv_width(const ModelConfig& c) { return c.is_gpt2() ? 3 * c.d_model : c.q_dim() + 2 * c.kv_dim(); }

// GPT-2's q|k|v bias under bf16 goes to the tensor-core attention, which adds it as it reads q|k|v (QkvBias): no
// bias pass over [T, 3D] (read and written, three times per layer and step). Elsewhere (fp32, head dims without a
// tensor-core kernel, Llama's RoPE after the bias) the GEMM's bias pass stays.
QkvBias folded_qkv_bias(const ModelConfig& c, const float* qkv_b, bool bf16) {
  if (!c.is_gpt2() || !bf16 || !attention_mma_supported(c.head_dim) || !qkv_b) return {};
  return {qkv_b, qkv_b + c.d_model, qkv_b + 2 * c.d_model};
}

// q/k/v pointers into one layer's storage: the CPU engine's layout and view (core/transformer.h).
using optune::QKV;
using optune::qkv_view;

// Rows grouped by key (keys in [0, n_keys)), rows in increasing order within a key.
struct HostIndex {
  std::vector<int32_t> ids, starts, rows;
};
HostIndex group_rows(const std::vector<int32_t>& keys, int n_keys) {
  std::vector<int32_t> count(n_keys + 1, 0);
  for (int32_t k : keys) count[k + 1]++;
  for (int k = 0; k < n_keys; k++) count[k + 1] += count[k];  // count[k] = first slot of key k
  HostIndex h;
  h.rows.resize(keys.size());
  std::vector<int32_t> next(count.begin(), count.end() - 1);
  for (size_t t = 0; t < keys.size(); t++) h.rows[next[keys[t]]++] = static_cast<int32_t>(t);
  for (int k = 0; k < n_keys; k++)
    if (count[k + 1] > count[k]) h.ids.push_back(k), h.starts.push_back(count[k]);
  h.starts.push_back(static_cast<int32_t>(keys.size()));
  return h;
}

void carve_layer(Carver& cv, const ModelConfig& c, int T, DevLayer& y) {
  const size_t D = c.d_model;
  y.n1_mean = cv.take<float>(T);
  y.n1_rstd = cv.take<float>(T);
  y.atty = cv.take<float>(static_cast<size_t>(T) * c.q_dim());
  y.lse = cv.take<float>(static_cast<size_t>(T) * c.n_head);
  y.res_attn = cv.take<float>(T * D);
  y.n2_mean = cv.take<float>(T);
  y.n2_rstd = cv.take<float>(T);
  y.res_mlp = cv.take<float>(T * D);
  y.post_attn_rstd = c.post_norms() ? cv.take<float>(T) : nullptr;
  y.post_mlp_rstd = c.post_norms() ? cv.take<float>(T) : nullptr;
}

// lora_rank: the active adapters' rank (0 without).
void carve_acts(Carver& cv, const ModelConfig& c, int T, bool training, bool bf16, int lora_rank, DevActs& a) {
  const size_t D = c.d_model, F = c.d_ff, QD = c.q_dim(), QKV = qkv_width(c);
  a.T = T;
  a.training = training;
  a.x0 = cv.take<float>(T * D);
  a.layers.assign(training ? c.n_layer : 1, DevLayer{});
  for (DevLayer& y : a.layers) carve_layer(cv, c, T, y);
  a.norm = cv.take<float>(T * D);
  a.qkv = cv.take<float>(T * QKV);
  a.fc = cv.take<float>(T * F);
  a.up = c.is_llama() ? cv.take<float>(T * F) : nullptr;
  a.act = cv.take<float>(T * std::max(F, QD));
  // q/k norms: their groups per row (Qwen3: one per head)
  const size_t q_groups = c.qk_norm() ? QD / c.q_norm_width() : 0;
  const size_t k_groups = c.qk_norm() ? c.kv_dim() / c.k_norm_width() : 0;
  a.post = c.post_norms() ? cv.take<float>(T * D) : nullptr;
  a.qk_raw = c.qk_norm() ? cv.take<float>(T * (QD + c.kv_dim())) : nullptr;
  a.qk_rstd = c.qk_norm() ? cv.take<float>(T * (q_groups + k_groups)) : nullptr;
  a.normf = cv.take<float>(T * D);
  a.normf_mean = cv.take<float>(T);
  a.normf_rstd = cv.take<float>(T);
  if (bf16) {
    const size_t widest = std::max({D, F, QD, QKV});
    a.bf_in = cv.take<uint16_t>(T * widest);
    a.bf_out = cv.take<uint16_t>(T * widest);
    a.norm16 = cv.take<uint16_t>(T * D);
  } else {
    a.bf_in = a.bf_out = a.norm16 = nullptr;
  }
  const size_t TR = static_cast<size_t>(T) * lora_rank;
  a.lora_h = lora_rank ? cv.take<float>(TR) : nullptr;
  a.lora_dh = lora_rank && training ? cv.take<float>(TR) : nullptr;
  a.lora_h16 = lora_rank && bf16 ? cv.take<uint16_t>(TR) : nullptr;
  a.lora_dh16 = lora_rank && bf16 && training ? cv.take<uint16_t>(TR) : nullptr;
  if (training) {
    a.dresid = cv.take<float>(T * D);
    a.dnorm = cv.take<float>(T * D);
    a.dact = cv.take<float>(T * std::max({F, QKV, D}));
    a.dup = c.is_llama() ? cv.take<float>(T * F) : nullptr;
    a.dqk_raw = c.qk_norm() ? cv.take<float>(T * (QD + c.kv_dim())) : nullptr;
    a.dpost = c.post_norms() ? cv.take<float>(T * D) : nullptr;
    a.n_ones = T * static_cast<int>(std::max<size_t>({1, q_groups, k_groups}));
    a.ones = cv.take<float>(a.n_ones);
  }
}

void carve_index(Carver& cv, const HostIndex& h, DevIndex& d) {
  d.n = static_cast<int>(h.ids.size());
  d.ids = cv.take<int32_t>(h.ids.size());
  d.starts = cv.take<int32_t>(h.starts.size());
  d.rows = cv.take<int32_t>(h.rows.size());
}

void upload_index(const HostIndex& h, const DevIndex& d) {
  copy_to_device(d.ids, h.ids.data(), h.ids.size() * sizeof(int32_t));
  copy_to_device(d.starts, h.starts.data(), h.starts.size() * sizeof(int32_t));
  copy_to_device(d.rows, h.rows.data(), h.rows.size() * sizeof(int32_t));
}

// ---- per-step helpers: norms and linear layers -----------------------------------------------------------------

// The weights and gradients one forward/backward reads and writes, and its GEMM precision.
struct Net {
  const ModelConfig& c;
  const ParamLayout& L;
  const float* P;     // fp32 master weights
  const uint16_t* B;  // bf16 weights (same offsets), or null under FP32
  float* G;           // gradients (backward only; null for a LoRA model's frozen weights)
  const DevActs& a;
  int T;
  bool out_in;        // nn.Linear [out, in] weights (Llama) vs Conv1D [in, out] (GPT-2)
  const DeviceState& ds;
  const Lora* lora;   // the adapters in effect (core/lora.h active_lora), or null
  const float* LP;    // their weights (Lora::layout offsets) ...
  const uint16_t* LB; // ... their bf16 copy (bf16 only) ...
  float* LG;          // ... and their gradients (backward only)

  const float* p(size_t off) const { return off == kAbsent ? nullptr : P + off; }
  float* g(size_t off) const { return off == kAbsent || !G ? nullptr : G + off; }
  const LoraTarget* target(size_t w) const { return lora ? lora->find(w) : nullptr; }
};

// A GEMM input: fp32 activations (converted to bf16 in a.bf_in when the GEMM runs in bf16), or a bf16 operand its
// producer already wrote (b16; f32 is then null).
struct Operand {
  Operand(const float* f32) : f32(f32) {}  // NOLINT(google-explicit-constructor): fp32 activations pass as they are
  Operand(const float* f32, const uint16_t* b16) : f32(f32), b16(b16) {}
  const float* f32;
  const uint16_t* b16 = nullptr;
};

// x as a bf16 operand of T x cols: its own bf16 copy, or converted into `scratch`.
const uint16_t* bf16_operand(const Operand& x, int64_t count, uint16_t* scratch) {
  if (x.b16) return x.b16;
  to_bf16(scratch, x.f32, count);
  return scratch;
}

void norm_forward(const Net& n, float* out, uint16_t* out16, float* mean, float* rstd, const float* x, size_t w,
                  size_t b) {
  if (n.c.is_gpt2())
    layernorm_forward(out, mean, rstd, x, n.p(w), n.p(b), n.T, n.c.d_model, n.c.norm_eps, out16);
  else
    rmsnorm_forward(out, rstd, x, n.p(w), n.T, n.c.d_model, n.c.norm_eps, out16, n.c.norm_offset());
}

// A block's norm, whose output only GEMMs read: in `out` (fp32), or under bf16 in a.norm16 alone.
Operand block_norm_forward(const Net& n, float* out, float* mean, float* rstd, const float* x, size_t w, size_t b) {
  if (n.B) {
    norm_forward(n, nullptr, n.a.norm16, mean, rstd, x, w, b);
    return {nullptr, n.a.norm16};
  }
  norm_forward(n, out, nullptr, mean, rstd, x, w, b);
  return out;
}

// A sublayer's input where no norm precedes it (OLMo 2): the residual stream itself, under bf16 converted once into
// a.norm16 (free then: no block norm uses it), which the three (or two) GEMMs reading it share.
Operand raw_operand(const Net& n, const float* x) {
  if (!n.B) return x;
  to_bf16(n.a.norm16, x, static_cast<int64_t>(n.T) * n.c.d_model);
  return {x, n.a.norm16};
}

// The input of block l's attention (the first norm, or the residual stream) and of its MLP (the second).
Operand attention_input(const Net& n, const LayerOffsets& o, const DevLayer& y, const float* x, bool keep_stats) {
  if (!n.c.pre_norms()) return raw_operand(n, x);
  return block_norm_forward(n, n.a.norm, keep_stats ? y.n1_mean : nullptr, keep_stats ? y.n1_rstd : nullptr, x,
                            o.norm1_w, o.norm1_b);
}
Operand mlp_input(const Net& n, const LayerOffsets& o, const DevLayer& y, bool keep_stats) {
  if (!n.c.pre_norms()) return raw_operand(n, y.res_attn);
  return block_norm_forward(n, n.a.norm, keep_stats ? y.n2_mean : nullptr, keep_stats ? y.n2_rstd : nullptr,
                            y.res_attn, o.norm2_w, o.norm2_b);
}

// dx += input gradient of a norm over `rows` rows of `d` (LayerNorm when mean is given, else RMSNorm); weight (and
// bias) gradients as column sums by a ones-row GEMM over dout * xhat, formed in `scratch` [rows, d] (a buffer the
// caller no longer needs).
void norm_rows_backward(const Net& n, float* dx, size_t w, size_t b, const float* dout, const float* x,
                        const float* mean, const float* rstd, float* scratch, int rows, int d) {
  if (mean)
    layernorm_backward_input(dx, dout, x, n.p(w), mean, rstd, rows, d);
  else
    rmsnorm_backward_input(dx, dout, x, n.p(w), rstd, rows, d, n.c.norm_offset());
  if (!n.G) return;  // frozen (LoRA)
  norm_xhat_product(scratch, dout, x, mean, rstd, rows, d);
  bias_backward(n.g(w), scratch, n.a.ones, rows, d);
  if (b != kAbsent) bias_backward(n.g(b), dout, n.a.ones, rows, d);
}

// A block norm's backward over [T, D] (LayerNorm for GPT-2, RMSNorm otherwise).
void norm_backward(const Net& n, float* dx, size_t w, size_t b, const float* dout, const float* x, const float* mean,
                   const float* rstd, float* scratch) {
  norm_rows_backward(n, dx, w, b, dout, x, n.c.is_gpt2() ? mean : nullptr, rstd, scratch, n.T, n.c.d_model);
}

// LoRA's path beside a frozen GEMM (cpu::lora_forward): out += h B^T with h = scale x A^T, in a.lora_h. Under bf16
// its GEMMs take bf16 operands as every other one does: x as the frozen GEMM read it, the adapters' bf16 copy.
void lora_forward(const Net& n, const LoraTarget& t, float* out, const float* x, const uint16_t* x16) {
  const int T = n.T, r = n.lora->cfg.rank, in = t.in, outf = t.out;
  const float s = n.lora->scale;
  float* h = n.a.lora_h;
  if (n.B) {
    gemm_bf16(false, true, T, r, in, s, x16, in, n.LB + t.a, in, 0.0f, h, r);              // h = scale x A^T
    to_bf16(n.a.lora_h16, h, static_cast<int64_t>(T) * r);
    gemm_bf16(false, true, T, outf, r, 1.0f, n.a.lora_h16, r, n.LB + t.b, r, 1.0f, out, outf);  // out += h B^T
  } else {
    gemm(false, true, T, r, in, s, x, in, n.LP + t.a, in, 0.0f, h, r);
    gemm(false, true, T, outf, r, 1.0f, h, r, n.LP + t.b, r, 1.0f, out, outf);
  }
}

// Its backward (cpu::lora_backward), after the frozen GEMM's input gradient: h recomputed from x, dB += dY^T h,
// dh = dY B, dA += scale dh^T x, and dx += scale dh A when dinp is given.
void lora_backward(const Net& n, const LoraTarget& t, float* dinp, const float* dy, const uint16_t* dy16,
                   const float* x, const uint16_t* x16) {
  const int T = n.T, r = n.lora->cfg.rank, in = t.in, outf = t.out;
  const float s = n.lora->scale;
  float *h = n.a.lora_h, *dh = n.a.lora_dh, *da = n.LG + t.a, *db = n.LG + t.b;
  if (n.B) {
    const uint16_t *a16 = n.LB + t.a, *b16 = n.LB + t.b;
    uint16_t *h16 = n.a.lora_h16, *dh16 = n.a.lora_dh16;
    gemm_bf16(false, true, T, r, in, s, x16, in, a16, in, 0.0f, h, r);
    to_bf16(h16, h, static_cast<int64_t>(T) * r);
    gemm_bf16(true, false, outf, r, T, 1.0f, dy16, outf, h16, r, 1.0f, db, r);     // dB += dY^T h
    gemm_bf16(false, false, T, r, outf, 1.0f, dy16, outf, b16, r, 0.0f, dh, r);    // dh = dY B
    to_bf16(dh16, dh, static_cast<int64_t>(T) * r);
    gemm_bf16(true, false, r, in, T, s, dh16, r, x16, in, 1.0f, da, in);           // dA += scale dh^T X
    if (dinp) gemm_bf16(false, false, T, in, r, s, dh16, r, a16, in, 1.0f, dinp, in);  // dX += scale dh A
  } else {
    const float *a = n.LP + t.a, *b = n.LP + t.b;
    gemm(false, true, T, r, in, s, x, in, a, in, 0.0f, h, r);
    gemm(true, false, outf, r, T, 1.0f, dy, outf, h, r, 1.0f, db, r);
    gemm(false, false, T, r, outf, 1.0f, dy, outf, b, r, 0.0f, dh, r);
    gemm(true, false, r, in, T, s, dh, r, x, in, 1.0f, da, in);
    if (dinp) gemm(false, false, T, in, r, s, dh, r, a, in, 1.0f, dinp, in);
  }
}

// out[T, outf] = inp[T, in] W (+ bias), as cpu::linear_forward; a LoRA target adds its adapter's product.
void linear_forward(const Net& n, float* out, const Operand& inp, size_t w, size_t bias, int in, int outf) {
  const int T = n.T, ldw = n.out_in ? in : outf;
  const uint16_t* x16 = nullptr;
  if (n.B) {
    x16 = bf16_operand(inp, static_cast<int64_t>(T) * in, n.a.bf_in);
    gemm_bf16(false, n.out_in, T, outf, in, 1.0f, x16, in, n.B + w, ldw, 0.0f, out, outf);
  } else {
    gemm(false, n.out_in, T, outf, in, 1.0f, inp.f32, in, n.P + w, ldw, 0.0f, out, outf);
  }
  if (const LoraTarget* t = n.target(w)) lora_forward(n, *t, out, inp.f32, x16);
  if (bias != kAbsent) bias_add(out, n.P + bias, T, outf);
}

// dinp += dout W^T-ish, dW += ..., dbias += column sums: cpu::linear_backward. dinp may be null; with add_dinp
// false it is overwritten (the GEMM's beta 0: its buffer needs no zero fill, and the GEMM does not read it). A LoRA
// model's weights and biases are frozen (no dW, no dbias); a target's adapter gets its gradients instead.
void linear_backward(const Net& n, float* dinp, size_t w, size_t bias, const Operand& dout, const Operand& inp,
                     int in, int outf, bool add_dinp = true) {
  const int T = n.T;
  const float beta = add_dinp ? 1.0f : 0.0f;
  float* dw = n.g(w);
  const uint16_t *dy = nullptr, *x = nullptr;
  if (n.B) {
    dy = bf16_operand(dout, static_cast<int64_t>(T) * outf, n.a.bf_out);
    x = bf16_operand(inp, static_cast<int64_t>(T) * in, n.a.bf_in);
    const uint16_t* W = n.B + w;
    if (n.out_in) {
      if (dinp) gemm_bf16(false, false, T, in, outf, 1.0f, dy, outf, W, in, beta, dinp, in);  // dX += dY W
      if (dw) gemm_bf16(true, false, outf, in, T, 1.0f, dy, outf, x, in, 1.0f, dw, in);       // dW += dY^T X
    } else {
      if (dinp) gemm_bf16(false, true, T, in, outf, 1.0f, dy, outf, W, outf, beta, dinp, in);  // dX += dY W^T
      if (dw) gemm_bf16(true, false, in, outf, T, 1.0f, x, in, dy, outf, 1.0f, dw, outf);      // dW += X^T dY
    }
  } else {
    const float* W = n.P + w;
    if (n.out_in) {
      if (dinp) gemm(false, false, T, in, outf, 1.0f, dout.f32, outf, W, in, beta, dinp, in);
      if (dw) gemm(true, false, outf, in, T, 1.0f, dout.f32, outf, inp.f32, in, 1.0f, dw, in);
    } else {
      if (dinp) gemm(false, true, T, in, outf, 1.0f, dout.f32, outf, W, outf, beta, dinp, in);
      if (dw) gemm(true, false, in, outf, T, 1.0f, inp.f32, in, dout.f32, outf, 1.0f, dw, outf);
    }
  }
  if (const LoraTarget* t = n.target(w)) lora_backward(n, *t, dinp, dout.f32, dy, inp.f32, x);
  if (bias != kAbsent && n.G) bias_backward(n.G + bias, dout.f32, n.a.ones, T, outf);
}

// out = residual + Proj(in) + bias, or with a post-norm (OLMo 2, Gemma 3) residual + PostNorm(Proj(in) + bias), the
// projection then in a.post and the norm's 1/rms in post_rstd.
void sublayer_forward(const Net& n, float* out, const Operand& in, size_t w, size_t bias, int in_f, size_t post_w,
                      float* post_rstd, const float* residual) {
  const int T = n.T, D = n.c.d_model;
  if (post_w == kAbsent) {
    linear_forward(n, out, in, w, kAbsent, in_f, D);
    bias_residual(out, n.p(bias), residual, T, D);
    return;
  }
  linear_forward(n, n.a.post, in, w, bias, in_f, D);
  rmsnorm_forward(out, post_rstd, n.a.post, n.p(post_w), T, D, n.c.norm_eps, nullptr, n.c.norm_offset());
  bias_residual(out, nullptr, residual, T, D);
}

// The gradient at a sublayer's projection output, given dresid at its block output: dresid itself, or back through
// the post-norm (whose input, the projection, is recomputed into a.post; its weight gradient is added here), in
// a.dpost. a.dact is the norm's scratch (the caller fills it only afterwards).
const float* sublayer_output_backward(const Net& n, const float* dresid, const Operand& in, size_t w, size_t bias,
                                      int in_f, size_t post_w, const float* post_rstd) {
  if (post_w == kAbsent) return dresid;
  const int T = n.T, D = n.c.d_model;
  linear_forward(n, n.a.post, in, w, bias, in_f, D);
  fill_zero(n.a.dpost, static_cast<size_t>(T) * D * sizeof(float));
  norm_rows_backward(n, n.a.dpost, post_w, kAbsent, dresid, n.a.post, nullptr, post_rstd, n.a.dact, T, D);
  return n.a.dpost;
}

// The gradient at a sublayer's input (in dnorm) into the residual stream's: through the pre-norm, or added as it
// is where none precedes the sublayer (OLMo 2).
void input_backward(const Net& n, float* dresid, size_t w, size_t b, const float* dnorm, const float* x,
                    const float* mean, const float* rstd) {
  if (n.c.pre_norms())
    norm_backward(n, dresid, w, b, dnorm, x, mean, rstd, n.a.norm);
  else
    add_inplace(dresid, dnorm, static_cast<int64_t>(n.T) * n.c.d_model);
}

// grads: ds.grads in backward (the weights' gradients, or a LoRA model's adapters'), null in forward.
Net make_net(const Model& m, const DeviceState& ds, const DevActs& a, float* grads) {
  const bool bf16 = ds.prec == Precision::BF16;
  return Net{m.cfg,
             m.layout,
             ds.params.data(),
             bf16 ? ds.params_bf16.data() : nullptr,
             m.lora ? nullptr : grads,
             a,
             a.T,
             !m.cfg.is_gpt2(),
             ds,
             active_lora(m),
             ds.lora.data(),
             bf16 ? ds.lora_bf16.data() : nullptr,
             m.lora ? grads : nullptr};
}

// q|k|v of block l from its normalized input (RoPE applied where the layer rotates): forward, and again in backward.
void qkv_forward(const Net& n, int l, float* qkv, const Operand& norm, const DevBatch& b) {
  const ModelConfig& c = n.c;
  const LayerOffsets& o = n.L.layers[l];
  const int D = c.d_model, QD = c.q_dim(), KVD = c.kv_dim();
  if (c.is_gpt2()) {  // its bias, when the attention adds it, is left out here
    const bool folded = folded_qkv_bias(c, n.p(o.qkv_b), n.B != nullptr).any();
    linear_forward(n, qkv, norm, o.qkv_w, folded ? kAbsent : o.qkv_b, D, 3 * D);
    return;
  }
  const QKV v = qkv_view(c, qkv, n.T);
  if (c.qk_norm()) {  // q and k projected into qk_raw, then each head (OLMo 2: the whole width) normalized
    float* raw_q = n.a.qk_raw;
    float* raw_k = raw_q + static_cast<size_t>(n.T) * QD;
    linear_forward(n, raw_q, norm, o.q_w, o.q_b, D, QD);
    linear_forward(n, raw_k, norm, o.k_w, o.k_b, D, KVD);
    const int qw = c.q_norm_width(), kw = c.k_norm_width(), q_rows = n.T * (QD / qw);
    rmsnorm_forward(v.q, n.a.qk_rstd, raw_q, n.p(o.q_norm_w), q_rows, qw, c.norm_eps, nullptr, c.norm_offset());
    rmsnorm_forward(v.k, n.a.qk_rstd + q_rows, raw_k, n.p(o.k_norm_w), n.T * (KVD / kw), kw, c.norm_eps, nullptr,
                    c.norm_offset());
  } else {
    linear_forward(n, v.q, norm, o.q_w, o.q_b, D, QD);
    linear_forward(n, v.k, norm, o.k_w, o.k_b, D, KVD);
  }
  linear_forward(n, v.v, norm, o.v_w, o.v_b, D, KVD);
  if (const double* inv_freq = n.ds.layer_inv_freq(l)) {  // (SmolLM3's NoPE layers do not rotate)
    rope_forward(v.q, n.T, v.qs, c.n_head, c.head_dim, b.pos, inv_freq);
    rope_forward(v.k, n.T, v.ks, c.n_kv_head, c.head_dim, b.pos, inv_freq);
  }
  // Gemma's attention scale: q takes the factor, so the attention kernels keep their 1/sqrt(head_dim)
  if (c.q_scale() != 1.0f) scale_inplace(v.q, c.q_scale(), static_cast<int64_t>(n.T) * QD);
}

// The MLP's pre-activation(s) and activation from its normalized input: forward, and again in backward. The
// activation only feeds the output projection: in a.act (fp32), or under bf16 in a.bf_in alone (the input GEMMs
// read the norm's own bf16 operand, so nothing converts into bf_in until the projection has read it).
Operand mlp_hidden_forward(const Net& n, const LayerOffsets& o, const Operand& norm) {
  const ModelConfig& c = n.c;
  const DevActs& a = n.a;
  const int D = c.d_model, F = c.d_ff;
  const int64_t TF = static_cast<int64_t>(n.T) * F;
  float* act = n.B ? nullptr : a.act;
  uint16_t* act16 = n.B ? a.bf_in : nullptr;
  if (c.is_gpt2()) {
    linear_forward(n, a.fc, norm, o.fc_w, kAbsent, D, F);
    bias_gelu_forward(act, a.fc, n.p(o.fc_b), n.T, F, act16);
  } else {
    linear_forward(n, a.fc, norm, o.fc_w, o.fc_b, D, F);
    linear_forward(n, a.up, norm, o.up_w, kAbsent, D, F);
    if (c.is_gemma())
      geglu_forward(act, a.fc, a.up, TF, act16);
    else
      swiglu_forward(act, a.fc, a.up, TF, act16);
  }
  return {act, act16};
}

void block_forward(const Net& n, int l, const DevLayer& y, const float* x, const DevBatch& b) {
  const ModelConfig& c = n.c;
  const LayerOffsets& o = n.L.layers[l];
  const DevActs& a = n.a;
  const int T = n.T, F = c.d_ff, QD = c.q_dim();

  // attention
  qkv_forward(n, l, a.qkv, attention_input(n, o, y, x, true), b);
  const QKV v = qkv_view(c, a.qkv, T);
  attention_forward(y.atty, y.lse, v.q, v.qs, v.k, v.ks, v.v, v.vs, b.offsets, b.n_seq, b.max_len, c.n_head,
                    c.n_kv_head, c.head_dim, n.B != nullptr, folded_qkv_bias(c, n.p(o.qkv_b), n.B != nullptr),
                    c.layer_window(l));
  sublayer_forward(n, y.res_attn, y.atty, o.o_w, o.o_b, QD, o.post_attn_norm_w, y.post_attn_rstd, x);

  // MLP
  const Operand act = mlp_hidden_forward(n, o, mlp_input(n, o, y, true));
  sublayer_forward(n, y.res_mlp, act, o.proj_w, o.proj_b, F, o.post_mlp_norm_w, y.post_mlp_rstd, y.res_attn);
}

}  // namespace

Call prepare_call(DeviceState& ds, const Model& m, const Batch& b, bool training, Head head) {
  const ModelConfig& c = m.cfg;
  const int T = b.n_tokens(), n_seq = b.n_seq();
  Call k;
  k.batch.T = T;
  k.batch.n_seq = n_seq;
  std::vector<int32_t> pos(T), last(n_seq);
  for (int s = 0; s < n_seq; s++) {
    k.batch.max_len = std::max(k.batch.max_len, b.seq_len(s));
    for (int t = b.offsets[s]; t < b.offsets[s + 1]; t++) pos[t] = t - b.offsets[s];
    last[s] = b.offsets[s + 1] - 1;
  }
  if (head == Head::LM) k.rows = response_rows(b);
  const ResponseRows& rows = k.rows;
  k.n_rows = static_cast<int>(rows.src.size());
  HostIndex tok_index, pos_index;
  if (training) {
    tok_index = group_rows(b.tokens, c.vocab_size);
    if (m.layout.pos_emb != kAbsent) pos_index = group_rows(pos, std::max(1, k.batch.max_len));
  }

  const bool bf16 = ds.prec == Precision::BF16;
  ds.check_adapters(m);
  const Lora* lora = active_lora(m);
  const int lora_rank = lora ? lora->cfg.rank : 0;
  auto layout = [&](Carver& cv) {
    k.batch.tokens = cv.take<int32_t>(T);
    k.batch.offsets = cv.take<int32_t>(n_seq + 1);
    k.batch.pos = cv.take<int32_t>(T);
    carve_acts(cv, c, T, training, bf16, lora_rank, k.acts);
    k.src = cv.take<int32_t>(k.n_rows);
    k.target = cv.take<int32_t>(k.n_rows);
    k.logp = cv.take<float>(k.n_rows);
    k.g = cv.take<float>(k.n_rows);
    k.last_rows = cv.take<int32_t>(n_seq);
    k.score = cv.take<float>(n_seq);
    k.gscore = cv.take<float>(n_seq);
    if (training) {
      k.dnormf = cv.take<float>(static_cast<size_t>(T) * c.d_model);
      carve_index(cv, tok_index, k.tok_index);
      carve_index(cv, pos_index, k.pos_index);
    }
  };
  Carver measure;
  layout(measure);
  Carver real(shared_arena().reserve(measure.used(), training ? "training activations" : "inference activations"));
  layout(real);

  copy_to_device(k.batch.tokens, b.tokens.data(), T * sizeof(int32_t));
  copy_to_device(k.batch.offsets, b.offsets.data(), (n_seq + 1) * sizeof(int32_t));
  copy_to_device(k.batch.pos, pos.data(), T * sizeof(int32_t));
  copy_to_device(k.src, rows.src.data(), k.n_rows * sizeof(int32_t));
  copy_to_device(k.target, rows.target.data(), k.n_rows * sizeof(int32_t));
  copy_to_device(k.last_rows, last.data(), n_seq * sizeof(int32_t));
  if (training) {
    upload_index(tok_index, k.tok_index);
    upload_index(pos_index, k.pos_index);
  }
  return k;
}

void transformer_forward(const Model& m, const DeviceState& ds, Call& k) {
  const ModelConfig& c = m.cfg;
  const ParamLayout& L = m.layout;
  DevActs& a = k.acts;
  const int T = a.T;
  const Net n = make_net(m, ds, a, nullptr);
  embedding_forward(a.x0, n.p(L.tok_emb), n.p(L.pos_emb), k.batch.tokens, k.batch.pos, T, c.d_model);
  // Gemma: the token embedding times sqrt(d_model) (it has no learned positions: core/transformer.cpp's embed_forward)
  if (c.embed_scale() != 1.0f) scale_inplace(a.x0, c.embed_scale(), static_cast<int64_t>(T) * c.d_model);

  const float* x = a.x0;
  for (int l = 0; l < c.n_layer; l++) {
    DevLayer& y = a.layers[a.training ? l : 0];
    if (!a.training && l > 0) {  // the previous block's output becomes this block's input
      std::swap(a.x0, y.res_mlp);
      x = a.x0;
    }
    block_forward(n, l, y, x, k.batch);
    if (a.training) x = y.res_mlp;
  }
  a.last = a.layers[a.training ? c.n_layer - 1 : 0].res_mlp;
  norm_forward(n, a.normf, nullptr, a.normf_mean, a.normf_rstd, a.last, L.normf_w, L.normf_b);  // the heads read fp32
}

void transformer_backward(const Model& m, DeviceState& ds, Call& k) {
  const ModelConfig& c = m.cfg;
  const ParamLayout& L = m.layout;
  const DevActs& a = k.acts;
  const DevBatch& b = k.batch;
  OPTUNE_CHECK(a.training, "cuda::transformer_backward needs a training forward");
  const int T = a.T, D = c.d_model, F = c.d_ff, QD = c.q_dim(), KVD = c.kv_dim();
  const Net n = make_net(m, ds, a, ds.grads.data());
  const size_t nD = static_cast<size_t>(T) * D * sizeof(float), nF = static_cast<size_t>(T) * F * sizeof(float);
  const int64_t TF = static_cast<int64_t>(T) * F;

  fill(a.ones, 1.0f, a.n_ones);
  fill_zero(a.dresid, nD);
  norm_backward(n, a.dresid, L.normf_w, L.normf_b, k.dnormf, a.last, a.normf_mean, a.normf_rstd, a.norm);

  for (int l = c.n_layer - 1; l >= 0; l--) {
    const DevLayer& y = a.layers[l];
    const float* x = l > 0 ? a.layers[l - 1].res_mlp : a.x0;
    const LayerOffsets& o = L.layers[l];

    // MLP: res_mlp = res_attn + Proj(Act(FC(Norm2(res_attn)))); recompute Norm2, FC (and Up), Act first. As on the
    // CPU, the first product into each input-gradient buffer overwrites it; only the activations' += outputs are
    // zeroed first.
    const Operand normed2 = mlp_input(n, o, y, false);
    const Operand act = mlp_hidden_forward(n, o, normed2);
    const Operand dmlp = sublayer_output_backward(n, a.dresid, act, o.proj_w, o.proj_b, F, o.post_mlp_norm_w,
                                                  y.post_mlp_rstd);
    linear_backward(n, a.dact, o.proj_w, o.proj_b, dmlp, act, F, D, false);
    float* dfc = a.act;  // the activation is no longer needed: its buffer takes dLoss/dfc
    Operand dfc_in(dfc);
    if (c.is_gpt2()) {  // dfc written (not added to), and under bf16 its operand for the c_fc GEMMs too
      uint16_t* dfc16 = n.B ? a.bf_out : nullptr;
      bias_gelu_backward(dfc, a.fc, n.p(o.fc_b), a.dact, T, F, false, dfc16);  // fc holds the product without bias
      dfc_in = Operand(dfc, dfc16);
    } else {
      fill_zero(dfc, nF);
      fill_zero(a.dup, nF);
      if (c.is_gemma())
        geglu_backward(dfc, a.dup, a.dact, a.fc, a.up, TF);
      else
        swiglu_backward(dfc, a.dup, a.dact, a.fc, a.up, TF);
      linear_backward(n, a.dnorm, o.up_w, kAbsent, a.dup, normed2, D, F, false);
    }
    linear_backward(n, a.dnorm, o.fc_w, o.fc_b, dfc_in, normed2, D, F, c.is_llama());
    input_backward(n, a.dresid, o.norm2_w, o.norm2_b, a.dnorm, y.res_attn, y.n2_mean, y.n2_rstd);

    // attention: res_attn = x + O(Attn(QKV(Norm1(x)))); recompute Norm1 and q|k|v first
    float* datty = a.act;   // free again: the MLP part is done
    float* dqkv = a.dact;
    const Operand dattn = sublayer_output_backward(n, a.dresid, y.atty, o.o_w, o.o_b, QD, o.post_attn_norm_w,
                                                   y.post_attn_rstd);
    linear_backward(n, datty, o.o_w, o.o_b, dattn, y.atty, QD, D, false);
    const Operand normed1 = attention_input(n, o, y, x, false);
    qkv_forward(n, l, a.qkv, normed1, b);
    const QKV v = qkv_view(c, a.qkv, T);
    const QKV dv = qkv_view(c, dqkv, T);
    attention_backward(dv.q, dv.k, dv.v, datty, y.atty, y.lse, v.q, v.qs, v.k, v.ks, v.v, v.vs, b.offsets, b.n_seq,
                       b.max_len, T, c.n_head, c.n_kv_head, c.head_dim, n.B != nullptr,
                       folded_qkv_bias(c, n.p(o.qkv_b), n.B != nullptr), c.layer_window(l));
    if (c.is_gpt2()) {
      linear_backward(n, a.dnorm, o.qkv_w, o.qkv_b, dqkv, normed1, D, 3 * D, false);
    } else {
      if (c.q_scale() != 1.0f) scale_inplace(dv.q, c.q_scale(), static_cast<int64_t>(T) * QD);
      if (const double* inv_freq = ds.layer_inv_freq(l)) {
        rope_backward(dv.q, T, dv.qs, c.n_head, c.head_dim, b.pos, inv_freq);
        rope_backward(dv.k, T, dv.ks, c.n_kv_head, c.head_dim, b.pos, inv_freq);
      }
      float *dq = dv.q, *dk = dv.k;
      if (c.qk_norm()) {  // back through the q/k norms (their inputs recomputed by qkv_forward above) into qk_raw's
        const int qw = c.q_norm_width(), kw = c.k_norm_width(), q_rows = T * (QD / qw);
        const float* raw_q = a.qk_raw;
        dq = a.dqk_raw;
        dk = dq + static_cast<size_t>(T) * QD;
        fill_zero(a.dqk_raw, static_cast<size_t>(T) * (QD + KVD) * sizeof(float));
        float* scratch = a.act;  // dLoss/datty is no longer needed: the attention's backward has run
        norm_rows_backward(n, dq, o.q_norm_w, kAbsent, dv.q, raw_q, nullptr, a.qk_rstd, scratch, q_rows, qw);
        norm_rows_backward(n, dk, o.k_norm_w, kAbsent, dv.k, raw_q + static_cast<size_t>(T) * QD, nullptr,
                           a.qk_rstd + q_rows, scratch, T * (KVD / kw), kw);
      }
      linear_backward(n, a.dnorm, o.q_w, o.q_b, dq, normed1, D, QD, false);
      linear_backward(n, a.dnorm, o.k_w, o.k_b, dk, normed1, D, KVD);
      linear_backward(n, a.dnorm, o.v_w, o.v_b, dv.v, normed1, D, KVD);
    }
    input_backward(n, a.dresid, o.norm1_w, o.norm1_b, a.dnorm, x, y.n1_mean, y.n1_rstd);
  }

  // embeddings: rows grouped by token id / position on the host, summed in row order (deterministic, no atomics);
  // Gemma's scaled token embedding takes the scaled gradient (dresid is not needed after)
  if (!n.G) return;  // frozen (LoRA)
  if (L.pos_emb != kAbsent)
    embedding_backward(n.g(L.pos_emb), a.dresid, k.pos_index.ids, k.pos_index.starts, k.pos_index.rows,
                       k.pos_index.n, D);
  if (c.embed_scale() != 1.0f) scale_inplace(a.dresid, c.embed_scale(), static_cast<int64_t>(T) * D);
  embedding_backward(n.g(L.tok_emb), a.dresid, k.tok_index.ids, k.tok_index.starts, k.tok_index.rows, k.tok_index.n,
                     D);
}

}  // namespace optune::cuda
