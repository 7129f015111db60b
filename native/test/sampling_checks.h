// What the CPU and the CUDA sampler tests share: requests from token lists, prompt+response batches for scoring the
// samples with a full forward, and the statistical checks of temperature, top-k and top-p, run with either sampler.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/engine.h"
#include "test_helpers.h"
#include "testing.h"

namespace testing {

inline const std::vector<std::vector<int32_t>> kPrompts = {{1, 5, 7}, {2, 3, 4, 8, 9, 10, 11}, {6}};

inline optune::SampleRequest prompts_request(const std::vector<std::vector<int32_t>>& prompts, int k, int max_new) {
  optune::SampleRequest r;
  r.prompt_offsets.push_back(0);
  for (const auto& p : prompts) {
    r.prompt_tokens.insert(r.prompt_tokens.end(), p.begin(), p.end());
    r.prompt_offsets.push_back(static_cast<int32_t>(r.prompt_tokens.size()));
  }
  r.n_samples = k;
  r.max_new_tokens = max_new;
  r.seed = 1234;
  return r;
}

// Prompt + response sequences as a batch, to score the sampled tokens with a full forward.
inline optune::Batch as_batch(const optune::SampleRequest& req, const optune::SampleResult& res) {
  optune::Batch b;
  b.offsets.push_back(0);
  const int K = req.n_samples;
  for (size_t s = 0; s + 1 < res.offsets.size(); s++) {
    const int i = static_cast<int>(s) / K;
    b.tokens.insert(b.tokens.end(), req.prompt_tokens.begin() + req.prompt_offsets[i],
                    req.prompt_tokens.begin() + req.prompt_offsets[i + 1]);
    b.prompt_lens.push_back(req.prompt_offsets[i + 1] - req.prompt_offsets[i]);
    b.tokens.insert(b.tokens.end(), res.tokens.begin() + res.offsets[s], res.tokens.begin() + res.offsets[s + 1]);
    b.offsets.push_back(static_cast<int32_t>(b.tokens.size()));
  }
  return b;
}

using SampleFn = std::function<optune::SampleResult(const optune::Model&, const optune::SampleRequest&)>;

// Empirical distribution of the first sampled token over n draws vs the expected one: total variation distance.
inline double first_token_tv(const SampleFn& sample, const optune::Model& m, optune::SampleRequest req,
                             const std::vector<double>& expected, int n) {
  req.n_samples = n;
  req.max_new_tokens = 1;
  const optune::SampleResult res = sample(m, req);
  std::vector<double> freq(expected.size(), 0.0);
  for (int32_t t : res.tokens) freq[t] += 1.0 / n;
  double tv = 0;
  for (size_t j = 0; j < expected.size(); j++) tv += 0.5 * std::fabs(freq[j] - expected[j]);
  return tv;
}

// The model's logits at every position of kPrompts[0] ([3, V]: the last row is its first sampled token's).
inline std::vector<float> first_prompt_logits(const optune::Model& m) {
  optune::Batch b;
  b.tokens = kPrompts[0];
  b.offsets = {0, 3};
  b.prompt_lens = {3};
  return optune::compute_logits(m, b);
}

// The first token's distribution under temperature (1, 0.5, 2), top-k 3 and top-p 0.6 against the softmax of the
// model's logits (total variation < 0.02 over 40000 draws), and no token outside the nucleus in 5000 more. `m` is
// tiny_gpt2 randomized (seed 35, scale 0.8). Returns the top-p request of the last check, for more checks on it.
inline optune::SampleRequest check_sampling_definitions(const optune::Model& m, const SampleFn& sample) {
  optune::SampleRequest req = prompts_request({kPrompts[0]}, 1, 1);
  const std::vector<float> logits = first_prompt_logits(m);
  const int V = m.cfg.vocab_size;
  const float* z = logits.data() + 2 * V;
  std::vector<int> order(V);
  for (int j = 0; j < V; j++) order[j] = j;
  std::sort(order.begin(), order.end(), [&](int a, int c) { return z[a] > z[c]; });
  auto softmax = [&](float temp, const std::vector<int>& keep) {
    std::vector<double> p(V, 0.0);
    double tot = 0;
    for (int j : keep) tot += (p[j] = std::exp(z[j] / temp));
    for (auto& x : p) x /= tot;
    return p;
  };
  const int n = 40000;  // TV noise ~ sqrt(V / n) / 2 ~ 1e-2
  const std::vector<int> all(order);
  for (float temp : {1.0f, 0.5f, 2.0f}) {
    req.temperature = temp;
    const double tv = first_token_tv(sample, m, req, softmax(temp, all), n);
    CHECK_MSG(tv < 0.02, "temperature " + std::to_string(temp) + ": tv " + std::to_string(tv));
  }
  req.temperature = 1.0f;
  req.top_k = 3;
  const std::vector<int> top3(order.begin(), order.begin() + 3);
  double tv = first_token_tv(sample, m, req, softmax(1.0f, top3), n);
  CHECK_MSG(tv < 0.02, "top-k: tv " + std::to_string(tv));
  // top-p: the smallest most-probable prefix whose mass reaches p
  req.top_k = 0;
  req.top_p = 0.6f;
  const std::vector<double> full = softmax(1.0f, all);
  std::vector<int> nucleus;
  double mass = 0;
  for (int j : order) {
    nucleus.push_back(j);
    mass += full[j];
    if (mass >= 0.6) break;
  }
  CHECK(nucleus.size() < static_cast<size_t>(V));
  tv = first_token_tv(sample, m, req, softmax(1.0f, nucleus), n);
  CHECK_MSG(tv < 0.02, "top-p: tv " + std::to_string(tv));
  // tokens outside the nucleus never appear
  req.n_samples = 5000;
  const optune::SampleResult res = sample(m, req);
  for (int32_t t : res.tokens) CHECK(std::find(nucleus.begin(), nucleus.end(), t) != nucleus.end());
  return req;
}

// SampleRequest::vocab_limit at L = V / 2 on `m` (tiny_gpt2 randomized, seed 35, scale 0.8): greedy takes the
// first maximum below L; the first token's distribution is the softmax of the logits below L at temperatures 1 and
// 0.7 (total variation < 0.02 over 40000 draws); with top-k, top-p and longer responses no token reaches L and the
// log-probs returned are over the whole vocabulary (a full forward's, within logp_tol); L = V samples as no limit.
inline void check_vocab_limit(const optune::Model& m, const SampleFn& sample, double logp_tol) {
  optune::SampleRequest req = prompts_request({kPrompts[0]}, 1, 1);
  const std::vector<float> logits = first_prompt_logits(m);
  const int V = m.cfg.vocab_size, L = V / 2;
  const float* z = logits.data() + 2 * V;
  req.vocab_limit = L;
  req.temperature = 0.0f;
  CHECK(sample(m, req).tokens[0] == std::max_element(z, z + L) - z);
  for (float temp : {1.0f, 0.7f}) {
    req.temperature = temp;
    std::vector<double> p(V, 0.0);
    double tot = 0;
    for (int j = 0; j < L; j++) tot += (p[j] = std::exp(z[j] / temp));
    for (auto& x : p) x /= tot;
    const double tv = first_token_tv(sample, m, req, p, 40000);
    CHECK_MSG(tv < 0.02, "vocab limit at temperature " + std::to_string(temp) + ": tv " + std::to_string(tv));
  }
  optune::SampleRequest longer = prompts_request(kPrompts, 4, 12);
  longer.vocab_limit = L;
  for (int mode = 0; mode < 3; mode++) {
    longer.top_k = mode == 1 ? 20 : 0;
    longer.top_p = mode == 2 ? 0.9f : 1.0f;
    const optune::SampleResult res = sample(m, longer);
    for (int32_t t : res.tokens) CHECK(t < L);
    const optune::LogprobResult full = optune::compute_logprobs(m, as_batch(longer, res));
    double worst = 0;
    for (size_t i = 0; i < res.token_logps.size(); i++)
      worst = std::max(worst, (double)std::fabs(full.token_logps[i] - res.token_logps[i]));
    CHECK_MSG(worst < logp_tol, "vocab limit, mode " + std::to_string(mode) + ": worst |logp - full| = " +
                                    std::to_string(worst));
  }
  longer.top_k = 0, longer.top_p = 1.0f;
  longer.vocab_limit = V;
  const optune::SampleResult at_v = sample(m, longer);
  longer.vocab_limit = 0;
  CHECK(sample(m, longer).tokens == at_v.tokens);
}

}  // namespace testing
