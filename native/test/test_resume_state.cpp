// Resuming training exactly: weights + AdamW state saved after k steps and loaded into a fresh model continue
// bitwise like the uninterrupted model.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/engine.h"
#include "core/safetensors.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;

namespace {
TrainRequest dpo_request(const ModelConfig& c) {
  TrainRequest r;
  r.loss = LossKind::DPO;
  r.batch = testing::random_batch({6, 8, 5, 7}, {2, 3, 2, 3}, c.vocab_size, 41);
  r.chosen = {0, 2};
  r.rejected = {1, 3};
  r.ref_chosen = {-12.0f, -9.0f};
  r.ref_rejected = {-13.0f, -8.0f};
  r.opt.lr = 1e-2f;
  r.opt.weight_decay = 0.1f;
  r.opt.max_grad_norm = 1.0f;
  return r;
}
}  // namespace

TEST(optimizer_state_round_trip_continues_bitwise) {
  for (auto cfg : testing::tiny_families()) {
    auto m = make_model(cfg);
    init_weights(*m, 5, 0.2f);
    const TrainRequest req = dpo_request(cfg);
    train_step(*m, req);
    train_step(*m, req);
    const std::string dir = std::filesystem::temp_directory_path() / ("optune-resume-" + std::string(arch_name(cfg.arch)));
    save_checkpoint(*m, dir);
    save_optimizer_state(*m, dir);
    auto resumed = load_checkpoint(dir);
    load_optimizer_state(*resumed, dir);
    CHECK(resumed->adam_step == 2);
    const TrainStats a = train_step(*m, req);
    const TrainStats b = train_step(*resumed, req);
    CHECK(a.loss == b.loss);
    CHECK(m->params == resumed->params);
    // without the optimizer state the third step differs (the test can tell the difference)
    auto fresh = load_checkpoint(dir);
    train_step(*fresh, req);
    CHECK(fresh->params != m->params);
    std::filesystem::remove_all(dir);
  }
}

// Warmup: step t (1-based) uses lr * t / warmup_steps until t reaches warmup_steps, the same as giving that lr by
// hand; counted by the model's AdamW step, so a resumed model continues the ramp.
TEST(warmup_ramps_the_learning_rate_over_the_first_steps_and_resumes_mid_ramp) {
  const ModelConfig cfg = testing::tiny_llama();
  auto warm = make_model(cfg), by_hand = make_model(cfg);
  init_weights(*warm, 6, 0.2f);
  init_weights(*by_hand, 6, 0.2f);
  TrainRequest req = dpo_request(cfg);
  TrainRequest manual = req;
  req.opt.warmup_steps = 4;
  const std::string dir = std::filesystem::temp_directory_path() / "optune-resume-warmup";
  std::unique_ptr<Model> resumed;
  for (int t = 1; t <= 6; t++) {
    manual.opt.lr = t < 4 ? static_cast<float>(static_cast<double>(req.opt.lr) * t / 4) : req.opt.lr;
    train_step(*warm, req);
    train_step(*by_hand, manual);
    CHECK_MSG(warm->params == by_hand->params, "step " + std::to_string(t));
    if (t == 2) {
      save_checkpoint(*warm, dir);
      save_optimizer_state(*warm, dir);
      resumed = load_checkpoint(dir);
      load_optimizer_state(*resumed, dir);
    } else if (t > 2) {
      train_step(*resumed, req);
      CHECK_MSG(resumed->params == warm->params, "resumed, step " + std::to_string(t));
    }
  }
  // and it changes something: without warmup the first step moves the weights further
  auto plain = make_model(cfg);
  init_weights(*plain, 6, 0.2f);
  auto ramped = make_model(cfg);
  init_weights(*ramped, 6, 0.2f);
  train_step(*ramped, req);
  req.opt.warmup_steps = 0;
  train_step(*plain, req);
  CHECK(plain->params != ramped->params);
  std::filesystem::remove_all(dir);
}

TEST(optimizer_state_mismatch_is_a_clear_error) {
  auto small = make_model(testing::tiny_gpt2());
  auto other = make_model(testing::tiny_gpt2(23));
  const std::string dir = std::filesystem::temp_directory_path() / "optune-resume-mismatch";
  save_optimizer_state(*small, dir);
  CHECK_THROWS(load_optimizer_state(*other, dir), "saved for a model with");
  std::filesystem::remove(dir + "/optimizer.safetensors");
  CHECK_THROWS(load_optimizer_state(*other, dir), "optimizer.safetensors");
  std::filesystem::remove_all(dir);
}

TEST(optimizer_state_of_another_layout_is_refused) {
  // The same parameter count in other shapes: one more vocabulary row and one fewer position row, both d_model wide.
  ModelConfig a = testing::tiny_gpt2(), b = testing::tiny_gpt2(18);
  b.max_positions = a.max_positions - 1;
  auto ma = make_model(a), mb = make_model(b);
  CHECK(ma->params.size() == mb->params.size());
  const std::string dir = std::filesystem::temp_directory_path() / "optune-resume-layout";
  save_optimizer_state(*ma, dir);
  CHECK_THROWS(load_optimizer_state(*mb, dir), "saved for a model with another layout of its");
  load_optimizer_state(*ma, dir);  // its own layout loads
  std::filesystem::remove_all(dir);
}

TEST(optimizer_state_corruption_is_refused) {
  auto m = make_model(testing::tiny_gpt2());
  init_weights(*m, 5, 0.2f);
  train_step(*m, dpo_request(m->cfg));
  const std::string dir = std::filesystem::temp_directory_path() / "optune-resume-corrupt";
  const int64_t n = static_cast<int64_t>(m->params.size());
  // Writes the state with one value of one moment replaced (and the step metadata as given).
  auto write_state = [&](const char* which, float value, const std::string& step) {
    std::vector<float> mm = m->adam_m, vv = m->adam_v;
    (std::string(which) == "exp_avg" ? mm : vv)[3] = value;
    std::filesystem::create_directories(dir);
    safetensors::save(dir + "/optimizer.safetensors", {{"exp_avg", {n}, mm.data()}, {"exp_avg_sq", {n}, vv.data()}},
                      {{"format", "optune-adamw"}, {"step", step}, {"num_params", std::to_string(n)}});
  };
  auto fresh = make_model(testing::tiny_gpt2());
  write_state("exp_avg", std::nanf(""), "1");
  CHECK_THROWS(load_optimizer_state(*fresh, dir), "tensor exp_avg holds nan at element 3 (must be finite)");
  write_state("exp_avg_sq", -1.0f, "1");
  CHECK_THROWS(load_optimizer_state(*fresh, dir), "tensor exp_avg_sq holds -1.000000 at element 3 (must be finite "
                                                  "and >= 0)");
  write_state("exp_avg", 0.0f, "1e3");
  CHECK_THROWS(load_optimizer_state(*fresh, dir), "metadata step \"1e3\" is not an integer");
  CHECK(fresh->adam_m.empty());  // nothing was taken from the refused files
  write_state("exp_avg", 0.0f, "1");
  load_optimizer_state(*fresh, dir);
  CHECK(fresh->adam_step == 1);
  std::filesystem::remove_all(dir);
}

TEST(weights_fingerprint_follows_every_bit_and_not_the_thread_count) {
  // a resumed run compares it with the fingerprint its reference had when the run started
  auto m = make_model(testing::tiny_llama());
  testing::randomize(*m, 41);
  const std::string f = weights_fingerprint(*m);
  CHECK(f.size() == 16);
  omp_set_num_threads(1);
  CHECK(weights_fingerprint(*m) == f);
  omp_set_num_threads(2);
  CHECK(weights_fingerprint(*m) == f);
  CHECK(weights_fingerprint(*clone_model(*m)) == f);
  for (size_t i : {size_t(0), m->params.size() / 2, m->params.size() - 1}) {  // a word's first lane, middle, tail
    const float keep = m->params[i];
    uint32_t bits;
    std::memcpy(&bits, &m->params[i], sizeof bits);
    bits ^= 1u;  // the lowest mantissa bit
    std::memcpy(&m->params[i], &bits, sizeof bits);
    CHECK_MSG(weights_fingerprint(*m) != f, "element " + std::to_string(i));
    m->params[i] = keep;
  }
  CHECK(weights_fingerprint(*m) == f);
}

TEST_MAIN()
