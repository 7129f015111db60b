// One training step on CUDA, as core/train.cpp: forward with activations kept, a loss over sequences or pairs,
// exact backward, optional AdamW (as core/adamw.cpp). The engine's train_step validates the request before
// forwarding here. The losses act on a handful of per-sequence scalars, so they run on the host in double exactly
// as on the CPU: the token log-probs (or scores) come down, dLoss/dlogp (or dLoss/dscore) goes back up.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/adamw.h"
#include "core/heads.h"
#include "core/lora.h"
#include "core/losses.h"
#include "device_model.h"
#include "memory.h"
#include "ops.h"
#include "transformer_cuda.h"

namespace optune::cuda {

namespace {

DeviceState& state_of(const Model& m) {
  DeviceState* ds = device_state(m);
  OPTUNE_CHECK(ds != nullptr, "cuda: the model is not on a CUDA device");
  return *ds;
}

// The LM head's forward and backward (as core/train.cpp lm_head_step): groups of connected sequences
// (head_row_groups), each within one logits chunk, run forward and backward on the same logits. A pair too long
// for a chunk makes the whole batch one group that takes the forward-then-recompute passes instead.
void lm_head_step(Model& m, DeviceState& ds, const TrainRequest& r, Call& k, const std::vector<float>& ref_c,
                  const std::vector<float>& ref_r, TrainStats& st) {
  lm_head_weight(m);  // throws for a reward model
  const int D = m.cfg.d_model, V = m.cfg.vocab_size, n_rows = k.n_rows;
  const float* w = ds.params.data() + m.layout.lm_head;
  const uint16_t* w16 = ds.bf16(m.layout.lm_head);  // null under fp32
  float* dw = m.lora ? nullptr : ds.grads.data() + m.layout.lm_head;  // a LoRA model's head is frozen
  const ResponseRows& rows = k.rows;
  const int chunk = logprob_chunk_rows(V);
  const std::vector<std::vector<int32_t>> groups = head_row_groups(r, rows.seq, chunk);
  bool fit = true;
  for (const std::vector<int32_t>& group : groups) fit = fit && group.size() <= static_cast<size_t>(chunk);
  GroupedSequenceLoss loss(r, rows.seq, ref_c, ref_r);
  if (fit) {
    logprob_train_groups(
        k.dnormf, dw, groups,
        [&](const std::vector<int32_t>& group, const float* logp, float* g) { loss.group(group, logp, g); },
        k.acts.normf, rows.src, rows.target, w, D, V, w16);
  } else {
    std::vector<int32_t> all(n_rows);
    std::iota(all.begin(), all.end(), 0);
    std::vector<float> logp(n_rows), g(n_rows);
    logprob_forward(k.logp, k.acts.normf, k.src, k.target, n_rows, w, D, V, 0, w16);
    copy_to_host(logp.data(), k.logp, n_rows * sizeof(float));
    loss.group(all, logp.data(), g.data());
    copy_to_device(k.g, g.data(), n_rows * sizeof(float));
    logprob_backward(k.dnormf, dw, k.g, k.acts.normf, k.src, k.target, n_rows, w, D, V, 0, w16,
                     /*src_distinct=*/true);  // one row per response token
  }
  loss.finish(st);
  st.n_tokens = n_rows;
}

}  // namespace

TrainStats train_step(Model& m, const TrainRequest& r) {
  DeviceState& ds = state_of(m);
  const Batch& b = r.batch;
  const int D = m.cfg.d_model, n_seq = b.n_seq();
  TrainStats st;

  // reference log-probs first (the reference model's activations are not alive during the policy's step); the
  // reference runs wherever it lives (the engine entry point dispatches)
  std::vector<float> ref_c, ref_r;
  reference_logprobs(r, ref_c, ref_r);

  ds.check_adapters(m);
  if (ds.grads.size() != ds.n_trainable) ds.grads = Buffer<float>(ds.n_trainable, "gradients");
  ds.grads.zero();

  const Head head = r.loss == LossKind::BT ? Head::SCORE : Head::LM;
  Call k = prepare_call(ds, m, b, true, head);
  transformer_forward(m, ds, k);
  fill_zero(k.dnormf, static_cast<size_t>(b.n_tokens()) * D * sizeof(float));
  st.n_pairs = static_cast<int>(r.chosen.size());

  if (r.loss == LossKind::BT) {
    score_weight(m);  // throws for a model without a score head
    const float* w = ds.params.data() + m.layout.score;
    score_forward(k.score, k.acts.normf, k.last_rows, n_seq, w, D);
    std::vector<float> score(n_seq);
    copy_to_host(score.data(), k.score, n_seq * sizeof(float));
    const std::vector<double> g = bt_loss(r, score, st);  // dLoss/dscore
    std::vector<float> gf(g.begin(), g.end());
    copy_to_device(k.gscore, gf.data(), n_seq * sizeof(float));
    score_backward(k.dnormf, ds.grads.data() + m.layout.score, k.gscore, k.acts.normf, k.last_rows, n_seq, w, D);
  } else {
    lm_head_step(m, ds, r, k, ref_c, ref_r, st);
  }

  transformer_backward(m, ds, k);
  if (r.apply_update) {
    st.grad_norm = cuda::adamw_update(m, r.opt);
  } else {
    st.grad_norm = std::sqrt(sum_squares(ds.grads.data(), ds.n_trainable));
    m.grads = ds.grads.download();  // engine.h: without an update, m.grads holds the gradients afterwards
  }
  return st;
}

double adamw_update(Model& m, const AdamWConfig& o) {
  DeviceState& ds = state_of(m);
  ds.check_adapters(m);
  OPTUNE_CHECK(ds.grads.size() == ds.n_trainable, "optimizer step before any gradient was computed");
  const double norm = std::sqrt(sum_squares(ds.grads.data(), ds.n_trainable));
  check_grad_norm(norm);
  if (ds.adam_m.size() != ds.n_trainable) {
    ds.adam_m = Buffer<float>(ds.n_trainable, "AdamW first moments");
    ds.adam_v = Buffer<float>(ds.n_trainable, "AdamW second moments");
    ds.adam_m.zero();
    ds.adam_v.zero();
    m.adam_step = 0;
  }
  const AdamWScalars s = adamw_scalars(m, o, norm);
  float* params = ds.trainable();  // every weight, or a LoRA model's adapters
  for (const ParamInfo& t : trainable_layout(m).tensors)
    adamw_step(params + t.offset, ds.grads.data() + t.offset, ds.adam_m.data() + t.offset,
               ds.adam_v.data() + t.offset, t.numel, adamw_decay(o, t), o.beta1, o.beta2, o.eps, s.step_size,
               s.bc2_sqrt, s.clip);
  ds.refresh_trained_bf16();
  ds.host_stale = true;
  return norm;
}

}  // namespace optune::cuda
