// Token picking (pick.h). The passes over the vocabulary are vectorized (max, exp); only the cumulative sums run in
// order, in double. Filtering never sorts the whole vocabulary: top-k partially sorts its k candidates, and top-p
// alone sorts only the tokens of the one bucket where its running mass crosses (SortedCumulative).
#include "pick.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu/vecmath.h"

namespace optune {

namespace {

// Candidate order for filtering: logit descending, then index ascending (a strict total order).
struct Better {
  const float* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

// Inverse-CDF draw over all V weights in index order, in blocks of 64: each block's sum is a vectorized float sum,
// the blocks add up in double, and only the block holding the target is scanned weight by weight (a sequential
// double sum over the whole vocabulary was ~9% of a bf16 sampling run). -1 when rounding between a block's sum and
// its element-wise sum leaves the target unreached.
int32_t draw_in_index_order(const float* e, int V, double u, std::vector<float>& block_sums) {
  constexpr int kBlock = 64;
  const int nb = (V + kBlock - 1) / kBlock;
  block_sums.resize(nb);
  double total = 0.0;
  for (int b = 0; b < nb; b++) {
    float bs = 0.0f;
    const int j1 = std::min(V, (b + 1) * kBlock);
#pragma omp simd reduction(+ : bs)
    for (int j = b * kBlock; j < j1; j++) bs += e[j];
    block_sums[b] = bs;
    total += bs;
  }
  const double target = u * total;
  double acc = 0.0;
  for (int b = 0; b < nb; b++) {
    if (acc + block_sums[b] <= target) {
      acc += block_sums[b];
      continue;
    }
    for (int j = b * kBlock, j1 = std::min(V, (b + 1) * kBlock); j < j1; j++) {
      acc += e[j];
      if (acc > target) return j;
    }
    break;
  }
  return -1;
}

// Running sums of the weights in candidate order without sorting the vocabulary. Tokens are bucketed by their
// distance below the maximum logit at the sampling temperature, 2048 equal buckets over the logits' range (at most
// 64 nats: the last bucket takes everything further down); bucket order is candidate order, so a search adds whole
// buckets until the one where the running mass reaches its target, and sorts only that bucket's tokens to walk it.
class SortedCumulative {
 public:
  static constexpr int kBuckets = 2048;
  static constexpr float kMaxRange = 64.0f;  // nats

  SortedCumulative(const float* z, const float* e, int V, float mx, float inv_t, PickScratch& ps)
      : z_(z), e_(e), V_(V), ps_(ps) {
    ps.bucket.resize(V);
    uint16_t* bucket = ps.bucket.data();
    const float range = std::min(kMaxRange, (mx - cpu::min_of(z, V)) * inv_t);
    const float last = static_cast<float>(kBuckets - 1);
    float scale = range > 0.0f ? inv_t * last / range : 0.0f;
    if (!std::isfinite(scale)) scale = 0.0f;  // a denormal range: one bucket (sorted whole) keeps the order right
#pragma omp simd
    for (int j = 0; j < V; j++) {
      const float d = (mx - z[j]) * scale;  // >= 0: mx is the maximum
      bucket[j] = static_cast<uint16_t>(d < last ? d : last);
    }
    ps.bucket_mass.assign(kBuckets, 0.0);
    for (int j = 0; j < V; j++) ps.bucket_mass[bucket[j]] += e[j];
    for (double m : ps.bucket_mass) total_ += m;
  }

  double total() const { return total_; }

  // The first token in candidate order at which the running mass reaches `target` (>= when inclusive, else >),
  // and the running mass there; {-1, total} when rounding leaves the target unreached.
  std::pair<int32_t, double> find(double target, bool inclusive) const {
    auto reached = [&](double acc) { return inclusive ? acc >= target : acc > target; };
    double acc = 0.0;
    for (int b = 0; b < kBuckets; b++) {
      if (!reached(acc + ps_.bucket_mass[b])) {
        acc += ps_.bucket_mass[b];
        continue;
      }
      std::vector<int32_t>& members = ps_.idx;
      members.clear();
      float lo = INFINITY, hi = -INFINITY;
      for (int j = 0; j < V_; j++)
        if (ps_.bucket[j] == b) members.push_back(j), lo = std::min(lo, z_[j]), hi = std::max(hi, z_[j]);
      if (lo != hi) std::sort(members.begin(), members.end(), Better{z_});  // one tied value: already in index order
      for (int32_t j : members) {
        acc += e_[j];
        if (reached(acc)) return {j, acc};
      }
      // the bucket's walk fell short of its index-order sum by rounding: go on with the next buckets
    }
    return {-1, acc};
  }

 private:
  const float* z_;
  const float* e_;
  int V_;
  PickScratch& ps_;
  double total_ = 0.0;
};

// The last token in candidate order: the smallest logit, the largest index among equals.
int32_t last_candidate(const float* z, int V) {
  int32_t last = 0;
  for (int j = 1; j < V; j++)
    if (z[j] <= z[last]) last = j;
  return last;
}

}  // namespace

Pick pick_token(const float* z, int vocab, const SampleRequest& r, double u, PickScratch& ps) {
  const int V = drawable_vocab(r, vocab);  // everything below draws from z[0, V)
  std::vector<float>& e = ps.e;
  float bad;  // NaN for an infinite or NaN logit
  const float mx = cpu::max_of(z, V, &bad);
  if (bad != 0.0f) return {-1, 0.0f};
  e.resize(V);
  float sum = 0.0f;  // one partial sum per simd lane, combined in a fixed order
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < V; j++) sum += (e[j] = cpu::vexp(z[j] - mx));
  double lse = mx + std::log(static_cast<double>(sum));
  if (V < vocab) {  // the ids past the limit: never drawn, but part of the model's distribution
    const float tail_mx = cpu::max_of(z + V, vocab - V, &bad);
    if (bad != 0.0f) return {-1, 0.0f};
    double tail_sum = 0.0;
    for (int j = V; j < vocab; j++) tail_sum += std::exp(static_cast<double>(z[j] - tail_mx));
    const double tail_lse = tail_mx + std::log(tail_sum);
    lse = std::max(lse, tail_lse) + std::log1p(std::exp(-std::abs(lse - tail_lse)));
  }
  auto model_logp = [&](int32_t t) { return static_cast<float>(z[t] - lse); };
  auto first_max = [&] { return static_cast<int32_t>(std::find(z, z + V, mx) - z); };
  if (r.temperature == 0.0f) return {first_max(), model_logp(first_max())};

  const double inv_t = 1.0 / r.temperature;
  const float inv_tf = static_cast<float>(inv_t);
  const bool top_k = r.top_k > 0 && r.top_k < V, top_p = r.top_p < 1.0f;
  if (!top_k && r.temperature != 1.0f) {  // at temperature 1 the weights are the exp terms of the log-sum-exp
#pragma omp simd
    for (int j = 0; j < V; j++) e[j] = cpu::vexp((z[j] - mx) * inv_tf);
  }
  if (!top_k && !top_p) {
    const int32_t t = draw_in_index_order(e.data(), V, u, ps.block_sums);
    const int32_t tok = t >= 0 ? t : first_max();  // rounding at the very end of the cumulative sum
    return {tok, model_logp(tok)};
  }

  if (!top_k) {
    // top-p alone: the nucleus ends at the first token (candidate order) where the mass reaches top_p of the total
    // (everything when rounding never gets there); the draw inverts the running mass inside it
    const SortedCumulative cum(z, e.data(), V, mx, inv_tf, ps);
    auto [end, mass] = cum.find(r.top_p * cum.total(), true);
    if (end < 0) end = last_candidate(z, V), mass = cum.total();
    int32_t tok = cum.find(u * mass, false).first;
    if (tok < 0 || Better{z}(end, tok)) tok = end;  // rounding past the nucleus' end
    return {tok, model_logp(tok)};
  }

  // top-k (then top-p over the k): the k best candidates in order (a partial sort: for small k most tokens cost
  // one comparison with the heap's top), their weights in double
  std::vector<int32_t>& idx = ps.idx;
  std::vector<double>& prob = ps.prob;
  idx.resize(V);
  std::iota(idx.begin(), idx.end(), 0);
  int n = r.top_k;
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), Better{z});
  prob.resize(n);
  double total = 0.0;
  for (int i = 0; i < n; i++) total += (prob[i] = std::exp((z[idx[i]] - mx) * inv_t));
  if (top_p) {
    // nucleus: the smallest prefix of the most probable tokens whose mass reaches top_p (at least one token)
    double acc = 0.0;
    int keep = n;
    for (int i = 0; i < n; i++) {
      acc += prob[i];
      if (acc >= r.top_p * total) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    total = acc;
  }
  const double target = u * total;
  double acc = 0.0;
  for (int i = 0; i < n; i++) {
    acc += prob[i];
    if (acc > target) return {idx[i], model_logp(idx[i])};
  }
  return {idx[n - 1], model_logp(idx[n - 1])};
}

}  // namespace optune
