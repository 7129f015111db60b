// LoRA adapters (core/lora.h): what they change and what they leave alone. Gradients are checked by finite
// differences in test_gradcheck.cpp and against PEFT in test_parity.cpp.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/checkpoint.h"
#include "core/engine.h"
#include "core/error.h"
#include "core/lora.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;

namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = std::filesystem::temp_directory_path().string() + "/optune_lora_" + name + "_" +
                        std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

Batch test_batch(int vocab) { return testing::random_batch({6, 9, 5, 8}, {2, 4, 1, 3}, vocab, 5); }

// A model with random weights and adapters whose B is random too (so they change the outputs).
std::unique_ptr<Model> lora_model(const ModelConfig& c, const LoraConfig& lc = {2, 4.0f, {"all-linear"}}) {
  auto m = make_model(c);
  testing::randomize(*m, 31);
  testing::enable_random_lora(*m, lc, 9, 0.3f);
  return m;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = a.size() == b.size() ? 0.0f : 1e30f;
  for (size_t i = 0; i < a.size() && i < b.size(); i++) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

TrainRequest dpo_request(const Model& m) {
  TrainRequest r;
  r.loss = LossKind::DPO;
  r.batch = test_batch(m.cfg.vocab_size);
  r.chosen = {0, 2};
  r.rejected = {1, 3};
  r.ref_chosen = {-9.0f, -7.5f};
  r.ref_rejected = {-10.0f, -5.0f};
  r.opt.lr = 1e-2f;
  r.opt.weight_decay = 0.1f;
  return r;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(fresh_adapters_leave_the_outputs_unchanged) {
  for (const ModelConfig& c : testing::tiny_families()) {
    auto m = make_model(c);
    testing::randomize(*m, 3);
    const Batch b = test_batch(c.vocab_size);
    const LogprobResult before = compute_logprobs(*m, b);
    enable_lora(*m, LoraConfig{}, 1);
    CHECK(m->lora->targets.size() == static_cast<size_t>(c.n_layer) * (c.is_gpt2() ? 4 : 7));
    const LogprobResult after = compute_logprobs(*m, b);
    CHECK_MSG(after.token_logps == before.token_logps, arch_name(c.arch));  // B = 0: x A^T B^T adds exact zeros
    // A is drawn like PEFT's: U(-1/sqrt(in), 1/sqrt(in)), not all zero; B is zero
    const LoraTarget& t = m->lora->targets[0];
    float amax = 0, bmax = 0;
    for (int i = 0; i < m->lora->cfg.rank * t.in; i++) amax = std::max(amax, std::fabs(m->lora->params[t.a + i]));
    for (int i = 0; i < m->lora->cfg.rank * t.out; i++) bmax = std::max(bmax, std::fabs(m->lora->params[t.b + i]));
    CHECK(amax > 0.5f / std::sqrt(static_cast<float>(t.in)) && amax <= 1.0f / std::sqrt(static_cast<float>(t.in)));
    CHECK(bmax == 0.0f);
  }
}

TEST(adapters_equal_their_merged_weights_and_switch_off_to_the_base) {
  for (const ModelConfig& c : testing::tiny_families()) {
    auto m = lora_model(c);
    const Batch b = test_batch(c.vocab_size);
    const LogprobResult with = compute_logprobs(*m, b);
    auto merged = clone_model(*m);  // W + scale B A, no adapters
    CHECK(!merged->lora);
    const LogprobResult want = compute_logprobs(*merged, b);
    CHECK_MSG(max_abs_diff(with.token_logps, want.token_logps) < 2e-5f, arch_name(c.arch));
    CHECK(max_abs_diff(with.token_logps, compute_logprobs(*make_model(c), b).token_logps) > 1e-2f);

    auto base = make_model(c);
    testing::randomize(*base, 31);
    LogprobResult off;
    {
      AdaptersOff guard(*m);
      off = compute_logprobs(*m, b);
    }
    CHECK_MSG(off.token_logps == compute_logprobs(*base, b).token_logps, arch_name(c.arch));
    CHECK(compute_logprobs(*m, b).token_logps == with.token_logps);  // on again after the guard
  }
}

TEST(only_targeted_modules_get_adapters) {
  auto m = make_model(testing::tiny_gpt2());
  enable_lora(*m, LoraConfig{4, 8.0f, {"c_proj"}}, 1);  // PEFT's suffix rule: attn.c_proj and mlp.c_proj
  CHECK(m->lora->targets.size() == 4);
  for (const LoraTarget& t : m->lora->targets) CHECK(contains(t.module, ".c_proj"));
  CHECK(m->lora->scale == 2.0f);
  auto l = make_model(testing::tiny_llama());
  enable_lora(*l, LoraConfig{4, 4.0f, {"q_proj", "self_attn.v_proj"}}, 1);
  CHECK(l->lora->targets.size() == 4);
  CHECK(l->lora->targets[1].module == "model.layers.0.self_attn.v_proj" && l->lora->targets[1].slot == 1);
  CHECK(l->lora->layout.tensors[0].name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  CHECK((l->lora->layout.tensors[1].shape == std::vector<int64_t>{8, 4}));  // B [out = 4 heads x 2, r]
}

TEST(training_moves_only_the_adapters) {
  for (const ModelConfig& c : testing::tiny_families()) {
    auto m = lora_model(c);
    const std::vector<float> base = m->params, adapters = m->lora->params;
    const TrainRequest r = dpo_request(*m);
    const TrainStats first = train_step(*m, r);
    for (int i = 0; i < 4; i++) train_step(*m, r);
    CHECK_MSG(m->params == base, arch_name(c.arch));
    CHECK(m->adam_m.size() == m->lora->params.size() && m->grads.size() == m->lora->params.size());
    CHECK(max_abs_diff(m->lora->params, adapters) > 1e-3f);
    CHECK(train_step(*m, r).loss < first.loss);

    // mixed precision: the base's products in bf16, the adapters' in fp32; still only the adapters move
    auto h = lora_model(c);
    TrainRequest r16 = dpo_request(*h);
    r16.bf16 = true;
    const TrainStats first16 = train_step(*h, r16);
    for (int i = 0; i < 4; i++) train_step(*h, r16);
    CHECK(h->params == base);
    CHECK(train_step(*h, r16).loss < first16.loss);
    CHECK(std::fabs(first16.loss - first.loss) < 1e-2);
  }
}

TEST(a_lora_checkpoint_is_the_merged_model_plus_peft_adapter_files) {
  for (const ModelConfig& c : testing::tiny_families()) {
    auto m = lora_model(c);
    const Batch b = test_batch(c.vocab_size);
    const std::string dir = temp_dir(arch_name(c.arch));
    save_checkpoint(*m, dir);
    CHECK(std::filesystem::exists(dir + "/adapter/adapter_config.json"));
    CHECK(std::filesystem::exists(dir + "/adapter/adapter_model.safetensors"));
    CHECK(!std::filesystem::exists(dir + "/adapter_config.json"));  // transformers would treat the dir as an adapter
    auto merged = load_checkpoint(dir);
    CHECK(!merged->lora);
    CHECK(max_abs_diff(compute_logprobs(*merged, b).token_logps, compute_logprobs(*m, b).token_logps) < 2e-5f);

    // base + the saved adapter: the same model again, bit for bit
    auto again = make_model(c);
    testing::randomize(*again, 31);
    const LoraConfig saved = read_lora_config(dir + "/adapter");
    CHECK(saved.rank == 2 && saved.alpha == 4.0f);
    enable_lora(*again, saved, 123);
    load_lora_adapter(*again, dir + "/adapter");
    CHECK(again->lora->params == m->lora->params);
    CHECK(compute_logprobs(*again, b).token_logps == compute_logprobs(*m, b).token_logps);
    std::filesystem::remove_all(dir);
  }
}

TEST(diverged_adapters_are_not_saved_and_name_the_adapter) {
  auto m = lora_model(testing::tiny_llama());
  m->lora->params[5] = NAN;
  const std::string dir = temp_dir("nan");
  const std::string err = error_of([&] { save_checkpoint(*m, dir); });
  CHECK(contains(err, "adapter tensor \"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight\" holds a "
                      "non-finite value"));
  CHECK(!std::filesystem::exists(dir + "/model.safetensors"));
  std::filesystem::remove_all(dir);
}

TEST(loading_adapters_drops_the_optimizer_state_of_the_old_ones) {
  auto m = lora_model(testing::tiny_gpt2());
  const std::string dir = temp_dir("drop");
  save_lora_adapter(*m, dir);
  train_step(*m, dpo_request(*m));
  CHECK(m->adam_step == 1 && !m->adam_m.empty());
  load_lora_adapter(*m, dir);
  CHECK(m->adam_step == 0 && m->adam_m.empty() && m->grads.empty());
  std::filesystem::remove_all(dir);
}

TEST(optimizer_state_of_adapters_resumes_exactly) {
  const ModelConfig c = testing::tiny_llama();
  auto m = lora_model(c);
  const TrainRequest r = dpo_request(*m);
  train_step(*m, r);
  const std::string dir = temp_dir("opt");
  save_checkpoint(*m, dir);
  save_optimizer_state(*m, dir);
  train_step(*m, r);  // the uninterrupted run's second step

  auto resumed = make_model(c);
  testing::randomize(*resumed, 31);
  enable_lora(*resumed, read_lora_config(dir + "/adapter"), 0);
  load_lora_adapter(*resumed, dir + "/adapter");
  load_optimizer_state(*resumed, dir);
  CHECK(resumed->adam_step == 1);
  train_step(*resumed, r);
  CHECK(resumed->lora->params == m->lora->params);

  // a full model's state does not load into adapters (nor the reverse)
  auto full = make_model(c);
  CHECK(contains(error_of([&] { load_optimizer_state(*full, dir); }), "parameters"));
  std::filesystem::remove_all(dir);
}

TEST(bad_lora_requests_and_files_get_clear_errors) {
  auto m = make_model(testing::tiny_llama());
  CHECK(contains(error_of([&] { enable_lora(*m, LoraConfig{2, 4.0f, {"c_attn"}}, 0); }),
                 "target module \"c_attn\" matches no linear layer"));
  CHECK(contains(error_of([&] { enable_lora(*m, LoraConfig{0, 4.0f, {"q_proj"}}, 0); }), "rank 0"));
  CHECK(contains(error_of([&] { enable_lora(*m, LoraConfig{2, 0.0f, {"q_proj"}}, 0); }), "alpha"));
  CHECK(!m->lora);
  ModelConfig rm = testing::tiny_llama();
  rm.reward_model = true;
  auto r = make_model(rm);
  CHECK(contains(error_of([&] { enable_lora(*r, LoraConfig{}, 0); }), "not reward models"));

  // an adapter saved with other settings or targets, or with tensors missing
  auto saved = lora_model(testing::tiny_llama(), LoraConfig{2, 4.0f, {"q_proj", "v_proj"}});
  const std::string dir = temp_dir("bad");
  save_lora_adapter(*saved, dir);
  auto other = make_model(testing::tiny_llama());
  enable_lora(*other, LoraConfig{4, 4.0f, {"q_proj", "v_proj"}}, 0);
  CHECK(contains(error_of([&] { load_lora_adapter(*other, dir); }), "rank 2"));
  auto other_targets = make_model(testing::tiny_llama());
  enable_lora(*other_targets, LoraConfig{2, 4.0f, {"q_proj"}}, 0);
  CHECK(contains(error_of([&] { load_lora_adapter(*other_targets, dir); }),
                 "the first difference: model.layers.0.self_attn.v_proj (saved) vs model.layers.1.self_attn.q_proj "
                 "(model); use the same LoRA targets"));

  // PEFT variants optune does not run are refused by name
  const std::string cfg_path = dir + "/adapter_config.json";
  const std::string text = R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
                               "use_dora": true})";
  FILE* f = std::fopen(cfg_path.c_str(), "w");
  std::fputs(text.c_str(), f);
  std::fclose(f);
  CHECK(contains(error_of([&] { read_lora_config(dir); }), "\"use_dora\": true is not supported"));
  f = std::fopen(cfg_path.c_str(), "w");
  std::fputs(R"({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "layers_to_transform": [0]})", f);
  std::fclose(f);
  CHECK(contains(error_of([&] { read_lora_config(dir); }), "\"layers_to_transform\": [0] is not supported"));
  // a field optune does not know is refused unless it is off (PEFT's later variants are never run as plain LoRA)
  f = std::fopen(cfg_path.c_str(), "w");
  std::fputs(R"({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "alora_invocation_tokens": [1, 2],
                 "some_future_field": null, "lora_dropout": 0.05})", f);
  std::fclose(f);
  CHECK(contains(error_of([&] { read_lora_config(dir); }), "\"alora_invocation_tokens\": [1,2] is not supported"));
  CHECK(contains(error_of([&] { read_lora_config(dir + "/nowhere"); }), "not found"));
  std::filesystem::remove_all(dir);
}

TEST(sampling_with_adapters_matches_the_merged_model) {
  for (const ModelConfig& c : testing::tiny_families()) {
    auto m = lora_model(c);
    auto merged = clone_model(*m);
    SampleRequest s;
    s.prompt_tokens = {1, 5, 7, 2, 9};
    s.prompt_offsets = {0, 3, 5};
    s.n_samples = 2;
    s.max_new_tokens = 6;
    s.temperature = 0.0f;
    // decoding runs on the merged weights (packed once per call); the fp32 prefill adds the low-rank path instead,
    // so the log-probs agree to rounding
    for (const float temperature : {0.0f, 1.0f}) {
      s.temperature = temperature;
      const SampleResult a = sample(*m, s), b = sample(*merged, s);
      CHECK_MSG(a.tokens == b.tokens, arch_name(c.arch));
      CHECK(max_abs_diff(a.token_logps, b.token_logps) < 2e-5f);
    }
    // bf16 sampling packs (merged) weights for the prefill too: the same bits as the merged copy's
    s.bf16 = true;
    const SampleResult a16 = sample(*m, s), b16 = sample(*merged, s);
    CHECK_MSG(a16.tokens == b16.tokens && a16.token_logps == b16.token_logps, arch_name(c.arch));
    s.bf16 = false;
    // the base view samples like the base model
    auto base = make_model(c);
    testing::randomize(*base, 31);
    AdaptersOff off(*m);
    CHECK(sample(*m, s).token_logps == sample(*base, s).token_logps);
  }
}

TEST_MAIN()
