// The decoder-only transformer over a packed ragged batch: forward (keeping what backward needs when training) and
// exact backward into Model::grads. Both families share the block structure
//   x -> x + Attn(Norm1(x)) -> x + MLP(Norm2(x))  ... -> NormF
// and differ only in which kernel each step calls (see transformer.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "batch.h"
#include "cpu/gemm.h"
#include "model.h"

namespace optune {

struct LayerActs {
  std::vector<float> norm1, norm1_mean, norm1_rstd;  // [T, D], [T], [T]
  std::vector<float> qkv;       // GPT-2: [T, 3D] fused; Llama: three blocks q [T, QD] | k [T, KVD] | v [T, KVD]
  std::vector<float> qk_raw, qk_rstd;  // Qwen3: q | k before their per-head norms [T, QD + KVD], rstd [T * (H + KV)]
  std::vector<float> probs;     // attention softmax, ragged (training only)
  std::vector<float> atty;      // [T, QD] attention output before the output projection
  std::vector<float> res_attn;  // [T, D] x + attention
  std::vector<float> norm2, norm2_mean, norm2_rstd;
  std::vector<float> fc;        // GPT-2: c_fc output before GELU; Llama: gate_proj output  [T, F]
  std::vector<float> up;        // Llama: up_proj output [T, F]
  std::vector<float> act;       // MLP hidden after the activation [T, F]
  std::vector<float> res_mlp;   // [T, D] block output
  // Gemma: the attention's and the MLP's outputs before their norms [T, D], and the norms' rstd [T]
  std::vector<float> post_attn, post_attn_rstd, post_mlp, post_mlp_rstd;
  std::vector<float> lora_h;    // LoRA: scale * x A^T of each of the block's targets [slots, T, rank] (lora.h)
};

// Batches whose consecutive sequences start alike (a prompt's K responses, a pair's two) run the shared leading
// tokens through the blocks once: the rows of such a "tree" are each group's shared prefix, then every member's own
// tokens. Attention still sees each sequence whole (its rows gathered back in order), so a row's hidden state is
// what the plain forward computes; in backward a shared row's gradient sums its members'.
struct SharedRows {
  int T = 0;                    // tree rows; 0 when nothing is shared (row t is then the batch's token t)
  std::vector<int32_t> tokens;  // [T] token of each tree row
  std::vector<int32_t> pos;     // [T] its position in its sequence
  std::vector<int32_t> row_of;  // [n_tokens] the tree row of each token of the batch
  std::vector<uint8_t> owner;   // [n_tokens] 1 for the token whose attention output is its row's
};
// Groups runs of consecutive sequences sharing >= 8 leading tokens (each keeps >= 1 own token).
// OPTUNE_SHARE_PREFIX=0 turns it off (the result always has T == 0).
SharedRows share_prefixes(const Batch& b);

// The tree attention's gathered rows, kept between calls.
struct TreeScratch {
  std::vector<float> q, k, v, out, dq, dk, dv, dout;
  std::vector<int32_t> offsets;
};

struct Acts {
  int T = 0;
  bool training = false;
  bool bf16 = false;            // linear layers on bf16 operands (mixed precision); backward follows the forward
  std::vector<int32_t> pos;     // position of each token within its sequence
  std::vector<float> x0;        // [T, D] embeddings (inference: the current block's input)
  std::vector<LayerActs> layers;  // one per block when training; one reused buffer set otherwise
  // Training with recomputation (recompute_blocks): layers holds one block's buffers, inputs[l] block l's input for
  // l >= 1 and inputs[n_layer] the last block's output ([T, D] each); backward reruns each block from its input.
  bool recompute = false;
  std::vector<std::vector<float>> inputs;
  // The batch as a tree of rows (transformer_forward's `share`); shared.T == 0: row t is the batch's token t.
  SharedRows shared;
  TreeScratch tree;
  std::vector<float> normf, normf_mean, normf_rstd;  // final normalized hidden states [T, D]
};

// Pointers into the per-layer q/k/v storage, with row strides.
struct QKV {
  float *q, *k, *v;
  int qs, ks, vs;
};
QKV qkv_view(const ModelConfig& c, float* qkv, int T);

// Called after a block has computed its (rotated) keys and values, e.g. to copy them into a KV cache.
using KvHook = std::function<void(int layer, const QKV& qkv)>;

// Gradient buffers of transformer_backward.
struct BackwardScratch {
  std::vector<float> dresid, dnorm, dact, dfc, dup, datty, dqkv;
  std::vector<float> dqk_raw;  // Qwen3: gradient of q | k before their per-head norms
  std::vector<float> dpost;    // Gemma: gradient of the attention's or the MLP's output before its norm
  std::vector<float> dlora_h;  // LoRA: gradient of one target's h [T, rank]
};

// Weights pre-packed for few-row products, by parameter offset (sampler.cpp); null or a missing entry: plain GEMM.
using PackedWeights = std::unordered_map<size_t, cpu::PackedB>;

struct Workspace {
  Acts train;     // all layers' activations, for backward
  Acts infer;     // one reused layer
  BackwardScratch back;
  std::vector<float> dnormf;
  std::vector<float> head_probs;  // the LM head's softmax kept between a train step's forward and backward
  // the sampler's packed weights, repacked on every call (the weights may have changed) into kept storage; kept
  // between calls only while under 64 MB, so a large model does not hold a second copy of its weights
  PackedWeights decode_weights;
};

// The model's workspace, created on first use. Buffers only grow (resize keeps capacity).
Workspace& workspace_of(const Model& m);

// Frees the workspace's activation and gradient buffers when memory is short: when together they hold more than
// cpu::kScratchKeepBytes and more than a quarter of the memory left (available_host_bytes). A large model's
// gigabytes of training activations would otherwise stay resident through sampling and scoring, on top of what
// those need. Otherwise they stay: allocating them again costs every step its page faults (SmolLM2-135M shape,
// 3.5 GB: 10.4 -> 14.1 s a step on a 2-core VM).
void release_large_buffers(Workspace& ws);

// Runs the batch through every block and the final norm: acts.normf holds the hidden states the heads read, one
// per row: token t's is row acts.shared.row_of[t] when `share` found shared prefixes (acts.shared.T > 0), else t.
// `packed` (sampler's prefill): weights already packed for its products, instead of packing them again per GEMM.
void transformer_forward(const Model& m, const Batch& b, Acts& acts, bool training, const KvHook* kv_hook = nullptr,
                         bool bf16 = false, const PackedWeights* packed = nullptr, bool share = false);
// The row holding token t's hidden state.
inline int hidden_row(const Acts& acts, int t) { return acts.shared.T > 0 ? acts.shared.row_of[t] : t; }

// The pieces transformer_forward is made of, shared with the KV-cache decoder (sampler.cpp).
// attend(layer, qkv, atty) must write the attention output [T, QD] for the T rows.
using AttendFn = std::function<void(int layer, const QKV& qkv, float* atty)>;
void size_layer_acts(LayerActs& a, const ModelConfig& c, int T, int64_t probs_size);
void embed_forward(const Model& m, const int32_t* tokens, const int32_t* pos, int T, float* out);
void block_forward(const Model& m, int l, LayerActs& a, const float* x, int T, const int32_t* pos,
                   const AttendFn& attend, const PackedWeights* packed = nullptr, bool bf16 = false);
void final_norm_forward(const Model& m, Acts& acts, const float* x, int T);

// Given dnormf = dLoss/d(final normalized hidden) [T, D], accumulates every parameter gradient into m.grads
// (which must be sized; the head's own gradient is added by the caller).
// With acts.recompute it first reruns each block's forward into acts.layers[0] (the same bits as the first pass).
void transformer_backward(Model& m, const Batch& b, Acts& acts, const float* dnormf);

// Whether a training forward keeps only the blocks' inputs, so that backward recomputes each block (~1/3 more
// compute for the blocks, the same results bit for bit): OPTUNE_RECOMPUTE=1 always, =0 never; by default when
// keeping every block's activations (keep_bytes) would take more than half of the memory available.
bool recompute_blocks(size_t keep_bytes);

}  // namespace optune
