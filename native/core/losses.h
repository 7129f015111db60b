// The training losses on per-sequence quantities, shared by the CPU (train.cpp) and CUDA (cuda/train_cuda.cpp)
// trainers: they differ only in how the per-sequence log-probs or scores are computed and where the per-token
// gradients go. Everything here is a handful of scalars per sequence, computed in double on the host.
#pragma once
#include <vector>

#include "engine.h"

namespace optune {

// Reference log-probs per pair: the cached ones, or (DPO/IPO without them) from r.ref_model, run wherever it lives.
void reference_logprobs(const TrainRequest& r, std::vector<float>& ref_chosen, std::vector<float>& ref_rejected);

// Bradley-Terry on the sequences' scores: fills st (loss, rewards = mean scores, accuracy) and returns
// dLoss/dscore per sequence.
std::vector<double> bt_loss(const TrainRequest& r, const std::vector<float>& score, TrainStats& st);

// The LM head's response rows (heads.h response_rows: their sequences in rows_seq) in groups for a step that runs
// the head group by group: a sequence's loss gradient depends only on the sequences its pairs connect it to (none
// for SFT), so once a group's log-probs are known its gradients are final. Connected sequences stay together, in
// order of their first row, up to max_rows per group (each group's rows in batch order); a connected set larger than that is a group
// of its own.
std::vector<std::vector<int32_t>> head_row_groups(const TrainRequest& r, const std::vector<int32_t>& rows_seq,
                                                  int max_rows);

// sequence_loss for a head run group by group: each group's log-probs are added to their sequences', and the
// group's dLoss/dlogp per row follow (final, since the group holds every sequence they depend on).
class GroupedSequenceLoss {
 public:
  GroupedSequenceLoss(const TrainRequest& r, const std::vector<int32_t>& rows_seq, const std::vector<float>& ref_c,
                      const std::vector<float>& ref_r)
      : r_(r), rows_seq_(rows_seq), ref_c_(ref_c), ref_r_(ref_r), seq_logp_(r.batch.n_seq(), 0.0) {}
  // logp[k] of row group[k] in; g[k] = dLoss/dlogp of that row out.
  void group(const std::vector<int32_t>& group, const float* logp, float* g);
  // Once every group is in: the step's statistics over every pair (sequence_loss's).
  void finish(TrainStats& st) const;

 private:
  const TrainRequest& r_;
  const std::vector<int32_t>& rows_seq_;
  const std::vector<float>&ref_c_, &ref_r_;
  std::vector<double> seq_logp_;
};

// SFT, DPO or IPO on the sequences' summed response log-probs (n_rows response tokens in all): fills st and
// returns dLoss/d(sequence log-prob) per sequence, which every response token of the sequence receives.
std::vector<double> sequence_loss(const TrainRequest& r, const std::vector<double>& seq_logp, int n_rows,
                                  const std::vector<float>& ref_chosen, const std::vector<float>& ref_rejected,
                                  TrainStats& st);

}  // namespace optune
