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

TEST(prompts_behind_one_system_prompt_keep_their_own_groups) {
  // two chat prompts that start with the same 12 template tokens, 2 responses each: each prompt's 30 tokens are
  // shared by its own two responses (not just the 12 by all four)
  testing::Rand r(8);
  std::vector<int32_t> system(12), p1, p2;
  for (auto& t : system) t = r.below(64);
  p1 = p2 = system;
  for (int i = 0; i < 18; i++) p1.push_back(r.below(64)), p2.push_back(r.below(64));
  p2[12] = (p1[12] + 1) % 64;  // the prompts part right after the system prompt
  Batch b;
  b.offsets.push_back(0);
  for (const auto* p : {&p1, &p1, &p2, &p2}) {
    b.tokens.insert(b.tokens.end(), p->begin(), p->end());
    for (int t = 0; t < 5; t++) b.tokens.push_back(r.below(64));
    b.offsets.push_back(static_cast<int32_t>(b.tokens.size()));
    b.prompt_lens.push_back(30);
  }
  const SharedRows sr = share_prefixes(b);
  CHECK_MSG(sr.T <= b.n_tokens() - 2 * 30, "tree rows " + std::to_string(sr.T) + " for " +
                                               std::to_string(b.n_tokens()) + " tokens");
  CHECK(sr.row_of[b.offsets[1] + 29] == sr.row_of[b.offsets[0] + 29]);
  CHECK(sr.row_of[b.offsets[3] + 29] == sr.row_of[b.offsets[2] + 29]);
  // a lone response of another prompt first ([p0, p1, p1]): p1's two still share their whole prompt
  Batch lone;
  lone.offsets = {0};
  for (int s : {2, 0, 1}) {
    lone.tokens.insert(lone.tokens.end(), b.tokens.begin() + b.offsets[s], b.tokens.begin() + b.offsets[s + 1]);
    lone.offsets.push_back(static_cast<int32_t>(lone.tokens.size()));
    lone.prompt_lens.push_back(30);
  }
  const SharedRows sl = share_prefixes(lone);
  CHECK(sl.T > 0 && sl.row_of[lone.offsets[2] + 29] == sl.row_of[lone.offsets[1] + 29]);
}

TEST(shared_forward_gives_the_plain_log_probs_and_scores) {
  for (auto cfg : testing::tiny_families()) {
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
