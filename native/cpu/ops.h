// CPU reference kernels, forward and backward side by side. Activations are row-major [rows, features].
// Backward functions ACCUMULATE (+=) into parameter gradients and into input gradients, so a tensor that feeds two
// places (the residual stream, tied embeddings) sums its gradient naturally; callers zero gradients first.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "rope_scaling.h"

namespace optune::cpu {

// ---- linear layers --------------------------------------------------------------------------------------------
// transformers stores nn.Linear weights as [out, in] (y = x W^T) and GPT-2's Conv1D weights as [in, out] (y = x W).
enum class WeightLayout { OutIn, InOut };

// bf16: the products run on bf16-rounded operands with fp32 accumulation (gemm_bf16: mixed-precision training).
void linear_forward(float* out, const float* inp, const float* w, const float* bias, int rows, int in, int outf,
                    WeightLayout layout, bool bf16 = false);
// The same with the weight pre-packed by pack_b (few-row decoding).
struct PackedB;
void linear_forward_packed(float* out, const float* inp, const PackedB& w, const float* bias, int rows);
// dinp may be null (no input gradient needed); dbias may be null. dw and dbias are accumulated into; so is dinp
// unless add_dinp is false (then it is overwritten: its buffer need not be zeroed first).
void linear_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp, const float* w,
                     int rows, int in, int outf, WeightLayout layout, bool bf16 = false, bool add_dinp = true);

// LoRA's low-rank path beside a linear layer (core/lora.h): h = scale * x A^T is written ([rows, r], kept for
// backward), out += h B^T. A [r, in] and B [out, r] in nn.Linear's layout; fp32 whatever the base's precision.
void lora_forward(float* out, float* h, const float* inp, const float* a, const float* b, float scale, int rows, int in,
                  int outf, int r);
// dB += dout^T h; dh = dout B (scratch [rows, r]); dA += scale dh^T x; dinp += scale dh A (dinp may be null).
void lora_backward(float* dinp, float* da, float* db, float* dh, const float* dout, const float* inp, const float* h,
                   const float* a, const float* b, float scale, int rows, int in, int outf, int r);

// ---- normalization --------------------------------------------------------------------------------------------
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b,
                       int rows, int d, float eps);
void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp, const float* w,
                        const float* mean, const float* rstd, int rows, int d);
// RMSNorm scales by w + w_offset (Gemma's norms: 1 + weight; the gradient goes to w as it is).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int rows, int d, float eps,
                     float w_offset = 0.0f);
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, const float* rstd,
                      int rows, int d, float w_offset = 0.0f);

// ---- activations ----------------------------------------------------------------------------------------------
void gelu_forward(float* out, const float* inp, int64_t n);  // tanh approximation (GPT-2's gelu_new)
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n);
// h = silu(gate) * up
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);
// h = gelu_tanh(gate) * up (Gemma's MLP)
void geglu_forward(float* out, const float* gate, const float* up, int64_t n);
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);

// ---- rotary position embedding (transformers' rotate_half convention) -----------------------------------------
// (RopeScaling: cpu/rope_scaling.h.) The frequency of each of the head_dim / 2 pairs (in double).
std::vector<double> rope_inv_freq(int head_dim, float theta, const RopeScaling& scaling);
// x: [rows, n_heads * head_dim] with row stride `stride`; row r is at position pos[r]. In place.
void rope_forward(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                  const RopeScaling& scaling = {});
// The rotation is orthogonal: backward rotates the gradient by the opposite angle, in place.
void rope_backward(float* dx, int rows, int stride, int n_heads, int head_dim, const int32_t* pos, float theta,
                   const RopeScaling& scaling = {});

// ---- causal self-attention over a packed ragged batch ---------------------------------------------------------
// Sequence s holds rows [offsets[s], offsets[s+1]). q: [T, H*hd] (stride qs), k, v: [T, KV*hd] (strides ks, vs).
// out: [T, H*hd]. probs: softmax weights, per sequence and head a [L, L] lower-triangular block, laid out as given by
// attention_probs_offsets (needed by backward; may be null for inference).
// window > 0: each query sees only its last `window` positions, itself included (a sliding-window layer); the
// masked weights are zeros in probs, so backward needs no window of its own.
int64_t attention_probs_size(const int32_t* offsets, int n_seq, int n_head);
void attention_forward(float* out, float* probs, const float* q, int qs, const float* k, int ks, const float* v,
                       int vs, const int32_t* offsets, int n_seq, int n_head, int n_kv_head, int head_dim,
                       int window = 0);
// dq, dk, dv are written (not accumulated); they have the strides of q, k, v.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q, int qs,
                        const float* k, int ks, const float* v, int vs, const int32_t* offsets, int n_seq, int n_head,
                        int n_kv_head, int head_dim);

// The sampler's KV cache, per layer: keys feature-major [slot][KV*hd][cap] (so a decode step's scores are
// unit-stride over positions), values [slot][cap][KV*hd]; fp32, or bf16 bits (uint16_t) for bf16 sampling.
// kv_cache_store writes one token's k and v at `pos`.
void kv_cache_store(float* kcache, float* vcache, int slot, int pos, const float* k, const float* v, int cap,
                    int n_kv_head, int head_dim);
void kv_cache_store(uint16_t* kcache, uint16_t* vcache, int slot, int pos, const float* k, const float* v, int cap,
                    int n_kv_head, int head_dim);
// One new query row per sequence against its KV cache (sampling), on the calling thread (the sampler runs one
// group of rows per thread). Row r attends to positions 0 .. n_keys[r]-1 of cache slot slot[r] (window > 0: the
// last `window` of them).
void attention_decode(float* out, const float* q, int qs, const float* kcache, const float* vcache,
                      const int32_t* slot, const int32_t* n_keys, int rows, int cap, int n_head, int n_kv_head,
                      int head_dim, int window = 0);
void attention_decode(float* out, const float* q, int qs, const uint16_t* kcache, const uint16_t* vcache,
                      const int32_t* slot, const int32_t* n_keys, int rows, int cap, int n_head, int n_kv_head,
                      int head_dim, int window = 0);

// ---- token log-probs from hidden states without the full [tokens x vocab] logits ------------------------------
// For each of n rows: logp[r] = log_softmax(h[src[r]] @ W^T)[target[r]], W: [V, D]. Processed in chunks of rows so
// at most chunk_rows x V logits exist at once.
// keep_probs (training): when n x V floats fit logprob_probs_fit's budget, the softmax of every row is kept there
// for logprob_backward; otherwise it is left empty.
// bf16: the head's weights are packed per call, or once for several calls on the same weights (a training step's
// groups of rows) with pack_head_bf16.
struct HeadPacks;
std::shared_ptr<const HeadPacks> pack_head_bf16(const float* w, int d, int vocab);
void logprob_forward(float* logp, const float* h, const int32_t* src, const int32_t* target, int n, const float* w,
                     int d, int vocab, std::vector<float>* keep_probs = nullptr, bool bf16 = false,
                     const HeadPacks* packs = nullptr);
bool logprob_probs_fit(int n, int vocab);
int logprob_probs_rows(int vocab);  // the most rows whose softmax fits that budget (at least 1)
// Given g[r] = dLoss/dlogp[r]: dh[src[r]] += ..., dw += ... (dw null: a frozen head, its product skipped). The
// logits are recomputed chunk by chunk, unless
// kept_probs holds the forward's softmax of all n rows (it is then overwritten).
void logprob_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* src, const int32_t* target,
                      int n, const float* w, int d, int vocab, std::vector<float>* kept_probs = nullptr,
                      bool bf16 = false, const HeadPacks* packs = nullptr);
int logprob_chunk_rows(int vocab);

}  // namespace optune::cpu
