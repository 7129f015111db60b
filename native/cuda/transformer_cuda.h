// The decoder-only transformer on the device, step for step core/transformer.cpp: forward over a packed ragged
// batch (keeping what backward needs when training) and exact backward into DeviceState::grads. Everything a call
// needs lives in one carve of the shared activation arena (`Call`), laid out before any kernel runs.
//
// Memory (training): per block only what cannot be recomputed cheaply is kept: the attention output and its lse (no
// [L, L] probabilities) and the two residual streams, 3 x [T, D] floats for GPT-2. Backward recomputes the norms,
// q|k|v (GEMMs + RoPE) and the MLP pre-activations and activation from the kept inputs with the forward's own
// kernels (bit-identical values), at the price of the q|k|v and c_fc GEMMs once more (7 of a GPT-2 block's 12 d^2
// units of forward GEMM work; ~9% more FLOPs in a GPT-2 124M DPO step). For that step (64 x 512 tokens) it keeps
// ~3.4 GiB of activations instead of ~18 GiB. Logits never exist beyond one chunk of rows (logprob.cu).
#pragma once
#include <cstdint>
#include <vector>

#include "core/batch.h"
#include "core/heads.h"
#include "core/model.h"
#include "device_model.h"

namespace optune::cuda {

struct DevBatch {
  int T = 0, n_seq = 0, max_len = 0;
  int32_t* tokens = nullptr;   // [T]
  int32_t* offsets = nullptr;  // [n_seq + 1]
  int32_t* pos = nullptr;      // [T] position within the sequence
};

// Rows grouped by key (token id or position) for embedding_backward: ids[k]'s rows are rows[starts[k] ..
// starts[k+1]), in increasing row order.
struct DevIndex {
  int32_t *ids = nullptr, *starts = nullptr, *rows = nullptr;
  int n = 0;
};

// Kept per block for backward (training): the attention output and its lse, the two residual streams, and the
// norms' statistics. Everything else a block computes is recomputed in backward into the shared scratch.
struct DevLayer {
  float *n1_mean = nullptr, *n1_rstd = nullptr;  // norm1 statistics (mean: LayerNorm only)
  float* atty = nullptr;      // [T, QD] attention output
  float* lse = nullptr;       // [T, H] attention log-sum-exp
  float* res_attn = nullptr;  // [T, D]
  float *n2_mean = nullptr, *n2_rstd = nullptr;
  float* res_mlp = nullptr;   // [T, D] block output
  float *post_attn_rstd = nullptr, *post_mlp_rstd = nullptr;  // (post-norms: OLMo 2, Gemma 3) [T] their 1/rms
};

struct DevActs {
  int T = 0;
  bool training = false;
  float* x0 = nullptr;              // [T, D] embeddings
  std::vector<DevLayer> layers;     // n_layer when training; 1 reused set otherwise
  // scratch, one set for all blocks (forward, and the recomputation in backward)
  float* norm = nullptr;            // [T, D] a norm's output
  float* qkv = nullptr;             // [T, QKV] GPT-2: fused [T, 3D]; Llama: q [T, QD] | k [T, KVD] | v [T, KVD]
  float* fc = nullptr;              // [T, F] c_fc (without its bias: GELU adds it) | gate_proj output
  float* up = nullptr;              // [T, F] up_proj output (Llama)
  float* act = nullptr;             // [T, max(F, QD)] MLP hidden; in backward also dLoss/dfc, then dLoss/datty,
                                    // then the q/k norms' dLoss/dy * xhat
  float* post = nullptr;            // (post-norms) [T, D]: a sublayer's projection, before its post-norm
  float* qk_raw = nullptr;          // (q/k norms) [T, QD + KVD]: q and k as projected, before their norms
  float* qk_rstd = nullptr;         // (q/k norms) the norms' 1/rms per normalized group: q's rows, then k's
  float *normf = nullptr, *normf_mean = nullptr, *normf_rstd = nullptr;
  const float* last = nullptr;      // set by forward: the final block's output
  uint16_t *bf_in = nullptr, *bf_out = nullptr;  // bf16 GEMM operands (BF16 only), [T, widest]; bf_in also holds
                                                 // the MLP activation, which its producer writes in bf16
  uint16_t* norm16 = nullptr;       // [T, D] (BF16 only) a block norm's output: only GEMMs read it, so it exists in
                                    // bf16 alone
  // backward scratch (training only)
  float *dresid = nullptr, *dnorm = nullptr;  // [T, D]
  float* dact = nullptr;            // [T, max(F, QKV, D)] dLoss/dact, then dLoss/dqkv; before each, the
                                    // post-norms' dLoss/dy * xhat
  float* dup = nullptr;             // [T, F] (Llama)
  float* dqk_raw = nullptr;         // (q/k norms) [T, QD + KVD] dLoss/dqk_raw
  float* dpost = nullptr;           // (post-norms) [T, D] dLoss/dpost
  // LoRA (active adapters only, core/lora.h): one target's h = scale x A^T [T, rank] and, in backward, dLoss/dh;
  // under bf16 also their bf16 operands. The adapters' GEMMs are small (rank columns), so h is recomputed in
  // backward instead of kept per target.
  float *lora_h = nullptr, *lora_dh = nullptr;
  uint16_t *lora_h16 = nullptr, *lora_dh16 = nullptr;
  float* ones = nullptr;            // [n_ones] ones: bias gradients are GEMMs with it
  int n_ones = 0;                   // T, or the rows of the widest q/k norm (T x heads for Qwen3's)
};

enum class Head { LM, SCORE };

// One call's device buffers.
struct Call {
  DevBatch batch;
  DevActs acts;
  int n_rows = 0;                                   // LM head: response rows
  int32_t *src = nullptr, *target = nullptr;        // [n_rows]
  float *logp = nullptr, *g = nullptr;              // [n_rows] log-probs, dLoss/dlogp
  int32_t* last_rows = nullptr;                     // [n_seq] each sequence's last token (reward head)
  float *score = nullptr, *gscore = nullptr;        // [n_seq]
  float* dnormf = nullptr;                          // [T, D] (training)
  DevIndex tok_index, pos_index;                    // (training) embedding backward
  ResponseRows rows;                                // host: the LM rows' src, target and sequence
};

// Measures, reserves (the arena grows when needed) and carves everything a forward (and, when training, backward)
// of `b` through `head` needs, then uploads the batch's index arrays.
Call prepare_call(DeviceState& ds, const Model& m, const Batch& b, bool training, Head head);

// Embeddings, every block, the final norm: acts.normf holds the hidden states the heads read.
void transformer_forward(const Model& m, const DeviceState& ds, Call& k);
// Given k.dnormf = dLoss/d(final normalized hidden), accumulates every parameter gradient into ds.grads (zeroed by
// the caller; the head's own gradient is added by the caller). With LoRA: the adapters' gradients only (ds.grads in
// Lora::layout), the frozen weights get none.
void transformer_backward(const Model& m, DeviceState& ds, Call& k);

}  // namespace optune::cuda
