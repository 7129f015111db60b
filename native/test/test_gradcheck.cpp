// Finite-difference gradient checks: every CPU kernel on its own, then the full model loss of both families with
// every loss, checking elements of every parameter tensor. Central differences in fp32 with a step of 1e-3 leave an
// error of about 1e-4, so tolerances are 2e-2 relative + 2e-3 absolute.
#include <omp.h>

#include <cstdlib>
#include <functional>
#include <string>

#include "core/engine.h"
#include "core/lora.h"
#include "core/losses.h"
#include "core/transformer.h"
#include "cpu/ops.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;
using testing::Rand;

namespace {

constexpr double kEps = 1e-3, kRtol = 2e-2, kAtol = 2e-3;

std::vector<float> randv(size_t n, Rand& r, float std = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = r.normal(std);
  return v;
}

double dotv(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Checks analytic gradient `grad` of f at x by central differences on every element (x is perturbed in place).
void fd_check(const std::string& what, std::vector<float>& x, const std::vector<float>& grad,
              const std::function<double()>& f) {
  for (size_t i = 0; i < x.size(); i++) {
    const float keep = x[i];
    x[i] = keep + static_cast<float>(kEps);
    const double up = f();
    x[i] = keep - static_cast<float>(kEps);
    const double dn = f();
    x[i] = keep;
    const double num = (up - dn) / (2 * kEps);
    if (!(std::fabs(num - grad[i]) <= kAtol + kRtol * std::fabs(num))) {
      testing::fail(__FILE__, __LINE__, what + "[" + std::to_string(i) + "]: analytic " + std::to_string(grad[i]) +
                                            " vs numeric " + std::to_string(num));
      return;
    }
  }
}

}  // namespace

TEST(linear_both_layouts) {
  for (auto layout : {cpu::WeightLayout::OutIn, cpu::WeightLayout::InOut}) {
    Rand r(1);
    const int rows = 3, in = 4, outf = 5;
    auto x = randv(rows * in, r), w = randv(in * outf, r), b = randv(outf, r), dy = randv(rows * outf, r);
    std::vector<float> y(rows * outf);
    auto f = [&] {
      cpu::linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, outf, layout);
      return dotv(y, dy);
    };
    std::vector<float> dx(x.size(), 0), dw(w.size(), 0), db(b.size(), 0);
    cpu::linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), rows, in, outf, layout);
    fd_check("linear dx", x, dx, f);
    fd_check("linear dw", w, dw, f);
    fd_check("linear db", b, db, f);
  }
}

TEST(layernorm) {
  Rand r(2);
  const int rows = 3, d = 6;
  auto x = randv(rows * d, r), w = randv(d, r), b = randv(d, r), dy = randv(rows * d, r);
  std::vector<float> y(rows * d), mean(rows), rstd(rows);
  auto f = [&] {
    cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, d, 1e-5f);
    return dotv(y, dy);
  };
  f();
  std::vector<float> dx(x.size(), 0), dw(d, 0), db(d, 0);
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                          rows, d);
  fd_check("layernorm dx", x, dx, f);
  fd_check("layernorm dw", w, dw, f);
  fd_check("layernorm db", b, db, f);
}

TEST(rmsnorm) {
  Rand r(3);
  const int rows = 3, d = 6;
  auto x = randv(rows * d, r), w = randv(d, r), dy = randv(rows * d, r);
  std::vector<float> y(rows * d), rstd(rows);
  auto f = [&] {
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), rows, d, 1e-6f);
    return dotv(y, dy);
  };
  f();
  std::vector<float> dx(x.size(), 0), dw(d, 0);
  cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), rows, d);
  fd_check("rmsnorm dx", x, dx, f);
  fd_check("rmsnorm dw", w, dw, f);
}

TEST(gelu_and_swiglu) {
  Rand r(4);
  const int n = 20;
  auto x = randv(n, r, 2.0f), g = randv(n, r, 2.0f), u = randv(n, r), dy = randv(n, r);
  std::vector<float> y(n);
  auto fg = [&] {
    cpu::gelu_forward(y.data(), x.data(), n);
    return dotv(y, dy);
  };
  std::vector<float> dx(n, 0);
  cpu::gelu_backward(dx.data(), x.data(), dy.data(), n);
  fd_check("gelu", x, dx, fg);
  auto fs = [&] {
    cpu::swiglu_forward(y.data(), g.data(), u.data(), n);
    return dotv(y, dy);
  };
  std::vector<float> dg(n, 0), du(n, 0);
  cpu::swiglu_backward(dg.data(), du.data(), dy.data(), g.data(), u.data(), n);
  fd_check("swiglu dgate", g, dg, fs);
  fd_check("swiglu dup", u, du, fs);
}

TEST(rope) {
  Rand r(5);
  const int rows = 4, heads = 2, hd = 6, stride = heads * hd;
  std::vector<int32_t> pos = {0, 3, 7, 30};
  auto x = randv(rows * stride, r), dy = randv(rows * stride, r);
  auto f = [&] {
    std::vector<float> y = x;
    cpu::rope_forward(y.data(), rows, stride, heads, hd, pos.data(), 10000.0f);
    return dotv(y, dy);
  };
  std::vector<float> dx = dy;
  cpu::rope_backward(dx.data(), rows, stride, heads, hd, pos.data(), 10000.0f);
  fd_check("rope", x, dx, f);
}

TEST(attention_ragged_gqa) {
  Rand r(6);
  const int H = 4, KV = 2, hd = 3;
  std::vector<int32_t> offsets = {0, 3, 8, 9};  // lengths 3, 5, 1
  const int T = 9, n_seq = 3;
  auto q = randv(T * H * hd, r), k = randv(T * KV * hd, r), v = randv(T * KV * hd, r), dy = randv(T * H * hd, r);
  std::vector<float> y(T * H * hd), probs(cpu::attention_probs_size(offsets.data(), n_seq, H));
  auto f = [&] {
    cpu::attention_forward(y.data(), probs.data(), q.data(), H * hd, k.data(), KV * hd, v.data(), KV * hd,
                           offsets.data(), n_seq, H, KV, hd);
    return dotv(y, dy);
  };
  f();
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), probs.data(), q.data(), H * hd, k.data(),
                          KV * hd, v.data(), KV * hd, offsets.data(), n_seq, H, KV, hd);
  fd_check("attention dq", q, dq, f);
  fd_check("attention dk", k, dk, f);
  fd_check("attention dv", v, dv, f);
  // causality and no cross-sequence attention: changing the last token of sequence 1 leaves sequence 0 and
  // earlier tokens of sequence 1 unchanged
  f();
  const std::vector<float> before = y;
  for (int i = 0; i < KV * hd; i++) k[7 * KV * hd + i] += 1.0f, v[7 * KV * hd + i] += 1.0f;
  f();
  for (int t = 0; t < 7; t++)
    for (int i = 0; i < H * hd; i++) CHECK(y[t * H * hd + i] == before[t * H * hd + i]);
}

TEST(logprob_head_chunked) {
  Rand r(7);
  const int n_h = 5, d = 4, V = 11, n = 4;
  auto h = randv(n_h * d, r), w = randv(V * d, r), g = randv(n, r);
  std::vector<int32_t> src = {0, 2, 2, 4}, target = {3, 10, 0, 5};
  std::vector<float> lp(n);
  auto f = [&] {
    cpu::logprob_forward(lp.data(), h.data(), src.data(), target.data(), n, w.data(), d, V);
    return dotv(lp, g);
  };
  std::vector<float> dh(h.size(), 0), dw(w.size(), 0);
  cpu::logprob_backward(dh.data(), dw.data(), g.data(), h.data(), src.data(), target.data(), n, w.data(), d, V);
  fd_check("logprob dh", h, dh, f);
  fd_check("logprob dw", w, dw, f);
  // the training path: the forward keeps the softmax and the backward uses it instead of recomputing the logits
  std::vector<float> probs, lp2(n), dh2(h.size(), 0), dw2(w.size(), 0);
  f();  // lp at the unperturbed weights
  cpu::logprob_forward(lp2.data(), h.data(), src.data(), target.data(), n, w.data(), d, V, &probs);
  CHECK(probs.size() == static_cast<size_t>(n) * V && lp2 == lp);
  cpu::logprob_backward(dh2.data(), dw2.data(), g.data(), h.data(), src.data(), target.data(), n, w.data(), d, V,
                        &probs);
  for (size_t i = 0; i < dh.size(); i++) CHECK_MSG(std::fabs(dh2[i] - dh[i]) < 1e-6, "kept-softmax dh differs");
  for (size_t i = 0; i < dw.size(); i++) CHECK_MSG(std::fabs(dw2[i] - dw[i]) < 1e-6, "kept-softmax dw differs");
  CHECK(!cpu::logprob_probs_fit(4096, 50257));  // a large vocabulary's batch is recomputed, never kept
}

// ---- full model ------------------------------------------------------------------------------------------------

namespace {

TrainRequest pair_request(LossKind loss, const ModelConfig& c) {
  TrainRequest r;
  r.loss = loss;
  r.batch = testing::random_batch({5, 7, 4, 6}, {2, 3, 1, 4}, c.vocab_size, 11);
  r.chosen = {0, 2};
  r.rejected = {1, 3};
  r.weights = {1.0f, 0.6f};
  r.ref_chosen = {-9.0f, -7.5f};
  r.ref_rejected = {-10.0f, -5.0f};
  r.beta = 0.5f;
  r.apply_update = false;
  return r;
}

// Every tensor: 3 elements (first, middle, last) checked against central differences of the full loss.
// Cached reference log-probs are set near the policy's own, so pair losses are O(1) (the fp32 rounding error of a
// central difference grows with the loss value).
void check_model_grads(const std::string& what, Model& m, TrainRequest req) {
  if (!req.ref_chosen.empty()) {
    const LogprobResult lp = compute_logprobs(m, req.batch);
    for (size_t j = 0; j < req.chosen.size(); j++) {
      req.ref_chosen[j] = lp.seq_logps[req.chosen[j]] + 0.3f * (j + 1);
      req.ref_rejected[j] = lp.seq_logps[req.rejected[j]] - 0.2f * (j + 1);
    }
  }
  train_step(m, req);
  const std::vector<float> grads = m.grads;
  for (const ParamInfo& t : trainable_layout(m).tensors) {  // every weight, or a LoRA model's adapters
    for (size_t i : {size_t(0), t.numel / 2, t.numel - 1}) {
      float& p = trainable_params(m)[t.offset + i];
      const float keep = p;
      p = keep + static_cast<float>(kEps);
      const double up = train_step(m, req).loss;
      p = keep - static_cast<float>(kEps);
      const double dn = train_step(m, req).loss;
      p = keep;
      const double num = (up - dn) / (2 * kEps), ana = grads[t.offset + i];
      if (!(std::fabs(num - ana) <= kAtol + kRtol * std::fabs(num)))
        testing::fail(__FILE__, __LINE__, what + " " + t.name + "[" + std::to_string(i) + "]: analytic " +
                                              std::to_string(ana) + " vs numeric " + std::to_string(num));
    }
  }
}

}  // namespace

TEST(model_gpt2_dpo_ipo_sft) {
  auto m = make_model(testing::tiny_gpt2());
  testing::randomize(*m, 21);
  check_model_grads("gpt2 dpo", *m, pair_request(LossKind::DPO, m->cfg));
  check_model_grads("gpt2 ipo", *m, pair_request(LossKind::IPO, m->cfg));
  TrainRequest sft = pair_request(LossKind::SFT, m->cfg);
  sft.weights = {1.0f, 0.5f, 2.0f, 0.0f};
  check_model_grads("gpt2 sft", *m, sft);
}

TEST(model_llama_gqa_dpo_ipo_sft) {
  auto m = make_model(testing::tiny_llama());
  testing::randomize(*m, 22);
  check_model_grads("llama dpo", *m, pair_request(LossKind::DPO, m->cfg));
  check_model_grads("llama ipo", *m, pair_request(LossKind::IPO, m->cfg));
  TrainRequest sft = pair_request(LossKind::SFT, m->cfg);
  sft.weights = {};
  check_model_grads("llama sft", *m, sft);
}

TEST(model_qwen3_qk_norm_dpo_sft) {
  auto m = make_model(testing::tiny_qwen3());
  testing::randomize(*m, 24);
  check_model_grads("qwen3 dpo", *m, pair_request(LossKind::DPO, m->cfg));
  TrainRequest sft = pair_request(LossKind::SFT, m->cfg);
  sft.weights = {};
  check_model_grads("qwen3 sft", *m, sft);
}

TEST(model_gemma3_post_norms_window_dpo_sft) {
  auto m = make_model(testing::tiny_gemma3());
  testing::randomize(*m, 26);
  check_model_grads("gemma3 dpo", *m, pair_request(LossKind::DPO, m->cfg));
  TrainRequest sft = pair_request(LossKind::SFT, m->cfg);
  sft.weights = {};
  check_model_grads("gemma3 sft", *m, sft);
}

// LoRA: only the adapters train; their gradients pass through the frozen base (its input gradients, the head).
// Every target kind of every family, with B random so A's gradient is not zero.
TEST(model_lora_adapters_every_family_dpo_sft) {
  for (const ModelConfig& c : testing::tiny_families()) {
    auto m = make_model(c);
    testing::randomize(*m, 25);
    testing::enable_random_lora(*m, LoraConfig{2, 3.0f, {"all-linear"}}, 7, 0.5f);
    const std::string name = arch_name(c.arch);
    check_model_grads(name + " lora dpo", *m, pair_request(LossKind::DPO, m->cfg));
    TrainRequest sft = pair_request(LossKind::SFT, m->cfg);
    sft.weights = {};
    check_model_grads(name + " lora sft", *m, sft);
    CHECK(m->grads.size() == m->lora->params.size());
  }
}

TEST(model_hinge_simpo_and_label_smoothed_dpo) {
  for (auto cfg : {testing::tiny_gpt2(), testing::tiny_qwen3()}) {
    auto m = make_model(cfg);
    testing::randomize(*m, 25);
    const std::string name = arch_name(cfg.arch);
    check_model_grads(name + " hinge", *m, pair_request(LossKind::HINGE, m->cfg));  // beta h = -0.25, -0.5: linear part
    TrainRequest smoothed = pair_request(LossKind::DPO, m->cfg);
    smoothed.label_smoothing = 0.2f;
    check_model_grads(name + " dpo, label smoothing 0.2", *m, smoothed);
    TrainRequest simpo = pair_request(LossKind::SIMPO, m->cfg);
    simpo.ref_chosen.clear();
    simpo.ref_rejected.clear();
    simpo.label_smoothing = 0.1f;
    check_model_grads(name + " simpo", *m, simpo);
  }
}

// The pair losses' values and per-sequence gradients against their formulas (as TRL writes them: sigmoid with
// label_smoothing, hinge = relu(1 - beta h)), on both sides of the hinge's kink.
TEST(pair_losses_follow_their_formulas) {
  TrainRequest r;
  r.chosen = {0, 2};
  r.rejected = {1, 3};
  r.weights = {1.0f, 0.5f};
  r.beta = 0.5f;
  const std::vector<double> logp = {-4.0, -6.0, -3.0, -2.0};
  const std::vector<float> ref_c = {-5.0f, -3.5f}, ref_r = {-5.5f, -3.0f};
  const double h[2] = {(-4.0 + 5.0) - (-6.0 + 5.5), (-3.0 + 3.5) - (-2.0 + 3.0)};  // 1.5 (beta h 0.75), -0.5
  auto logsig = [](double x) { return -std::log1p(std::exp(-x)); };
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  for (const double eps : {0.0, 0.1}) {
    r.loss = LossKind::DPO;
    r.label_smoothing = static_cast<float>(eps);
    const double e = r.label_smoothing;  // the float the engine sees
    TrainStats st;
    const std::vector<double> g = sequence_loss(r, logp, 10, ref_c, ref_r, st);
    double want = 0;
    for (int j = 0; j < 2; j++) {
      const double bh = r.beta * h[j], w = r.weights[j];
      want += w * (-(1 - e) * logsig(bh) - e * logsig(-bh)) / 2;
      const double dl = w * (-(1 - e) * r.beta * sig(-bh) + e * r.beta * sig(bh)) / 2;
      CHECK_MSG(std::fabs(g[r.chosen[j]] - dl) < 1e-12 && std::fabs(g[r.rejected[j]] + dl) < 1e-12,
                "dpo eps " + std::to_string(eps) + " pair " + std::to_string(j));
    }
    CHECK_MSG(std::fabs(st.loss - want) < 1e-12, "dpo eps " + std::to_string(eps) + ": " + std::to_string(st.loss));
  }
  r.loss = LossKind::HINGE;
  r.label_smoothing = 0;
  TrainStats st;
  const std::vector<double> g = sequence_loss(r, logp, 10, ref_c, ref_r, st);
  // pair 0: beta h = 0.75 < 1 -> loss 0.25, gradient -beta; pair 1: beta h = -0.25 -> loss 1.25
  CHECK(std::fabs(st.loss - (1.0 * 0.25 + 0.5 * 1.25) / 2) < 1e-12);
  CHECK(std::fabs(g[0] + 0.5 / 2) < 1e-12 && std::fabs(g[1] - 0.5 / 2) < 1e-12);
  CHECK(std::fabs(g[2] + 0.5 * 0.5 / 2) < 1e-12 && std::fabs(g[3] - 0.5 * 0.5 / 2) < 1e-12);
  // past the margin (beta h >= 1) a pair costs nothing and moves nothing
  r.beta = 1.0f;  // pair 0: beta h = 1.5
  const std::vector<double> past = sequence_loss(r, logp, 10, ref_c, ref_r, st = TrainStats{});
  CHECK(past[0] == 0.0 && past[1] == 0.0 && std::fabs(st.loss - 0.5 * 1.5 / 2) < 1e-12);

  // SimPO (TRL's CPO loss_type "simpo"): mean token log-probs, no reference; sequences of 2, 4, 1 and 5 response
  // tokens; z = beta (logp_c / n_c - logp_r / n_r) - gamma
  r.loss = LossKind::SIMPO;
  r.beta = 2.0f;
  r.simpo_gamma = 0.5f;
  r.label_smoothing = 0.1f;
  r.batch.offsets = {0, 5, 11, 14, 20};
  r.batch.prompt_lens = {3, 2, 2, 1};
  r.batch.tokens.assign(20, 1);
  const std::vector<double> simpo = sequence_loss(r, logp, 12, {}, {}, st = TrainStats{});
  const int n[4] = {2, 4, 1, 5};
  double want = 0;
  for (int j = 0; j < 2; j++) {
    const int c = r.chosen[j], rj = r.rejected[j];
    const double e = r.label_smoothing, w = r.weights[j];
    const double z = r.beta * (logp[c] / n[c] - logp[rj] / n[rj]) - r.simpo_gamma;
    want += w * (-(1 - e) * logsig(z) - e * logsig(-z)) / 2;
    const double dz = w * (-(1 - e) * sig(-z) + e * sig(z)) / 2;  // dLoss/dz
    CHECK_MSG(std::fabs(simpo[c] - dz * r.beta / n[c]) < 1e-12 && std::fabs(simpo[rj] + dz * r.beta / n[rj]) < 1e-12,
              "simpo pair " + std::to_string(j));
  }
  CHECK_MSG(std::fabs(st.loss - want) < 1e-12, "simpo loss " + std::to_string(st.loss));
  CHECK(std::fabs(st.chosen_reward - (r.beta * (logp[0] / 2 + logp[2] / 1)) / 2) < 1e-12);
}

TEST(label_smoothing_and_simpo_inputs_are_checked) {
  auto m = make_model(testing::tiny_gpt2());
  TrainRequest r = pair_request(LossKind::IPO, m->cfg);
  r.label_smoothing = 0.1f;
  CHECK_THROWS(train_step(*m, r), "train step (ipo): labelSmoothing 0.100000 must be in [0, 0.5) and is for DPO and "
                                  "SimPO only");
  r.loss = LossKind::DPO;
  r.label_smoothing = 0.5f;
  CHECK_THROWS(train_step(*m, r), "must be in [0, 0.5)");
  // SimPO's inputs: no reference, and a response to average over in every paired sequence
  r.loss = LossKind::SIMPO;
  r.label_smoothing = 0;
  CHECK_THROWS(train_step(*m, r), "train step (simpo): SimPO uses no reference");
  r.ref_chosen.clear();
  r.ref_rejected.clear();
  r.batch.offsets.back() = r.batch.offsets[r.batch.offsets.size() - 2] + r.batch.prompt_lens.back();
  r.batch.tokens.resize(r.batch.offsets.back());
  CHECK_THROWS(train_step(*m, r), "train step (simpo): sequence 3 has no response tokens");
}

TEST(model_reward_bt_every_family) {
  for (auto cfg : testing::tiny_families()) {
    cfg.reward_model = true;
    auto m = make_model(cfg);
    testing::randomize(*m, 23);
    TrainRequest r = pair_request(LossKind::BT, cfg);
    r.ref_chosen.clear();
    r.ref_rejected.clear();
    check_model_grads(std::string("bt ") + arch_name(cfg.arch), *m, r);
  }
}

// Mixed precision (TrainRequest::bf16): the gradients cannot pass a finite-difference check (bf16 rounding is not
// differentiable), so they are compared with the fp32 ones: the loss within 1%, every tensor's gradient within 10%
// of its norm, the whole gradient at cosine > 0.999 — and not bitwise equal, which proves the bf16 path ran.
TEST(bf16_mixed_precision_gradients_track_fp32) {
  for (auto cfg : testing::tiny_families())
    for (LossKind loss : {LossKind::DPO, LossKind::SFT, LossKind::BT}) {
      cfg.reward_model = loss == LossKind::BT;
      auto m = make_model(cfg);
      testing::randomize(*m, 24);
      TrainRequest r = pair_request(loss, cfg);
      if (loss != LossKind::DPO) r.ref_chosen.clear(), r.ref_rejected.clear();
      if (loss == LossKind::SFT) r.weights = {};
      const TrainStats s32 = train_step(*m, r);
      const std::vector<float> g32 = m->grads;
      r.bf16 = true;
      const TrainStats s16 = train_step(*m, r);
      const std::vector<float>& g16 = m->grads;
      const std::string what = std::string(arch_name(cfg.arch)) + " loss " + std::to_string(static_cast<int>(loss));
      CHECK_MSG(std::fabs(s16.loss - s32.loss) <= 0.01 * std::fabs(s32.loss) + 1e-4,
                what + ": loss " + std::to_string(s16.loss) + " vs fp32 " + std::to_string(s32.loss));
      double dot = 0, n32 = 0, n16 = 0;
      for (size_t i = 0; i < g32.size(); i++) {
        dot += static_cast<double>(g32[i]) * g16[i];
        n32 += static_cast<double>(g32[i]) * g32[i];
        n16 += static_cast<double>(g16[i]) * g16[i];
      }
      CHECK_MSG(dot / std::sqrt(n32 * n16) > 0.999, what + ": gradient cosine " + std::to_string(dot / std::sqrt(n32 * n16)));
      for (const ParamInfo& t : m->layout.tensors) {
        double diff = 0, norm = 0;
        for (size_t i = t.offset; i < t.offset + t.numel; i++) {
          diff += std::pow(static_cast<double>(g16[i]) - g32[i], 2);
          norm += std::pow(static_cast<double>(g32[i]), 2);
        }
        CHECK_MSG(std::sqrt(diff) <= 0.1 * std::sqrt(norm) + 1e-6,
                  what + " " + t.name + ": |g_bf16 - g_fp32| = " + std::to_string(std::sqrt(diff)) + " of |g| = " +
                      std::to_string(std::sqrt(norm)));
      }
      CHECK_MSG(g16 != g32, what + ": bf16 gradients equal the fp32 ones bit for bit: the bf16 path did not run");
    }
}

TEST(bf16_training_does_not_depend_on_the_thread_count) {
  // gemm_bf16 gives every element of C one owner and a fixed order over K whatever the threads, so a bf16 step is
  // bitwise the same on 1 and 2 threads (a size where the products split into several 64-row slabs)
  ModelConfig cfg = testing::tiny_gpt2(64);
  cfg.d_model = 32;
  cfg.d_ff = 64;
  cfg.n_head = 2;
  cfg.n_kv_head = 2;
  cfg.head_dim = 16;
  cfg.max_positions = 128;
  std::vector<float> grads[2];
  const int threads = omp_get_max_threads();
  for (int t : {1, 2}) {
    omp_set_num_threads(t);
    auto m = make_model(cfg);
    testing::randomize(*m, 25);
    TrainRequest r = pair_request(LossKind::DPO, cfg);
    r.batch = testing::random_batch({90, 70, 80, 100}, {10, 20, 5, 30}, cfg.vocab_size, 12);
    r.ref_chosen = {-300.0f, -250.0f};
    r.ref_rejected = {-310.0f, -240.0f};
    r.bf16 = true;
    train_step(*m, r);
    grads[t - 1] = m->grads;
  }
  omp_set_num_threads(threads);
  CHECK(grads[0] == grads[1]);
}

namespace {

// Pair 0's chosen and rejected share a 9-token prompt; pair 1's rejected is its chosen's first 11 tokens, of which
// 10 are shared (each sequence keeps one own token); pair 2 shares nothing. The training forward runs the shared
// rows once (SharedRows).
TrainRequest shared_prompt_request(LossKind loss, const ModelConfig& c) {
  TrainRequest r = pair_request(loss, c);
  const Batch base = testing::random_batch({12, 13, 14, 11, 6, 7}, {9, 9, 9, 9, 2, 3}, c.vocab_size, 12);
  r.batch = base;
  for (int i = 0; i < 9; i++) r.batch.tokens[base.offsets[1] + i] = base.tokens[i];  // pair 0's prompt
  for (int i = 0; i < 11; i++) r.batch.tokens[base.offsets[3] + i] = base.tokens[base.offsets[2] + i];  // pair 1
  r.chosen = {0, 2, 4};
  r.rejected = {1, 3, 5};
  r.weights = {1.0f, 0.6f, 0.8f};
  r.ref_chosen = {-9.0f, -7.5f, -6.0f};
  r.ref_rejected = {-10.0f, -5.0f, -7.0f};
  return r;
}

// One step (an update: apply_update on) of a fresh model randomized with `seed`, and what it left.
struct StepResult {
  TrainStats stats;
  std::vector<float> grads, params;
  size_t kept_layers = 0;  // blocks whose activations the forward kept
};
StepResult one_step(const ModelConfig& cfg, uint64_t seed, TrainRequest r, bool bf16) {
  auto m = make_model(cfg);
  testing::randomize(*m, seed);
  if (r.loss == LossKind::BT) r.ref_chosen.clear(), r.ref_rejected.clear();
  r.bf16 = bf16;
  r.apply_update = true;
  StepResult out;
  out.stats = train_step(*m, r);
  out.grads = m->grads;
  out.params = m->params;
  out.kept_layers = workspace_of(*m).train.layers.size();
  return out;
}

}  // namespace

TEST(shared_prompts_train_with_exact_gradients) {
  // finite differences through the tree's forward and backward, in both families
  for (auto cfg : testing::tiny_families()) {
    auto m = make_model(cfg);
    testing::randomize(*m, 27);
    const TrainRequest r = shared_prompt_request(LossKind::DPO, cfg);
    train_step(*m, r);
    CHECK_MSG(workspace_of(*m).train.shared.T == r.batch.n_tokens() - 9 - 10,
              "the prompts were not shared as planned: " + std::to_string(workspace_of(*m).train.shared.T) +
                  " rows for " + std::to_string(r.batch.n_tokens()) + " tokens");
    check_model_grads(std::string(arch_name(cfg.arch)) + " shared dpo", *m, r);
  }
}

TEST(shared_prompts_match_the_plain_step) {
  // against OPTUNE_SHARE_PREFIX=0: the same loss, and gradients equal up to the order of their sums; fp32 and bf16,
  // DPO and BT, with and without recomputation
  for (auto cfg : testing::tiny_families())
    for (bool bf16 : {false, true})
      for (LossKind loss : {LossKind::DPO, LossKind::BT})
        for (const char* recompute : {"0", "1"}) {
          cfg.reward_model = loss == LossKind::BT;
          setenv("OPTUNE_RECOMPUTE", recompute, 1);
          StepResult step[2];
          for (int plain : {0, 1}) {
            if (plain) setenv("OPTUNE_SHARE_PREFIX", "0", 1);
            step[plain] = one_step(cfg, 28, shared_prompt_request(loss, cfg), bf16);
            unsetenv("OPTUNE_SHARE_PREFIX");
          }
          unsetenv("OPTUNE_RECOMPUTE");

          const std::string what = std::string(arch_name(cfg.arch)) + (bf16 ? " bf16" : " fp32") +
                                   (loss == LossKind::BT ? " BT" : " DPO") + " recompute " + recompute;
          const float loss0 = step[0].stats.loss, loss1 = step[1].stats.loss;
          CHECK_MSG(std::fabs(loss0 - loss1) <= 1e-5 * (1 + std::fabs(loss1)),
                    what + ": loss " + std::to_string(loss0) + " vs " + std::to_string(loss1));
          double diff = 0, norm = 0;
          for (size_t i = 0; i < step[1].grads.size(); i++) {
            diff += std::pow(static_cast<double>(step[0].grads[i]) - step[1].grads[i], 2);
            norm += std::pow(static_cast<double>(step[1].grads[i]), 2);
          }
          // bf16 rounds a shared row's summed gradient once where the plain step rounds each member's: bf16's size
          CHECK_MSG(std::sqrt(diff) <= (bf16 ? 5e-3 : 1e-5) * std::sqrt(norm),
                    what + ": |g_shared - g_plain| / |g| = " + std::to_string(std::sqrt(diff / norm)));
        }
}

TEST(lora_adapters_train_exactly_through_shared_prompts_and_recomputed_blocks) {
  // the adapters' rows (LayerActs::lora_h) follow the tree's rows and are rebuilt when a block is recomputed
  for (auto cfg : testing::tiny_families()) {
    auto m = make_model(cfg);
    testing::randomize(*m, 29);
    testing::enable_random_lora(*m, LoraConfig{2, 3.0f, {"all-linear"}}, 5, 0.5f);
    const TrainRequest req = shared_prompt_request(LossKind::DPO, cfg);
    check_model_grads(std::string(arch_name(cfg.arch)) + " lora shared dpo", *m, req);
    setenv("OPTUNE_RECOMPUTE", "1", 1);
    check_model_grads(std::string(arch_name(cfg.arch)) + " lora shared dpo recomputed", *m, req);
    unsetenv("OPTUNE_RECOMPUTE");
  }
}

TEST(recomputed_blocks_give_the_same_step_bit_for_bit) {
  // OPTUNE_RECOMPUTE=1 keeps only the blocks' inputs and reruns each block in backward: the loss, gradients and
  // updated weights must equal a step that kept every activation, in both families, both precisions and with BT
  for (auto cfg : testing::tiny_families())
    for (bool bf16 : {false, true})
      for (LossKind loss : {LossKind::DPO, LossKind::BT}) {
        cfg.reward_model = loss == LossKind::BT;
        StepResult step[2];
        for (int recompute : {0, 1}) {
          setenv("OPTUNE_RECOMPUTE", recompute ? "1" : "0", 1);
          step[recompute] = one_step(cfg, 26, pair_request(loss, cfg), bf16);
        }
        unsetenv("OPTUNE_RECOMPUTE");
        const std::string what = std::string(arch_name(cfg.arch)) + (bf16 ? " bf16" : " fp32") +
                                 (loss == LossKind::BT ? " BT" : " DPO");
        CHECK_MSG(step[0].kept_layers == static_cast<size_t>(cfg.n_layer) && step[1].kept_layers == 1,
                  what + ": kept " + std::to_string(step[0].kept_layers) + " / " +
                      std::to_string(step[1].kept_layers));
        CHECK_MSG(step[0].stats.loss == step[1].stats.loss && step[0].grads == step[1].grads &&
                      step[0].params == step[1].params,
                  what + ": recomputation changed the step");
      }
}

TEST(zero_weight_pair_contributes_no_gradient) {
  // wDPO: a pair with weight 0 must not move the gradient: grads with weights {1, 0} equal grads of pair 0 alone
  auto m = make_model(testing::tiny_gpt2());
  testing::randomize(*m, 24);
  TrainRequest both = pair_request(LossKind::DPO, m->cfg);
  both.weights = {1.0f, 0.0f};
  train_step(*m, both);
  const std::vector<float> g_both = m->grads;
  TrainRequest one = both;
  one.chosen = {0};
  one.rejected = {1};
  one.weights = {0.5f};  // the loss is a mean over pairs: 1/2 * l_0 == 0.5 * l_0 / 1
  one.ref_chosen = {both.ref_chosen[0]};
  one.ref_rejected = {both.ref_rejected[0]};
  train_step(*m, one);
  double max_diff = 0;
  for (size_t i = 0; i < g_both.size(); i++) max_diff = std::max(max_diff, (double)std::fabs(g_both[i] - m->grads[i]));
  CHECK_MSG(max_diff < 1e-6, "max diff " + std::to_string(max_diff));
}

TEST(large_vocabulary_head_runs_in_pair_groups_with_the_same_gradients) {
  // 5 sequences of ~140 response tokens at V = 30000 exceed logprob_probs_fit's budget, so the LM head runs group
  // by group of connected sequences (here {0, 1} and {2, 3, 4}: pairs (2, 3) and (2, 4) share sequence 2), each
  // group's softmax kept for its backward. The gradients and loss must equal the sum over pairs (sequences for
  // SFT) of each one's own step on a batch of just its sequences, which fits and runs the whole-batch path; in fp32,
  // and for DPO in bf16 too.
  ModelConfig c = testing::tiny_gpt2(30000);
  c.max_positions = 256;
  auto m = make_model(c);
  testing::randomize(*m, 26, 0.3f);
  const std::vector<int> lens = {150, 140, 160, 130, 150}, prompts = {10, 6, 12, 4, 9};
  const Batch b = testing::random_batch(lens, prompts, c.vocab_size, 27);
  CHECK(!cpu::logprob_probs_fit(b.n_response_tokens(), c.vocab_size));
  CHECK(cpu::logprob_probs_fit(3 * 146, c.vocab_size));  // the larger group fits
  auto sub_batch = [&](const std::vector<int>& seqs) {
    std::vector<int> l, p;
    for (int s : seqs) l.push_back(lens[s]), p.push_back(prompts[s]);
    Batch sb = testing::random_batch(l, p, c.vocab_size, 0);
    sb.tokens.clear();
    for (int s : seqs) sb.tokens.insert(sb.tokens.end(), b.tokens.begin() + b.offsets[s], b.tokens.begin() + b.offsets[s + 1]);
    return sb;
  };
  auto compare = [&](const std::string& what, const TrainStats& whole, const std::vector<float>& g_whole,
                     double loss_parts, const std::vector<double>& g_parts) {
    double scale = 0, diff = 0;
    for (size_t i = 0; i < g_whole.size(); i++) {
      scale = std::max(scale, std::fabs(g_parts[i]));
      diff = std::max(diff, std::fabs(g_whole[i] - g_parts[i]));
    }
    CHECK_MSG(scale > 0 && diff <= 1e-5 * scale, what + ": max gradient difference " + std::to_string(diff) +
                                                      " at scale " + std::to_string(scale));
    CHECK_MSG(std::fabs(whole.loss - loss_parts) <= 1e-6 * std::max(1.0, std::fabs(loss_parts)),
              what + ": loss " + std::to_string(whole.loss) + " vs " + std::to_string(loss_parts));
  };

  // bf16 (the head packed once for both groups) without the shared sequence: a bf16 step rounds the summed gradient
  // of a sequence in two pairs, where the parts would be rounded one by one (~1e-3 apart)
  for (bool bf16 : {false, true}) {
    TrainRequest r;
    r.loss = LossKind::DPO;
    r.batch = b;
    r.chosen = {0, 2, 2};
    r.rejected = {1, 3, 4};
    r.weights = {1.0f, 0.7f, 1.3f};
    r.ref_chosen = {-1450.0f, -1500.0f, -1500.0f};
    r.ref_rejected = {-1400.0f, -1300.0f, -1470.0f};
    if (bf16) {
      for (auto* v : {&r.chosen, &r.rejected}) v->pop_back();
      for (auto* v : {&r.weights, &r.ref_chosen, &r.ref_rejected}) v->pop_back();
    }
    r.beta = 0.1f;
    r.apply_update = false;
    r.bf16 = bf16;
    const TrainStats whole = train_step(*m, r);
    const std::vector<float> g_whole = m->grads;
    std::vector<double> g_parts(g_whole.size(), 0.0);
    double loss_parts = 0;
    for (size_t j = 0; j < r.chosen.size(); j++) {
      TrainRequest one = r;
      one.batch = sub_batch({r.chosen[j], r.rejected[j]});
      one.chosen = {0};
      one.rejected = {1};
      one.weights = {r.weights[j] / static_cast<float>(r.chosen.size())};  // the loss is a mean over pairs
      one.ref_chosen = {r.ref_chosen[j]};
      one.ref_rejected = {r.ref_rejected[j]};
      loss_parts += train_step(*m, one).loss;
      for (size_t i = 0; i < g_parts.size(); i++) g_parts[i] += m->grads[i];
    }
    compare(bf16 ? "dpo bf16" : "dpo", whole, g_whole, loss_parts, g_parts);
  }

  // SFT: the gradient is a mean over all response tokens, so a sequence alone is weighted by its share of them
  TrainRequest sft;
  sft.loss = LossKind::SFT;
  sft.batch = b;
  sft.weights = {1.0f, 0.5f, 2.0f, 0.0f, 1.5f};
  sft.apply_update = false;
  const TrainStats sft_whole = train_step(*m, sft);
  const std::vector<float> g_sft = m->grads;
  std::vector<double> g_parts(g_sft.size(), 0.0);
  double loss_parts = 0;
  for (int s = 0; s < b.n_seq(); s++) {
    TrainRequest one = sft;
    one.batch = sub_batch({s});
    one.weights = {sft.weights[s] * static_cast<float>(lens[s] - prompts[s]) / b.n_response_tokens()};
    loss_parts += train_step(*m, one).loss;
    for (size_t i = 0; i < g_parts.size(); i++) g_parts[i] += m->grads[i];
  }
  compare("sft", sft_whole, g_sft, loss_parts, g_parts);
}

TEST(reference_model_equals_cached_logprobs) {
  auto m = make_model(testing::tiny_llama());
  testing::randomize(*m, 25);
  auto ref = clone_model(*m);
  testing::randomize(*ref, 26);
  TrainRequest with_model = pair_request(LossKind::DPO, m->cfg);
  with_model.ref_chosen.clear();
  with_model.ref_rejected.clear();
  with_model.ref_model = ref.get();
  const TrainStats a = train_step(*m, with_model);
  const LogprobResult lr = compute_logprobs(*ref, with_model.batch);
  TrainRequest cached = pair_request(LossKind::DPO, m->cfg);
  cached.ref_chosen = {lr.seq_logps[0], lr.seq_logps[2]};
  cached.ref_rejected = {lr.seq_logps[1], lr.seq_logps[3]};
  const TrainStats b = train_step(*m, cached);
  CHECK(a.loss == b.loss);
  CHECK(a.margin == b.margin);
}

TEST(bad_requests_throw_clear_errors) {
  auto m = make_model(testing::tiny_gpt2());
  TrainRequest r = pair_request(LossKind::DPO, m->cfg);
  r.batch.tokens[3] = 99;
  CHECK_THROWS(train_step(*m, r), "outside the vocabulary");
  r = pair_request(LossKind::DPO, m->cfg);
  r.weights = {1.0f, NAN};
  CHECK_THROWS(train_step(*m, r), "weight 1");
  r = pair_request(LossKind::DPO, m->cfg);
  r.chosen = {0, 9};
  CHECK_THROWS(train_step(*m, r), "outside the batch");
  r = pair_request(LossKind::DPO, m->cfg);
  r.ref_chosen.clear();
  r.ref_rejected.clear();
  CHECK_THROWS(train_step(*m, r), "reference");
  r = pair_request(LossKind::BT, m->cfg);
  CHECK_THROWS(train_step(*m, r), "no reward score head");
  r = pair_request(LossKind::DPO, m->cfg);
  r.batch.prompt_lens[1] = 0;
  CHECK_THROWS(train_step(*m, r), "prompt_lens[1]");
}

TEST_MAIN()
