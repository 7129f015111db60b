// The whole engine on CUDA against the CPU engine: log-probs, logits, reward scores, every loss's value, statistics
// and every parameter gradient, three AdamW steps, a DPO step with a reference model, host/device sync. Each case
// builds a CPU model and a copy placed on the GPU (set_device) and runs the same engine.h calls on both.
// Configs: GPT-2 (LayerNorm, GELU, learned positions, tied head, biases) and Qwen2/Llama (RMSNorm, SwiGLU, RoPE,
// GQA 4/2 heads, q/k/v biases, untied head), sequences up to 70 tokens so attention spans several 32-row tiles.
// Tolerances (|gpu - cpu| <= rtol * (|cpu| + max|cpu|) per tensor, the kernel tests' rule):
//   fp32: 1e-4 for log-probs, scores, logits, losses and gradients; AdamW weights after 3 steps 1e-4.
//   bf16 (bf16 GEMM operands, fp32 everything else): log-probs, scores and losses 2e-2; gradients: cosine
//   similarity > 0.99 per tensor; AdamW: the 3-step weight change has cosine > 0.95 with the CPU's.
// Without a CUDA device every case prints "SKIPPED: no CUDA device <case>" (counted neither passed nor failed).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/engine.h"
#include "core/lora.h"
#include "cuda/device_model.h"
#include "cuda/memory.h"
#include "cuda/ops.h"
#include "test_helpers.h"
#include "testing.h"
#include "testing_cuda.h"

using namespace optune;
using testing::expect_close;
using testing::Rand;

namespace {

double cosine(const float* a, const float* b, size_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < n; i++) ab += double(a[i]) * b[i], aa += double(a[i]) * a[i], bb += double(b[i]) * b[i];
  if (aa == 0 && bb == 0) return 1.0;
  return ab / std::sqrt(aa * bb + 1e-300);
}

struct Prec {
  Precision p;
  double rtol;  // values (log-probs, scores, losses)
  const char* name;
};
const Prec kFp32{Precision::FP32, 1e-4, "fp32"};
const Prec kBf16{Precision::BF16, 2e-2, "bf16"};

ModelConfig gpt2_cfg(bool reward = false) {
  ModelConfig c = testing::tiny_gpt2(97);
  c.d_model = 32, c.n_head = 4, c.n_kv_head = 4, c.head_dim = 8, c.d_ff = 64, c.max_positions = 128;
  c.reward_model = reward;
  return c;
}

ModelConfig llama_cfg(bool reward = false) {
  ModelConfig c = testing::tiny_llama(97);
  c.d_model = 32, c.n_head = 4, c.n_kv_head = 2, c.head_dim = 8, c.d_ff = 48, c.max_positions = 128;
  c.o_bias = true;
  c.reward_model = reward;
  return c;
}

// llama_cfg's shape in the other block structures the CUDA backend runs: Llama 3.1+'s "llama3" RoPE scaling (head_dim 8
// with theta 1e4 puts one frequency in each of its bands: kept, blended, scaled), SmolLM3 (layer 1 NoPE, tied
// embeddings, no biases, no sliding windows), Qwen3 (per-head q/k norms; head_dim 16, so q is twice the hidden
// width, as in Qwen3's checkpoints; also with its optional attention biases), OLMo 2 (no norms before the
// sublayers, post-norms after them, q and k normalized over their whole width; untied), SmolLM3 with a sliding
// window of 5 on its NoPE layer, Mistral with one of 24 on every layer (the test sequences are longer), and Gemma 3
// (1 + weight norms before and after each sublayer, the scaled embedding, the GELU gate, a query scale, per-head q/k
// norms, a window of 5 with its own RoPE base on layer 0; head_dim 16, so bf16 runs the tensor-core attention).
std::vector<ModelConfig> llama_variants() {
  ModelConfig scaled = llama_cfg();
  scaled.rope_scaling.type = cpu::RopeScaling::LLAMA3;
  scaled.rope_scaling.factor = 8, scaled.rope_scaling.low_freq_factor = 1, scaled.rope_scaling.high_freq_factor = 4;
  scaled.rope_scaling.original_max_positions = 64;
  ModelConfig smol = testing::tiny_smollm3(97);
  smol.d_model = 32, smol.n_head = 4, smol.n_kv_head = 2, smol.head_dim = 8, smol.d_ff = 48, smol.max_positions = 128;
  smol.sliding.clear(), smol.sliding_window = 0;
  ModelConfig qwen3 = testing::tiny_qwen3(97);
  qwen3.d_model = 32, qwen3.n_head = 4, qwen3.n_kv_head = 2, qwen3.head_dim = 16, qwen3.d_ff = 48;
  qwen3.max_positions = 128;
  ModelConfig qwen3_biased = qwen3;  // Qwen3's optional attention biases: q's and k's come before their norms
  qwen3_biased.qkv_bias = qwen3_biased.o_bias = true;
  ModelConfig olmo2 = testing::tiny_olmo2(97);
  olmo2.d_model = 32, olmo2.n_head = 4, olmo2.n_kv_head = 2, olmo2.head_dim = 8, olmo2.d_ff = 48;
  olmo2.max_positions = 128;
  ModelConfig olmo2_biased = olmo2;  // OLMo 2's optional attention biases: o's comes before the post-norm
  olmo2_biased.qkv_bias = olmo2_biased.o_bias = true;
  ModelConfig smol_sliding = smol;
  smol_sliding.sliding = {0, 1}, smol_sliding.sliding_window = 5;
  ModelConfig mistral = llama_cfg();
  mistral.arch = Arch::MISTRAL, mistral.qkv_bias = mistral.o_bias = false;
  mistral.sliding = {1, 1}, mistral.sliding_window = 24;
  ModelConfig gemma = testing::tiny_gemma3(97);
  gemma.d_model = 32, gemma.n_head = 4, gemma.n_kv_head = 2, gemma.head_dim = 16, gemma.d_ff = 48;
  gemma.max_positions = 128, gemma.sliding_window = 5;
  gemma.rope_scaling.type = cpu::RopeScaling::LINEAR, gemma.rope_scaling.factor = 2;  // its global layer's only
  return {scaled, smol, qwen3, qwen3_biased, olmo2, olmo2_biased, smol_sliding, mistral, gemma};
}

std::unique_ptr<Model> random_model(const ModelConfig& c, uint64_t seed) {
  auto m = make_model(c);
  testing::randomize(*m, seed, 0.15f);
  return m;
}

std::unique_ptr<Model> on_gpu(const Model& cpu, Precision p) {
  auto g = clone_model(cpu);
  set_device(*g, Device::CUDA, p);
  CHECK(model_device(*g) == Device::CUDA);
  return g;
}

// The LoRA cases' adapters: rank 2 on every linear layer, alpha 4 (scale 2), A and B drawn with std 0.1, so the
// adapters move a block's outputs by about a fifth of what its weights contribute.
const LoraConfig kLora{2, 4.0f, {"all-linear"}};

// A random CPU model and its copy on the GPU; with `lora`, both then get the same random adapters, the GPU copy's
// as a run adds them (enable_lora on the host copies, then sync_to_device).
struct ModelPair {
  std::unique_ptr<Model> cpu, gpu;
};
ModelPair model_pair(const ModelConfig& c, uint64_t seed, Precision p, const LoraConfig* lora) {
  ModelPair out{random_model(c, seed), nullptr};
  out.gpu = on_gpu(*out.cpu, p);
  if (lora) {
    testing::enable_random_lora(*out.cpu, *lora, seed + 1, 0.1f);
    testing::enable_random_lora(*out.gpu, *lora, seed + 1, 0.1f);
    sync_to_device(*out.gpu);
  }
  return out;
}

// 4 sequences = 2 pairs (0 > 1, 2 > 3); lengths spanning several attention tiles
Batch pair_batch(int vocab, uint64_t seed) {
  return testing::random_batch({40, 33, 70, 9}, {12, 12, 30, 3}, vocab, seed);
}

void fill_pairs(TrainRequest& r) {
  r.chosen = {0, 2};
  r.rejected = {1, 3};
}

// Cached reference log-probs near the policy's own (from the CPU model), so the DPO/IPO terms are far from
// saturation and every gradient is sizeable.
void near_refs(TrainRequest& r, const Model& cpu) {
  const LogprobResult lp = compute_logprobs(cpu, r.batch);
  r.ref_chosen = {lp.seq_logps[0] + 0.4f, lp.seq_logps[2] - 0.3f};
  r.ref_rejected = {lp.seq_logps[1] - 0.2f, lp.seq_logps[3] + 0.1f};
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = a.size() == b.size() ? 0 : 1e30;
  for (size_t i = 0; i < std::min(a.size(), b.size()); i++) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

// Compares every parameter tensor's gradient. A tensor whose true gradient is zero (the k_proj bias: softmax does not
// change when every score of a row moves together) holds only rounding noise on both sides; it is checked to stay
// at noise level instead.
void expect_grads(const std::string& what, const Model& gpu, const Model& cpu, const Prec& pr) {
  CHECK_MSG(gpu.grads.size() == cpu.grads.size(), what + ": gradient sizes differ");
  if (gpu.grads.size() != cpu.grads.size()) return;
  const double global = max_abs(cpu.grads);
  for (const ParamInfo& t : trainable_layout(cpu).tensors) {  // every weight, or a LoRA model's adapters
    const std::vector<float> g(gpu.grads.begin() + t.offset, gpu.grads.begin() + t.offset + t.numel);
    const std::vector<float> c(cpu.grads.begin() + t.offset, cpu.grads.begin() + t.offset + t.numel);
    if (max_abs(c) <= 1e-5 * global) {
      CHECK_MSG(max_abs(g) <= 1e-4 * global, what + " grad " + t.name + ": should be ~0, max " +
                                                 std::to_string(max_abs(g)) + " (largest gradient " +
                                                 std::to_string(global) + ")");
    } else if (pr.p == Precision::FP32) {
      expect_close(what + " grad " + t.name, g, c, 1e-4);
    } else {
      const double cs = cosine(g.data(), c.data(), g.size());
      CHECK_MSG(cs > 0.99, what + " grad " + t.name + ": cosine " + std::to_string(cs));
    }
  }
}

void expect_stat(const std::string& what, const char* stat, double got, double want, double atol, double rtol) {
  CHECK_MSG(std::fabs(got - want) <= atol + rtol * std::fabs(want),
            what + " " + stat + ": gpu " + std::to_string(got) + " vs cpu " + std::to_string(want));
}

// loss_rtol: IPO's loss (h - 1/(2 beta))^2 multiplies an error in h by 2|h - 1/(2 beta)| (~3 here), and its
// gradient scale 2(h - 1/(2 beta)) moves with h too, so under bf16 (sequence log-prob sums off by a few 1e-2) its loss
// and grad norm get a wider bound than the rewards they are made of (measured on an H100: 11% and 6%).
// reward_atol: the rewards' absolute bound when wider than rtol (see grads_case).
void expect_stats(const std::string& what, const TrainStats& g, const TrainStats& c, double rtol,
                  double loss_rtol = 0, double reward_atol = 0) {
  if (loss_rtol <= 0) loss_rtol = rtol;
  reward_atol = std::max(reward_atol, rtol);
  expect_stat(what, "loss", g.loss, c.loss, loss_rtol, loss_rtol);
  expect_stat(what, "chosen reward", g.chosen_reward, c.chosen_reward, reward_atol, rtol);
  expect_stat(what, "rejected reward", g.rejected_reward, c.rejected_reward, reward_atol, rtol);
  expect_stat(what, "grad norm", g.grad_norm, c.grad_norm, rtol * 10, std::max(rtol, loss_rtol));
  CHECK_MSG(g.n_pairs == c.n_pairs && g.n_tokens == c.n_tokens, what + ": counts differ");
}

// Two prompts (3 and 4 tokens), 2 samples each.
SampleRequest two_prompts(int max_new_tokens, float temperature) {
  SampleRequest r;
  r.prompt_tokens = {1, 2, 3, 4, 5, 6, 7};
  r.prompt_offsets = {0, 3, 7};
  r.n_samples = 2;
  r.max_new_tokens = max_new_tokens;
  r.temperature = temperature;
  return r;
}

// lora: both models carry the same adapters (model_pair); their base (adapters off) is checked too.
void logprobs_case(const ModelConfig& c, const Prec& pr, const LoraConfig* lora = nullptr) {
  auto [cpu, gpu] = model_pair(c, 3, pr.p, lora);
  const Batch b = pair_batch(c.vocab_size, 5);
  const LogprobResult want = compute_logprobs(*cpu, b), got = compute_logprobs(*gpu, b);
  const std::string what = std::string(arch_name(c.arch)) + " " + pr.name + (lora ? " LoRA" : "");
  expect_close(what + " token log-probs", got.token_logps, want.token_logps, pr.rtol);
  expect_close(what + " sequence log-probs", got.seq_logps, want.seq_logps, pr.rtol);
  if (pr.p == Precision::FP32) expect_close(what + " logits", compute_logits(*gpu, b), compute_logits(*cpu, b), 1e-4);
  if (!lora) return;
  const LogprobResult base = compute_logprobs(*random_model(c, 3), b);
  const AdaptersOff off(*gpu);
  const LogprobResult got_base = compute_logprobs(*gpu, b);
  expect_close(what + " base token log-probs", got_base.token_logps, base.token_logps, pr.rtol);
  // the adapters matter: they move some log-prob by 5x the tolerance or more (by 1.1-2.4 nats, measured), so a GPU
  // forward without them could not pass
  CHECK_MSG(max_abs_diff(want.token_logps, base.token_logps) > 5 * pr.rtol * (1 + max_abs(base.token_logps)),
            what + ": the adapters hardly change the log-probs");
}

void grads_case(const ModelConfig& base, LossKind loss, const Prec& pr, const LoraConfig* lora = nullptr) {
  const ModelConfig c = loss == LossKind::BT ? (base.is_gpt2() ? gpt2_cfg(true) : llama_cfg(true)) : base;
  auto [cpu, gpu] = model_pair(c, 7, pr.p, lora);
  TrainRequest r;
  r.loss = loss;
  r.batch = pair_batch(c.vocab_size, 11);
  r.apply_update = false;
  r.beta = 0.5f;
  if (loss == LossKind::SFT) {
    r.weights = {1.0f, 0.5f, 2.0f, 0.0f};
  } else {
    fill_pairs(r);
    r.weights = {0.7f, 1.6f};
    if (loss != LossKind::BT) near_refs(r, *cpu);
  }
  const TrainStats want = train_step(*cpu, r), got = train_step(*gpu, r);
  const std::string what = std::string(arch_name(c.arch)) + " " + pr.name + " loss " + std::to_string(int(loss));
  // A reward is beta times a difference of sequence log-prob sums (responses of up to 30 tokens here), which bf16
  // moves by up to ~0.08 nats: measured in the CUDA emulator on Llama and Mistral at head_dim 16, with and without a
  // window, the sums of 30-token responses came 0.075-0.078 from the CPU's (2e-2 alone failed Mistral's by 0.003).
  const bool bf16 = pr.p == Precision::BF16;
  expect_stats(what, got, want, pr.rtol, loss == LossKind::IPO && bf16 ? 0.15 : 0.0, bf16 ? 0.1 * r.beta : 0.0);
  expect_grads(what, *gpu, *cpu, pr);
  if (lora)  // the device holds gradients for the adapters alone
    CHECK(cuda::device_state(*gpu)->grads.size() == cpu->lora->params.size());
}

// With lora: the adapters' three steps (their weights and moments); the frozen weights stay as they were.
void adamw_case(const ModelConfig& c, const Prec& pr, const LoraConfig* lora = nullptr) {
  auto [cpu, gpu] = model_pair(c, 13, pr.p, lora);
  const std::vector<float> p0 = trainable_params(*cpu), frozen = cpu->params;
  TrainRequest r;
  r.loss = LossKind::DPO;
  fill_pairs(r);
  // eps 1e-3: a gradient that is zero up to rounding (k_proj bias) must not become a full-size step whose sign is
  // the noise's (Adam normalizes it), which would differ between the backends by design
  r.opt.lr = 1e-3f, r.opt.eps = 1e-3f, r.opt.weight_decay = 0.1f, r.opt.max_grad_norm = 0.5f;
  for (int step = 0; step < 3; step++) {
    r.batch = pair_batch(c.vocab_size, 20 + step);
    near_refs(r, *cpu);
    const TrainStats want = train_step(*cpu, r), got = train_step(*gpu, r);
    CHECK_CLOSE(got.loss, want.loss, pr.rtol, pr.rtol);
    CHECK_CLOSE(got.grad_norm, want.grad_norm, pr.rtol * 10, pr.rtol);
  }
  CHECK(gpu->adam_step == 3 && cpu->adam_step == 3);
  sync_to_host(*gpu);
  const std::string what = std::string(arch_name(c.arch)) + " " + pr.name + (lora ? " LoRA" : "") + " adamw";
  const std::vector<float>&got = trainable_params(*gpu), &want = trainable_params(*cpu);
  if (lora) CHECK_MSG(gpu->params == frozen && cpu->params == frozen, what + ": the frozen weights changed");
  if (pr.p == Precision::FP32) {
    expect_close(what + " weights", got, want, 1e-4);
    expect_close(what + " first moments", gpu->adam_m, cpu->adam_m, 1e-3);
    expect_close(what + " second moments", gpu->adam_v, cpu->adam_v, 1e-3);
  } else {
    std::vector<float> dg(p0.size()), dc(p0.size());
    for (size_t i = 0; i < p0.size(); i++) dg[i] = got[i] - p0[i], dc[i] = want[i] - p0[i];
    const double cs = cosine(dg.data(), dc.data(), dg.size());
    CHECK_MSG(cs > 0.95, what + ": cosine of the weight change " + std::to_string(cs));
  }
}

}  // namespace

TEST(logprobs_gpt2_fp32) { logprobs_case(gpt2_cfg(), kFp32); }
TEST(logprobs_llama_fp32) { logprobs_case(llama_cfg(), kFp32); }
TEST(logprobs_gpt2_bf16) { logprobs_case(gpt2_cfg(), kBf16); }
TEST(logprobs_llama_bf16) { logprobs_case(llama_cfg(), kBf16); }

TEST(logprobs_llama_variants) {
  for (const ModelConfig& c : llama_variants()) logprobs_case(c, kFp32), logprobs_case(c, kBf16);
}

TEST(tf32_matmuls_on_request) {
  // OPTUNE_CUDA_TF32=1 runs the fp32 GEMMs on TF32 tensor cores (as PyTorch's allow_tf32): log-probs within bf16's
  // tolerance of the CPU's but not strict fp32's bits, at a width where cuBLAS takes tensor cores (d 512, 152 rows);
  // unset, strict fp32 again; another value is an error.
  ModelConfig c = gpt2_cfg();
  c.d_model = 512, c.n_head = 8, c.n_kv_head = 8, c.head_dim = 64, c.d_ff = 2048;
  auto cpu = random_model(c, 13);
  auto gpu = on_gpu(*cpu, Precision::FP32);
  const Batch b = pair_batch(c.vocab_size, 5);
  const LogprobResult want = compute_logprobs(*cpu, b), strict = compute_logprobs(*gpu, b);
  LogprobResult tf32;
  {
    const testing::ScopedEnv tf32_on("OPTUNE_CUDA_TF32", "1");
    tf32 = compute_logprobs(*gpu, b);
  }
  const LogprobResult again = compute_logprobs(*gpu, b);
  expect_close("strict fp32 token log-probs", strict.token_logps, want.token_logps, kFp32.rtol);
  expect_close("TF32 token log-probs", tf32.token_logps, want.token_logps, kBf16.rtol);
  CHECK_MSG(tf32.token_logps != strict.token_logps, "OPTUNE_CUDA_TF32=1 changed no log-prob: no TF32 GEMM ran");
  CHECK_MSG(again.token_logps == strict.token_logps, "unset again, the log-probs are not strict fp32's");
  const testing::ScopedEnv bad("OPTUNE_CUDA_TF32", "yes");  // last: the throw leaves a forward unfinished
  CHECK_THROWS(compute_logprobs(*gpu, b), "OPTUNE_CUDA_TF32");
}

TEST(scores_match_cpu) {
  for (const ModelConfig& c : {gpt2_cfg(true), llama_cfg(true)})
    for (const Prec& pr : {kFp32, kBf16}) {
      auto cpu = random_model(c, 17);
      auto gpu = on_gpu(*cpu, pr.p);
      const Batch b = pair_batch(c.vocab_size, 19);
      expect_close(std::string(arch_name(c.arch)) + " " + pr.name + " scores", compute_scores(*gpu, b),
                   compute_scores(*cpu, b), pr.rtol);
    }
}

TEST(scores_llama_variants) {
  for (ModelConfig c : llama_variants())
    for (const Prec& pr : {kFp32, kBf16}) {
      c.reward_model = true;
      auto cpu = random_model(c, 17);
      auto gpu = on_gpu(*cpu, pr.p);
      const Batch b = pair_batch(c.vocab_size, 19);
      expect_close(std::string(arch_name(c.arch)) + " " + pr.name + " scores", compute_scores(*gpu, b),
                   compute_scores(*cpu, b), pr.rtol);
    }
}

TEST(grads_sft) {
  for (const Prec& pr : {kFp32, kBf16}) grads_case(gpt2_cfg(), LossKind::SFT, pr), grads_case(llama_cfg(), LossKind::SFT, pr);
}
TEST(grads_dpo) {
  for (const Prec& pr : {kFp32, kBf16}) grads_case(gpt2_cfg(), LossKind::DPO, pr), grads_case(llama_cfg(), LossKind::DPO, pr);
}
TEST(grads_ipo) {
  for (const Prec& pr : {kFp32, kBf16}) grads_case(gpt2_cfg(), LossKind::IPO, pr), grads_case(llama_cfg(), LossKind::IPO, pr);
}
TEST(grads_bt) {
  for (const Prec& pr : {kFp32, kBf16}) grads_case(gpt2_cfg(), LossKind::BT, pr), grads_case(llama_cfg(), LossKind::BT, pr);
}

TEST(grads_llama_variants) {
  for (const ModelConfig& c : llama_variants())
    for (const Prec& pr : {kFp32, kBf16}) grads_case(c, LossKind::SFT, pr), grads_case(c, LossKind::DPO, pr);
}

TEST(adamw_three_steps_fp32) { adamw_case(gpt2_cfg(), kFp32), adamw_case(llama_cfg(), kFp32); }
TEST(adamw_three_steps_bf16) { adamw_case(gpt2_cfg(), kBf16), adamw_case(llama_cfg(), kBf16); }
TEST(adamw_three_steps_llama_variants) {
  for (const ModelConfig& c : llama_variants()) adamw_case(c, kFp32);
}

// head_dim 16: under bf16 attention runs on the tensor-core kernels (attention_mma.cu), forward and backward; also
// with a sliding window (Mistral's, 24 positions: the 70-token sequence spans two 64-wide tiles).
TEST(bf16_tensor_core_attention_in_the_model) {
  ModelConfig g = gpt2_cfg(), l = llama_cfg();
  g.n_head = g.n_kv_head = 2, g.head_dim = 16;
  l.n_head = 2, l.n_kv_head = 1, l.head_dim = 16;
  ModelConfig w = l;
  w.arch = Arch::MISTRAL, w.qkv_bias = w.o_bias = false, w.sliding = {1, 1}, w.sliding_window = 24;
  for (const ModelConfig& c : {g, l, w}) logprobs_case(c, kBf16), grads_case(c, LossKind::DPO, kBf16);
}

// Gemma 3's real head_dim, 256 (the fp32 attention kernels in both precisions), where the GPU's shared memory allows.
TEST(gemma3_head_dim_256) {
  ModelConfig c = testing::tiny_gemma3(97);
  c.d_model = 64, c.n_head = 2, c.n_kv_head = 1, c.head_dim = 256, c.d_ff = 96, c.max_positions = 128;
  c.attn_scalar = 256.0f, c.sliding_window = 24;
  const std::string problem = cuda::attention_smem_problem(c.head_dim);
  if (!problem.empty()) {
    std::printf("  SKIPPED head_dim 256 on this GPU: %s\n", problem.c_str());
    return;
  }
  for (const Prec& pr : {kFp32, kBf16}) logprobs_case(c, pr), grads_case(c, LossKind::DPO, pr);
}

// Reference log-probs from a reference model, on the GPU and on the CPU, against the CPU engine.
TEST(dpo_with_ref_model) {
  for (const ModelConfig& c : {gpt2_cfg(), llama_cfg()}) {
    auto cpu = random_model(c, 23);
    auto ref_cpu = random_model(c, 29);
    auto gpu = on_gpu(*cpu, Precision::FP32);
    auto ref_gpu = on_gpu(*ref_cpu, Precision::FP32);
    TrainRequest r;
    r.loss = LossKind::DPO;
    r.batch = pair_batch(c.vocab_size, 31);
    fill_pairs(r);
    r.apply_update = false;
    r.ref_model = ref_cpu.get();
    const TrainStats want = train_step(*cpu, r);
    const TrainStats got_cpu_ref = train_step(*gpu, r);
    r.ref_model = ref_gpu.get();
    const TrainStats got = train_step(*gpu, r);
    expect_stats("dpo ref on gpu", got, want, 1e-4);
    expect_stats("dpo ref on cpu", got_cpu_ref, want, 1e-4);
    expect_grads("dpo ref model", *gpu, *cpu, kFp32);
  }
}

// Host copies: stale after a step until sync_to_host; setParams-style writes reach the device with sync_to_device;
// moving back to the CPU keeps the trained weights.
TEST(host_device_sync) {
  const ModelConfig c = gpt2_cfg();
  auto cpu = random_model(c, 37);
  auto gpu = on_gpu(*cpu, Precision::FP32);
  TrainRequest r;
  r.loss = LossKind::SFT;
  r.batch = pair_batch(c.vocab_size, 41);
  r.opt.lr = 1e-2f;
  train_step(*gpu, r);
  CHECK(gpu->params == cpu->params);  // the host copy is not updated by a device step
  sync_to_host(*gpu);
  CHECK(gpu->params != cpu->params);
  CHECK(gpu->adam_m.size() == gpu->params.size());
  const std::vector<float> trained = gpu->params;
  gpu->params = cpu->params;  // a host write ...
  sync_to_device(*gpu);       // ... uploaded
  const Batch b = pair_batch(c.vocab_size, 43);
  expect_close("after upload", compute_logprobs(*gpu, b).token_logps, compute_logprobs(*cpu, b).token_logps, 1e-4);
  gpu->params = trained;
  sync_to_device(*gpu);
  set_device(*gpu, Device::CPU);
  CHECK(gpu->device == nullptr);
  CHECK(gpu->params == trained);
  auto gpu_state = cuda::device_state(*gpu);
  CHECK(gpu_state == nullptr);
}

// engine sample() on a device model goes to the CUDA sampler (its own tests check it in depth): same shapes, and
// most greedy tokens agree with the CPU's (a near-tie may flip one response from there on; sampling from wrong
// weights would agree on ~1 token in 97).
TEST(sample_dispatches_to_the_device) {
  auto cpu = random_model(llama_cfg(), 47);
  auto gpu = on_gpu(*cpu, Precision::FP32);
  const SampleRequest r = two_prompts(12, 0.0f);
  const SampleResult want = sample(*cpu, r), got = sample(*gpu, r);
  CHECK(got.offsets.size() == want.offsets.size() && got.finished.size() == want.finished.size());
  size_t same = 0;
  for (size_t i = 0; i < std::min(got.tokens.size(), want.tokens.size()); i++) same += got.tokens[i] == want.tokens[i];
  CHECK_MSG(same * 2 >= want.tokens.size(), std::to_string(same) + " of " + std::to_string(want.tokens.size()) +
                                                " greedy tokens agree with the CPU");
}

// ---- LoRA (core/lora.h): adapters on a frozen base, on the GPU against the CPU's ----------------------------------

// GPT-2 (Conv1D layout, fused q|k|v, tied head), Llama (GQA, biases), and the block structures whose GEMM inputs
// differ: Qwen3 (q wider than the hidden size), OLMo 2 (no norm before the sublayers: the residual stream is the
// input), Gemma 3 (post-norms, the GELU gate).
std::vector<ModelConfig> lora_configs() {
  const std::vector<ModelConfig> v = llama_variants();
  return {gpt2_cfg(), llama_cfg(), v[2], v[4], v[8]};
}

TEST(lora_logprobs) {
  for (const ModelConfig& c : lora_configs()) logprobs_case(c, kFp32, &kLora), logprobs_case(c, kBf16, &kLora);
}

TEST(lora_grads) {
  for (const ModelConfig& c : lora_configs())
    for (const Prec& pr : {kFp32, kBf16}) grads_case(c, LossKind::DPO, pr, &kLora);
  LoraConfig some = kLora;  // targets on part of the layers: the others' inputs still get their gradient
  some.targets = {"v_proj", "down_proj"};
  grads_case(llama_cfg(), LossKind::SFT, kFp32, &some);
}

TEST(lora_adamw_three_steps) {
  for (const ModelConfig& c : {gpt2_cfg(), llama_cfg()}) adamw_case(c, kFp32, &kLora), adamw_case(c, kBf16, &kLora);
}

// Sampling reads the weights with the adapters merged (fp32: a copy; bf16: merged into the bf16 weight copy for the
// call, restored bit for bit after it): the sampled tokens' log-probs are the CPU LoRA model's for the same
// sequences (teacher-forced), in both precisions; with the adapters off it samples from the base.
TEST(lora_sampling_uses_the_adapters) {
  for (const ModelConfig& c : {gpt2_cfg(), llama_cfg()})
    for (const Prec& pr : {kFp32, kBf16}) {
      auto [cpu, gpu] = model_pair(c, 47, pr.p, &kLora);
      SampleRequest r = two_prompts(10, 1.0f);
      r.seed = 5;
      const cuda::DeviceState& ds = *cuda::device_state(*gpu);
      const std::vector<uint16_t> bf16_before = ds.params_bf16.download();
      const SampleResult got = sample(*gpu, r);
      CHECK(ds.params_bf16.download() == bf16_before);
      Batch b;  // prompt + response of each sample, as a log-prob batch
      b.offsets = {0};
      for (int s = 0; s < 4; s++) {
        const int p = s / 2;
        b.tokens.insert(b.tokens.end(), r.prompt_tokens.begin() + r.prompt_offsets[p],
                        r.prompt_tokens.begin() + r.prompt_offsets[p + 1]);
        b.tokens.insert(b.tokens.end(), got.tokens.begin() + got.offsets[s], got.tokens.begin() + got.offsets[s + 1]);
        b.offsets.push_back(static_cast<int32_t>(b.tokens.size()));
        b.prompt_lens.push_back(r.prompt_offsets[p + 1] - r.prompt_offsets[p]);
      }
      const std::string what = std::string(arch_name(c.arch)) + " " + pr.name + " LoRA sampling";
      const LogprobResult want = compute_logprobs(*cpu, b);
      expect_close(what + " token log-probs", got.token_logps, want.token_logps, pr.rtol);
      {
        const AdaptersOff off(*cpu), off_gpu(*gpu);
        const SampleResult base = sample(*gpu, r);
        const LogprobResult base_want = compute_logprobs(*cpu, b);  // the base's log-probs of the LoRA samples
        CHECK_MSG(max_abs_diff(want.token_logps, base_want.token_logps) > 0.05, what + ": adapters change nothing");
        CHECK_MSG(base.tokens != got.tokens, what + ": the base samples the LoRA model's tokens");
      }
    }
}

// Adapters added on the CPU travel with set_device; a device step updates them (and only them) until sync_to_host;
// back on the CPU the trained adapters stay. Adapters added on the host copy without sync_to_device are an error,
// not silently ignored.
TEST(lora_host_device_sync) {
  const ModelConfig c = llama_cfg();
  auto m = random_model(c, 53);
  const std::vector<float> frozen = m->params;
  testing::enable_random_lora(*m, kLora, 54, 0.1f);
  const std::vector<float> adapters = m->lora->params;
  set_device(*m, Device::CUDA, Precision::FP32);
  const cuda::DeviceState* ds = cuda::device_state(*m);
  CHECK(ds->lora.size() == adapters.size() && ds->n_trainable == adapters.size());
  TrainRequest r;
  r.loss = LossKind::SFT;
  r.batch = pair_batch(c.vocab_size, 55);
  r.opt.lr = 1e-2f;
  train_step(*m, r);
  CHECK(m->lora->params == adapters);  // the host copy waits for sync_to_host
  sync_to_host(*m);
  CHECK(m->lora->params != adapters && m->params == frozen);
  CHECK(m->adam_m.size() == adapters.size());
  const std::vector<float> trained = m->lora->params;
  set_device(*m, Device::CPU);
  CHECK(m->device == nullptr && m->lora->params == trained && m->params == frozen);

  auto late = on_gpu(*random_model(c, 53), Precision::FP32);
  enable_lora(*late, kLora, 3);  // on the host copy only
  CHECK_THROWS(compute_logprobs(*late, r.batch), "not on the device");
  CHECK_THROWS(train_step(*late, r), "not on the device");
  sync_to_device(*late);
  CHECK(compute_logprobs(*late, r.batch).seq_logps.size() == 4);
}

TEST(errors_on_device) {
  auto reward = on_gpu(*random_model(gpt2_cfg(true), 1), Precision::FP32);
  const Batch b = pair_batch(97, 2);
  CHECK_THROWS(compute_logprobs(*reward, b), "score head, not an LM head");
  auto policy = on_gpu(*random_model(gpt2_cfg(), 1), Precision::FP32);
  CHECK_THROWS(compute_scores(*policy, b), "no reward score head");
  Batch bad = b;
  bad.tokens[3] = 500;
  CHECK_THROWS(compute_logprobs(*policy, bad), "vocabulary");
  CHECK_THROWS(adamw_update(*policy, AdamWConfig{}), "optimizer step before any gradient");
}

CUDA_TEST_MAIN()
