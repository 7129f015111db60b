// Non-finite numbers never reach the weights or a checkpoint: a training step whose gradient is NaN/Inf throws a
// clear error and leaves parameters and AdamW state exactly as they were, and a model whose weights are NaN/Inf is
// refused by save_checkpoint before anything is written, so the previous checkpoint on disk stays intact.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/engine.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;
namespace fs = std::filesystem;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/optune-test-nonfinite-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    path = p ? p : "/tmp/optune-test-nonfinite-fallback";
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Bitwise equality: NaN != NaN, but a buffer that was not written to is still identical byte for byte.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

struct Snapshot {
  std::vector<float> params, adam_m, adam_v;
  int64_t adam_step;
  explicit Snapshot(const Model& m) : params(m.params), adam_m(m.adam_m), adam_v(m.adam_v), adam_step(m.adam_step) {}
  bool matches(const Model& m) const {
    return same_bits(params, m.params) && same_bits(adam_m, m.adam_m) && same_bits(adam_v, m.adam_v) &&
           adam_step == m.adam_step;
  }
};

TrainRequest request(LossKind loss, const ModelConfig& c) {
  TrainRequest r;
  r.loss = loss;
  r.batch = testing::random_batch({6, 8, 5, 7}, {2, 3, 2, 3}, c.vocab_size, 17);
  if (loss != LossKind::SFT) {
    r.chosen = {0, 2};
    r.rejected = {1, 3};
  }
  if (loss == LossKind::DPO || loss == LossKind::IPO) {
    r.ref_chosen = {-12.0f, -9.0f};
    r.ref_rejected = {-13.0f, -8.0f};
  }
  r.opt.lr = 1e-2f;
  r.opt.weight_decay = 0.1f;
  return r;
}

ModelConfig reward(ModelConfig c) {
  c.reward_model = true;
  return c;
}

// Index of the first element of a tensor, by name.
size_t offset_of(const Model& m, const std::string& name) {
  const ParamInfo* p = m.layout.find(name);
  if (!p) throw std::runtime_error("test: no tensor " + name);
  return p->offset;
}

}  // namespace

// A NaN weight makes the gradient NaN: every loss refuses the step, on the first step (no AdamW state yet) and
// after a good step (AdamW moments exist and must not be touched either).
TEST(nan_weight_refuses_the_step_and_changes_nothing) {
  struct Case {
    ModelConfig cfg;
    LossKind loss;
    const char* weight;
  };
  const Case cases[] = {
      {testing::tiny_gpt2(), LossKind::DPO, "transformer.h.1.mlp.c_fc.weight"},
      {testing::tiny_gpt2(), LossKind::SFT, "transformer.wte.weight"},
      {testing::tiny_llama(), LossKind::IPO, "model.layers.0.self_attn.q_proj.bias"},
      {reward(testing::tiny_llama()), LossKind::BT, "score.weight"},
  };
  for (const Case& c : cases) {
    for (bool after_good_step : {false, true}) {
      auto m = make_model(c.cfg);
      init_weights(*m, 3, 0.2f);
      const TrainRequest r = request(c.loss, c.cfg);
      if (after_good_step) {
        train_step(*m, r);
        CHECK(m->adam_step == 1);
      }
      m->params[offset_of(*m, c.weight) + 1] = kNaN;
      const Snapshot before(*m);
      CHECK_THROWS(train_step(*m, r), "non-finite gradient");
      CHECK_MSG(before.matches(*m), std::string("state changed after a refused step; weight ") + c.weight);
    }
  }
}

// Huge but finite weights overflow the forward pass (logits reach Inf): same outcome as a NaN weight.
TEST(overflowing_weights_refuse_the_step) {
  auto m = make_model(testing::tiny_gpt2());
  init_weights(*m, 4, 0.2f);
  const TrainRequest r = request(LossKind::DPO, m->cfg);
  train_step(*m, r);
  for (float& p : m->params) p *= 1e30f;
  for (float p : m->params) CHECK(std::isfinite(p));
  const Snapshot before(*m);
  CHECK_THROWS(train_step(*m, r), "the step was not applied and the weights are unchanged");
  CHECK(before.matches(*m));
}

// apply_update = false only computes gradients: a non-finite norm is reported (callers can skip) and the weights
// are left alone.
TEST(gradient_only_step_reports_a_non_finite_norm) {
  auto m = make_model(testing::tiny_llama());
  init_weights(*m, 5, 0.2f);
  TrainRequest r = request(LossKind::SFT, m->cfg);
  r.apply_update = false;
  m->params[offset_of(*m, "model.norm.weight")] = kInf;
  const std::vector<float> params = m->params;
  const TrainStats st = train_step(*m, r);
  CHECK(!std::isfinite(st.grad_norm));
  CHECK(same_bits(params, m->params));
}

// After a refused step the model is still usable: restoring the bad weight lets training continue.
TEST(training_continues_after_a_refused_step) {
  auto m = make_model(testing::tiny_gpt2());
  init_weights(*m, 6, 0.2f);
  const TrainRequest r = request(LossKind::DPO, m->cfg);
  train_step(*m, r);
  const size_t i = offset_of(*m, "transformer.ln_f.weight");
  const float good = m->params[i];
  m->params[i] = kNaN;
  CHECK_THROWS(train_step(*m, r), "non-finite gradient");
  m->params[i] = good;
  const TrainStats st = train_step(*m, r);
  CHECK(std::isfinite(st.loss) && std::isfinite(st.grad_norm));
  CHECK(m->adam_step == 2);
}

// save_checkpoint refuses NaN/Inf weights before writing anything: an existing checkpoint in the directory stays
// byte for byte, no temporary file is left, and a new directory is not even created.
TEST(save_refuses_non_finite_weights) {
  TempDir tmp;
  const std::string dir = tmp.path + "/ckpt";
  for (auto cfg : testing::tiny_families()) {
    auto m = make_model(cfg);
    init_weights(*m, 7, 0.2f);
    save_checkpoint(*m, dir);
    const std::string weights = read_bytes(dir + "/model.safetensors");
    const std::string config = read_bytes(dir + "/config.json");
    const ParamInfo& last = m->layout.tensors.back();
    for (float bad : {kNaN, kInf, -kInf}) {
      auto broken = clone_model(*m);
      broken->params[last.offset + last.numel - 1] = bad;
      CHECK_THROWS(save_checkpoint(*broken, dir), "checkpoint not saved: tensor \"" + last.name + "\"");
      CHECK_THROWS(save_checkpoint(*broken, dir), "non-finite");
      CHECK(read_bytes(dir + "/model.safetensors") == weights);
      CHECK(read_bytes(dir + "/config.json") == config);
      size_t entries = 0;
      for (const auto& e : fs::directory_iterator(dir)) {
        (void)e;
        entries++;
      }
      CHECK_MSG(entries == 2, "the checkpoint directory has " + std::to_string(entries) + " entries, expected 2");
      CHECK_THROWS(save_checkpoint(*broken, tmp.path + "/new"), "non-finite");
      CHECK(!fs::exists(tmp.path + "/new"));
    }
    // The saved checkpoint still loads and matches the last good weights.
    auto back = load_checkpoint(dir);
    CHECK(same_bits(back->params, m->params));
    fs::remove_all(dir);
  }
}

TEST_MAIN()
