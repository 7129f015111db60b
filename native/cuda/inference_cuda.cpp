// Forward-only operations on CUDA, as core/inference.cpp: sequence log-probs, full logits (debugging), reward
// scores. The engine's entry points validate the batch and the head before forwarding here.
#include <vector>

#include "core/error.h"
#include "device_model.h"
#include "memory.h"
#include "ops.h"
#include "transformer_cuda.h"

namespace optune::cuda {

static DeviceState& state_of(const Model& m) {
  DeviceState* ds = device_state(m);
  OPTUNE_CHECK(ds != nullptr, "cuda: the model is not on a CUDA device");
  return *ds;
}

LogprobResult compute_logprobs(const Model& m, const Batch& b) {
  DeviceState& ds = state_of(m);
  Call k = prepare_call(ds, m, b, false, Head::LM);
  transformer_forward(m, ds, k);
  logprob_forward(k.logp, k.acts.normf, k.src, k.target, k.n_rows, ds.params.data() + m.layout.lm_head,
                  m.cfg.d_model, m.cfg.vocab_size, 0, ds.bf16(m.layout.lm_head));
  LogprobResult out;
  out.token_logps.resize(k.n_rows);
  copy_to_host(out.token_logps.data(), k.logp, k.n_rows * sizeof(float));
  out.seq_logps.assign(b.n_seq(), 0.0f);
  for (int r = 0; r < k.n_rows; r++) out.seq_logps[k.rows.seq[r]] += out.token_logps[r];
  return out;
}

std::vector<float> compute_logits(const Model& m, const Batch& b) {
  DeviceState& ds = state_of(m);
  Call k = prepare_call(ds, m, b, false, Head::LM);
  transformer_forward(m, ds, k);
  const int T = b.n_tokens(), V = m.cfg.vocab_size, D = m.cfg.d_model;
  Buffer<float> logits(static_cast<size_t>(T) * V, "full logits (compute_logits)");
  gemm(false, true, T, V, D, 1.0f, k.acts.normf, D, ds.params.data() + m.layout.lm_head, D, 0.0f, logits.data(), V);
  return logits.download();
}

std::vector<float> compute_scores(const Model& m, const Batch& b) {
  DeviceState& ds = state_of(m);
  Call k = prepare_call(ds, m, b, false, Head::SCORE);
  transformer_forward(m, ds, k);
  const int n = b.n_seq();
  score_forward(k.score, k.acts.normf, k.last_rows, n, ds.params.data() + m.layout.score, m.cfg.d_model);
  std::vector<float> scores(n);
  copy_to_host(scores.data(), k.score, n * sizeof(float));
  return scores;
}

}  // namespace optune::cuda
