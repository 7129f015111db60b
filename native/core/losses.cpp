#include "losses.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "error.h"

namespace optune {

namespace {

// log(1 + exp(x)) without overflow
double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

double weight(const TrainRequest& r, size_t i) { return r.weights.empty() ? 1.0 : static_cast<double>(r.weights[i]); }

}  // namespace

void reference_logprobs(const TrainRequest& r, std::vector<float>& ref_chosen, std::vector<float>& ref_rejected) {
  ref_chosen = r.ref_chosen;
  ref_rejected = r.ref_rejected;
  if (!uses_reference(r.loss) || !ref_chosen.empty()) return;
  LogprobResult ref;
  try {
    ref = compute_logprobs(*r.ref_model, r.batch);
  } catch (const Error& e) {  // say which model refused the batch: the policy's own checks passed
    throw Error(std::string("the reference model: ") + e.what());
  }
  for (size_t j = 0; j < r.chosen.size(); j++) {
    ref_chosen.push_back(ref.seq_logps[r.chosen[j]]);
    ref_rejected.push_back(ref.seq_logps[r.rejected[j]]);
  }
}

std::vector<double> bt_loss(const TrainRequest& r, const std::vector<float>& score, TrainStats& st) {
  const size_t n_pairs = r.chosen.size();
  std::vector<double> g(score.size(), 0.0);
  for (size_t j = 0; j < n_pairs; j++) {
    const double diff = static_cast<double>(score[r.chosen[j]]) - score[r.rejected[j]];
    st.loss += weight(r, j) * softplus(-diff) / n_pairs;
    const double dl = -weight(r, j) * sigmoid(-diff) / n_pairs;
    g[r.chosen[j]] += dl;
    g[r.rejected[j]] -= dl;
    st.chosen_reward += score[r.chosen[j]] / static_cast<double>(n_pairs);
    st.rejected_reward += score[r.rejected[j]] / static_cast<double>(n_pairs);
    st.accuracy += (diff > 0) / static_cast<double>(n_pairs);
  }
  st.margin = st.chosen_reward - st.rejected_reward;
  return g;
}

std::vector<std::vector<int32_t>> head_row_groups(const TrainRequest& r, const std::vector<int32_t>& rows_seq,
                                                  int max_rows) {
  const int n_seq = r.batch.n_seq();
  std::vector<int32_t> root(n_seq);
  std::iota(root.begin(), root.end(), 0);
  auto find = [&](int32_t s) {
    while (root[s] != s) s = root[s] = root[root[s]];
    return s;
  };
  if (r.loss != LossKind::SFT)
    for (size_t j = 0; j < r.chosen.size(); j++) root[find(r.chosen[j])] = find(r.rejected[j]);
  std::vector<std::vector<int32_t>> sets(n_seq);  // rows by connected set (its root), in row order
  std::vector<int32_t> order;                     // roots by first row
  for (size_t i = 0; i < rows_seq.size(); i++) {
    const int32_t c = find(rows_seq[i]);
    if (sets[c].empty()) order.push_back(c);
    sets[c].push_back(static_cast<int32_t>(i));
  }
  std::vector<std::vector<int32_t>> groups;
  for (int32_t c : order) {
    if (groups.empty() || groups.back().size() + sets[c].size() > static_cast<size_t>(max_rows)) groups.emplace_back();
    groups.back().insert(groups.back().end(), sets[c].begin(), sets[c].end());
  }
  for (std::vector<int32_t>& g : groups) std::sort(g.begin(), g.end());  // each group's rows in batch order
  return groups;
}

void GroupedSequenceLoss::group(const std::vector<int32_t>& group, const float* logp, float* g) {
  for (size_t k = 0; k < group.size(); k++) seq_logp_[rows_seq_[group[k]]] += logp[k];
  TrainStats unused;  // the entries of sequences in later groups are not final yet
  const int n_rows = static_cast<int>(rows_seq_.size());
  const std::vector<double> g_seq = sequence_loss(r_, seq_logp_, n_rows, ref_c_, ref_r_, unused);
  for (size_t k = 0; k < group.size(); k++) g[k] = static_cast<float>(g_seq[rows_seq_[group[k]]]);
}

void GroupedSequenceLoss::finish(TrainStats& st) const {
  sequence_loss(r_, seq_logp_, static_cast<int>(rows_seq_.size()), ref_c_, ref_r_, st);
}

std::vector<double> sequence_loss(const TrainRequest& r, const std::vector<double>& seq_logp, int n_rows,
                                  const std::vector<float>& ref_chosen, const std::vector<float>& ref_rejected,
                                  TrainStats& st) {
  const int n_seq = static_cast<int>(seq_logp.size());
  std::vector<double> g(n_seq, 0.0);
  if (r.loss == LossKind::SFT) {
    for (int s = 0; s < n_seq; s++) g[s] = -weight(r, s) / n_rows;
    for (int s = 0; s < n_seq; s++) st.loss += g[s] * seq_logp[s];
    return g;
  }
  const size_t n_pairs = r.chosen.size();
  const double beta = r.beta;
  // Each sequence's term x and dx/dlogp: logp - ref (scale 1) for the reference losses, SimPO's mean token log-prob
  // logp / n (scale 1 / n) without a reference.
  const bool simpo = r.loss == LossKind::SIMPO;
  auto term = [&](int s, const std::vector<float>& ref, size_t j, double& scale) {
    if (!simpo) {
      scale = 1.0;
      return seq_logp[s] - ref[j];
    }
    scale = 1.0 / (r.batch.offsets[s + 1] - r.batch.offsets[s] - r.batch.prompt_lens[s]);
    return seq_logp[s] * scale;
  };
  for (size_t j = 0; j < n_pairs; j++) {
    double scale_c, scale_r;
    const double xc = term(r.chosen[j], ref_chosen, j, scale_c), xr = term(r.rejected[j], ref_rejected, j, scale_r);
    const double rc = beta * xc, rr = beta * xr;
    const double h = xc - xr;  // DPO: (pi_c - ref_c) - (pi_r - ref_r)
    double l, dl_dh;
    if (r.loss == LossKind::DPO || simpo) {  // on z = beta h - gamma (gamma = 0 for DPO), smoothed by eps
      const double eps = r.label_smoothing, z = beta * h - (simpo ? r.simpo_gamma : 0.0);
      l = (1.0 - eps) * softplus(-z) + eps * softplus(z);
      dl_dh = beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z));
    } else if (r.loss == LossKind::HINGE) {  // max(0, 1 - beta h); the kink's subgradient is 0
      l = std::max(0.0, 1.0 - beta * h);
      dl_dh = beta * h < 1.0 ? -beta : 0.0;
    } else {  // IPO: (h - 1/(2 beta))^2
      const double e = h - 1.0 / (2.0 * beta);
      l = e * e;
      dl_dh = 2.0 * e;
    }
    st.loss += weight(r, j) * l / n_pairs;
    g[r.chosen[j]] += weight(r, j) * dl_dh * scale_c / n_pairs;
    g[r.rejected[j]] -= weight(r, j) * dl_dh * scale_r / n_pairs;
    st.chosen_reward += rc / n_pairs;
    st.rejected_reward += rr / n_pairs;
    st.accuracy += (rc > rr) / static_cast<double>(n_pairs);
  }
  st.margin = st.chosen_reward - st.rejected_reward;
  return g;
}

}  // namespace optune
