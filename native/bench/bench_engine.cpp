// Native engine benchmark (no Node needed): tokens/s for sampling, sequence log-probs and one DPO step, on the
// tiny GPT-2 shape (d256, 4 layers, 4 heads, vocab 4096) and, with --gpt2-124m, the GPT-2 124M shape.
// Prints one JSON line per op; `--only OP` runs one of them, `--reps N` sets the timed
// repetitions, `--new N` the new tokens per sampled response, `--top-p P` /
// `--top-k K` the sampling filters, `--llama` the tiny shape as a Llama. `optune bench engine` runs the same work through the addon with PyTorch beside it.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/engine.h"
#include "core/rng.h"
#include "bench_shapes.h"

using namespace optune;
using bench::gpt2_shape;
using bench::random_batch;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
static double time_it(F f, int warmup, int reps) {
  for (int i = 0; i < warmup; i++) f();
  const double t0 = now();
  for (int i = 0; i < reps; i++) f();
  return (now() - t0) / reps;
}

// --only OP runs one op (for profiling); empty runs all.
static std::string only;
static int new_tokens = 64;  // --new N: sampling's new tokens (1 profiles the prefill)
static float top_p = 1.0f;   // --top-p P: nucleus sampling (default off: full-vocabulary draws)
static int top_k = 0;        // --top-k K
static bool wanted(const char* op) { return only.empty() || only == op; }

static void run_shape(const char* name, const ModelConfig& cfg, bool with_sampling, int reps) {
  auto m = make_model(cfg);
  init_weights(*m, 1);
  if (with_sampling) {
    SampleRequest r;
    for (int i = 0; i < 16; i++) {
      for (int t = 0; t < 32; t++) r.prompt_tokens.push_back(static_cast<int32_t>(rng_u64(7, i, t) % cfg.vocab_size));
      r.prompt_offsets.push_back(i * 32);
    }
    r.prompt_offsets.push_back(16 * 32);
    r.max_new_tokens = new_tokens;
    r.top_p = top_p;
    r.top_k = top_k;
    r.seed = 3;
    for (bool bf16 : {false, true}) {
      r.bf16 = bf16;
      if (!wanted(bf16 ? "sample_bf16" : "sample")) continue;
      const double s = time_it([&] { sample(*m, r); }, 1, reps);
      std::printf("{\"op\": \"%s\", \"shape\": \"%s\", \"batch\": 16, \"prompt\": 32, \"new\": %d, \"sec\": %.4f, "
                  "\"tok_per_s\": %.0f}\n", bf16 ? "sample_bf16" : "sample", name, new_tokens, s, 16 * new_tokens / s);
    }
  }
  const Batch b = random_batch(16, 128, 16, cfg.vocab_size, 5);
  const double lp = wanted("logprobs") ? time_it([&] { compute_logprobs(*m, b); }, 1, reps) : 0.0;
  if (lp > 0) std::printf("{\"op\": \"logprobs\", \"shape\": \"%s\", \"seqs\": 16, \"seqlen\": 128, \"sec\": %.4f, "
              "\"tok_per_s\": %.0f}\n", name, lp, 16 * 128 / lp);
  TrainRequest tr;
  tr.loss = LossKind::DPO;
  tr.batch = b;
  for (int j = 0; j < 8; j++) {
    tr.chosen.push_back(2 * j);
    tr.rejected.push_back(2 * j + 1);
    tr.ref_chosen.push_back(-500.0f);
    tr.ref_rejected.push_back(-500.0f);
  }
  tr.opt.lr = 1e-5f;
  for (bool bf16 : {false, true}) {
    tr.bf16 = bf16;
    if (!wanted(bf16 ? "dpo_step_bf16" : "dpo_step")) continue;
    const double st = time_it([&] { train_step(*m, tr); }, 1, reps);
    std::printf("{\"op\": \"%s\", \"shape\": \"%s\", \"seqs\": 16, \"seqlen\": 128, \"sec\": %.4f, "
                "\"tok_per_s\": %.0f}\n", bf16 ? "dpo_step_bf16" : "dpo_step", name, st, 16 * 128 / st);
  }
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  bool big = false, llama = false;  // --llama: the tiny shape as a Llama (RoPE, SwiGLU, GQA)
  int reps = 3;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--gpt2-124m")) big = true;
    if (!std::strcmp(argv[i], "--llama")) llama = true;
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    if (!std::strcmp(argv[i], "--new") && i + 1 < argc) new_tokens = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--top-p") && i + 1 < argc) top_p = static_cast<float>(std::atof(argv[++i]));
    if (!std::strcmp(argv[i], "--top-k") && i + 1 < argc) top_k = std::atoi(argv[++i]);
  }
  std::printf("{\"threads\": %d, \"blas\": \"%s\"}\n", omp_get_max_threads(), OPTUNE_BLAS_NAME);
  if (llama)
    run_shape("tiny-llama-d256-L4-kv2", bench::llama_shape(256, 4, 4, 2, 4096), true, reps);
  else
    run_shape("tiny-gpt2-d256-L4", gpt2_shape(256, 4, 4, 4096), true, reps);
  if (big) run_shape("gpt2-124m", bench::gpt2_124m(), false, 1);
  return 0;
}
