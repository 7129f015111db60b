// The engine on CUDA at the GPT-2 124M shape (issue 5's benchmark): log-probs of 64 x 512 tokens and a DPO step of
// 32 pairs x 512 tokens (policy forward + backward, reference log-probs from a frozen reference model's forward,
// AdamW), in fp32 and bf16, through the same engine.h calls the addon makes. One JSON line per measurement on stdout.
//
// FLOPs (the usual model-FLOPs convention: recomputation in backward is not counted):
//   forward  = 2 * N * T + 2 * n_layer * d * sum_s L_s^2      (N = all 124.4M parameters, the tied LM head once;
//                                                               attention: QK^T and PV over the causal half)
//   training = 3 * forward                                     (= 6 * N * T + attention)
//   DPO step = training (policy) + forward (reference)
// MFU = FLOPs / time / peak, with the H100 SXM dense peaks (H200: the same): bf16 989 TFLOP/s, fp32 67 TFLOP/s
// (fp32 mode runs plain fp32 GEMMs, no TF32).
// Memory: mem_used_gib = device total - free right after the call (everything resident: CUDA context, cuBLAS
// workspaces, the models' weights/gradients/moments (log-probs: the policy alone, as in PyTorch's peer; the DPO
// step: policy and reference), the shared activation arena); peak_gib = mem_used_gib minus
// the CUDA context measured at start (context_gib; PyTorch's max_memory_allocated leaves it out too) plus the buffers
// a call allocates and frees inside itself (the log-prob head's logits chunk, attention's rowsum), the only
// allocations not in mem_used.
// dpo_step_lora: the same DPO step with rank-16 LoRA adapters on every linear layer of the blocks (the CPU bench's
// dpo_step_lora) and the frozen base as the reference (its log-probs with the adapters off, computed in the timed
// call as the loop does): one copy of the weights, gradients and moments for the adapters alone. Its FLOPs count
// the reference and policy forwards and the input-gradient half of the backward (3 x forward: the frozen weights'
// gradient products are skipped; the adapters' own products, rank 16, are left out).
// Usage: bench_cuda_model [reps] [fp32|bf16]   (default 3 timed repetitions after one warm-up; both precisions)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/engine.h"
#include "core/lora.h"
#include "core/rng.h"
#include "cuda/device_model.h"
#include "cuda/memory.h"
#include "cuda/ops.h"
#include "bench_shapes.h"

using namespace optune;
using bench::gpt2_124m;
using bench::random_batch;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double forward_flops(const ModelConfig& c, size_t n_params, const Batch& b) {
  double attn = 0;
  for (int s = 0; s < b.n_seq(); s++) attn += static_cast<double>(b.seq_len(s)) * b.seq_len(s);
  return 2.0 * n_params * b.n_tokens() + 2.0 * c.n_layer * c.d_model * attn;
}

double used_gib() {
  size_t free_b = 0, total_b = 0;
  cuda::memory_info(&free_b, &total_b);
  return static_cast<double>(total_b - free_b) / kGiB;
}

// Bytes the log-prob head and attention allocate inside a call (see logprob.cu, attention.cu).
double transient_gib(const ModelConfig& c, const Batch& b, bool backward, bool bf16) {
  const double chunk = std::min(b.n_tokens(), cuda::logprob_chunk_rows(c.vocab_size));
  const double ld = cuda::logits_stride(c.vocab_size);
  // logits (fp32), gathered rows (+ their gradient), and under bf16 the rows' bf16 copy (+ dLoss/dlogits in bf16)
  const double logprob = chunk * (ld + (backward ? 2.0 : 1.0) * c.d_model) * 4.0 +
                         (bf16 ? chunk * (c.d_model + (backward ? ld : 0.0)) * 2.0 : 0.0);
  const double attention = backward ? static_cast<double>(b.n_tokens()) * c.n_head * 4.0 : 0.0;
  return std::max(logprob, attention) / kGiB;
}

template <class F>
std::vector<double> time_ms(int reps, F&& fn) {
  fn();  // warm-up: cuBLAS handles, arena growth
  cuda::synchronize();
  std::vector<double> ms;
  for (int i = 0; i < reps; i++) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    cuda::synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms;
}

double g_context_gib = 0;  // device memory in use before any model: the CUDA context

void report(const char* bench, Precision p, const Batch& b, double flops, const std::vector<double>& ms,
            double peak_extra_gib, const Model& policy) {
  const double med = ms[ms.size() / 2];
  const double peak_tflops = p == Precision::BF16 ? 989.0 : 67.0;
  const double tflops = flops / (med * 1e-3) / 1e12;
  const double used = used_gib();
  const cuda::DeviceState* ds = cuda::device_state(policy);
  std::printf(
      "{\"bench\":\"%s\",\"precision\":\"%s\",\"sequences\":%d,\"tokens\":%d,\"ms_median\":%.2f,\"ms_min\":%.2f,"
      "\"tok_per_s\":%.0f,\"tflops\":%.2f,\"mfu\":%.4f,\"peak_tflops_assumed\":%.0f,\"mem_used_gib\":%.3f,"
      "\"peak_gib\":%.3f,\"context_gib\":%.3f,\"arena_gib\":%.3f,\"policy_state_gib\":%.3f}\n",
      bench, precision_name(p), b.n_seq(), b.n_tokens(), med, ms.front(), b.n_tokens() / (med * 1e-3), tflops,
      tflops / peak_tflops, peak_tflops, used, used - g_context_gib + peak_extra_gib, g_context_gib,
      cuda::shared_arena().peak() / kGiB,
      ds ? ds->device_bytes() / kGiB : 0.0);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::printf("{\"skipped\":\"no CUDA device\"}\n");
    return 0;
  }
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  try {
    g_context_gib = used_gib();
    std::printf("{\"device\":\"%s\",\"reps\":%d,\"context_gib\":%.3f}\n", cuda::device_description(0).c_str(),
                reps, g_context_gib);
    const ModelConfig c = gpt2_124m();
    auto base = make_model(c);
    init_weights(*base, 1);
    const size_t n_params = base->num_params();
    const Batch lp_batch = random_batch(64, 512, 64, c.vocab_size, 2);   // log-probs 64 x 512
    const Batch dpo_batch = random_batch(64, 512, 64, c.vocab_size, 3);  // 32 pairs x 512 tokens
    const std::string only = argc > 2 ? argv[2] : "";
    for (Precision p : {Precision::FP32, Precision::BF16}) {
      if (!only.empty() && only != precision_name(p)) continue;
      auto policy = clone_model(*base);
      auto ref = clone_model(*base);
      set_device(*policy, Device::CUDA, p);

      // log-probs with the policy alone on the device (as PyTorch's peer: one model resident)
      const auto lp_ms = time_ms(reps, [&] { compute_logprobs(*policy, lp_batch); });
      report("logprobs", p, lp_batch, forward_flops(c, n_params, lp_batch), lp_ms,
             transient_gib(c, lp_batch, false, p == Precision::BF16), *policy);

      set_device(*ref, Device::CUDA, p);

      TrainRequest r;
      r.loss = LossKind::DPO;
      r.batch = dpo_batch;
      for (int j = 0; j < 32; j++) r.chosen.push_back(2 * j), r.rejected.push_back(2 * j + 1);
      r.ref_model = ref.get();
      r.beta = 0.1f;
      r.opt.lr = 1e-5f;
      r.opt.max_grad_norm = 1.0f;
      TrainStats st;
      const auto dpo_ms = time_ms(reps, [&] { st = train_step(*policy, r); });
      const double flops = 3.0 * forward_flops(c, n_params, dpo_batch) + forward_flops(c, n_params, dpo_batch);
      report("dpo_step", p, dpo_batch, flops, dpo_ms, transient_gib(c, dpo_batch, true, p == Precision::BF16), *policy);
      std::printf("{\"bench\":\"dpo_step_stats\",\"precision\":\"%s\",\"loss\":%.6f,\"grad_norm\":%.6f}\n",
                  precision_name(p), st.loss, st.grad_norm);
      policy.reset();
      ref.reset();

      auto lora = clone_model(*base);
      set_device(*lora, Device::CUDA, p);
      enable_lora(*lora, LoraConfig{16, 32.0f, {"all-linear"}}, 1);
      sync_to_device(*lora);
      TrainRequest rl = r;
      rl.ref_model = nullptr;
      const auto lora_ms = time_ms(reps, [&] {
        LogprobResult ref_lp;
        {
          const AdaptersOff off(*lora);
          ref_lp = compute_logprobs(*lora, dpo_batch);
        }
        rl.ref_chosen.clear(), rl.ref_rejected.clear();
        for (int j = 0; j < 32; j++)
          rl.ref_chosen.push_back(ref_lp.seq_logps[2 * j]), rl.ref_rejected.push_back(ref_lp.seq_logps[2 * j + 1]);
        st = train_step(*lora, rl);
      });
      report("dpo_step_lora", p, dpo_batch, 3.0 * forward_flops(c, n_params, dpo_batch), lora_ms,
             transient_gib(c, dpo_batch, true, p == Precision::BF16), *lora);
    }
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '"', '\'');
    std::printf("{\"error\":\"%s\"}\n", msg.c_str());
    return 1;
  }
  return 0;
}
