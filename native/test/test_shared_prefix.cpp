// Forward-only calls that run the leading tokens shared by consecutive sequences once (share_prefixes): the tree's
// rows, and log-probs and reward scores equal to the plain forward's, in both families, with a lone sequence, a
// run that shares less than the minimum and sequences that share all but their last token.
#include <cmath>
#include <cstdlib>
#include <string>

#include "core/engine.h"
#include "core/transformer.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;

namespace {

// Prompt a (20 tokens) with 3 responses, a lone sequence, prompt b (9 tokens) with 2 responses, prompt c (5
// tokens, under the minimum of 8) with 2 responses, and two sequences equal but for their last token.
Batch prompt_groups(int vocab) {
  testing::Rand r(7);
  Batch b;
  b.offsets.push_back(0);
  auto seq = [&](const std::vector<int32_t>& prompt, int response) {
    b.tokens.insert(b.tokens.end(), prompt.begin(), prompt.end());
    for (int t = 0; t < response; t++) b.tokens.push_back(r.below(vocab));
    b.offsets.push_back(static_cast<int32_t>(b.tokens.size()));
    b.prompt_lens.push_back(static_cast<int32_t>(prompt.size()));
  };
  auto prompt = [&](int n) {
    std::vector<int32_t> p(n);
    for (auto& t : p) t = r.below(vocab);
    return p;
  };
  const auto a = prompt(20), lone = prompt(12), pb = prompt(9), pc = prompt(5), same = prompt(15);
  seq(a, 6), seq(a, 3), seq(a, 9);
  seq(lone, 4);
  seq(pb, 5), seq(pb, 2);
  seq(pc, 4), seq(pc, 4);
  seq(same, 1), seq(same, 1);
  return b;
}

}  // namespace

TEST(tree_rows_share_each_run_once) {
  const Batch b = prompt_groups(64);
  const SharedRows sr = share_prefixes(b);
  // shared: a's 20 prompt tokens (+ any response tokens all three draw alike) twice, pb's 9 once, same's 15 once
  CHECK(sr.T > 0 && sr.T <= b.n_tokens() - 2 * 20 - 9 - 15);
  for (int s = 0; s < b.n_seq(); s++)
    for (int i = b.offsets[s]; i < b.offsets[s + 1]; i++) {
      CHECK(sr.tokens[sr.row_of[i]] == b.tokens[i]);
      CHECK(sr.pos[sr.row_of[i]] == i - b.offsets[s]);
    }
  // every tree row has exactly one owner
  std::vector<int> owners(sr.T, 0);
  for (int i = 0; i < b.n_tokens(); i++) owners[sr.row_of[i]] += sr.owner[i];
  for (int n : owners) CHECK(n == 1);
  // prompt c shares 5 tokens only: its two sequences keep their own rows
  CHECK(sr.row_of[b.offsets[6]] != sr.row_of[b.offsets[7]]);
  setenv("OPTUNE_SHARE_PREFIX", "0", 1);
  CHECK(share_prefixes(b).T == 0);
  unsetenv("OPTUNE_SHARE_PREFIX");
}

TEST(shared_forward_gives_the_plain_log_probs_and_scores) {
  for (auto cfg : {testing::tiny_gpt2(), testing::tiny_llama()}) {
    const Batch b = prompt_groups(cfg.vocab_size);
    const std::string arch = arch_name(cfg.arch);
    auto m = make_model(cfg);
    testing::randomize(*m, 41, 0.5f);
    const LogprobResult shared = compute_logprobs(*m, b);
    setenv("OPTUNE_SHARE_PREFIX", "0", 1);
    const LogprobResult plain = compute_logprobs(*m, b);
    unsetenv("OPTUNE_SHARE_PREFIX");
    CHECK(shared.token_logps.size() == plain.token_logps.size());
    double worst = 0;
    for (size_t i = 0; i < plain.token_logps.size(); i++)
      worst = std::max(worst, (double)std::fabs(shared.token_logps[i] - plain.token_logps[i]));
    CHECK_MSG(worst < 1e-5, arch + ": worst |shared - plain| log-prob " + std::to_string(worst));

    cfg.reward_model = true;
    auto rm = make_model(cfg);
    testing::randomize(*rm, 42, 0.5f);
    const std::vector<float> s_shared = compute_scores(*rm, b);
    setenv("OPTUNE_SHARE_PREFIX", "0", 1);
    const std::vector<float> s_plain = compute_scores(*rm, b);
    unsetenv("OPTUNE_SHARE_PREFIX");
    for (size_t s = 0; s < s_plain.size(); s++)
      CHECK_MSG(std::fabs(s_shared[s] - s_plain[s]) < 1e-5 * (1 + std::fabs(s_plain[s])),
                arch + ": score " + std::to_string(s) + " " + std::to_string(s_shared[s]) + " vs " +
                    std::to_string(s_plain[s]));
  }
}

TEST_MAIN()
