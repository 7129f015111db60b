// The engine's operations on a model: sequence log-probs, reward scores, one training step with a chosen loss,
// batched sampling. This header is the whole surface the N-API binding (and the native tests) use.
// Everything here runs synchronously on the calling thread; the binding moves calls to a worker thread.
#pragma once
#include <cstdint>
#include <vector>

#include "batch.h"
#include "model.h"

namespace optune {

// ---- log-probs ----------------------------------------------------------------------------------------------
struct LogprobResult {
  std::vector<float> token_logps;  // one per response token, in batch order (sequence 0's response first)
  std::vector<float> seq_logps;    // per sequence: sum of its response token log-probs (0 for an empty response)
};
LogprobResult compute_logprobs(const Model& m, const Batch& b);

// Full logits [n_tokens, vocab] of a batch. Only for tests and debugging: memory grows with the vocabulary.
std::vector<float> compute_logits(const Model& m, const Batch& b);

// ---- reward model -------------------------------------------------------------------------------------------
// Scalar score of each whole sequence (prompt + response), read at its last token. Needs cfg.reward_model.
std::vector<float> compute_scores(const Model& m, const Batch& b);

// ---- training -----------------------------------------------------------------------------------------------
// The pairwise losses on h = (logp_c - ref_c) - (logp_r - ref_r): DPO -log sigmoid(beta h) (with label smoothing
// eps: (1 - eps) -log sigmoid(beta h) + eps -log sigmoid(-beta h), conservative DPO), IPO (h - 1 / (2 beta))^2,
// HINGE max(0, 1 - beta h) (SLiC). SIMPO needs no reference: h = logp_c / n_c - logp_r / n_r (mean token log-probs)
// and -log sigmoid(beta h - gamma), smoothed like DPO. BT is Bradley-Terry on reward-model scores; SFT is the mean
// token NLL.
enum class LossKind { SFT, DPO, IPO, BT, HINGE, SIMPO };
// The losses that compare the policy with a reference model (they need its log-probs).
inline bool uses_reference(LossKind k) { return k == LossKind::DPO || k == LossKind::IPO || k == LossKind::HINGE; }

struct AdamWConfig {
  float lr = 1e-5f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;   // decoupled; applied to ParamInfo::decay tensors only
  float max_grad_norm = 0.0f;  // global L2 norm clipping; <= 0 disables
  // Linear warmup: optimizer step t (1-based, Model::adam_step after it) uses lr * min(1, t / warmup_steps); 0 = off.
  // Counted by the model, so a run resumed with its optimizer state continues the ramp where it stopped.
  int warmup_steps = 0;
};

struct TrainRequest {
  LossKind loss = LossKind::DPO;
  Batch batch;
  // DPO / IPO / BT: pair j compares sequences chosen[j] and rejected[j] of the batch.
  std::vector<int32_t> chosen, rejected;
  // Per-pair (DPO/IPO/BT) or per-sequence (SFT) weights; empty means all 1. Weighted loss: sum_j w_j l_j / n.
  std::vector<float> weights;
  // Reference sequence log-probs per pair (DPO/IPO/HINGE). When empty, ref_model computes them.
  std::vector<float> ref_chosen, ref_rejected;
  const Model* ref_model = nullptr;
  float beta = 0.1f;
  // DPO and SIMPO: the assumed share of pairs whose preference is flipped, in [0, 0.5); 0 is plain DPO.
  float label_smoothing = 0.0f;
  // SIMPO: the target margin gamma between the chosen and rejected mean token log-probs, times beta.
  float simpo_gamma = 0.5f;
  AdamWConfig opt;
  bool apply_update = true;  // false: compute loss and gradients only (m.grads holds them afterwards)
  // CPU mixed precision: the products of the linear layers and the LM head (forward and backward) run on
  // bf16-rounded operands with fp32 accumulation; weights, gradients, AdamW, norms, attention and the loss stay
  // fp32. On AVX512-BF16 CPUs those products run up to ~1.8x faster; elsewhere slower. The reference log-probs
  // (cached or from ref_model) stay fp32. (A CUDA model trains at its own precision.)
  bool bf16 = false;
};

struct TrainStats {
  double loss = 0;
  double chosen_reward = 0;    // mean beta * (logp_c - ref_c)  (BT: mean score of chosen)
  double rejected_reward = 0;  // mean beta * (logp_r - ref_r)  (BT: mean score of rejected)
  double margin = 0;           // mean chosen_reward - rejected_reward
  double accuracy = 0;         // fraction of pairs with chosen_reward > rejected_reward
  double grad_norm = 0;        // global L2 norm before clipping
  int n_pairs = 0;
  int n_tokens = 0;            // response tokens trained on
};

TrainStats train_step(Model& m, const TrainRequest& r);

// Throws the error train_step would give when the gradients (and, with `with_optimizer`, AdamW's two moments) that
// its first call allocates do not fit in the memory available now: a run checks before it spends minutes sampling
// and scoring. Nothing to check when they exist already, or on a GPU (its memory plan reports its own shortfall).
void check_training_memory(const Model& m, bool with_optimizer);

// AdamW on m.params with m.grads (bias-corrected, decoupled decay, optional clipping). Returns the pre-clip norm.
double adamw_update(Model& m, const AdamWConfig& opt);

// ---- sampling -----------------------------------------------------------------------------------------------
struct SampleRequest {
  std::vector<int32_t> prompt_tokens;   // prompts packed back to back
  std::vector<int32_t> prompt_offsets;  // n_prompts + 1
  int n_samples = 1;                    // K responses per prompt
  int max_new_tokens = 64;
  float temperature = 1.0f;             // 0 = greedy
  int top_k = 0;                        // 0 = off
  float top_p = 1.0f;                   // 1 = off
  std::vector<int32_t> stop_tokens;     // generation of a sequence ends after it emits one of these (kept)
  // 0: every id may be drawn. Else only ids below it: a model whose vocabulary is padded past its tokenizer's
  // (Qwen2: 151936 rows for 151665 tokens) has rows no text decodes to. Like top-k, it limits only the draw; the
  // log-probs returned are under the whole vocabulary.
  int vocab_limit = 0;
  uint64_t seed = 0;
  // Per prompt, the key of its random stream; sample k of prompt i draws from stream (stream_ids[i], k). The same
  // (seed, stream id, k) gives the same tokens whatever else is in the batch. Empty: stream id = prompt index.
  std::vector<uint64_t> stream_ids;
  // CPU: prefill and decode with the weight matrices and activations rounded to bf16 for every product,
  // accumulating in fp32 (also when the model's precision is bf16). On AVX512-BF16 CPUs (AMD Zen 4, Intel Sapphire Rapids and later) this halves the
  // bytes a step streams and doubles the multiply-adds per instruction; elsewhere it is correct but slower. Tokens
  // and log-probs differ slightly from fp32 decoding. (A CUDA model samples at its own precision.)
  bool bf16 = false;
};

struct SampleResult {
  // n_prompts * n_samples responses, prompt-major (prompt 0's K samples first), packed back to back.
  std::vector<int32_t> tokens;
  std::vector<int32_t> offsets;      // n_responses + 1
  std::vector<float> token_logps;    // log-prob of each sampled token under the model (temperature 1, unfiltered)
  std::vector<uint8_t> finished;     // 1 when the response ended with a stop token, 0 when it hit max_new_tokens
};

SampleResult sample(const Model& m, const SampleRequest& r);

// The request checks sample() makes (clear optune::Errors), shared with the CUDA sampler.
void validate_sample_request(const Model& m, const SampleRequest& r);

}  // namespace optune
