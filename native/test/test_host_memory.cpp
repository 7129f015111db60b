// Requests too large for the machine are refused with their size and a fix before anything is allocated: under
// Linux's overcommit the allocation itself would succeed and the kernel's OOM killer would end the process.
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/engine.h"
#include "core/host_memory.h"
#include "core/transformer.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;

TEST(available_memory_is_known_on_linux) {
  const size_t avail = available_host_bytes();
  CHECK(avail > (size_t(64) << 20));  // this test process runs: more than 64 MiB is free
  CHECK(avail < (size_t(1) << 50));   // and not a petabyte
  check_host_memory(size_t(1) << 20, "one MiB", "");  // fits: no error
  CHECK_THROWS(check_host_memory(avail + (size_t(8) << 30), "a test request", "ask for less"),
               "a test request: ");
  CHECK_THROWS(check_host_memory(avail + (size_t(8) << 30), "a test request", "ask for less"),
               " GiB of memory needed, but only ");
}

TEST(huge_model_and_sample_requests_are_refused_before_allocating) {
  ModelConfig c = testing::tiny_gpt2();
  c.vocab_size = 1 << 24;  // 2^24 x 4096 floats of embeddings alone: 256 GiB, more than a test machine has
  c.d_model = 4096;
  c.n_head = c.n_kv_head = 32;
  c.head_dim = 128;
  CHECK_THROWS(make_model(c), "the model's weights (");
  CHECK_THROWS(make_model(c), "use a smaller configuration");

  auto m = make_model(testing::tiny_gpt2(50000));
  init_weights(*m, 1);
  SampleRequest r;
  r.prompt_tokens = {1, 2};
  r.prompt_offsets = {0, 2};
  r.n_samples = 1 << 20;  // the most allowed: their logits alone take 2^20 x 50000 floats, ~195 GiB
  r.max_new_tokens = 8;
  CHECK_THROWS(sample(*m, r), "sample: the KV cache and logits of 1048576 responses of up to 10 tokens: ");
}

TEST(a_batch_whose_activations_do_not_fit_is_refused) {
  // One wide layer (d_model 1024) keeps the weights small (~17 MB) and the activations ~32 KB a token: a batch of
  // twice the tokens that fit is refused before its activations are allocated.
  ModelConfig c = testing::tiny_gpt2();
  c.d_model = 1024;
  c.n_head = c.n_kv_head = 8;
  c.head_dim = 128;
  c.n_layer = 1;
  auto m = make_model(c);
  init_weights(*m, 1);
  const size_t per_token = 8 * sizeof(float) * c.d_model;  // at least: 3 norms/residuals, qkv (3D), attention out
  const size_t want = 2 * available_host_bytes() / per_token;
  if (want > (size_t(1) << 24)) {  // a machine with over ~256 GiB free: the batch itself would be too large here
    std::printf("note: %zu tokens needed to exceed memory; not built\n", want);
    return;
  }
  Batch b;
  const int len = c.max_positions;
  const int n_seq = static_cast<int>(want / len) + 1;
  b.tokens.resize(static_cast<size_t>(n_seq) * len);  // sequences with different first tokens: none is shared
  for (size_t i = 0; i < b.tokens.size(); i++) b.tokens[i] = static_cast<int32_t>((i / len * 7 + i % len) % 17);
  b.offsets.push_back(0);
  for (int s = 0; s < n_seq; s++) b.offsets.push_back((s + 1) * len), b.prompt_lens.push_back(1);
  CHECK_THROWS(compute_logprobs(*m, b), "forward activations of " + std::to_string(b.n_tokens()) + " tokens: ");
  CHECK_THROWS(compute_logprobs(*m, b), "use fewer or shorter sequences per call");
}

// An SFT step on one 4-token sequence.
static TrainRequest one_sequence_sft() {
  TrainRequest r;
  r.loss = LossKind::SFT;
  r.batch.tokens = {1, 2, 3, 4};
  r.batch.offsets = {0, 4};
  r.batch.prompt_lens = {1};
  return r;
}

TEST(the_training_state_is_checked_at_the_first_step_under_a_budget) {
  auto m = make_model(testing::tiny_gpt2());
  init_weights(*m, 1);
  const TrainRequest r = one_sequence_sft();
  // a budget below the gradients and moments (3 x 4 bytes a parameter) of this model
  const std::string budget = std::to_string(2 * m->params.size() * sizeof(float));
  setenv("OPTUNE_MEMORY_LIMIT", budget.c_str(), 1);
  CHECK(available_host_bytes() <= 2 * m->params.size() * sizeof(float));
  CHECK_THROWS(train_step(*m, r), "training state (gradients and AdamW moments of " +
                                      std::to_string(m->params.size()) + " parameters): ");
  CHECK(m->grads.empty() && m->adam_m.empty());  // refused before anything was allocated
  // the same check on its own, as a run makes it before its first iteration
  CHECK_THROWS(check_training_memory(*m, true), "training state (gradients and AdamW moments of ");
  unsetenv("OPTUNE_MEMORY_LIMIT");
  train_step(*m, r);  // without the budget it trains
  CHECK(m->adam_m.size() == m->params.size());
  setenv("OPTUNE_MEMORY_LIMIT", budget.c_str(), 1);
  check_training_memory(*m, true);  // allocated already: nothing left to check
  unsetenv("OPTUNE_MEMORY_LIMIT");
}

TEST(large_workspace_buffers_are_not_kept_when_memory_is_short) {
  // over 256 MB in all and over a quarter of the memory left: freed after a call (reserve only: no page is touched)
  Workspace ws;
  ws.train.layers.resize(2);
  ws.train.layers[0].fc.reserve(1 << 20);
  ws.head_probs.reserve(cpu::kScratchKeepBytes / sizeof(float));
  setenv("OPTUNE_MEMORY_LIMIT", std::to_string(size_t(8) << 30).c_str(), 1);  // 1/4: 2 GB, more than they hold
  release_large_buffers(ws);
  CHECK(ws.train.layers.size() == 2 && ws.head_probs.capacity() > 0);
  setenv("OPTUNE_MEMORY_LIMIT", std::to_string(size_t(1) << 30).c_str(), 1);  // 1/4: 256 MB, less
  release_large_buffers(ws);
  CHECK(ws.train.layers.empty() && ws.head_probs.capacity() == 0);
  unsetenv("OPTUNE_MEMORY_LIMIT");
  // and a step whose buffers are small keeps them for the next
  auto m = make_model(testing::tiny_gpt2());
  init_weights(*m, 1);
  const TrainRequest r = one_sequence_sft();
  train_step(*m, r);
  CHECK(workspace_of(*m).train.layers.size() == static_cast<size_t>(m->cfg.n_layer));
}

TEST_MAIN()
