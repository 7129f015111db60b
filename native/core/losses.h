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

// SFT, DPO or IPO on the sequences' summed response log-probs (n_rows response tokens in all): fills st and
// returns dLoss/d(sequence log-prob) per sequence, which every response token of the sequence receives.
std::vector<double> sequence_loss(const TrainRequest& r, const std::vector<double>& seq_logp, int n_rows,
                                  const std::vector<float>& ref_chosen, const std::vector<float>& ref_rejected,
                                  TrainStats& st);

}  // namespace optune
