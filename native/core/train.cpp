// One training step: forward with activations kept, a loss over sequences or pairs, exact backward, optional AdamW.
// Every loss reduces to a gradient per response token (LM losses) or per sequence score (Bradley-Terry), which the
// head's backward turns into dLoss/d(hidden states) for the transformer's backward.
#include <cmath>
#include <string>

#include "adamw.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "device.h"
#include "engine.h"
#include "error.h"
#include "heads.h"
#include "host_memory.h"
#include "lora.h"
#include "losses.h"
#include "transformer.h"

namespace optune {

namespace {

const char* loss_name(LossKind k) {
  switch (k) {
    case LossKind::SFT: return "sft";
    case LossKind::DPO: return "dpo";
    case LossKind::IPO: return "ipo";
    case LossKind::BT: return "bt";
    case LossKind::HINGE: return "hinge";
    case LossKind::SIMPO: return "simpo";
  }
  return "?";
}

void validate_request(const Model& m, const TrainRequest& r) {
  validate_batch(r.batch, m.cfg);
  OPTUNE_CHECK(!m.lora_off, "train step: the model's LoRA adapters are switched off; train with them on");
  const int n_seq = r.batch.n_seq();
  const std::string loss = loss_name(r.loss);
  if (r.loss == LossKind::SFT) {
    OPTUNE_CHECK(r.weights.empty() || static_cast<int>(r.weights.size()) == n_seq,
                 "train step (sft): weights has " + std::to_string(r.weights.size()) +
                     " entries; give one per sequence (" + std::to_string(n_seq) + ") or none");
    OPTUNE_CHECK(r.batch.n_response_tokens() > 0, "train step (sft): the batch has no response tokens to train on");
  } else {
    const size_t n = r.chosen.size();
    OPTUNE_CHECK(n > 0, "train step (" + loss + "): no pairs given (chosen is empty)");
    OPTUNE_CHECK(r.rejected.size() == n, "train step (" + loss + "): chosen has " + std::to_string(n) +
                                             " entries but rejected has " + std::to_string(r.rejected.size()));
    for (size_t j = 0; j < n; j++) {
      OPTUNE_CHECK(r.chosen[j] >= 0 && r.chosen[j] < n_seq && r.rejected[j] >= 0 && r.rejected[j] < n_seq,
                   "train step (" + loss + "): pair " + std::to_string(j) + " refers to sequence " +
                       std::to_string(r.chosen[j]) + "/" + std::to_string(r.rejected[j]) +
                       ", outside the batch's " + std::to_string(n_seq) + " sequences");
    }
    OPTUNE_CHECK(r.weights.empty() || r.weights.size() == n, "train step (" + loss + "): weights has " +
                                                                 std::to_string(r.weights.size()) +
                                                                 " entries; give one per pair (" +
                                                                 std::to_string(n) + ") or none");
    if (r.loss == LossKind::SIMPO) {
      OPTUNE_CHECK(r.ref_chosen.empty() && r.ref_rejected.empty() && r.ref_model == nullptr,
                   "train step (simpo): SimPO uses no reference; give no refChosen/refRejected or reference model");
      OPTUNE_CHECK(std::isfinite(r.simpo_gamma) && r.simpo_gamma >= 0,
                   "train step (simpo): gamma must be a finite number >= 0");
      for (size_t j = 0; j < n; j++)
        for (const int s : {r.chosen[j], r.rejected[j]})
          OPTUNE_CHECK(r.batch.offsets[s + 1] - r.batch.offsets[s] > r.batch.prompt_lens[s],
                       "train step (simpo): sequence " + std::to_string(s) +
                           " has no response tokens; SimPO averages over them");
    } else if (uses_reference(r.loss)) {
      const bool cached = !r.ref_chosen.empty() || !r.ref_rejected.empty();
      if (cached) {
        OPTUNE_CHECK(r.ref_chosen.size() == n && r.ref_rejected.size() == n,
                     "train step (" + loss + "): cached reference log-probs need one value per pair (" +
                         std::to_string(n) + ") in both refChosen and refRejected");
        for (size_t j = 0; j < n; j++)
          OPTUNE_CHECK(std::isfinite(r.ref_chosen[j]) && std::isfinite(r.ref_rejected[j]),
                       "train step (" + loss + "): reference log-prob of pair " + std::to_string(j) +
                           " is not finite");
      } else {
        OPTUNE_CHECK(r.ref_model != nullptr, "train step (" + loss +
                                                 "): give cached reference log-probs (refChosen/refRejected) or a "
                                                 "reference model");
        OPTUNE_CHECK(r.ref_model->cfg.vocab_size == m.cfg.vocab_size,
                     "train step: the reference model's vocabulary (" + std::to_string(r.ref_model->cfg.vocab_size) +
                         ") differs from the policy's (" + std::to_string(m.cfg.vocab_size) + ")");
      }
    }
    if (r.loss != LossKind::BT)
      OPTUNE_CHECK(std::isfinite(r.beta) && r.beta > 0, "train step: beta must be a positive number");
    OPTUNE_CHECK(r.label_smoothing == 0.0f ||
                     ((r.loss == LossKind::DPO || r.loss == LossKind::SIMPO) && r.label_smoothing > 0.0f &&
                      r.label_smoothing < 0.5f),
                 "train step (" + loss + "): labelSmoothing " + std::to_string(r.label_smoothing) +
                     " must be in [0, 0.5) and is for DPO and SimPO only");
  }
  for (size_t i = 0; i < r.weights.size(); i++)
    OPTUNE_CHECK(std::isfinite(r.weights[i]) && r.weights[i] >= 0,
                 "train step (" + loss + "): weight " + std::to_string(i) + " is " + std::to_string(r.weights[i]) +
                     "; weights must be finite and >= 0");
  const AdamWConfig& o = r.opt;
  OPTUNE_CHECK(std::isfinite(o.lr) && o.lr >= 0, "train step: lr must be a finite number >= 0");
  OPTUNE_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, "train step: AdamW betas must be in [0, 1)");
  OPTUNE_CHECK(o.eps > 0 && std::isfinite(o.eps), "train step: AdamW eps must be positive");
  OPTUNE_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "train step: weight decay must be >= 0");
  OPTUNE_CHECK(std::isfinite(o.max_grad_norm), "train step: max grad norm must be finite (<= 0 disables clipping)");
}

// The LM head's forward and backward for the whole batch: logp per response row, a loss over sequences, and
// dLoss/dnormf and the head's gradient. When every row's softmax fits logprob_probs_fit's budget, one forward keeps
// it for the backward. Otherwise the rows go in groups of connected sequences (head_row_groups), each within the
// budget: its forward keeps its softmax, its gradients are final once its log-probs are known, and its backward
// uses the kept softmax, instead of a backward that recomputes every logit (GPT-2 124M DPO step: ~+15% in fp32). A
// group over the budget (one long pair) recomputes. Under bf16 the head is packed once for all the groups.
void lm_head_step(Model& m, const TrainRequest& r, const Acts& acts, const std::vector<float>& ref_c,
                  const std::vector<float>& ref_r, float* dnormf, bool bf16, TrainStats& st) {
  const int D = m.cfg.d_model, V = m.cfg.vocab_size;
  const float* w = lm_head_weight(m);
  float* dw = m.lora ? nullptr : m.grads.data() + m.layout.lm_head;  // a LoRA model's head is frozen
  std::vector<float>& probs = workspace_of(m).head_probs;
  ResponseRows rows = response_rows(r.batch);
  for (int32_t& row : rows.src) row = hidden_row(acts, row);
  const int n_rows = static_cast<int>(rows.src.size());
  const bool whole = cpu::logprob_probs_fit(n_rows, V);
  const std::vector<std::vector<int32_t>> groups =
      head_row_groups(r, rows.seq, whole ? n_rows : cpu::logprob_probs_rows(V));
  const std::shared_ptr<const cpu::HeadPacks> packs = bf16 && !whole ? cpu::pack_head_bf16(w, D, V) : nullptr;

  GroupedSequenceLoss loss(r, rows.seq, ref_c, ref_r);
  std::vector<int32_t> src, target;
  std::vector<float> logp, g;
  for (const std::vector<int32_t>& group : groups) {
    const int n = static_cast<int>(group.size());
    gather_rows(group, rows.src, rows.target, src, target);
    logp.resize(n);
    g.resize(n);
    cpu::logprob_forward(logp.data(), acts.normf.data(), src.data(), target.data(), n, w, D, V, &probs, bf16,
                         packs.get());
    loss.group(group, logp.data(), g.data());
    cpu::logprob_backward(dnormf, dw, g.data(), acts.normf.data(), src.data(), target.data(), n, w, D, V, &probs,
                          bf16, packs.get());
  }
  loss.finish(st);
  st.n_tokens = n_rows;
}

}  // namespace

void check_training_memory(const Model& m, bool with_optimizer) {
  if (m.device) return;
  // The first step allocates the gradients and, with an update, AdamW's two moments: 3x the trained weights (all,
  // or a LoRA model's adapters), refused up front when the machine cannot hold them (see host_memory.h).
  const size_t n_params = trainable_params(m).size();
  size_t state_bytes = m.grads.size() == n_params ? 0 : n_params * sizeof(float);
  if (with_optimizer && m.adam_m.size() != n_params) state_bytes += 2 * n_params * sizeof(float);
  check_host_memory(state_bytes, "training state (gradients and AdamW moments of " + std::to_string(n_params) +
                                     " parameters)",
                    "train a smaller model, or train it on a GPU (--device cuda)");
}

TrainStats train_step(Model& m, const TrainRequest& r) {
  validate_request(m, r);
  if (m.device) {
    if (!r.apply_update || r.opt.warmup_steps == 0) return m.device->train_step(m, r);
    TrainRequest at_step = r;  // the device applies lr as given
    at_step.opt = adamw_at_step(m, r.opt);
    return m.device->train_step(m, at_step);
  }
  const Batch& b = r.batch;
  const int D = m.cfg.d_model, n_seq = b.n_seq();
  TrainStats st;
  check_training_memory(m, r.apply_update);

  // reference log-probs (before the policy forward, so its activations are not alive at the same time)
  std::vector<float> ref_c, ref_r;
  reference_logprobs(r, ref_c, ref_r);

  m.grads.resize(trainable_params(m).size());
  cpu::parallel_zero(m.grads.data(), static_cast<int64_t>(m.grads.size()));

  Workspace& ws = workspace_of(m);
  Acts& acts = ws.train;
  const bool bf16 = r.bf16 || m.cpu_bf16;
  transformer_forward(m, b, acts, true, nullptr, bf16, nullptr, true);
  const int T = acts.T;  // rows: fewer than tokens when sequences share their start (SharedRows)
  std::vector<float>& dnormf = ws.dnormf;
  dnormf.resize(static_cast<size_t>(T) * D);
  cpu::parallel_zero(dnormf.data(), static_cast<int64_t>(dnormf.size()));
  st.n_pairs = static_cast<int>(r.chosen.size());

  if (r.loss == LossKind::BT) {
    const float* w = score_weight(m);
    std::vector<size_t> last(n_seq);  // each sequence's last token's hidden state, where its score is read
    std::vector<float> score(n_seq);
    for (int s = 0; s < n_seq; s++) {
      last[s] = static_cast<size_t>(hidden_row(acts, b.offsets[s + 1] - 1)) * D;
      score[s] = score_dot(acts.normf.data() + last[s], w, D);
    }
    const std::vector<double> g = bt_loss(r, score, st);  // dLoss/dscore
    float* dw = m.grads.data() + m.layout.score;
    for (int s = 0; s < n_seq; s++) {
      const size_t row = last[s];
      const float* h = acts.normf.data() + row;
      for (int i = 0; i < D; i++) {
        dnormf[row + i] += static_cast<float>(g[s]) * w[i];
        dw[i] += static_cast<float>(g[s]) * h[i];
      }
    }
  } else {
    lm_head_step(m, r, acts, ref_c, ref_r, dnormf.data(), bf16, st);
  }

  transformer_backward(m, b, acts, dnormf.data());
  if (r.apply_update) {
    st.grad_norm = adamw_update(m, r.opt);
  } else {
    st.grad_norm = grad_norm(m.grads);
  }
  release_large_buffers(ws);
  return st;
}

}  // namespace optune
