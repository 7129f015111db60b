// Forward-only operations: sequence log-probs, full logits (debugging), reward-model scores.
#include <cstring>

#include "cpu/gemm.h"
#include "cpu/ops.h"
#include "device.h"
#include "engine.h"
#include "error.h"
#include "heads.h"
#include "host_memory.h"
#include "transformer.h"

namespace optune {

ResponseRows response_rows(const Batch& b) {
  ResponseRows r;
  const int n = b.n_response_tokens();
  r.src.reserve(n);
  r.target.reserve(n);
  r.seq.reserve(n);
  for (int s = 0; s < b.n_seq(); s++)
    for (int p = b.offsets[s] + b.prompt_lens[s]; p < b.offsets[s + 1]; p++) {
      r.src.push_back(p - 1);
      r.target.push_back(b.tokens[p]);
      r.seq.push_back(s);
    }
  return r;
}

const float* lm_head_weight(const Model& m) {
  OPTUNE_CHECK(m.layout.lm_head != kAbsent,
               "this model is a reward model (" + hf_architecture_name(m.cfg) +
                   "): it has a score head, not an LM head; use scores() instead of log-probs or sampling");
  return m.params.data() + m.layout.lm_head;
}

const float* score_weight(const Model& m) {
  OPTUNE_CHECK(m.layout.score != kAbsent, "this model (" + hf_architecture_name(m.cfg) +
                                              ") has no reward score head; load a *ForSequenceClassification "
                                              "checkpoint or create the model with rewardModel: true");
  return m.params.data() + m.layout.score;
}

LogprobResult compute_logprobs(const Model& m, const Batch& b) {
  validate_batch(b, m.cfg);
  const float* w = lm_head_weight(m);
  if (m.device) return m.device->logprobs(m, b);
  Acts& acts = workspace_of(m).infer;
  transformer_forward(m, b, acts, false, nullptr, false, nullptr, true);
  ResponseRows rows = response_rows(b);
  for (int32_t& r : rows.src) r = hidden_row(acts, r);
  LogprobResult out;
  out.token_logps.resize(rows.src.size());
  cpu::logprob_forward(out.token_logps.data(), acts.normf.data(), rows.src.data(), rows.target.data(),
                       static_cast<int>(rows.src.size()), w, m.cfg.d_model, m.cfg.vocab_size);
  out.seq_logps.assign(b.n_seq(), 0.0f);
  for (size_t r = 0; r < rows.seq.size(); r++) out.seq_logps[rows.seq[r]] += out.token_logps[r];
  release_large_buffers(workspace_of(m));
  return out;
}

std::vector<float> compute_logits(const Model& m, const Batch& b) {
  validate_batch(b, m.cfg);
  const float* w = lm_head_weight(m);
  if (m.device) return m.device->logits(m, b);
  check_host_memory(static_cast<size_t>(b.n_tokens()) * m.cfg.vocab_size * sizeof(float),
                    "logits: " + std::to_string(b.n_tokens()) + " tokens x " + std::to_string(m.cfg.vocab_size) +
                        " vocabulary entries",
                    "ask for fewer tokens per call (logprobs() needs no logits)");
  Acts& acts = workspace_of(m).infer;
  transformer_forward(m, b, acts, false);
  std::vector<float> logits(static_cast<size_t>(b.n_tokens()) * m.cfg.vocab_size);
  cpu::gemm(false, true, b.n_tokens(), m.cfg.vocab_size, m.cfg.d_model, 1.0f, acts.normf.data(), m.cfg.d_model, w,
            m.cfg.d_model, 0.0f, logits.data(), m.cfg.vocab_size);
  return logits;
}

std::vector<float> compute_scores(const Model& m, const Batch& b) {
  validate_batch(b, m.cfg);
  const float* w = score_weight(m);
  if (m.device) return m.device->scores(m, b);
  Acts& acts = workspace_of(m).infer;
  transformer_forward(m, b, acts, false, nullptr, false, nullptr, true);
  std::vector<float> scores(b.n_seq());
  const int D = m.cfg.d_model;
  for (int s = 0; s < b.n_seq(); s++) {
    const float* h = acts.normf.data() + static_cast<size_t>(hidden_row(acts, b.offsets[s + 1] - 1)) * D;
    scores[s] = score_dot(h, w, D);
  }
  release_large_buffers(workspace_of(m));
  return scores;
}

}  // namespace optune
