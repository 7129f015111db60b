// Parity with PyTorch/transformers: loads the tiny checkpoints in native/test/fixtures/parity/<case>/ (made by
// tools/make_parity_fixtures.py) and checks logits, log-probs, scores, every loss, every gradient and three AdamW
// steps against the float64 reference stored in expected.safetensors. One test per case and quantity, so a failure
// names what diverged; each prints its worst tensor.
#include <algorithm>
#include <cmath>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/engine.h"
#include "core/error.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "testing.h"

using namespace optune;

namespace {

const char* kRoot = "native/test/fixtures/parity/";

// Tolerances on the per-tensor error max|a - b| / (max|b| + 1e-6). The reference is float64; fp32 PyTorch lands
// within ~2e-6 of it on everything computed from the initial weights. After AdamW steps it lands up to ~7e-5 away:
// the normalized update m / sqrt(v) turns the rounding noise of near-zero gradient elements into visible steps.
constexpr double kTol = 1e-4;
constexpr double kTolAfterUpdate = 1e-3;
constexpr double kAtol = 1e-6;  // absolute floor, for tensors whose expected values are all ~0

using Tensor = safetensors::Tensor;

struct Case {
  std::string name, dir;
  json::Value spec;
  Batch batch;
  std::map<std::string, Tensor> expected;
};

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  OPTUNE_CHECK(f.good(), "cannot open " + path + " (run ctest from the repo root)");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> ints(const json::Value& v, const std::string& key) {
  const json::Value* a = v.get(key);
  OPTUNE_CHECK(a && a->is_array(), "case.json: missing array " + key);
  std::vector<int32_t> out;
  for (const auto& x : a->array) out.push_back(static_cast<int32_t>(x.integer));
  return out;
}

std::vector<float> floats(const json::Value& v, const std::string& key) {
  const json::Value* a = v.get(key);
  OPTUNE_CHECK(a && a->is_array(), "case.json: missing array " + key);
  std::vector<float> out;
  for (const auto& x : a->array) out.push_back(static_cast<float>(x.number));
  return out;
}

double number(const json::Value& v, const std::string& key) {
  const json::Value* x = v.get(key);
  OPTUNE_CHECK(x && x->is_number(), "case.json: missing number " + key);
  return x->number;
}

// Parsed once per case; every test loads its own model since training mutates it.
const Case& get_case(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Case>> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return *it->second;
  auto c = std::make_unique<Case>();
  c->name = name;
  c->dir = kRoot + name;
  c->spec = json::parse(read_text(c->dir + "/case.json"), c->dir + "/case.json");
  c->batch.tokens = ints(c->spec, "tokens");
  c->batch.offsets = ints(c->spec, "offsets");
  c->batch.prompt_lens = ints(c->spec, "prompt_lens");
  c->expected = safetensors::load(c->dir + "/expected.safetensors");
  return *(cache[name] = std::move(c));
}

const Tensor& expect(const Case& c, const std::string& key) {
  auto it = c.expected.find(key);
  OPTUNE_CHECK(it != c.expected.end(), c.dir + "/expected.safetensors has no tensor " + key);
  return it->second;
}

// Tracks the worst tensor of one test and prints it, so a passing run still shows how close it came.
struct Report {
  std::string test;
  std::string worst_name;
  double worst = -1;
  explicit Report(std::string t) : test(std::move(t)) {}
  ~Report() {
    if (worst >= 0) std::printf("     %s: worst %s %.2e\n", test.c_str(), worst_name.c_str(), worst);
  }
};

// Compares a[0..n) with the expected tensor, skipping elements [skip_begin, skip_end).
void compare(Report& rep, const std::string& name, const float* a, size_t n, const Tensor& b, double tol,
             size_t skip_begin = 0, size_t skip_end = 0) {
  if (n != b.data.size()) {
    testing::fail(__FILE__, __LINE__,
                  rep.test + " " + name + ": size " + std::to_string(n) + " vs expected " +
                      std::to_string(b.data.size()));
    return;
  }
  double max_b = 0, max_diff = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < n; i++) {
    if (i >= skip_begin && i < skip_end) continue;
    max_b = std::max(max_b, std::fabs(static_cast<double>(b.data[i])));
    const double d = std::fabs(static_cast<double>(a[i]) - b.data[i]);
    if (!(d <= max_diff)) {  // also catches NaN
      max_diff = d;
      worst_i = i;
    }
  }
  const double err = max_diff / (max_b + 1e-6);
  if (std::isnan(max_diff) || err > rep.worst) {
    rep.worst = std::isnan(max_diff) ? INFINITY : err;
    rep.worst_name = name;
  }
  // Pass: every element within tol of the tensor's scale (plus an absolute floor); NaN never passes.
  if (!(max_diff <= tol * max_b + kAtol)) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s %s: error %.3e > %.1e (max|b| %.3e); worst [%zu] got %.8g want %.8g",
                  rep.test.c_str(), name.c_str(), err, tol, max_b, worst_i, a[worst_i], b.data[worst_i]);
    testing::fail(__FILE__, __LINE__, buf);
  }
}

void compare(Report& rep, const std::string& name, const std::vector<float>& a, const Tensor& b, double tol) {
  compare(rep, name, a.data(), a.size(), b, tol);
}

void compare_scalar(Report& rep, const std::string& name, double a, const Tensor& b, double tol) {
  const float af = static_cast<float>(a);
  compare(rep, name, &af, 1, b, tol);
}

// GPT-2's key bias (the middle third of c_attn.bias) gets an exactly zero gradient: softmax is unchanged when the
// same q.b_k is added to every score of a query. Its fp32 gradient is rounding noise (~1e-9), which AdamW turns into
// steps of up to ~lr, so after updates only a bound can be checked there. Returns [begin, end) or {0, 0}.
std::pair<size_t, size_t> key_bias_range(const Model& m, const std::string& name) {
  const std::string suffix = "attn.c_attn.bias";
  if (!m.cfg.is_gpt2() || name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(),
                                                                      suffix) != 0)
    return {0, 0};
  return {static_cast<size_t>(m.cfg.d_model), static_cast<size_t>(2 * m.cfg.d_model)};
}

// Every parameter tensor of the model against prefix/<name>, and no expected tensor left without a parameter.
void compare_params(Report& rep, const Case& c, const Model& m, const std::vector<float>& buf,
                    const std::string& prefix, double tol, bool after_update) {
  const ParamLayout& layout = trainable_layout(m);  // every weight, or a LoRA model's adapters
  if (buf.size() != layout.total) {
    testing::fail(__FILE__, __LINE__, rep.test + ": buffer has " + std::to_string(buf.size()) + " floats, layout " +
                                          std::to_string(layout.total));
    return;
  }
  for (const ParamInfo& p : layout.tensors) {
    const Tensor& e = expect(c, prefix + p.name);
    CHECK_MSG(e.shape == p.shape, rep.test + ": shape of " + p.name + " differs from the fixture");
    auto skip = after_update ? key_bias_range(m, p.name) : std::pair<size_t, size_t>{0, 0};
    compare(rep, prefix + p.name, buf.data() + p.offset, p.numel, e, tol, skip.first, skip.second);
    if (skip.second > skip.first) {
      // Bound the key bias: 3 AdamW steps move an element at most about 3 lr from the reference.
      const double bound = 3.0 * number(*c.spec.get("adamw"), "lr");
      for (size_t i = skip.first; i < skip.second; i++)
        CHECK_MSG(std::fabs(buf[p.offset + i] - e.data[i]) <= bound,
                  rep.test + ": key bias " + p.name + "[" + std::to_string(i) + "] moved too far");
    }
  }
  size_t n_expected = 0;
  for (const auto& kv : c.expected)
    if (kv.first.compare(0, prefix.size(), prefix) == 0) n_expected++;
  CHECK_MSG(n_expected == layout.tensors.size(),
            rep.test + ": fixture has " + std::to_string(n_expected) + " " + prefix + " tensors, model " +
                std::to_string(layout.tensors.size()));
}

TrainRequest make_request(const Case& c, LossKind loss) {
  TrainRequest r;
  r.loss = loss;
  r.batch = c.batch;
  r.beta = static_cast<float>(number(c.spec, "beta"));
  const json::Value& opt = *c.spec.get("adamw");
  r.opt.lr = static_cast<float>(number(opt, "lr"));
  r.opt.beta1 = static_cast<float>(number(opt, "beta1"));
  r.opt.beta2 = static_cast<float>(number(opt, "beta2"));
  r.opt.eps = static_cast<float>(number(opt, "eps"));
  r.opt.weight_decay = static_cast<float>(number(opt, "weight_decay"));
  r.opt.max_grad_norm = static_cast<float>(number(opt, "max_grad_norm"));
  if (loss == LossKind::SFT) {
    r.weights = floats(c.spec, "seq_weights");
  } else {
    r.chosen = ints(c.spec, "chosen");
    r.rejected = ints(c.spec, "rejected");
    r.weights = floats(c.spec, "pair_weights");
  }
  if (loss == LossKind::DPO || loss == LossKind::IPO) {
    r.ref_chosen = floats(c.spec, "ref_chosen");
    r.ref_rejected = floats(c.spec, "ref_rejected");
  }
  return r;
}

// ---- the checks ---------------------------------------------------------------------------------------------

void check_logits(const std::string& name) {
  const Case& c = get_case(name);
  Report rep{name + "/logits"};
  auto m = load_checkpoint(c.dir);
  compare(rep, "logits", compute_logits(*m, c.batch), expect(c, "logits"), kTol);
}

void check_logprobs(const std::string& name) {
  const Case& c = get_case(name);
  Report rep{name + "/logprobs"};
  auto m = load_checkpoint(c.dir);
  LogprobResult lp = compute_logprobs(*m, c.batch);
  compare(rep, "token_logps", lp.token_logps, expect(c, "token_logps"), kTol);
  compare(rep, "seq_logps", lp.seq_logps, expect(c, "seq_logps"), kTol);
}

void check_scores(const std::string& name) {
  const Case& c = get_case(name);
  Report rep{name + "/scores"};
  auto m = load_checkpoint(c.dir);
  CHECK_MSG(m->cfg.reward_model, name + " should load as a reward model");
  compare(rep, "scores", compute_scores(*m, c.batch), expect(c, "scores"), kTol);
}

// One train_step without an update: the loss, and the gradients when the fixture has them (IPO has none).
void check_loss(const std::string& name, LossKind kind, const std::string& tag) {
  const Case& c = get_case(name);
  Report rep{name + "/" + tag};
  auto m = load_checkpoint(c.dir);
  const std::vector<float> before = m->params;
  TrainRequest r = make_request(c, kind);
  r.apply_update = false;
  TrainStats s = train_step(*m, r);
  compare_scalar(rep, tag + "_loss", s.loss, expect(c, tag + "_loss"), kTol);
  CHECK_MSG(m->params == before, rep.test + ": apply_update=false changed the weights");
  if (c.expected.count(tag + "_grad/" + m->layout.tensors[0].name))
    compare_params(rep, c, *m, m->grads, tag + "_grad/", kTol, false);
}

// The fixture's train_steps with updates (three): each step's loss and pre-clip gradient norm.
void check_steps(Report& rep, const Case& c, Model& m, const TrainRequest& r) {
  const Tensor& losses = expect(c, "step_losses");
  const Tensor& norms = expect(c, "step_grad_norms");
  for (size_t step = 0; step < losses.data.size(); step++) {
    TrainStats s = train_step(m, r);
    const std::string k = "[" + std::to_string(step) + "]";
    const double tol = step == 0 ? kTol : kTolAfterUpdate;
    compare_scalar(rep, "step_losses" + k, s.loss, Tensor{{1}, {losses.data[step]}}, tol);
    compare_scalar(rep, "step_grad_norms" + k, s.grad_norm, Tensor{{1}, {norms.data[step]}}, tol);
  }
  CHECK_MSG(m.adam_step == static_cast<int64_t>(losses.data.size()), rep.test + ": adam_step count");
}

// Three train_steps with updates: the weights after them, each step's loss and pre-clip gradient norm.
void check_adamw(const std::string& name, LossKind kind) {
  const Case& c = get_case(name);
  Report rep{name + "/adamw3"};
  auto m = load_checkpoint(c.dir);
  check_steps(rep, c, *m, make_request(c, kind));
  compare_params(rep, c, *m, m->params, "after3/", kTolAfterUpdate, true);
}

// LoRA with PEFT (tools/make_lora_fixtures.py): the base fixture <lm> with the adapter in lora_<lm>/. Outputs with
// the adapter on and off, the DPO loss and every adapter gradient, three AdamW steps on the adapters (the base
// must not move), and the merged weights.
const Case& lora_case(const std::string& lm) {
  static std::map<std::string, std::unique_ptr<Case>> cache;
  auto it = cache.find(lm);
  if (it != cache.end()) return *it->second;
  auto c = std::make_unique<Case>(get_case(lm));  // the same batch, pairs, references and AdamW settings
  c->name = "lora_" + lm;
  c->dir = kRoot + c->name;
  c->expected = safetensors::load(c->dir + "/expected.safetensors");
  return *(cache[lm] = std::move(c));
}

std::unique_ptr<Model> load_lora_model(const std::string& lm) {
  auto m = load_checkpoint(get_case(lm).dir);
  enable_lora(*m, read_lora_config(lora_case(lm).dir), 0);
  load_lora_adapter(*m, lora_case(lm).dir);
  return m;
}

void check_lora_outputs(const std::string& lm) {
  const Case& c = lora_case(lm);
  Report rep{c.name + "/outputs"};
  auto m = load_lora_model(lm);
  compare(rep, "logits", compute_logits(*m, c.batch), expect(c, "logits"), kTol);
  const LogprobResult lp = compute_logprobs(*m, c.batch);
  compare(rep, "token_logps", lp.token_logps, expect(c, "token_logps"), kTol);
  compare(rep, "seq_logps", lp.seq_logps, expect(c, "seq_logps"), kTol);
  AdaptersOff off(*m);
  compare(rep, "base_token_logps", compute_logprobs(*m, c.batch).token_logps, expect(c, "base_token_logps"), kTol);
}

void check_lora_dpo(const std::string& lm) {
  const Case& c = lora_case(lm);
  Report rep{c.name + "/dpo"};
  auto m = load_lora_model(lm);
  TrainRequest r = make_request(c, LossKind::DPO);
  r.apply_update = false;
  compare_scalar(rep, "dpo_loss", train_step(*m, r).loss, expect(c, "dpo_loss"), kTol);
  compare_params(rep, c, *m, m->grads, "dpo_grad/", kTol, false);
}

void check_lora_adamw(const std::string& lm) {
  const Case& c = lora_case(lm);
  Report rep{c.name + "/adamw3"};
  auto m = load_lora_model(lm);
  const std::vector<float> base = m->params;
  check_steps(rep, c, *m, make_request(c, LossKind::DPO));
  compare_params(rep, c, *m, m->lora->params, "after3/", kTolAfterUpdate, true);
  CHECK_MSG(m->params == base, rep.test + ": the frozen base moved");
}

void check_lora_merged(const std::string& lm) {
  const Case& c = lora_case(lm);
  Report rep{c.name + "/merged"};
  auto m = load_lora_model(lm);
  size_t n_expected = 0;
  for (const auto& kv : c.expected) n_expected += kv.first.rfind("merged/", 0) == 0;
  CHECK(n_expected == m->lora->targets.size());
  for (const LoraTarget& t : m->lora->targets) {
    const std::string name = t.module + ".weight";
    std::vector<float> merged;
    merge_weight_into(*m, t, merged);
    compare(rep, "merged/" + name, merged, expect(c, "merged/" + name), kTol);
  }
}

// Registers one test per case and quantity, named "<case>/<quantity>".
struct Registrar {
  std::deque<std::string> names;  // testing::Case keeps a const char*; a deque never moves its strings
  void add(const std::string& name, std::function<void()> fn) {
    names.push_back(name);
    static std::deque<testing::Register> regs;
    regs.emplace_back(names.back().c_str(), std::move(fn));
  }
  Registrar() {
    for (std::string lm :
         {"gpt2", "llama", "qwen2", "qwen3", "gemma3", "llama_rope", "smollm3", "olmo2", "mistral"}) {
      add(lm + "/logits", [lm] { check_logits(lm); });
      add(lm + "/logprobs", [lm] { check_logprobs(lm); });
      add(lm + "/dpo", [lm] { check_loss(lm, LossKind::DPO, "dpo"); });
      add(lm + "/ipo", [lm] { check_loss(lm, LossKind::IPO, "ipo"); });
      if (lm == "gpt2" || lm == "llama") add(lm + "/sft", [lm] { check_loss(lm, LossKind::SFT, "sft"); });
      add(lm + "/adamw3", [lm] { check_adamw(lm, LossKind::DPO); });
    }
    // a multimodal Gemma 3 checkpoint read as its language model: the whole model's text-only logits
    add("gemma3_mm/logits", [] { check_logits("gemma3_mm"); });
    add("gemma3_mm/logprobs", [] { check_logprobs("gemma3_mm"); });
    for (std::string lm : {"gpt2", "llama", "qwen2", "qwen3", "gemma3", "smollm3", "olmo2", "mistral"}) {
      add("lora_" + lm + "/outputs", [lm] { check_lora_outputs(lm); });
      add("lora_" + lm + "/dpo", [lm] { check_lora_dpo(lm); });
      add("lora_" + lm + "/adamw3", [lm] { check_lora_adamw(lm); });
      add("lora_" + lm + "/merged", [lm] { check_lora_merged(lm); });
    }
    for (std::string rm :
         {"gpt2_rm", "llama_rm", "qwen2_rm", "qwen3_rm", "gemma3_rm", "mistral_rm", "smollm3_rm", "olmo2_rm"}) {
      add(rm + "/scores", [rm] { check_scores(rm); });
      add(rm + "/bt", [rm] { check_loss(rm, LossKind::BT, "bt"); });
      add(rm + "/adamw3", [rm] { check_adamw(rm, LossKind::BT); });
    }
  }
};
Registrar registrar;

}  // namespace

TEST_MAIN()
