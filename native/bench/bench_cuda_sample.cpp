// Sampling throughput of the CUDA sampler at the shape: GPT-2 124M (12 layers, d 768, 12 heads, vocab 50257,
// random weights), 64 prompts of 64 tokens, 128 new tokens each, temperature 1, no top-k/top-p, no stop tokens (every
// response runs to 128 tokens), in fp32 and bf16 (bf16 GEMMs over a bf16 copy of the weights with fp32 accumulation,
// bf16 KV cache).
// One warm-up call, then the mean of `reps` calls; tok/s counts generated tokens. One JSON line per precision:
//   {"op": "sample", "precision": "fp32", "tok_per_s": ..., "peak_mem_bytes": ..., ...}
// peak_mem_bytes = the weights on the device (+ the bf16 copy) + what the call allocates (KV cache, activations,
// logits, outputs) + the sampler's cuBLAS workspace: the tensors a PyTorch run would count in max_memory_allocated.
// A call's host wall time by part, averaged over the reps (SamplerStats): setup_ms (device buffers, GEMM handles),
// prefill_ms, decode_ms (of which capture_ms capturing graphs and sync_ms waiting at the active set's rebuilds;
// eager_steps decode steps ran without a graph), collect_ms (tokens back to the host), teardown_ms (freeing), and
// sec - the parts (the request's checks, the result's return).
// By default the bf16 decode GEMMs run on cuBLASLt (GPT-2's MLP bias and GELU in the GEMM: lt_gemm.h; its output
// projection in 4 K-slices that the next norm adds: sampler_cuda.cu lt_split) and, on sm_90 and up, the decode
// step's own kernels launch early (programmatic dependent launch, launch.h). Then bf16 variants
// of the decode step, measured in the same run: "sample_no_pdl" (no early launches: OPTUNE_CUDA_PDL=0),
// "sample_cublas" (the decode GEMMs on cuBLAS: OPTUNE_CUDA_DECODE_GEMM=cublas), "sample_own" (decode_gemm.cu's
// kernel with the automatic K-split: =own) and "sample_own_unsplit" (the same, OPTUNE_CUDA_SPLIT_K=1).
// (On an H200: requesting the weights or the attention's cache rows into L2 ahead, by the kernel before, ran 2-4%
// slower; staging the attention's keys and values in shared memory 4.6% slower; drawing each row's token over 8 blocks
// instead of one no faster; timing each cuBLASLt shape's algorithm among those with the same bits within run-to-run
// change; the own kernel for the two projections into the residual stream only 3.5% slower: RESULTS.md.) max_split: the
// most slices a decode GEMM ran in; own_gemms: decode GEMMs issued to the own kernel; early_launch: whether the own
// kernels launched early (sm_90 and up); lt_gemms: decode GEMMs on cuBLASLt. The environment the benchmark starts with
// applies to the first rows. Last, bf16 with the default GEMMs and filtered draws: "sample_top_p" (top-p 0.9) and
// "sample_top_k" (top-k 50), each row sorted whole every step. Random weights give nearly flat distributions, so the
// top-p nucleus holds most of the vocabulary; a trained model's is far smaller.
// A variant that throws prints {"op": ..., "error": ...} instead, the others still run, and the exit status is 1.
// Usage: bench_cuda_sample [reps] [fp32|bf16]   (default 3 repetitions, both precisions). Needs a CUDA device;
// prints a SKIPPED line without one.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "core/engine.h"
#include "core/rng.h"
#include "cuda/memory.h"
#include "cuda/ops.h"
#include "cuda/sampler_cuda.h"
#include "bench_shapes.h"

using namespace optune;

static std::string json_safe(std::string s) {  // an error message inside a JSON string
  for (char& ch : s)
    if (ch == '"' || ch == '\\' || static_cast<unsigned char>(ch) < 0x20) ch = '\'';
  return s;
}

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  try {
    const std::string device = cuda::device_description(0);
    const ModelConfig c = bench::gpt2_124m();
    auto m = make_model(c);
    init_weights(*m, 1);
    const int B = 64, P = 64, N = 128;
    SampleRequest r;
    r.prompt_offsets.push_back(0);
    for (int i = 0; i < B * P; i++) r.prompt_tokens.push_back(static_cast<int32_t>(rng_u64(7, 0, i) % c.vocab_size));
    for (int i = 1; i <= B; i++) r.prompt_offsets.push_back(i * P);
    r.n_samples = 1, r.max_new_tokens = N, r.temperature = 1.0f, r.seed = 1;

    cuda::Buffer<float> w32(m->params, "bench weights");
    cuda::Buffer<uint16_t> w16(m->params.size(), "bench weights bf16");
    cuda::to_bf16(w16.data(), w32.data(), static_cast<int64_t>(m->params.size()));
    const size_t workspace = size_t(32) << 20;  // the sampler's cuBLAS workspace (sampler_cuda.cu)
    const std::string only = argc > 2 ? argv[2] : "";
    auto measure = [&](const char* op, bool bf16, int top_k = 0, float top_p = 1.0f) {
      r.top_k = top_k, r.top_p = top_p;
      const cuda::SamplerWeights w{w32.data(), bf16 ? w16.data() : nullptr};
      cuda::SamplerStats stats;
      cuda::sample_with_weights(*m, w, r, &stats);  // warm-up: module loading, cuBLAS heuristics
      // a call's parts (host wall time), summed over the reps: what the call costs beyond its kernels
      double setup_ms = 0, prefill_ms = 0, decode_ms = 0, capture_ms = 0, sync_ms = 0, collect_ms = 0,
             teardown_ms = 0;
      size_t tokens = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; i++) {
        const SampleResult res = cuda::sample_with_weights(*m, w, r, &stats);
        tokens += res.tokens.size();
        setup_ms += stats.setup_ms, prefill_ms += stats.prefill_ms, decode_ms += stats.decode_ms;
        capture_ms += stats.capture_ms, sync_ms += stats.sync_ms, collect_ms += stats.collect_ms;
        teardown_ms += stats.teardown_ms;
      }
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
      const size_t weights = m->params.size() * (bf16 ? 6 : 4);
      std::printf("{\"op\": \"%s\", \"precision\": \"%s\", \"tok_per_s\": %.1f, \"peak_mem_bytes\": %zu, "
                  "\"batch\": %d, \"prompt\": %d, \"new\": %d, \"sec\": %.5f, \"setup_ms\": %.3f, "
                  "\"prefill_ms\": %.3f, \"decode_ms\": %.3f, \"capture_ms\": %.3f, \"sync_ms\": %.3f, "
                  "\"collect_ms\": %.3f, \"teardown_ms\": %.3f, \"decode_steps\": %d, \"eager_steps\": %d, "
                  "\"graphs\": %d, \"max_split\": %d, \"own_gemms\": %d, "
                  "\"early_launch\": %s, \"row_sorts\": %d, \"lt_gemms\": %d, \"tf32\": %s, "
                  "\"call_bytes\": %zu, \"graph_error\": \"%s\", \"device\": \"%s\"}\n",
                  op, bf16 ? "bf16" : "fp32", static_cast<double>(tokens) / reps / sec,
                  weights + stats.device_bytes + workspace, B, P, N, sec, setup_ms / reps, prefill_ms / reps,
                  decode_ms / reps, capture_ms / reps, sync_ms / reps, collect_ms / reps, teardown_ms / reps,
                  stats.decode_steps, stats.eager_steps, stats.graphs, stats.max_split, stats.own_gemms,
                  stats.early_launch ? "true" : "false", stats.row_sorts, stats.lt_gemms,
                  stats.tf32 ? "true" : "false", stats.device_bytes, json_safe(stats.graph_error).c_str(),
                  device.c_str());
      std::fflush(stdout);
    };
    for (const bool bf16 : {false, true})
      if (only.empty() || only == (bf16 ? "bf16" : "fp32")) measure("sample", bf16);
    // bf16 variants: each sets its knobs for its own row only
    struct Variant {
      const char* op;
      std::vector<std::pair<const char*, const char*>> env;
      int top_k = 0;
      float top_p = 1.0f;
    };
    const Variant variants[] = {
        {"sample_no_pdl", {{"OPTUNE_CUDA_PDL", "0"}}},
        {"sample_cublas", {{"OPTUNE_CUDA_DECODE_GEMM", "cublas"}}},
        {"sample_own", {{"OPTUNE_CUDA_DECODE_GEMM", "own"}}},
        {"sample_own_unsplit", {{"OPTUNE_CUDA_DECODE_GEMM", "own"}, {"OPTUNE_CUDA_SPLIT_K", "1"}}},
        {"sample_top_p", {}, 0, 0.9f},
        {"sample_top_k", {}, 50, 1.0f},
    };
    int failed = 0;
    if (only.empty() || only == "bf16") {
      for (const Variant& v : variants) {
        for (const auto& [name, value] : v.env) setenv(name, value, 1);
        try {  // a variant that fails gets an error row; the others still run
          measure(v.op, true, v.top_k, v.top_p);
        } catch (const std::exception& e) {
          std::printf("{\"op\": \"%s\", \"precision\": \"bf16\", \"error\": \"%s\"}\n", v.op,
                      json_safe(e.what()).c_str());
          std::fflush(stdout);
          failed++;
        }
        for (const auto& [name, value] : v.env) unsetenv(name);
      }
    }
    if (failed) {
      std::fprintf(stderr, "bench_cuda_sample: %d variant(s) failed (their rows hold the errors)\n", failed);
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_sample: %s\n", e.what());
    return 1;
  }
  return 0;
}
