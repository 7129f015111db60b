// The two heads on top of the final hidden states: the LM head read at response tokens (log-probs), and the reward
// model's scalar score read at each sequence's last token. Shared by inference and training.
#pragma once
#include <cstdint>
#include <vector>

#include "batch.h"
#include "model.h"

namespace optune {

// Row indices for the LM head: response token at packed position p is predicted from the hidden state at p - 1.
struct ResponseRows {
  std::vector<int32_t> src;     // hidden-state row
  std::vector<int32_t> target;  // token id to score
  std::vector<int32_t> seq;     // which sequence the row belongs to
};
ResponseRows response_rows(const Batch& b);
// The src and target of rows group[0], group[1], ... (a head group's rows, gathered for one head call).
inline void gather_rows(const std::vector<int32_t>& group, const std::vector<int32_t>& src,
                        const std::vector<int32_t>& target, std::vector<int32_t>& group_src,
                        std::vector<int32_t>& group_target) {
  group_src.resize(group.size());
  group_target.resize(group.size());
  for (size_t k = 0; k < group.size(); k++) group_src[k] = src[group[k]], group_target[k] = target[group[k]];
}

const float* lm_head_weight(const Model& m);  // throws for a reward model (it has no LM head)
const float* score_weight(const Model& m);    // throws for a policy (it has no score head)

// The reward score read off one hidden state: h . w (accumulated in double).
inline float score_dot(const float* h, const float* w, int d) {
  double acc = 0.0;
  for (int i = 0; i < d; i++) acc += static_cast<double>(h[i]) * w[i];
  return static_cast<float>(acc);
}

}  // namespace optune
